//! Passes that read a Rollout older than this process's own last write to it.
//!
//! The controller reads Rollouts from its watch cache, which lags the API
//! server. A pass that takes a request annotation and then writes the
//! status makes two versions; the watch event of the first can wake the
//! next pass before the second has reached the cache. That pass sees the
//! status from before the decision just written and would act on it: a
//! `promote --full` paused again at its step, an abort resumed. So each
//! pass that writes a Rollout records the versions its writes left behind,
//! and a pass that reads one of them waits for the cache instead of acting.
//! Versions are compared for equality only, as the API conventions allow.

use super::by_uid::ByUid;
use super::gone::Forget;

/// The versions of each Rollout (by UID) that this process's writes have
/// replaced and its cache has not yet moved past.
#[derive(Debug, Default)]
pub struct Written {
    superseded: ByUid<Vec<String>>,
}

impl Written {
    /// Whether version `read` of Rollout `uid` is one this process has
    /// already written past. A version not recorded is fresh (the cache
    /// caught up, or someone else wrote since), and the record goes.
    pub fn superseded(&self, uid: &str, read: &str) -> bool {
        let mut map = self.superseded.lock();
        match map.get(uid) {
            Some(versions) if versions.iter().any(|v| v == read) => true,
            Some(_) => {
                map.remove(uid);
                false
            }
            None => false,
        }
    }

    /// Records one pass over version `read` of Rollout `uid` whose writes to
    /// the Rollout produced `wrote`, in order: every version but the last
    /// is superseded. A pass that wrote nothing records nothing.
    pub fn record(&self, uid: &str, read: &str, wrote: &[String]) {
        let Some((_, replaced)) = wrote.split_last() else {
            return;
        };
        let mut versions = Vec::with_capacity(wrote.len());
        versions.push(read.to_owned());
        versions.extend(replaced.iter().cloned());
        self.superseded.lock().insert(uid.to_owned(), versions);
    }

    /// Whether no Rollout has a record.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.superseded.lock().is_empty()
    }

    /// Drops the records of Rollouts that are gone.
    pub fn forget(&self, gone: &Forget) {
        self.superseded.forget(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrote(versions: &[&str]) -> Vec<String> {
        versions.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn a_pass_woken_by_the_first_of_two_writes_waits_for_the_second() {
        let w = Written::default();
        // Read 10; took the request (11), wrote the status (12).
        w.record("ro", "10", &wrote(&["11", "12"]));
        assert!(w.superseded("ro", "11"));
        assert!(w.superseded("ro", "10"));
        assert!(!w.superseded("ro", "12"));
    }

    #[test]
    fn the_last_write_seen_in_the_cache_ends_the_wait() {
        let w = Written::default();
        w.record("ro", "10", &wrote(&["11", "12"]));
        assert!(!w.superseded("ro", "12"));
        assert!(w.is_empty());
        // Nothing is held against the versions of the record any more.
        assert!(!w.superseded("ro", "11"));
    }

    #[test]
    fn a_newer_version_written_by_someone_else_is_fresh() {
        let w = Written::default();
        w.record("ro", "10", &wrote(&["11"]));
        assert!(!w.superseded("ro", "13"));
        assert!(w.is_empty());
    }

    #[test]
    fn a_pass_that_wrote_nothing_holds_nothing_against_its_version() {
        let w = Written::default();
        w.record("ro", "10", &[]);
        assert!(!w.superseded("ro", "10"));
        assert!(w.is_empty());
    }

    #[test]
    fn records_are_per_rollout() {
        let w = Written::default();
        w.record("a", "10", &wrote(&["11"]));
        assert!(!w.superseded("b", "10"));
        assert!(w.superseded("a", "10"));
    }

    #[test]
    fn a_later_pass_replaces_the_record_of_an_earlier_one() {
        let w = Written::default();
        w.record("ro", "10", &wrote(&["11"]));
        w.record("ro", "11", &wrote(&["12", "13"]));
        assert!(w.superseded("ro", "12"));
        assert!(!w.superseded("ro", "13"));
    }
}
