//! The time as a connection's task sees it: read once when a poll of the
//! task begins, and shared by everything that poll does (the idle timer's
//! activity, a request's start, its dispatch upstream, the latency it
//! records), as nginx reads its clock once per turn of its event loop.
//! A proxied request takes two polls of its connection's task (the
//! request arrives, the answer arrives), so two clock reads instead of
//! one per use, about ten.
//!
//! Durations measured across polls are exact to within one poll's work (a
//! few microseconds); within one poll they read as zero. Outside a
//! connection's task (a mirror's copy, hyper's HTTP/2 streams, tests) the
//! clock is read each time, as before.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

thread_local! {
    /// When the poll running on this thread began, if it is a [`PerPoll`]'s.
    static POLL_BEGAN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Now: when the current poll of a connection's task began, or the clock's
/// time outside one.
pub fn now() -> Instant {
    POLL_BEGAN.get().unwrap_or_else(Instant::now)
}

/// The time from `earlier` to [`now`] (zero if `earlier` is later).
pub fn since(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

pin_project_lite::pin_project! {
    /// `inner`, with [`now`] read once at the start of each of its polls.
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
    }
}

/// Runs `inner` with the clock read once per poll.
pub fn per_poll<F: Future>(inner: F) -> PerPoll<F> {
    PerPoll { inner }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Restored after, so that a poll nested in another's (a future
        // polled by hand inside a task) leaves the outer one's time.
        let outer = POLL_BEGAN.replace(Some(Instant::now()));
        let polled = self.project().inner.poll(cx);
        POLL_BEGAN.set(outer);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy for `d` of real time, without yielding.
    fn spin(d: Duration) {
        let began = std::time::Instant::now();
        while began.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn within_one_poll_the_time_stands_still() {
        let within = per_poll(async {
            let start = now();
            spin(Duration::from_millis(2));
            since(start)
        })
        .await;
        assert_eq!(within, Duration::ZERO);
        let outside = async {
            let start = now();
            spin(Duration::from_millis(2));
            since(start)
        }
        .await;
        assert!(outside >= Duration::from_millis(2), "{outside:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_poll_reads_the_clock_anew() {
        let (a, b) = per_poll(async {
            let a = now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            (a, now())
        })
        .await;
        assert_eq!(b - a, Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_task_polled_per_poll_the_clock_is_read_each_time() {
        assert_eq!(POLL_BEGAN.get(), None);
        let a = now();
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(since(a), Duration::from_millis(7));
    }

    #[tokio::test]
    async fn a_nested_poll_leaves_the_outer_time() {
        let outer = per_poll(async {
            let before = POLL_BEGAN.get();
            per_poll(async {}).await;
            assert_eq!(POLL_BEGAN.get(), before);
            before
        })
        .await;
        assert!(outer.is_some());
        assert_eq!(POLL_BEGAN.get(), None);
    }
}
