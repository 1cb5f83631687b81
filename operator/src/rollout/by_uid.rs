//! State the Rollout controller keeps between passes, per Rollout UID.
//!
//! Passes of different Rollouts run at once (see `CONCURRENCY`), so each
//! such record sits behind one lock, held for a lookup or an update and
//! never across an await.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

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
}
