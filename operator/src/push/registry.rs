//! The proxies connected right now, what each was sent and what it ACKed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_proto::mesh::ProxyIdentity;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mesh::Audience;
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

/// Shared by every stream.
#[derive(Debug)]
pub struct Registry {
    proxies: Mutex<(u64, HashMap<u64, ProxyState>)>,
    metrics: Arc<Metrics>,
    /// Bumped when the set of audiences or any gateway proxy's ACK state
    /// changes: the snapshot loop and the status writer watch it.
    changes: watch::Sender<u64>,
}

fn role(a: &Audience) -> RoleLabel {
    RoleLabel {
        role: match a {
            Audience::Gateway => "gateway".into(),
            Audience::Sidecar(..) => "sidecar".into(),
        },
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            proxies: Mutex::new((0, HashMap::new())),
            metrics,
            changes: watch::channel(0).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut (u64, HashMap<u64, ProxyState>)) -> R) -> R {
        let mut guard = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Watches registry changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
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
        let id = self.with(|(next, map)| {
            *next += 1;
            map.insert(*next, state);
            *next
        });
        self.bump();
        id
    }

    /// Records a sent snapshot.
    pub fn sent(&self, id: u64, version: &str) {
        self.metrics.pushes.inc();
        self.with(|(_, map)| {
            if let Some(p) = map.get_mut(&id) {
                p.sent = Some((version.to_owned(), Instant::now()));
            }
        });
    }

    /// Records an ACK.
    pub fn ack(&self, id: u64, version: String) {
        self.metrics.acks.inc();
        let gateway = self.with(|(_, map)| {
            let p = map.get_mut(&id)?;
            if let Some((v, at)) = &p.sent
                && *v == version
            {
                self.metrics
                    .push_ack_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            p.acked = Some(version);
            Some(p.audience == Audience::Gateway)
        });
        if gateway == Some(true) {
            self.bump();
        }
    }

    /// Records a NACK: logged and counted; the proxy keeps its old config.
    pub fn nack(&self, id: u64, version: String, error: String) {
        self.metrics.nacks.inc();
        let gateway = self.with(|(_, map)| {
            let p = map.get_mut(&id)?;
            warn!(pod = %p.pod(), %version, %error, "proxy refused config snapshot (NACK); it keeps serving its previous config");
            p.nacked = Some((version, error));
            Some(p.audience == Audience::Gateway)
        });
        if gateway == Some(true) {
            self.bump();
        }
    }

    /// Forgets a closed stream.
    pub fn disconnect(&self, id: u64) {
        if let Some(p) = self.with(|(_, map)| map.remove(&id)) {
            self.metrics
                .proxies_connected
                .get_or_create(&role(&p.audience))
                .dec();
            info!(pod = %p.pod(), "proxy disconnected");
            self.bump();
        }
    }

    /// The pods whose sidecar is connected, as (namespace, pod).
    pub fn sidecar_pods(&self) -> BTreeSet<(String, String)> {
        self.with(|(_, map)| {
            map.values()
                .filter_map(|p| match &p.audience {
                    Audience::Sidecar(ns, pod) => Some((ns.clone(), pod.clone())),
                    Audience::Gateway => None,
                })
                .collect()
        })
    }

    /// The connected proxies of one audience.
    pub fn of(&self, audience: &Audience) -> Vec<ProxyState> {
        self.with(|(_, map)| {
            map.values()
                .filter(|p| p.audience == *audience)
                .cloned()
                .collect()
        })
    }
}
