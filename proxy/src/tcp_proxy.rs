//! Opaque TCP: each connection is spliced to an endpoint of a backend
//! chosen by weight. A connection that cannot be placed is closed.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::balance::pick;
use crate::state::Proxy;

/// Serves one accepted connection on TCP listener `listener` (a bound one,
/// or an inbound port's, where `downstream` may be a TLS stream).
pub async fn serve<S>(proxy: Arc<Proxy>, listener: Arc<str>, mut downstream: S)
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
    let mut upstream = match upstream {
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
    if let Ok((sent, received)) =
        tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
    {
        cell.add_bytes(sent, received);
    }
}
