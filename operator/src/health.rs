//! Supervision of the operator's long-running tasks. Each runs under a
//! name; one that panics or ends, or whose heartbeat stops for longer than
//! it allows, makes `/healthz` fail and is published to [`Supervisor::failed`]:
//! the leader then gives up its Lease (the other replica takes over at
//! once) and the process exits so that Kubernetes restarts it, instead of
//! running on with a dead controller and 0 restarts.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::watch;
use tracing::error;

/// One supervised task.
#[derive(Debug)]
struct Task {
    last_beat: Instant,
    /// How long it may go without a beat; none: only its end counts.
    stall_after: Option<Duration>,
    /// Why it ended, once it has.
    ended: Option<String>,
}

type Tasks = Arc<Mutex<BTreeMap<&'static str, Task>>>;

/// Units of work in progress (a reconcile of one object), by id: what,
/// since when, for how long at most.
type Busy = Arc<Mutex<BTreeMap<u64, (String, Instant, Duration)>>>;

/// The operator's supervised tasks.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tasks: Tasks,
    busy: Busy,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    failed: watch::Sender<Option<String>>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            tasks: Arc::default(),
            busy: Arc::default(),
            next_id: Arc::default(),
            failed: watch::channel(None).0,
        }
    }
}

/// Work in progress, registered by [`Supervisor::busy`] until dropped.
#[derive(Debug)]
pub struct BusyGuard {
    id: u64,
    busy: Busy,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&self.id);
        }
    }
}

/// A task's proof of life: it beats at least every `stall_after`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    tasks: Tasks,
}

impl Heartbeat {
    /// The task made progress.
    pub fn beat(&self) {
        if let Ok(mut t) = self.tasks.lock()
            && let Some(task) = t.get_mut(self.name)
        {
            task.last_beat = Instant::now();
        }
    }
}

impl Supervisor {
    /// Runs `task` under `name`. It must not end while the operator runs:
    /// an end or a panic is a failure, as is going `stall_after` without a
    /// beat of the [`Heartbeat`] it is given.
    pub fn spawn<F, Fut>(&self, name: &'static str, stall_after: Option<Duration>, task: F)
    where
        F: FnOnce(Heartbeat) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(
                name,
                Task {
                    last_beat: Instant::now(),
                    stall_after,
                    ended: None,
                },
            );
        }
        let heart = Heartbeat {
            name,
            tasks: self.tasks.clone(),
        };
        let fut = task(heart);
        let me = self.clone();
        tokio::spawn(async move {
            let why = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(()) => "ended".to_owned(),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    format!("panicked: {msg}")
                }
            };
            me.end(name, why);
        });
    }

    /// Registers a unit of work (a reconcile) that must finish within
    /// `limit`: one that does not is a stall, even while its task beats
    /// (a controller runs each reconcile apart from its own loop).
    pub fn busy(&self, what: String, limit: Duration) -> BusyGuard {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut b) = self.busy.lock() {
            b.insert(id, (what, Instant::now(), limit));
        }
        BusyGuard {
            id,
            busy: self.busy.clone(),
        }
    }

    fn end(&self, name: &'static str, why: String) {
        if let Ok(mut t) = self.tasks.lock()
            && let Some(task) = t.get_mut(name)
        {
            task.ended = Some(why);
        }
        self.publish();
    }

    /// `Ok` while every task runs and beats; else what failed.
    pub fn check(&self) -> Result<(), String> {
        let now = Instant::now();
        let Ok(tasks) = self.tasks.lock() else {
            return Err("supervisor state poisoned".into());
        };
        let mut failures: Vec<String> = tasks
            .iter()
            .filter_map(|(name, t)| match (&t.ended, t.stall_after) {
                (Some(why), _) => Some(format!("{name} {why}")),
                (None, Some(limit)) if now.duration_since(t.last_beat) > limit => Some(format!(
                    "{name} stalled: no progress for {:.0?}",
                    now.duration_since(t.last_beat)
                )),
                _ => None,
            })
            .collect();
        drop(tasks);
        if let Ok(busy) = self.busy.lock() {
            failures.extend(busy.values().filter_map(|(what, since, limit)| {
                let took = now.duration_since(*since);
                (took > *limit).then(|| format!("{what} stalled: running for {took:.0?}"))
            }));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn publish(&self) {
        if let Err(why) = self.check()
            && self.failed.borrow().is_none()
        {
            error!("unhealthy: {why}");
            self.failed.send_replace(Some(why));
        }
    }

    /// The first failure, once there is one.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Looks for stalled tasks every second, forever.
    pub async fn watch_stalls(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.publish();
        }
    }
}

/// Polls `fut` and beats `heart` every `every` while it runs, from the same
/// task: a task whose thread is blocked cannot beat.
pub async fn beating<F: Future>(heart: &Heartbeat, every: Duration, fut: F) -> F::Output {
    let mut tick = tokio::time::interval(every);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => heart.beat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_the_check_and_is_published() {
        let s = Supervisor::default();
        let mut failed = s.failed();
        s.spawn("steady", None, |_| std::future::pending());
        assert!(s.check().is_ok());
        s.spawn("boom", None, |_| async { panic!("bad input") });
        let why = tokio::time::timeout(Duration::from_secs(5), failed.wait_for(Option::is_some))
            .await
            .expect("published in time")
            .expect("sender alive")
            .clone()
            .expect("a failure");
        assert!(why.contains("boom panicked: bad input"), "{why}");
        assert!(s.check().is_err());
    }

    #[tokio::test]
    async fn a_task_that_stops_beating_is_stalled() {
        let s = Supervisor::default();
        s.spawn("loop", Some(Duration::from_secs(30)), |heart| async move {
            heart.beat();
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(s.check().is_ok());
        // Instant (std) does not follow tokio's paused clock: check with a
        // zero allowance instead of waiting 30 s.
        s.spawn("never", Some(Duration::ZERO), |_| std::future::pending());
        std::thread::sleep(Duration::from_millis(5));
        let err = s.check().expect_err("stalled");
        assert!(err.contains("never stalled"), "{err}");
    }

    #[test]
    fn work_that_outlives_its_limit_is_a_stall_and_finished_work_is_forgotten() {
        let s = Supervisor::default();
        let quick = s.busy("reconcile of a/quick".into(), Duration::from_secs(60));
        assert!(s.check().is_ok());
        drop(quick);
        let _stuck = s.busy("reconcile of a/stuck".into(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let err = s.check().expect_err("stalled");
        assert!(err.contains("reconcile of a/stuck stalled"), "{err}");
    }
}
