//! Request mirroring (Gateway API's `RequestMirror`): a copy of a request
//! goes to another backend, its answer is discarded and its outcome
//! counted on that backend's cell, so that a canary's errors under
//! mirrored traffic reach its analysis while clients see only the
//! original's answer.
//!
//! Only requests without a body are copied: the original's body streams to
//! its own upstream and is never held back or buffered for a copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;

use crate::balance::pick;
use crate::body::ReqBody;
use crate::compiled::Compiled;
use crate::pool::{self, Proto};
use crate::state::Proxy;
use crate::telemetry::Cell;

/// How long a copy (answer and body) may take before it is given up.
const COPY_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether this request is copied at `percent`.
pub fn sampled(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

/// Sends `req` to backend `backend` of `compiled`, records the outcome in
/// `cell`, and drops the answer.
pub async fn send(
    proxy: Arc<Proxy>,
    compiled: Arc<Compiled>,
    backend: usize,
    cell: Arc<Cell>,
    proto: Proto,
    req: Request<ReqBody>,
) {
    let start = Instant::now();
    let Some(b) = compiled.backends.get(backend) else {
        return;
    };
    if let Some(status) = b.respond {
        cell.record(status.as_u16(), start.elapsed(), false);
        return;
    }
    let Some(endpoint) = pick(&b.endpoints, None).cloned() else {
        cell.record(503, start.elapsed(), true);
        return;
    };
    let target = b.target(endpoint.addr, &proxy.identity);
    let in_flight = endpoint.begin();
    let copy = async {
        let resp = pool::send(target, proto, b.connect_timeout, req, &proxy.telemetry).await?;
        let status = resp.status().as_u16();
        // Read to the end, so that the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        Ok::<u16, pool::UpstreamError>(status)
    };
    match tokio::time::timeout(COPY_TIMEOUT, copy).await {
        Ok(Ok(status)) => cell.record(status, start.elapsed(), false),
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(backend = %b.name, "mirror: {e}");
            cell.record(503, start.elapsed(), true);
        }
        Ok(Err(e)) => {
            tracing::debug!(backend = %b.name, "mirror: {e}");
            cell.record(502, start.elapsed(), true);
        }
        Err(_) => cell.record(504, start.elapsed(), true),
    }
    drop(in_flight);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_copies_all_none_or_about_the_share() {
        assert!((0..1000).all(|_| sampled(100)));
        assert!(!(0..1000).any(|_| sampled(0)));
        let n = (0..10_000).filter(|_| sampled(25)).count();
        assert!((2_000..3_000).contains(&n), "25% sampled {n} of 10,000");
    }
}
