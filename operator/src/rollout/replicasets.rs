//! The Rollouts' ReplicaSets, kept from one watch and indexed by Rollout.
//!
//! A reconcile reads its ReplicaSets here instead of listing them: a list
//! per reconcile is an API call per Rollout per pass, which is what keeps
//! the API server busy at thousands of Rollouts. The index is updated
//! before the controller hears of a change, so the reconcile that a
//! ReplicaSet's change wakes always sees that change.
//!
//! Each ReplicaSet is held as its JSON and decoded when read. Decoded,
//! k8s-openapi's types hold a pod template with every optional field
//! inline and a B-tree node per map of labels: a heap profile at 2,000
//! Rollouts put the index at a quarter of the operator's heap, about 9 KB
//! per ReplicaSet. The index holds every revision of every Rollout, and a
//! reconcile reads the two or three of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::ROLLOUT_LABEL;
use crate::stored::Stored;

/// A Rollout by namespace and name.
type Key = (String, String);

/// The index: every watched ReplicaSet, by the Rollout it belongs to.
#[derive(Clone, Default)]
pub struct ReplicaSets {
    inner: Arc<RwLock<Index>>,
}

#[derive(Default)]
struct Index {
    by_rollout: HashMap<Key, BTreeMap<String, Held>>,
    /// Which Rollout each ReplicaSet (namespace, name) is filed under, so
    /// that a relabelled one moves rather than stays twice.
    filed: HashMap<Key, Key>,
    /// A relist being gathered (between `Init` and `InitDone`).
    relist: Option<Box<Index>>,
}

/// One ReplicaSet as held: its JSON.
struct Held(Box<[u8]>);

impl Held {
    fn new(rs: &ReplicaSet) -> Option<Held> {
        match serde_json::to_vec(rs) {
            Ok(json) => Some(Held(json.into_boxed_slice())),
            Err(e) => {
                warn!(replicaset = rs.name_any(), "cannot hold: {e}");
                None
            }
        }
    }

    fn decode(&self) -> Option<ReplicaSet> {
        serde_json::from_slice(&self.0)
            .map_err(|e| warn!("cannot decode a held ReplicaSet: {e}"))
            .ok()
    }
}

impl Index {
    fn insert(&mut self, rs: &ReplicaSet) {
        let Some(rollout) = rollout_of(rs) else {
            return self.remove(rs);
        };
        let Some(held) = Held::new(rs) else {
            return self.remove(rs);
        };
        let at = (rs.namespace().unwrap_or_default(), rs.name_any());
        if let Some(old) = self.filed.insert(at.clone(), rollout.clone())
            && old != rollout
        {
            self.unfile(&old, &at.1);
        }
        self.by_rollout
            .entry(rollout)
            .or_default()
            .insert(at.1, held);
    }

    fn remove(&mut self, rs: &ReplicaSet) {
        let at = (rs.namespace().unwrap_or_default(), rs.name_any());
        if let Some(rollout) = self.filed.remove(&at) {
            self.unfile(&rollout, &at.1);
        }
    }

    fn unfile(&mut self, rollout: &Key, name: &str) {
        if let Some(sets) = self.by_rollout.get_mut(rollout) {
            sets.remove(name);
            if sets.is_empty() {
                self.by_rollout.remove(rollout);
            }
        }
    }
}

fn rollout_of(rs: &ReplicaSet) -> Option<Key> {
    Some((rs.namespace()?, rs.labels().get(ROLLOUT_LABEL)?.to_owned()))
}

