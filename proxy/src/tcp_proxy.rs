//! Opaque TCP: each connection is spliced to an endpoint of a backend
//! chosen by weight. A connection that cannot be placed is closed. An
//! intercepted connection the mesh does not route is spliced to where it
//! was going ([`passthrough`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{Ejection, pick};
use crate::compiled::CompiledBackend;
use crate::local_reply::LocalReply;
use crate::pool::Target;
use crate::state::Proxy;
use crate::telemetry::Cell;

/// Serves one accepted connection on TCP listener `listener` (a bound one,
/// or an inbound port's, where `downstream` may be a TLS stream).
pub async fn serve<S>(proxy: Arc<Proxy>, listener: Arc<str>, downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = crate::clock::now();
    let (backend, cell) = {
        let compiled = proxy.current();
        let Some(l) = compiled.listener(&listener) else {
            return;
        };
        let Some(idx) = l.tcp_split.choose() else {
            l.unrouted.record(503, crate::clock::since(start), true);
            return;
        };
        let cell = l
            .tcp_cells
            .iter()
            .find(|(i, _)| *i == idx)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| l.unrouted.clone());
        (compiled.backends[idx].clone(), cell)
    };
    to_backend(&proxy, &backend, &cell, downstream, start).await;
}

/// Splices `downstream` to an endpoint of `backend`: over mTLS to its
/// sidecar when it has one, plaintext otherwise.
async fn to_backend<S>(
    proxy: &Proxy,
    backend: &CompiledBackend,
    cell: &Cell,
    downstream: S,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(endpoint) = pick(&backend.endpoints, None).cloned() else {
        LocalReply::NoEndpoint.count(cell, start);
        return;
    };
    let _in_flight = endpoint.begin();
    let target = backend.target(endpoint.addr, &proxy.identity);
    let upstream = match crate::pool::connect_opaque(
        target,
        backend.connect_timeout,
        &proxy.telemetry,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            debug!(backend = %backend.name, "{e}");
            if e.is_connect()
                && let Some(out) = endpoint.eject()
            {
                let t = &proxy.telemetry;
                t.ejected(&backend.name, endpoint.addr, Ejection::Unreachable, out, &e);
            }
            LocalReply::ConnectFailed.count(cell, start);
            return;
        }
    };
    endpoint.observe(crate::clock::since(start));
    cell.record(200, crate::clock::since(start), false);
    if let Ok((sent, received)) = splice(proxy, downstream, upstream).await {
        cell.add_bytes(sent, received);
    }
}

/// Intercepted outbound TCP that no HTTP route takes: to an opaque port of
/// a meshed Service, balanced over its endpoints; to a pod behind a
/// sidecar, to that sidecar; both over mTLS (counted as
/// `sluice_mesh_tcp_connections`). Anything else passes through.
pub async fn outbound(proxy: Arc<Proxy>, downstream: TcpStream, dst: SocketAddr) {
    let start = crate::clock::now();
    let (service, workload) = {
        let compiled = proxy.current();
        let service = compiled
            .mesh_tcp
            .services
            .get(&dst)
            .map(|(i, cell)| (compiled.backends[*i].clone(), cell.clone()));
        let workload = compiled.mesh_tcp.workloads.get(&dst.ip()).cloned();
        (service, workload)
    };
    let telemetry = &proxy.telemetry;
    if let Some((backend, cell)) = service {
        telemetry.mesh_tcp_connections.fetch_add(1, Relaxed);
        return to_backend(&proxy, &backend, &cell, downstream, start).await;
    }
    let Some(expected) = workload.filter(|_| proxy.identity.has_leaf()) else {
        return passthrough(proxy, downstream, dst).await;
    };
    telemetry.mesh_tcp_connections.fetch_add(1, Relaxed);
    let target = Target {
        addr: dst,
        mesh: Some((&proxy.identity, &expected)),
    };
    match crate::pool::connect_opaque(target, PASSTHROUGH_CONNECT_TIMEOUT, telemetry).await {
        Ok(upstream) => {
            let _ = splice(&proxy, downstream, upstream).await;
        }
        Err(e) => debug!(%dst, "{e}"),
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
pub async fn passthrough<S>(proxy: Arc<Proxy>, downstream: S, dst: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
