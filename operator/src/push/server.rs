//! The `ConfigDiscovery` gRPC service: each proxy's response stream sends
//! its audience's snapshot whenever the version changes, keepalives when
//! nothing does, and records ACKs and NACKs. The audience is the pod that
//! the stream's certificate and address prove ([`crate::trust`]), so a
//! proxy gets its own config and nobody else's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_proto::mesh::config_discovery_server::ConfigDiscovery;
use sluice_proto::mesh::{ConfigMessage, Keepalive, ProxyMessage, config_message, proxy_message};
use tokio::sync::watch;
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
    match &proxy.gateway {
        Some(infra) => Audience::Gateway(infra.clone()),
        None => Audience::Sidecar(proxy.namespace.clone(), proxy.pod.clone()),
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
        let id = self.registry.connect(identity, audience.clone(), remote);
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut snapshots = self.snapshots.subscribe();
        // Send what is current right away.
        snapshots.mark_changed();
        let session = Session {
            id,
            audience,
            registry: self.registry.clone(),
            snapshots,
            keepalive,
            spoke: false,
            inbound,
            sent: None,
        };
        // The response stream drives the session itself: no task and no
        // channel between a new snapshot and its write, and ACKs are read
        // by the same poll.
        let stream = futures::stream::unfold(session, |mut s| async move {
            let msg = s.next().await?;
            Some((Ok(msg), s))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One proxy's stream: what it was sent, and its ACKs.
struct Session {
    id: u64,
    audience: Audience,
    registry: Arc<Registry>,
    snapshots: watch::Receiver<Arc<SnapshotSet>>,
    /// Ticks at a fixed rate; never reset, which would touch the shared
    /// timer on every push.
    keepalive: tokio::time::Interval,
    /// Whether a snapshot went out since the last tick.
    spoke: bool,
    inbound: Streaming<ProxyMessage>,
    sent: Option<String>,
}

impl Session {
    /// The next message to send: a new snapshot, or a keepalive after a
    /// tick without one (so at most two intervals of silence); `None` once
    /// either side is done.
    async fn next(&mut self) -> Option<ConfigMessage> {
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    changed.ok()?;
                    if let Some(msg) = self.snapshot_to_send() {
                        self.spoke = true;
                        return Some(msg);
                    }
                }
                msg = self.inbound.message() => self.record(msg)?,
                _ = self.keepalive.tick() => {
                    if !std::mem::take(&mut self.spoke) {
                        return Some(ConfigMessage { kind: Some(config_message::Kind::Keepalive(Keepalive {})) });
                    }
                }
            }
        }
    }

    /// The audience's snapshot, unless this stream already has it.
    fn snapshot_to_send(&mut self) -> Option<ConfigMessage> {
        let snapshot = self
            .snapshots
            .borrow_and_update()
            .get(&self.audience)
            .cloned()?;
        if self.sent.as_deref() == Some(snapshot.version.as_str()) {
            return None;
        }
        self.registry.sent(self.id, &snapshot.version);
        self.sent = Some(snapshot.version.clone());
        Some(ConfigMessage {
            kind: Some(config_message::Kind::Snapshot((*snapshot).clone())),
        })
    }

    /// Records an ACK or NACK; `None` when the proxy's side has ended.
    fn record(&self, msg: Result<Option<ProxyMessage>, Status>) -> Option<()> {
        match msg {
            Ok(Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Ack(a)),
            })) => self.registry.ack(self.id, a.version),
            Ok(Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Nack(n)),
            })) => self.registry.nack(self.id, n.version, n.error),
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(status) => {
                debug!(id = self.id, "config stream: {status}");
                return None;
            }
        }
        Some(())
    }
}

/// The stream is dropped when it ends and when the connection goes.
impl Drop for Session {
    fn drop(&mut self) {
        self.registry.disconnect(self.id);
    }
}
