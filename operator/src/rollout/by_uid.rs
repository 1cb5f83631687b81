//! State the Rollout controller keeps between passes, per Rollout UID.
//!
//! Passes of different Rollouts run at once (see `CONCURRENCY`), so each
//! such record sits behind one lock, held for a lookup or an update and
//! never across an await.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::gone::Forget;

/// A map from Rollout UID to `T`, shared by the passes.
#[derive(Debug)]
pub struct ByUid<T> {
    map: Mutex<HashMap<String, T>>,
}

impl<T> Default for ByUid<T> {
    fn default() -> Self {
        ByUid {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> ByUid<T> {
    /// The map, for one short lookup or update.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, T>> {
        // The map holds no invariant a panicking holder could break.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the records of Rollouts that are gone.
    pub fn forget(&self, gone: &Forget) {
        self.lock().retain(|uid, _| !gone.covers(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_rollouts_that_are_gone_are_dropped() {
        let m: ByUid<u32> = ByUid::default();
        m.lock().extend([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 3),
        ]);
        m.forget(&Forget::One("a".into()));
        assert_eq!(m.lock().len(), 2);
        m.forget(&Forget::AllBut(["b".to_owned()].into()));
        assert_eq!(m.lock().keys().collect::<Vec<_>>(), ["b"]);
    }
}