impl ReplicaSets {
    /// The ReplicaSets of Rollout `name` in `namespace`, by name.
    pub fn of(&self, namespace: &str, name: &str) -> Vec<ReplicaSet> {
        let index = self.inner.read().unwrap_or_else(|e| e.into_inner());
        index
            .by_rollout
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|sets| sets.values().filter_map(Held::decode).collect())
            .unwrap_or_default()
    }

    /// Takes in one watch event.
    pub fn apply(&self, event: &Event<ReplicaSet>) {
        let mut index = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(rs) => index.insert(rs),
            Event::Delete(rs) => index.remove(rs),
            Event::Init => index.relist = Some(Box::default()),
            Event::InitApply(rs) => match index.relist.as_mut() {
                Some(relist) => relist.insert(rs),
                None => index.insert(rs),
            },
            Event::InitDone => {
                if let Some(relist) = index.relist.take() {
                    index.by_rollout = relist.by_rollout;
                    index.filed = relist.filed;
                }
            }
        }
    }

    /// How many ReplicaSets are held.
    pub fn len(&self) -> usize {
        let index = self.inner.read().unwrap_or_else(|e| e.into_inner());
        index.filed.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Watches the Rollouts' ReplicaSets into `index`, sending each one that
/// changed to `touched` once the index holds the change, and flags `synced`
/// after the first complete list.
pub async fn watch(
    api: Api<ReplicaSet>,
    index: ReplicaSets,
    touched: mpsc::Sender<ReplicaSet>,
    synced: watch::Sender<bool>,
) {
    let config = watcher::Config::default().labels(ROLLOUT_LABEL);
    let mut events = watcher::watcher(api, config)
        .default_backoff()
        .modify(ReplicaSet::slim)
        .boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!("watching ReplicaSets: {e}");
                continue;
            }
        };
        index.apply(&event);
        let changed = match event {
            Event::Apply(rs) | Event::InitApply(rs) | Event::Delete(rs) => Some(rs),
            Event::Init => None,
            Event::InitDone => {
                synced.send_replace(true);
                None
            }
        };
        if let Some(rs) = changed
            && touched.send(rs).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn rs(ns: &str, name: &str, rollout: Option<&str>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: rollout.map(|r| [(ROLLOUT_LABEL.to_owned(), r.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(index: &ReplicaSets, ns: &str, rollout: &str) -> Vec<String> {
        index.of(ns, rollout).iter().map(|r| r.name_any()).collect()
    }

    #[test]
    fn replicasets_are_found_by_their_rollout_and_namespace() {
        let index = ReplicaSets::default();
        index.apply(&Event::Apply(rs("a", "web-1", Some("web"))));
        index.apply(&Event::Apply(rs("a", "web-2", Some("web"))));
        index.apply(&Event::Apply(rs("b", "web-3", Some("web"))));
        index.apply(&Event::Apply(rs("a", "api-1", Some("api"))));
        assert_eq!(names(&index, "a", "web"), ["web-1", "web-2"]);
        assert_eq!(names(&index, "b", "web"), ["web-3"]);
        assert!(names(&index, "c", "web").is_empty());
    }

    #[test]
    fn a_held_replicaset_reads_back_as_it_was_watched() {
        let mut watched = rs("a", "web-1", Some("web"));
        watched.metadata.annotations =
            Some([("sluice.dev/revision".to_owned(), "3".to_owned())].into());
        watched.spec = Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(2),
            template: Some(k8s_openapi::api::core::v1::PodTemplateSpec {
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    containers: vec![k8s_openapi::api::core::v1::Container {
                        name: "app".into(),
                        image: Some("demo:blue".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let index = ReplicaSets::default();
        index.apply(&Event::Apply(watched.clone()));
        assert_eq!(index.of("a", "web"), [watched]);
    }

    #[test]
    fn a_deleted_or_relabelled_replicaset_leaves_its_old_rollout() {
        let index = ReplicaSets::default();
        index.apply(&Event::Apply(rs("a", "web-1", Some("web"))));
        index.apply(&Event::Apply(rs("a", "web-2", Some("web"))));
        index.apply(&Event::Apply(rs("a", "web-2", Some("api"))));
        assert_eq!(names(&index, "a", "web"), ["web-1"]);
        assert_eq!(names(&index, "a", "api"), ["web-2"]);
        index.apply(&Event::Delete(rs("a", "web-1", Some("web"))));
        index.apply(&Event::Apply(rs("a", "web-2", None)));
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_complete() {
        let index = ReplicaSets::default();
        index.apply(&Event::Apply(rs("a", "web-1", Some("web"))));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(rs("a", "web-2", Some("web"))));
        assert_eq!(names(&index, "a", "web"), ["web-1"], "still the old list");
        index.apply(&Event::InitDone);
        assert_eq!(
            names(&index, "a", "web"),
            ["web-2"],
            "web-1 went while unwatched"
        );
        assert_eq!(index.len(), 1);
    }
}
