//! Whether the workers have bound the configuration's listeners.
//!
//! A config is applied in one place, but each worker binds its own sockets
//! (`SO_REUSEPORT`) on its own thread a moment later. `/ready` waits for every
//! worker to have reconciled the first config, so that a proxy never says it
//! is ready while its ports still refuse connections. Later configs do not
//! take readiness away: a listener added by a reload is bound within the
//! worker's next turn, and readiness that flaps on every push would take the
//! pod out of its Service for nothing.

use std::sync::Mutex;

/// Config generations reconciled per worker; see the module docs.
#[derive(Debug, Default)]
pub struct Listening {
    /// The state, locked only on a config change and on `/ready`: never on
    /// a connection's path.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per registered worker, the last generation it reconciled.
    workers: Vec<u64>,
    /// The generation of the first applied config (`None`: not yet).
    first: Option<u64>,
}

/// A worker's place in [`Listening`], handed out before its thread starts so
/// that `/ready` never counts fewer workers than will run.
#[derive(Debug)]
pub struct WorkerSlot(usize);

impl Listening {
    /// Adds a worker that has reconciled nothing yet.
    pub fn register(&self) -> WorkerSlot {
        let mut s = self.lock();
        s.workers.push(0);
        WorkerSlot(s.workers.len() - 1)
    }

    /// Records that the worker's listeners match config `generation`.
    pub fn reconciled(&self, slot: &WorkerSlot, generation: u64) {
        if let Some(g) = self.lock().workers.get_mut(slot.0) {
            *g = (*g).max(generation);
        }
    }

    /// Records an applied config's generation; only the first one counts.
    pub fn applied(&self, generation: u64) {
        self.lock().first.get_or_insert(generation);
    }

    /// Whether a config has been applied and every worker has bound its
    /// listeners since.
    pub fn bound(&self) -> bool {
        let s = self.lock();
        match s.first {
            Some(first) => !s.workers.is_empty() && s.workers.iter().all(|g| *g >= first),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_bound_before_a_config_is_applied() {
        let l = Listening::default();
        let w = l.register();
        l.reconciled(&w, 0);
        assert!(!l.bound());
    }

    #[test]
    fn the_first_config_is_bound_once_every_worker_has_reconciled_it() {
        let l = Listening::default();
        let (a, b) = (l.register(), l.register());
        l.applied(1);
        l.reconciled(&a, 1);
        assert!(!l.bound(), "one worker of two has bound");
        l.reconciled(&b, 1);
        assert!(l.bound());
    }

    #[test]
    fn a_later_config_does_not_take_readiness_away() {
        let l = Listening::default();
        let w = l.register();
        l.applied(1);
        l.reconciled(&w, 1);
        l.applied(2);
        assert!(l.bound());
    }

    #[test]
    fn a_worker_woken_late_never_goes_back_to_an_older_generation() {
        let l = Listening::default();
        let w = l.register();
        l.reconciled(&w, 3);
        l.reconciled(&w, 2);
        l.applied(3);
        assert!(l.bound());
    }

    #[test]
    fn a_proxy_without_workers_has_nothing_bound() {
        let l = Listening::default();
        l.applied(1);
        assert!(!l.bound());
    }
}
