//! How long a Rollout whose pass failed waits for its next one.
//!
//! A refusal that lasts (an admission policy, missing RBAC, a quota) would
//! otherwise cost a failed pass and a Warning event at a fixed rate for as
//! long as it lasts. The wait doubles with each failure in a row, from
//! half a second (a conflict is retried at once, in effect) up to 30
//! seconds, as kube-runtime's and client-go's work queues back off; a pass
//! that succeeds starts it over. Other events (a ReplicaSet, the Rollout
//! edited) still wake the Rollout sooner.

use std::time::Duration;

use super::by_uid::ByUid;
use super::gone::Forget;

/// The wait after a first failure.
const FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two failed passes.
const LONGEST: Duration = Duration::from_secs(30);

/// Failures in a row, per Rollout UID.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: ByUid<u32>,
}

impl Backoff {
    /// Counts a failed pass of Rollout `uid`: how long to wait for the next.
    pub fn failed(&self, uid: &str) -> Duration {
        let mut map = self.failures.lock();
        let failures = map.entry(uid.to_owned()).or_insert(0);
        // Past 2^6 the wait is at its cap anyway.
        let wait = FIRST.saturating_mul(1 << (*failures).min(6)).min(LONGEST);
        *failures = failures.saturating_add(1);
        wait
    }

    /// A pass of Rollout `uid` succeeded: its next failure starts over.
    pub fn succeeded(&self, uid: &str) {
        self.failures.lock().remove(uid);
    }

    /// Drops the records of Rollouts that are gone.
    pub fn forget(&self, gone: &Forget) {
        self.failures.forget(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(b: &Backoff, uid: &str, n: usize) -> Vec<u64> {
        (0..n).map(|_| b.failed(uid).as_millis() as u64).collect()
    }

    #[test]
    fn each_failure_in_a_row_doubles_the_wait_up_to_thirty_seconds() {
        let b = Backoff::default();
        assert_eq!(
            waits(&b, "ro", 9),
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
    }

    #[test]
    fn a_pass_that_succeeds_starts_the_waits_over() {
        let b = Backoff::default();
        waits(&b, "ro", 4);
        b.succeeded("ro");
        assert_eq!(waits(&b, "ro", 2), [500, 1_000]);
    }

    #[test]
    fn rollouts_back_off_apart() {
        let b = Backoff::default();
        waits(&b, "failing", 5);
        assert_eq!(waits(&b, "other", 1), [500]);
    }

    #[test]
    fn a_rollout_failing_for_days_stays_at_the_cap() {
        let b = Backoff::default();
        let last = waits(&b, "ro", 10_000).pop();
        assert_eq!(last, Some(30_000));
    }
}
