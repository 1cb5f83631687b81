//! Whether the workers have bound the configuration's listeners.
//!
//! A config is applied in one place, but each worker binds its own sockets
//! (`SO_REUSEPORT`) on its own thread a moment later. `/ready` waits for every
//! worker to have reconciled the first config, so that a proxy never says it
//! is ready while its ports still refuse connections. Later configs do not
//! take readiness away: a listener added by a reload is bound within the
//! worker's next turn, and readiness that flaps on every push would take the
//! pod out of its Service for nothing.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The generation of the empty config every proxy starts with; each
/// applied config bumps it ([`crate::state::Proxy::apply`]), so a worker
/// past it has bound the listeners of an applied config.
pub(crate) const STARTING_GENERATION: u64 = 0;

/// Config generations reconciled per worker; see the module docs.
#[derive(Debug, Default)]
pub struct Listening {
    /// Per registered worker, the last generation it reconciled. Locked
    /// only on a config change and on `/ready`: never on a connection's
    /// path.
    workers: Mutex<Vec<u64>>,
}

/// A worker's place in [`Listening`], handed out before its thread starts so
/// that `/ready` never counts fewer workers than will run.
#[derive(Debug)]
pub struct WorkerSlot(usize);

impl Listening {
    /// Adds a worker that has reconciled nothing yet.
    pub fn register(&self) -> WorkerSlot {
        let mut workers = self.lock();
        workers.push(STARTING_GENERATION);
        WorkerSlot(workers.len() - 1)
    }

    /// Records that the worker's listeners match config `generation`.
    pub fn reconciled(&self, slot: &WorkerSlot, generation: u64) {
        if let Some(g) = self.lock().get_mut(slot.0) {
            *g = (*g).max(generation);
        }
    }

    /// Whether every worker has bound the listeners of an applied config
    /// (the first, or a later one).
    pub fn bound(&self) -> bool {
        let workers = self.lock();
        !workers.is_empty() && workers.iter().all(|g| *g > STARTING_GENERATION)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u64>> {
        // The generations stay consistent even if a holder panicked.
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_bound_before_a_config_is_applied() {
        let l = Listening::default();
        let w = l.register();
        l.reconciled(&w, STARTING_GENERATION);
        assert!(!l.bound());
    }

    #[test]
    fn the_first_config_is_bound_once_every_worker_has_reconciled_it() {
        let l = Listening::default();
        let (a, b) = (l.register(), l.register());
        l.reconciled(&a, 1);
        assert!(!l.bound(), "one worker of two has bound");
        l.reconciled(&b, 1);
        assert!(l.bound());
    }

    #[test]
    fn a_later_config_does_not_take_readiness_away() {
        let l = Listening::default();
        let w = l.register();
        l.reconciled(&w, 1);
        // Config 2 is applied; the worker has not reconciled it yet.
        assert!(l.bound());
    }

    #[test]
    fn a_worker_woken_late_never_goes_back_to_an_older_generation() {
        let l = Listening::default();
        let w = l.register();
        l.reconciled(&w, 3);
        l.reconciled(&w, 2);
        assert_eq!(*l.lock(), [3]);
        assert!(l.bound());
    }

    #[test]
    fn a_proxy_without_workers_has_nothing_bound() {
        let l = Listening::default();
        assert!(!l.bound());
    }
}
