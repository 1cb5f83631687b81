//! Requests a pass took from a Rollout and then could not carry out.
//!
//! A pass removes the request annotation before acting on it, so that a
//! stale copy of the Rollout cannot act on it twice. A pass that fails
//! after that (the API server refused a route or ReplicaSet write) would
//! drop the request: the user's `promote` is gone while the Rollout stays
//! paused. The request is kept here instead, in memory, and the next pass
//! (the error policy's retry) acts on it unless a newer request has come.
//! Not written back to the Rollout: that write would wake the next pass at
//! once and turn a lasting refusal into a loop of passes.

use sluice_crds::rollout::Request;

use super::by_uid::ByUid;
use super::gone::Forget;

/// The request each Rollout (by UID) is owed.
#[derive(Debug, Default)]
pub struct Unsettled {
    by_uid: ByUid<Request>,
}

impl Unsettled {
    /// Keeps `request` of Rollout `uid` for its next pass.
    pub fn keep(&self, uid: &str, request: Request) {
        self.by_uid.lock().insert(uid.to_owned(), request);
    }

    /// The request the next pass of Rollout `uid` acts on: `taken` (just
    /// taken from the annotation, the newer) if there is one, else the one
    /// kept. Either way nothing stays kept.
    pub fn next(&self, uid: &str, taken: Option<Request>) -> Option<Request> {
        let kept = self.by_uid.lock().remove(uid);
        taken.or(kept)
    }

    /// Drops the records of Rollouts that are gone.
    pub fn forget(&self, gone: &Forget) {
        self.by_uid.forget(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_request_is_acted_on_by_the_next_pass_only() {
        let u = Unsettled::default();
        u.keep("ro", Request::Promote);
        assert_eq!(u.next("ro", None), Some(Request::Promote));
        assert_eq!(u.next("ro", None), None);
    }

    #[test]
    fn a_newer_request_replaces_the_kept_one() {
        let u = Unsettled::default();
        u.keep("ro", Request::Promote);
        assert_eq!(u.next("ro", Some(Request::Abort)), Some(Request::Abort));
        assert_eq!(u.next("ro", None), None);
    }

    #[test]
    fn kept_requests_are_per_rollout() {
        let u = Unsettled::default();
        u.keep("a", Request::PromoteFull);
        assert_eq!(u.next("b", None), None);
        assert_eq!(u.next("a", None), Some(Request::PromoteFull));
    }
}
