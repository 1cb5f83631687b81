//! The upstream's response, passed on downstream: a small body in the same
//! write as the head, an accepted upgrade spliced into a tunnel.

use std::sync::Arc;

use futures::FutureExt;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::RespBody;
use crate::hops::strip_hop_by_hop;
use crate::pool::UpBody;
use crate::state::Proxy;
use crate::telemetry::Cell;

/// The response downstream gets for the upstream's `resp`.
pub fn pass_on(
    proxy: &Arc<Proxy>,
    mut resp: Response<UpBody>,
    cell: &Arc<Cell>,
    upgrade: Option<OnUpgrade>,
) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream) = upgrade
    {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(proxy.clone(), downstream, upstream));
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, RespBody::empty());
    }
    // The own client's heads come without them (`pool::response_head`).
    if let UpBody::Hyper(_) = resp.body() {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, small_body_now(body, cell.clone()))
}

/// A small body whose bytes already arrived with the headers is sent as one
/// piece, so that the response head and body leave in one write (one
/// segment, one wake-up of the client) instead of two. Anything else
/// streams.
fn small_body_now(mut body: UpBody, cell: Arc<Cell>) -> RespBody {
    const SMALL: u64 = 16 * 1024;
    if body.size_hint().exact().is_none_or(|n| n > SMALL) {
        return RespBody::Stream { body, cell };
    }
    let arrived = |body: &mut UpBody, data| RespBody::Arrived {
        data,
        fields: body.take_fields(),
    };
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) if body.is_end_stream() => match frame.into_data() {
            Ok(data) => {
                cell.add_bytes(0, data.len() as u64);
                arrived(&mut body, Some(data))
            }
            // A trailers frame: nothing else can follow.
            Err(_) => arrived(&mut body, None),
        },
        Some(None) => arrived(&mut body, None),
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => RespBody::Prefixed {
                first: Some(data),
                body,
                cell,
            },
            // Trailers end a body, whatever its stream says yet.
            Err(_) => arrived(&mut body, None),
        },
        // Not here yet, or an error that the stream will report.
        _ => RespBody::Stream { body, cell },
    }
}

/// Splices an upgraded (e.g. WebSocket) connection to its upstream, both
/// sides under the idle timeout (the downstream one already is, through
/// the connection it came from).
async fn tunnel(proxy: Arc<Proxy>, downstream: OnUpgrade, upstream: OnUpgrade) {
    let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
        return;
    };
    let mut down = TokioIo::new(down);
    let mut up = proxy.idle(TokioIo::new(up));
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}
