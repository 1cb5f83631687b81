//! The proxies connected right now, what each was sent and what it ACKed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_proto::mesh::ProxyIdentity;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mesh::{Audience, GatewayInfra};
use crate::metrics::{Metrics, RoleLabel};

/// A connected proxy.
#[derive(Debug, Clone)]
pub struct ProxyState {
    /// Who it said it is.
    pub identity: ProxyIdentity,
    /// Which snapshot it gets.
    pub audience: Audience,
    /// Its address as seen by the server.
    pub remote: Option<SocketAddr>,
    /// The version last sent, and when.
    pub sent: Option<(String, Instant)>,
    /// The version last ACKed.
    pub acked: Option<String>,
    /// The version last NACKed, with the proxy's error.
    pub nacked: Option<(String, String)>,
}

impl ProxyState {
    /// `namespace/pod`.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.identity.namespace, self.identity.pod_name)
    }
}

/// How far the connected gateway proxies are with one snapshot version,
/// summed up without copying their states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayProgress {
    /// Gateway proxies connected.
    pub connected: usize,
    /// Whether any of them ACKed the version.
    pub acked: bool,
    /// One that NACKed it: `namespace/pod` and its error.
    pub refused: Option<(String, String)>,
}

/// Who is connected: one entry per stream, and per sidecar pod how many
/// of its streams are open (a reconnect briefly overlaps the old stream).
#[derive(Debug, Default)]
struct Connected {
    next_id: u64,
    streams: HashMap<u64, ProxyState>,
    sidecar_pods: BTreeMap<(String, String), usize>,
}

/// Shared by every stream.
///
/// Two change signals, so that neither watcher walks every proxy on every
/// ACK: the snapshot loop needs only the set of sidecar pods; the status
/// writer needs the gateways' ACK state.
#[derive(Debug)]
pub struct Registry {
    connected: Mutex<Connected>,
    metrics: Arc<Metrics>,
    /// Bumped when a sidecar pod gains its first stream or loses its last.
    sidecar_set: watch::Sender<u64>,
    /// Bumped when a gateway proxy connects, disconnects, ACKs or NACKs.
    gateways: watch::Sender<u64>,
}

