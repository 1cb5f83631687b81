//! Which Rollouts are gone, so that what the controller keeps per Rollout
//! UID ([`super::by_uid`]) does not outlive them.
//!
//! A deleted Rollout's watch event names it. A delete missed while the
//! watch was down shows instead at the re-list that follows: every UID it
//! did not list is gone. Without this, each Rollout deleted after a failed
//! pass, a kept request or a write would leave its record behind for the
//! life of the process.

use std::collections::HashSet;

use kube::ResourceExt;
use kube::runtime::watcher::Event;
use sluice_crds::Rollout;

/// The records to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    /// This Rollout's (it was deleted).
    One(String),
    /// Every Rollout's but these (a complete list).
    AllBut(HashSet<String>),
}

/// Follows the watch's events to tell which Rollouts are gone.
#[derive(Debug, Default)]
pub struct Gone {
    /// The UIDs of a re-list under way.
    listing: Option<HashSet<String>>,
}

impl Gone {
    /// What `event` says is gone, if anything.
    pub fn follow(&mut self, event: &Event<Rollout>) -> Option<Forget> {
        match event {
            Event::Delete(r) => r.uid().map(Forget::One),
            Event::Init => {
                self.listing = Some(HashSet::new());
                None
            }
            Event::InitApply(r) => {
                if let (Some(listing), Some(uid)) = (&mut self.listing, r.uid()) {
                    listing.insert(uid);
                }
                None
            }
            Event::InitDone => self.listing.take().map(Forget::AllBut),
            Event::Apply(_) => None,
        }
    }
}

impl Forget {
    /// Whether the record of Rollout `uid` goes.
    pub fn covers(&self, uid: &str) -> bool {
        match self {
            Forget::One(gone) => gone == uid,
            Forget::AllBut(live) => !live.contains(uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(uid: &str) -> Rollout {
        let spec = serde_json::from_value(serde_json::json!({
            "selector": {}, "template": {}, "strategy": {"canary": {"steps": []}}
        }))
        .expect("spec");
        let mut r = Rollout::new("ro", spec);
        r.metadata.uid = Some(uid.into());
        r
    }

    #[test]
    fn a_deleted_rollout_is_forgotten() {
        let mut g = Gone::default();
        assert_eq!(
            g.follow(&Event::Delete(rollout("a"))),
            Some(Forget::One("a".into()))
        );
        assert_eq!(g.follow(&Event::Apply(rollout("b"))), None);
    }

    #[test]
    fn a_relist_forgets_every_rollout_it_did_not_list() {
        let mut g = Gone::default();
        assert_eq!(g.follow(&Event::Init), None);
        assert_eq!(g.follow(&Event::InitApply(rollout("a"))), None);
        assert_eq!(g.follow(&Event::InitApply(rollout("b"))), None);
        let forget = g.follow(&Event::InitDone).expect("a complete list");
        assert!(!forget.covers("a") && !forget.covers("b"));
        assert!(forget.covers("deleted-while-the-watch-was-down"));
        // The next re-list starts afresh.
        g.follow(&Event::Init);
        let forget = g.follow(&Event::InitDone).expect("an empty list");
        assert!(forget.covers("a"));
    }
}
