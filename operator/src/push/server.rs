//! The `ConfigDiscovery` gRPC service: one task per proxy stream that sends
//! its audience's snapshot whenever the version changes, keepalives when
//! nothing does, and records ACKs and NACKs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_proto::mesh::config_discovery_server::ConfigDiscovery;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::{
    ConfigMessage, Keepalive, ProxyIdentity, ProxyMessage, config_message, proxy_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{Registry, SnapshotSet, Snapshots};
use crate::mesh::Audience;

/// How long a proxy has to say hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigServer {
    snapshots: Snapshots,
    registry: Arc<Registry>,
    keepalive: Duration,
}

impl ConfigServer {
    /// Serves `snapshots`, sending a keepalive after `keepalive` of silence.
    pub fn new(snapshots: Snapshots, registry: Arc<Registry>, keepalive: Duration) -> ConfigServer {
        ConfigServer {
            snapshots,
            registry,
            keepalive,
        }
    }
}

/// Which snapshot a proxy gets, from its hello.
pub fn audience(id: &ProxyIdentity) -> Result<Audience, Status> {
    if id.namespace.is_empty() || id.pod_name.is_empty() {
        return Err(Status::invalid_argument(
            "hello: namespace and pod_name are required",
        ));
    }
    match Role::try_from(id.role) {
        Ok(Role::Gateway) => Ok(Audience::Gateway),
        Ok(Role::Sidecar) => Ok(Audience::Sidecar(id.namespace.clone(), id.pod_name.clone())),
        _ => Err(Status::invalid_argument(
            "hello: role must be ROLE_SIDECAR or ROLE_GATEWAY",
        )),
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
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(ProxyMessage {
            kind: Some(proxy_message::Kind::Hello(identity)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        let audience = audience(&identity)?;
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
