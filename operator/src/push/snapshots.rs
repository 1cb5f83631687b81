//! Serialised, versioned configs per audience, each whole and as deltas
//! over the versions its streams were last sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sluice_proto::config::Config;
use sluice_proto::delta;
use sluice_proto::mesh::Snapshot;
use tokio::sync::watch;
use tracing::warn;

use crate::mesh::{Audience, ConfigKey};

/// One audience's snapshot, shared by reference by every stream that sends it.
pub type SharedSnapshot = Arc<Versioned>;

/// One config's snapshot: the whole document, and what changed in it since
/// the versions that streams of its audiences were sent before it.
#[derive(Debug)]
pub struct Versioned {
    /// The whole document.
    pub whole: Snapshot,
    /// By base version, the delta over it.
    deltas: BTreeMap<String, Delta>,
}

/// What changed since one base version: ranges of the whole document, so
/// that a delta no stream asks for costs no copy, encoded once by the first
/// stream that sends it and shared by the others.
#[derive(Debug)]
struct Delta {
    changes: Vec<delta::Change>,
    encoded: OnceLock<Bytes>,
}

impl Versioned {
    fn whole(config: &Config) -> Versioned {
        // A Config holds strings, numbers and lists: serialising it
        // cannot fail.
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        let version = format!("{:016x}", fnv1a(&bytes));
        Versioned {
            whole: Snapshot {
                version,
                config_json: Bytes::from(bytes),
                base: String::new(),
            },
            deltas: BTreeMap::new(),
        }
    }

    /// The version.
    pub fn version(&self) -> &str {
        &self.whole.version
    }

    /// What a stream last sent `sent` gets: the delta over it when there
    /// is one, else the whole document.
    pub fn for_stream(&self, sent: Option<&str>) -> Snapshot {
        let Some((base, delta)) = sent.and_then(|v| self.deltas.get_key_value(v)) else {
            return self.whole.clone();
        };
        let encoded = delta
            .encoded
            .get_or_init(|| delta::encode(&self.whole.config_json, &delta.changes).into());
        Snapshot {
            version: self.whole.version.clone(),
            config_json: encoded.clone(),
            base: base.clone(),
        }
    }

    /// Notes what changed since `base`, unless it is this version or that
    /// is known.
    fn add_delta(&mut self, base: &Versioned) {
        let base_version = base.version();
        if base_version == self.version() || self.deltas.contains_key(base_version) {
            return;
        }
        match delta::changes(&base.whole.config_json, &self.whole.config_json) {
            Ok(changes) => {
                let delta = Delta {
                    changes,
                    encoded: OnceLock::new(),
                };
                self.deltas.insert(base_version.to_owned(), delta);
            }
            // Both are serialised Configs; should it ever fail, streams
            // get the whole document.
            Err(e) => warn!(version = %self.version(), "no delta over {base_version}: {e}"),
        }
    }
}

/// Every distinct config's snapshot, and which one each sidecar gets.
#[derive(Debug, Default, Clone)]
pub struct SnapshotSet {
    by_key: BTreeMap<ConfigKey, SharedSnapshot>,
    sidecars: BTreeMap<Audience, ConfigKey>,
}

impl SnapshotSet {
    /// Serialises `configs`; the version is a hash of the bytes, so the same
    /// config always has the same version, across operator restarts too
    /// (a reconnecting proxy that already runs it just ACKs). Each config
    /// that changed gets a delta over what `previous` gave its audiences:
    /// a gateway its own key's, a sidecar the key it had there.
    pub fn build(
        configs: &BTreeMap<ConfigKey, Config>,
        sidecars: &BTreeMap<Audience, ConfigKey>,
        previous: &SnapshotSet,
    ) -> SnapshotSet {
        let mut built: BTreeMap<ConfigKey, Versioned> = configs
            .iter()
            .map(|(k, c)| (k.clone(), Versioned::whole(c)))
            .collect();
        // (key now, key before): a few distinct pairs however many pods.
        let gateways = configs
            .keys()
            .filter(|k| matches!(k, ConfigKey::Gateway(_)))
            .map(|k| (k, k));
        let moved = sidecars
            .iter()
            .filter_map(|(audience, key)| Some((key, previous.sidecars.get(audience)?)));
        let pairs: BTreeSet<(&ConfigKey, &ConfigKey)> = gateways.chain(moved).collect();
        for (key, before) in pairs {
            if let (Some(now), Some(before)) = (built.get_mut(key), previous.by_key.get(before)) {
                now.add_delta(before);
            }
        }
        SnapshotSet {
            by_key: built.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
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
                .all(|((a, x), (b, y))| a == b && x.version() == y.version())
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

    fn config(json: &str) -> Config {
        serde_json::from_str(json).expect("config")
    }

    /// A config with a backend on `port` and the identity table of a
    /// mesh of 100 pods.
    fn config_on(port: u16) -> Config {
        let pods: Vec<String> = (0..100).map(|i| format!("\"10.0.0.{i}\"")).collect();
        config(&format!(
            r#"{{"backends":[{{"name":"a","endpoints":["127.0.0.1:{port}"]}}],
            "mesh_tcp":{{"workloads":{{"spiffe://cluster.local/ns/h/sa/x":[{}]}}}}}}"#,
            pods.join(",")
        ))
    }

