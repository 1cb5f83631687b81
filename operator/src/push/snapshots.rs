//! Serialised, versioned configs per audience.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use sluice_proto::config::Config;
use sluice_proto::mesh::Snapshot;
use tokio::sync::watch;

use crate::mesh::{Audience, ConfigKey};

/// One audience's snapshot, shared by reference by every stream that sends it.
pub type SharedSnapshot = Arc<Snapshot>;

/// Every distinct config's snapshot, and which one each sidecar gets.
#[derive(Debug, Default, Clone)]
pub struct SnapshotSet {
    by_key: BTreeMap<ConfigKey, SharedSnapshot>,
    sidecars: BTreeMap<Audience, ConfigKey>,
}

impl SnapshotSet {
    /// Serialises `configs`; the version is a hash of the bytes, so the same
    /// config always has the same version, across operator restarts too
    /// (a reconnecting proxy that already runs it just ACKs).
    pub fn build(
        configs: &BTreeMap<ConfigKey, Config>,
        sidecars: &BTreeMap<Audience, ConfigKey>,
    ) -> SnapshotSet {
        let by_key = configs
            .iter()
            .map(|(a, c)| {
                // A Config holds strings, numbers and lists: serialising
                // it cannot fail.
                let bytes = serde_json::to_vec(c).unwrap_or_default();
                let version = format!("{:016x}", fnv1a(&bytes));
                (
                    a.clone(),
                    Arc::new(Snapshot {
                        version,
                        config_json: Bytes::from(bytes),
                    }),
                )
            })
            .collect();
        SnapshotSet {
            by_key,
            sidecars: sidecars.clone(),
        }
    }

    /// The snapshot for `audience`, once it has one.
    pub fn get(&self, audience: &Audience) -> Option<&SharedSnapshot> {
        match audience {
            Audience::Gateway(infra) => self.by_key.get(&ConfigKey::Gateway(infra.clone())),
            sidecar => self.by_key.get(self.sidecars.get(sidecar)?),
        }
    }

    /// Whether both sets give every audience the same versions.
    pub fn same_versions(&self, other: &SnapshotSet) -> bool {
        self.sidecars == other.sidecars
            && self.by_key.len() == other.by_key.len()
            && self
                .by_key
                .iter()
                .zip(other.by_key.iter())
                .all(|((a, x), (b, y))| a == b && x.version == y.version)
    }
}

/// 64-bit FNV-1a: a stable content hash for versions (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The published set: the computing loop sends, every stream watches.
#[derive(Debug, Clone)]
pub struct Snapshots {
    tx: Arc<watch::Sender<Arc<SnapshotSet>>>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            tx: Arc::new(watch::channel(Arc::new(SnapshotSet::default())).0),
        }
    }
}

impl Snapshots {
    /// Publishes `set` when any version changed; returns whether it did.
    pub fn publish(&self, set: SnapshotSet) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.same_versions(&set) {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        })
    }

    /// Notified on every published change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SnapshotSet>> {
        self.tx.subscribe()
    }

    /// The current set.
    pub fn current(&self) -> Arc<SnapshotSet> {
        self.tx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::GatewayInfra;

    #[test]
    fn versions_follow_content() {
        let mut configs = BTreeMap::new();
        let mut sidecars = BTreeMap::new();
        configs.insert(ConfigKey::Gateway(GatewayInfra::Shared), Config::default());
        let a = SnapshotSet::build(&configs, &sidecars);
        let b = SnapshotSet::build(&configs, &sidecars);
        assert!(a.same_versions(&b));
        let snapshots = Snapshots::default();
        assert!(snapshots.publish(a));
        assert!(!snapshots.publish(b), "same content is not re-published");
        let pod = Audience::Sidecar("h".into(), "p".into());
        configs.insert(ConfigKey::Sidecar("h".into(), 1), Config::default());
        sidecars.insert(pod.clone(), ConfigKey::Sidecar("h".into(), 1));
        assert!(snapshots.publish(SnapshotSet::build(&configs, &sidecars)));
        assert!(snapshots.current().get(&pod).is_some());
    }
}
