//! The `ConfigDiscovery` gRPC service: one task per proxy stream that sends
//! its audience's snapshot whenever the version changes, keepalives when
//! nothing does, and records ACKs and NACKs. The audience is the pod that
//! the stream's certificate and address prove ([`crate::trust`]), so a
//! proxy gets its own config and nobody else's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_proto::mesh::config_discovery_server::ConfigDiscovery;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::{ConfigMessage, Keepalive, ProxyMessage, config_message, proxy_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::{Registry, SnapshotSet, Snapshots};
use crate::mesh::Audience;
use crate::metrics::Metrics;
use crate::trust::{Peer, Reason, Refusal, TrustSettings, VerifiedProxy, verify_proxy};
use crate::world::World;

/// How long a proxy has to say hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ConfigServer {
    snapshots: Snapshots,
    registry: Arc<Registry>,
    keepalive: Duration,
    world: World,
    trust: Arc<TrustSettings>,
    metrics: Arc<Metrics>,
}

/// What a config stream needs besides the snapshots.
pub struct ConfigServerParts {
    /// Who is connected, and what they ACKed.
    pub registry: Arc<Registry>,
    /// A keepalive after this much silence.
    pub keepalive: Duration,
    /// Pods, to check hellos against.
    pub world: World,
    /// What callers are checked against.
    pub trust: Arc<TrustSettings>,
    /// Refusals are counted here.
    pub metrics: Arc<Metrics>,
}

impl ConfigServer {
    /// Serves `snapshots` to proxies whose hello their connection proves.
    pub fn new(snapshots: Snapshots, parts: ConfigServerParts) -> ConfigServer {
        ConfigServer {
            snapshots,
            registry: parts.registry,
            keepalive: parts.keepalive,
            world: parts.world,
            trust: parts.trust,
            metrics: parts.metrics,
        }
    }

    fn refuse(&self, r: Refusal) -> Status {
        self.metrics.refused("config", r.reason.as_str());
        warn!("config stream refused: {r}");
        r.status()
    }
}

/// Which snapshot a verified proxy gets.
pub fn audience(proxy: &VerifiedProxy) -> Audience {
    match proxy.role {
        Role::Gateway => Audience::Gateway,
        _ => Audience::Sidecar(proxy.namespace.clone(), proxy.pod.clone()),
    }
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<ConfigMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for ConfigServer {
    type StreamStream = ConfigStream;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<ConfigStream>, Status> {
        let peer = Peer::of(&request, &self.trust.trust_domain).map_err(|r| self.refuse(r))?;
        let remote = crate::trust::remote_addr(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(ProxyMessage {
            kind: Some(proxy_message::Kind::Hello(identity)),
        }) = first
        else {
            return Err(self.refuse(Refusal::new(
                Reason::BadHello,
                "the first message must be a hello",
            )));
        };
        let proxy = verify_proxy(&self.world, &peer, &identity, &self.trust.root_namespace)
            .await
            .map_err(|r| self.refuse(r))?;
        let audience = audience(&proxy);
        let (tx, rx) = mpsc::channel(4);
        let id = self.registry.connect(identity, audience.clone(), remote);
        let session = Session {
            id,
            audience,
            registry: self.registry.clone(),
            snapshots: self.snapshots.subscribe(),
            keepalive: self.keepalive,
            tx,
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    id: u64,
    audience: Audience,
    registry: Arc<Registry>,
    snapshots: watch::Receiver<Arc<SnapshotSet>>,
    keepalive: Duration,
    tx: mpsc::Sender<Result<ConfigMessage, Status>>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<ProxyMessage>) {
        let mut sent: Option<String> = None;
        // Send what is current right away.
        self.snapshots.mark_changed();
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.reset();
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = self.snapshots.borrow_and_update().get(&self.audience).cloned();
                    let Some(snapshot) = snapshot else { continue };
                    if sent.as_deref() == Some(snapshot.version.as_str()) {
                        continue;
                    }
                    self.registry.sent(self.id, &snapshot.version);
                    sent = Some(snapshot.version.clone());
                    let msg = ConfigMessage {
                        kind: Some(config_message::Kind::Snapshot((*snapshot).clone())),
                    };
                    if self.tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    keepalive.reset();
                }
                msg = inbound.message() => match msg {
                    Ok(Some(ProxyMessage { kind: Some(proxy_message::Kind::Ack(a)) })) => {
                        self.registry.ack(self.id, a.version);
                    }
                    Ok(Some(ProxyMessage { kind: Some(proxy_message::Kind::Nack(n)) })) => {
                        self.registry.nack(self.id, n.version, n.error);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(status) => {
                        debug!(id = self.id, "config stream: {status}");
                        break;
                    }
                },
                _ = keepalive.tick() => {
                    let msg = ConfigMessage { kind: Some(config_message::Kind::Keepalive(Keepalive {})) };
                    if self.tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.registry.disconnect(self.id);
    }
}
