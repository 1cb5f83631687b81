//! Idle timeouts of downstream connections: one on which no byte has moved
//! either way for the configured time reads as closed by its peer, so that
//! hyper ends it (HTTP/1 keep-alive, HTTP/2) and a TCP splice finishes
//! (Envoy's `idle_timeout`, one hour by default, as Istio leaves it).
//!
//! The cost on the hot path is a copy of the task's time ([`crate::clock`])
//! per read or write: the timer is armed once per idle period and, when it
//! fires, re-armed from the last activity instead of being reset on every
//! byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::telemetry::Telemetry;

/// A stream closed after `idle` without reads or writes (never without
/// an idle time).
pub struct Idle<S> {
    inner: S,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
    telemetry: Arc<Telemetry>,
}

impl<S> Idle<S> {
    /// Tracks `inner`; an expiry is counted in `telemetry`.
    pub fn new(inner: S, idle: Option<Duration>, telemetry: Arc<Telemetry>) -> Idle<S> {
        let last = crate::clock::now();
        Idle {
            inner,
            idle: idle.unwrap_or_default(),
            last,
            timer: idle.map(|d| Box::pin(tokio::time::sleep_until(last + d))),
            expired: false,
            telemetry,
        }
    }

    /// The proxy's counters, for what the connection's reader refuses.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the idle time has passed; arms the timer (and registers
    /// `cx`) while it has not. Asked only when the stream would wait: a
    /// stream with bytes ready is not idle, and a timer polled on every
    /// read cost a registration of the task's waker each time.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last + self.idle;
            if crate::clock::now() >= deadline {
                self.expired = true;
                self.telemetry.idle_timeouts.fetch_add(1, Relaxed);
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

impl Idle<tokio::net::TcpStream> {
    /// Waits until the socket has bytes (or an end) to read: `false` when
    /// the idle time passed first. Holds no buffer while it waits.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if self.expired {
            return Poll::Ready(Ok(false));
        }
        if let Poll::Ready(ready) = self.inner.poll_read_ready(cx) {
            return Poll::Ready(ready.map(|()| true));
        }
        if self.poll_expired(cx) {
            return Poll::Ready(Ok(false));
        }
        Poll::Pending
    }
}

impl<S> Idle<S> {
    /// Runs a write on the inner stream, refused once expired; bytes
    /// written are activity.
    fn written(
        &mut self,
        write: impl FnOnce(&mut S) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let n = ready!(write(&mut self.inner))?;
        if n > 0 {
            self.last = crate::clock::now();
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            // End of stream: the connection is over.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(read) => {
                if buf.filled().len() > before {
                    this.last = crate::clock::now();
                }
                Poll::Ready(read)
            }
            // End of stream once the idle time has passed.
            Poll::Pending if this.poll_expired(cx) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .written(|inner| Pin::new(inner).poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .written(|inner| Pin::new(inner).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_reads_as_ended_after_the_idle_time() {
        let telemetry = Arc::new(Telemetry::default());
        let (a, _b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Some(Duration::from_secs(60)), telemetry.clone());
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let n = idle.read(&mut buf).await.expect("reads");
        assert_eq!(n, 0);
        assert!(start.elapsed() >= Duration::from_secs(60));
        assert_eq!(telemetry.idle_timeouts.load(Relaxed), 1);
        assert!(idle.write_all(b"x").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_it_open() {
        let telemetry = Arc::new(Telemetry::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Some(Duration::from_secs(60)), telemetry.clone());
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            b.write_all(b"ping").await.expect("writes");
            assert_eq!(idle.read(&mut buf).await.expect("reads"), 4);
            tokio::time::sleep(Duration::from_secs(40)).await;
            idle.write_all(b"pong").await.expect("writes");
            assert_eq!(b.read(&mut buf).await.expect("reads"), 4);
        }
        assert_eq!(telemetry.idle_timeouts.load(Relaxed), 0);
    }
}
