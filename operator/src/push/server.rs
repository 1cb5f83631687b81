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
use crate::metrics::{Metrics, SnapshotKindLabel};
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
    deltas: bool,
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
    /// Whether a changed config goes as a delta where the stream has a base.
    pub deltas: bool,
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
            deltas: parts.deltas,
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
            sent_delta: false,
            deltas: self.deltas,
            metrics: self.metrics.clone(),
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
    /// The version last sent: the base of the next delta.
    sent: Option<String>,
    /// Whether that went as a delta: a NACK of it is answered with the
    /// whole document.
    sent_delta: bool,
    /// Whether to send deltas at all.
    deltas: bool,
    metrics: Arc<Metrics>,
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

    /// The audience's snapshot, unless this stream already has it: a delta
    /// over what it was sent last when there is one.
    fn snapshot_to_send(&mut self) -> Option<ConfigMessage> {
        let current = self
            .snapshots
            .borrow_and_update()
            .get(&self.audience)
            .cloned()?;
        if self.sent.as_deref() == Some(current.version()) {
            return None;
        }
        let base = self.sent.as_deref().filter(|_| self.deltas);
        let snapshot = current.for_stream(base);
        self.sent_delta = !snapshot.base.is_empty();
        let kind = if self.sent_delta { "delta" } else { "whole" };
        self.metrics
            .push_bytes
            .get_or_create(&SnapshotKindLabel { kind })
            .inc_by(snapshot.config_json.len() as u64);
        self.registry.sent(self.id, &snapshot.version);
        self.sent = Some(snapshot.version.clone());
        Some(ConfigMessage {
            kind: Some(config_message::Kind::Snapshot(snapshot)),
        })
    }

    /// Records an ACK or NACK; `None` when the proxy's side has ended.
    fn record(&mut self, msg: Result<Option<ProxyMessage>, Status>) -> Option<()> {
        match msg {
            Ok(Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Ack(a)),
            })) => self.registry.ack(self.id, a.version),
            Ok(Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Nack(n)),
            })) => {
                // A delta the proxy could not use: send the same version
                // whole (once: a whole one it refuses stays refused).
                if self.sent_delta && self.sent.as_deref() == Some(n.version.as_str()) {
                    self.sent = None;
                    self.sent_delta = false;
                    self.snapshots.mark_changed();
                }
                self.registry.nack(self.id, n.version, n.error)
            }
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