fn role(a: &Audience) -> RoleLabel {
    RoleLabel {
        role: match a {
            Audience::Gateway(_) => "gateway".into(),
            Audience::Sidecar(..) => "sidecar".into(),
        },
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            connected: Mutex::new(Connected::default()),
            metrics,
            sidecar_set: watch::channel(0).0,
            gateways: watch::channel(0).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Connected) -> R) -> R {
        let mut guard = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn bump(signal: &watch::Sender<u64>) {
        signal.send_modify(|n| *n += 1);
    }

    /// Watches the set of connected sidecar pods.
    pub fn subscribe_sidecar_set(&self) -> watch::Receiver<u64> {
        self.sidecar_set.subscribe()
    }

    /// Watches the gateway proxies: connections, ACKs and NACKs.
    pub fn subscribe_gateways(&self) -> watch::Receiver<u64> {
        self.gateways.subscribe()
    }

    /// Records a new stream; the id names it from now on.
    pub fn connect(
        &self,
        identity: ProxyIdentity,
        audience: Audience,
        remote: Option<SocketAddr>,
    ) -> u64 {
        self.metrics
            .proxies_connected
            .get_or_create(&role(&audience))
            .inc();
        let state = ProxyState {
            identity,
            audience,
            remote,
            sent: None,
            acked: None,
            nacked: None,
        };
        info!(pod = %state.pod(), audience = ?state.audience, "proxy connected");
        let audience = state.audience.clone();
        let (id, new_pod) = self.with(|c| {
            c.next_id += 1;
            let new_pod = match &state.audience {
                Audience::Sidecar(ns, pod) => {
                    let n = c.sidecar_pods.entry((ns.clone(), pod.clone())).or_default();
                    *n += 1;
                    *n == 1
                }
                Audience::Gateway(_) => false,
            };
            c.streams.insert(c.next_id, state);
            (c.next_id, new_pod)
        });
        self.signal(&audience, new_pod);
        id
    }

    /// Tells the watcher that cares: the status writer when a gateway
    /// proxy came or went, the snapshot loop when a sidecar pod did (a
    /// sidecar's second stream moves neither).
    fn signal(&self, audience: &Audience, pod_set_moved: bool) {
        match audience {
            Audience::Gateway(_) => Registry::bump(&self.gateways),
            Audience::Sidecar(..) if pod_set_moved => Registry::bump(&self.sidecar_set),
            Audience::Sidecar(..) => {}
        }
    }

    /// Records a sent snapshot.
    pub fn sent(&self, id: u64, version: &str) {
        self.metrics.pushes.inc();
        self.with(|c| {
            if let Some(p) = c.streams.get_mut(&id) {
                p.sent = Some((version.to_owned(), Instant::now()));
            }
        });
    }

    /// Records an ACK.
    pub fn ack(&self, id: u64, version: String) {
        self.metrics.acks.inc();
        let gateway = self.with(|c| {
            let p = c.streams.get_mut(&id)?;
            if let Some((v, at)) = &p.sent
                && *v == version
            {
                self.metrics
                    .push_ack_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            p.acked = Some(version);
            Some(matches!(p.audience, Audience::Gateway(_)))
        });
        if gateway == Some(true) {
            Registry::bump(&self.gateways);
        }
    }

    /// Records a NACK: logged and counted; the proxy keeps its old config.
    pub fn nack(&self, id: u64, version: String, error: String) {
        self.metrics.nacks.inc();
        let gateway = self.with(|c| {
            let p = c.streams.get_mut(&id)?;
            warn!(pod = %p.pod(), %version, %error, "proxy refused config snapshot (NACK); it keeps serving its previous config");
            p.nacked = Some((version, error));
            Some(matches!(p.audience, Audience::Gateway(_)))
        });
        if gateway == Some(true) {
            Registry::bump(&self.gateways);
        }
    }

    /// Forgets a closed stream.
    pub fn disconnect(&self, id: u64) {
        let removed = self.with(|c| {
            let p = c.streams.remove(&id)?;
            let mut pod_gone = false;
            if let Audience::Sidecar(ns, pod) = &p.audience {
                let key = (ns.clone(), pod.clone());
                if let Some(n) = c.sidecar_pods.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        c.sidecar_pods.remove(&key);
                        pod_gone = true;
                    }
                }
            }
            Some((p, pod_gone))
        });
        if let Some((p, pod_gone)) = removed {
            self.metrics
                .proxies_connected
                .get_or_create(&role(&p.audience))
                .dec();
            info!(pod = %p.pod(), "proxy disconnected");
            self.signal(&p.audience, pod_gone);
        }
    }

    /// The pods whose sidecar is connected, as (namespace, pod).
    pub fn sidecar_pods(&self) -> BTreeSet<(String, String)> {
        self.with(|c| c.sidecar_pods.keys().cloned().collect())
    }

    /// The pods the connected gateway proxies of `infra` speak for, as
    /// (namespace, pod).
    pub fn gateway_pods(&self, infra: &GatewayInfra) -> BTreeSet<(String, String)> {
        self.with(|c| {
            c.streams
                .values()
                .filter(|p| matches!(&p.audience, Audience::Gateway(i) if i == infra))
                .map(|p| (p.identity.namespace.clone(), p.identity.pod_name.clone()))
                .collect()
        })
    }

    /// Where the gateway proxies of `infra` are with snapshot `version`.
    pub fn gateway_progress(&self, infra: &GatewayInfra, version: &str) -> GatewayProgress {
        self.with(|c| {
            let mut progress = GatewayProgress::default();
            for p in c
                .streams
                .values()
                .filter(|p| matches!(&p.audience, Audience::Gateway(i) if i == infra))
            {
                progress.connected += 1;
                progress.acked |= p.acked.as_deref() == Some(version);
                if progress.refused.is_none()
                    && let Some((v, e)) = &p.nacked
                    && v == version
                {
                    progress.refused = Some((p.pod(), e.clone()));
                }
            }
            progress
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Arc::new(Metrics::default()))
    }

    fn hello(ns: &str, pod: &str) -> ProxyIdentity {
        ProxyIdentity {
            namespace: ns.into(),
            pod_name: pod.into(),
            ..Default::default()
        }
    }

    fn sidecar(pod: &str) -> Audience {
        Audience::Sidecar("shop".into(), pod.into())
    }

    #[test]
    fn a_sidecar_pod_counts_until_its_last_stream_closes() {
        let r = registry();
        let set = r.subscribe_sidecar_set();
        let first = r.connect(hello("shop", "a"), sidecar("a"), None);
        assert!(set.has_changed().unwrap_or(false), "a new pod is a change");
        let mut set = r.subscribe_sidecar_set();
        // A reconnect overlaps the old stream: the pod set stays the same.
        let second = r.connect(hello("shop", "a"), sidecar("a"), None);
        r.disconnect(first);
        assert!(!set.has_changed().unwrap_or(true));
        assert_eq!(r.sidecar_pods().len(), 1);
        r.disconnect(second);
        assert!(set.has_changed().unwrap_or(false));
        set.borrow_and_update();
        assert!(r.sidecar_pods().is_empty());
    }

    #[test]
    fn gateway_acks_move_the_gateway_signal_only() {
        let r = registry();
        let mut set = r.subscribe_sidecar_set();
        let mut gateways = r.subscribe_gateways();
        let shared = GatewayInfra::Shared;
        let ids: Vec<u64> = ["g1", "g2", "g3"]
            .iter()
            .map(|p| {
                r.connect(
                    hello("sluice-system", p),
                    Audience::Gateway(shared.clone()),
                    None,
                )
            })
            .collect();
        // Another Gateway's own proxy is not one of the shared ones.
        let own = GatewayInfra::Dedicated {
            namespace: "shop".into(),
            name: "edge".into(),
        };
        let other = r.connect(
            hello("shop", "edge-1"),
            Audience::Gateway(own.clone()),
            None,
        );
        r.nack(other, "v2".into(), "its own problem".into());
        gateways.borrow_and_update();
        r.ack(ids[0], "v2".into());
        assert!(gateways.has_changed().unwrap_or(false));
        assert!(
            !set.has_changed().unwrap_or(true),
            "the sidecar set did not move"
        );
        set.borrow_and_update();
        r.nack(ids[1], "v2".into(), "bad route".into());
        let progress = r.gateway_progress(&shared, "v2");
        assert_eq!(progress.connected, 3);
        assert!(progress.acked);
        assert_eq!(
            progress.refused,
            Some(("sluice-system/g2".into(), "bad route".into()))
        );
        assert_eq!(
            r.gateway_progress(&shared, "v3"),
            GatewayProgress {
                connected: 3,
                acked: false,
                refused: None
            }
        );
        assert_eq!(r.gateway_pods(&shared).len(), 3);
        assert_eq!(r.gateway_progress(&own, "v2").connected, 1);
        assert_eq!(
            r.gateway_pods(&own),
            BTreeSet::from([("shop".into(), "edge-1".into())])
        );
    }
}