    #[test]
    fn versions_follow_content() {
        let mut configs = BTreeMap::new();
        let mut sidecars = BTreeMap::new();
        configs.insert(ConfigKey::Gateway(GatewayInfra::Shared), Config::default());
        let none = SnapshotSet::default();
        let a = SnapshotSet::build(&configs, &sidecars, &none);
        let b = SnapshotSet::build(&configs, &sidecars, &a);
        assert!(a.same_versions(&b));
        let snapshots = Snapshots::default();
        assert!(snapshots.publish(a));
        assert!(!snapshots.publish(b), "same content is not re-published");
        let pod = Audience::Sidecar("h".into(), "p".into());
        configs.insert(ConfigKey::Sidecar("h".into(), 1), Config::default());
        sidecars.insert(pod.clone(), ConfigKey::Sidecar("h".into(), 1));
        assert!(snapshots.publish(SnapshotSet::build(&configs, &sidecars, &none)));
        assert!(snapshots.current().get(&pod).is_some());
    }

    #[test]
    fn a_changed_gateway_config_goes_as_a_delta_to_streams_that_had_the_old_one() {
        let key = ConfigKey::Gateway(GatewayInfra::Shared);
        let gateway = Audience::Gateway(GatewayInfra::Shared);
        let sidecars = BTreeMap::new();
        let one = SnapshotSet::build(
            &BTreeMap::from([(key.clone(), config_on(1))]),
            &sidecars,
            &SnapshotSet::default(),
        );
        let two = SnapshotSet::build(&BTreeMap::from([(key, config_on(2))]), &sidecars, &one);
        let (v1, v2) = (
            one.get(&gateway).expect("one"),
            two.get(&gateway).expect("two"),
        );
        let delta = v2.for_stream(Some(v1.version()));
        assert_eq!(delta.base, v1.version());
        assert_eq!(delta.version, v2.version());
        assert!(!String::from_utf8_lossy(&delta.config_json).contains("mesh_tcp"));
        // Encoded once: the next stream shares the bytes.
        let again = v2.for_stream(Some(v1.version()));
        assert_eq!(again.config_json.as_ptr(), delta.config_json.as_ptr());
        let rebuilt = delta::apply(&v1.whole.config_json, &delta.config_json).expect("apply");
        assert_eq!(config(&String::from_utf8_lossy(&rebuilt)), config_on(2));
        // A new stream, or one sent something else, gets it whole.
        assert!(v2.for_stream(None).base.is_empty());
        assert!(v2.for_stream(Some("0123456789abcdef")).base.is_empty());
    }

    #[test]
    fn a_sidecar_moved_to_another_config_gets_a_delta_over_the_one_it_had() {
        let pod = Audience::Sidecar("h".into(), "p".into());
        let (k1, k2) = (
            ConfigKey::Sidecar("h".into(), 1),
            ConfigKey::Sidecar("h".into(), 2),
        );
        let one = SnapshotSet::build(
            &BTreeMap::from([(k1.clone(), config_on(1))]),
            &BTreeMap::from([(pod.clone(), k1)]),
            &SnapshotSet::default(),
        );
        let two = SnapshotSet::build(
            &BTreeMap::from([(k2.clone(), config_on(2))]),
            &BTreeMap::from([(pod.clone(), k2)]),
            &one,
        );
        let v1 = one.get(&pod).expect("one").version().to_owned();
        assert_eq!(two.get(&pod).expect("two").for_stream(Some(&v1)).base, v1);
    }
}
