//! Opaque TCP: each connection is spliced to an endpoint of a backend
//! chosen by weight. A connection that cannot be placed is closed. An
//! intercepted connection the mesh does not route is spliced to where it
//! was going ([`passthrough`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::balance::pick;
use crate::state::Proxy;

/// Serves one accepted connection on TCP listener `listener` (a bound one,
/// or an inbound port's, where `downstream` may be a TLS stream).
pub async fn serve<S>(proxy: Arc<Proxy>, listener: Arc<str>, downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let compiled = proxy.current();
    let Some(l) = compiled.listener(&listener) else {
        return;
    };
    let Some(idx) = l.tcp_split.choose() else {
        l.unrouted.record(503, start.elapsed(), true);
        return;
    };
    let backend = &compiled.backends[idx];
    let cell = l
        .tcp_cells
        .iter()
        .find(|(i, _)| *i == idx)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| l.unrouted.clone());
    let Some(endpoint) = pick(&backend.endpoints, None).cloned() else {
        cell.record(503, start.elapsed(), true);
        return;
    };
    let _in_flight = endpoint.begin();
    let upstream = tokio::time::timeout(
        backend.connect_timeout,
        crate::pool::marked_connect(endpoint.addr),
    )
    .await;
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(backend = %backend.name, "connect {}: {e}", endpoint.addr);
            endpoint.eject();
            cell.record(503, start.elapsed(), true);
            return;
        }
        Err(_) => {
            cell.record(503, start.elapsed(), true);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    endpoint.observe(start.elapsed());
    cell.record(200, start.elapsed(), false);
    if let Ok((sent, received)) = splice(&proxy, downstream, upstream).await {
        cell.add_bytes(sent, received);
    }
}

/// Copies both ways until both are done, or until neither moved a byte for
/// the idle timeout: each side is tracked, so a one-way stream keeps both
/// open and a silent connection ends even when its peer ignores a
/// half-close.
async fn splice<A, B>(proxy: &Proxy, a: A, b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a, mut b) = (proxy.idle(a), proxy.idle(b));
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}

/// How long a passthrough connection may take to connect.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Splices an intercepted connection to its original destination `dst`:
/// outbound traffic to what the mesh does not route (another protocol, an
/// address outside the mesh, the API server) and inbound traffic to a
/// port the pod does not declare, as Istio's passthrough clusters do.
pub async fn passthrough(proxy: Arc<Proxy>, downstream: TcpStream, dst: SocketAddr) {
    let telemetry = &proxy.telemetry;
    telemetry.passthrough_connections.fetch_add(1, Relaxed);
    let upstream = tokio::time::timeout(
        PASSTHROUGH_CONNECT_TIMEOUT,
        crate::pool::marked_connect(dst),
    )
    .await;
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%dst, "passthrough connect: {e}");
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            debug!(%dst, "passthrough connect timed out");
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    telemetry.upstream_connects.fetch_add(1, Relaxed);
    let _ = upstream.set_nodelay(true);
    let _ = splice(&proxy, downstream, upstream).await;
}
