//! Request mirroring (Gateway API's `RequestMirror`): a copy of a request
//! goes to another backend, its answer is discarded and its outcome
//! counted on that backend's cell, so that a canary's errors under
//! mirrored traffic reach its analysis while clients see only the
//! original's answer.
//!
//! A request's body is teed: each frame the original's upstream takes is
//! also queued for each copy (a reference to the same bytes, no copy of
//! them). The queue is bounded; a copy whose upstream falls that far behind
//! is given up (its request aborted, its outcome not counted), so that a
//! slow mirror never holds the original back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use crate::balance::pick;
use crate::body::ReqBody;
use crate::compiled::Compiled;
use crate::local_reply::LocalReply;
use crate::pool::{self, Proto};
use crate::state::Proxy;
use crate::telemetry::Cell;

/// How long a copy (answer and body) may take before it is given up.
const COPY_TIMEOUT: Duration = Duration::from_secs(15);

/// Body bytes queued for a copy before it counts as fallen behind (what a
/// copy may hold in memory while its upstream is slower than the
/// original's).
const COPY_QUEUE_BYTES: usize = 1 << 20;

/// The original body's side of the copies: hands each data frame to every
/// copy still keeping up.
#[derive(Debug, Default)]
pub struct Tee {
    copies: Vec<CopyTx>,
    /// The original body ended well: the copies' bodies end with it.
    done: bool,
}

/// One copy's body queue and its abort switch.
#[derive(Debug)]
struct CopyTx {
    frames: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    abort: Option<oneshot::Sender<()>>,
}

/// A copy's body: the original's frames, in order, as they come.
#[derive(Debug)]
pub struct CopyFrames {
    frames: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl CopyFrames {
    /// The next frame; `None` once the original ended.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Bytes>> {
        let polled = self.frames.poll_recv(cx);
        if let Poll::Ready(Some(b)) = &polled {
            self.queued.fetch_sub(b.len(), Ordering::Relaxed);
        }
        polled
    }
}

impl Tee {
    /// A queue for one more copy: the copy's body and the signal that gives
    /// the copy up.
    pub fn add(&mut self) -> (CopyFrames, oneshot::Receiver<()>) {
        let (frames, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (abort, aborted) = oneshot::channel();
        self.copies.push(CopyTx {
            frames,
            queued: queued.clone(),
            abort: Some(abort),
        });
        (CopyFrames { frames: rx, queued }, aborted)
    }

    /// Whether no copy is fed.
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Hands a data frame to each copy (the same bytes, counted); a copy
    /// with [`COPY_QUEUE_BYTES`] waiting, or gone, is given up.
    pub fn data(&mut self, data: &Bytes) {
        self.copies.retain_mut(|c| {
            let behind =
                c.queued.fetch_add(data.len(), Ordering::Relaxed) + data.len() > COPY_QUEUE_BYTES;
            let kept = !behind && c.frames.send(data.clone()).is_ok();
            if !kept && let Some(abort) = c.abort.take() {
                let _ = abort.send(());
            }
            kept
        });
    }

    /// The original body ended: so do the copies' bodies.
    pub fn end(&mut self) {
        self.done = true;
        self.copies.clear();
    }
}

impl Drop for Tee {
    /// An original body that failed or was dropped half-read leaves its
    /// copies incomplete: they are given up, never sent short.
    fn drop(&mut self) {
        if !self.done {
            for c in &mut self.copies {
                if let Some(abort) = c.abort.take() {
                    let _ = abort.send(());
                }
            }
        }
    }
}

/// Resolves when the copy is given up; never when its body simply ended.
async fn given_up(abort: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = abort
        && rx.await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Whether this request is copied at `percent`.
pub fn sampled(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

/// Sends `req` to backend `backend` of `compiled`, records the outcome in
/// `cell`, and drops the answer; gives up without recording when `abort`
/// fires (its body could not be copied whole).
pub async fn send(
    proxy: Arc<Proxy>,
    compiled: Arc<Compiled>,
    backend: usize,
    cell: Arc<Cell>,
    proto: Proto,
    req: Request<ReqBody>,
    abort: Option<oneshot::Receiver<()>>,
) {
    let start = crate::clock::now();
    let Some(b) = compiled.backends.get(backend) else {
        return;
    };
    if let Some(status) = b.respond {
        LocalReply::Unresolved(status).count(&cell, start);
        return;
    }
    let Some(endpoint) = pick(&b.endpoints, None).cloned() else {
        LocalReply::NoEndpoint.count(&cell, start);
        return;
    };
    let target = b.target(endpoint.addr, &proxy.identity);
    let in_flight = endpoint.begin();
    let copy = async {
        let resp = pool::send(target, proto, b.connect_timeout, req, &proxy.telemetry)
            .await?
            .response;
        let status = resp.status().as_u16();
        // Read to the end, so that the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        Ok::<u16, pool::UpstreamError>(status)
    };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(COPY_TIMEOUT, copy) => outcome,
        () = given_up(abort) => {
            proxy.telemetry.mirror_copies_given_up.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(backend = %b.name, "mirror: the copy fell behind its original; given up");
            return;
        }
    };
    match outcome {
        Ok(Ok(status)) => cell.record(status, crate::clock::since(start), false),
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(backend = %b.name, "mirror: {e}");
            LocalReply::ConnectFailed.count(&cell, start);
        }
        Ok(Err(e)) => {
            tracing::debug!(backend = %b.name, "mirror: {e}");
            LocalReply::Reset.count(&cell, start);
        }
        Err(_) => LocalReply::Timeout.count(&cell, start),
    }
    drop(in_flight);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(c: &mut CopyFrames) -> Option<Bytes> {
        std::future::poll_fn(|cx| c.poll_next(cx)).await
    }

    #[tokio::test]
    async fn a_copy_gets_every_frame_and_ends_with_the_original() {
        let mut tee = Tee::default();
        let (mut copy, abort) = tee.add();
        for i in 0..3u8 {
            tee.data(&Bytes::from(vec![i; 4]));
        }
        tee.end();
        drop(tee);
        let mut got = Vec::new();
        while let Some(b) = next(&mut copy).await {
            got.extend_from_slice(&b);
        }
        assert_eq!(got.len(), 12);
        assert!(abort.await.is_err(), "an ended copy must not be given up");
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_given_up_and_the_others_go_on() {
        let mut tee = Tee::default();
        let (_slow, slow_abort) = tee.add();
        let (mut fast, fast_abort) = tee.add();
        let frame = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..COPY_QUEUE_BYTES / frame.len() + 1 {
            tee.data(&frame);
            // The fast copy keeps up.
            assert!(next(&mut fast).await.is_some());
        }
        assert!(slow_abort.await.is_ok(), "the slow copy was not given up");
        tee.end();
        drop(tee);
        assert!(fast_abort.await.is_err());
    }

    #[tokio::test]
    async fn an_original_dropped_half_read_gives_its_copies_up() {
        let mut tee = Tee::default();
        let (_rx, abort) = tee.add();
        tee.data(&Bytes::from_static(b"half"));
        drop(tee);
        assert!(abort.await.is_ok());
    }

    #[test]
    fn sampling_copies_all_none_or_about_the_share() {
        assert!((0..1000).all(|_| sampled(100)));
        assert!(!(0..1000).any(|_| sampled(0)));
        let n = (0..10_000).filter(|_| sampled(25)).count();
        assert!((2_000..3_000).contains(&n), "25% sampled {n} of 10,000");
    }
}
