//! The config stream: hello, then apply or refuse every snapshot, ACKing or
//! NACKing each version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::delta::{self, DeltaError};
use sluice_proto::mesh::config_discovery_client::ConfigDiscoveryClient;
use sluice_proto::mesh::{
    Ack, ConfigMessage, Nack, ProxyMessage, Snapshot, config_message, proxy_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::{Backoff, Settings, connect};
use crate::config::{self, ConfigError};
use crate::state::Proxy;

/// Why a config stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Connect(#[from] sluice_identity::channel::ChannelError),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("nothing received for {0:?}")]
    Idle(Duration),
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The document of the last snapshot this stream received, applied or
/// refused: what the operator's next delta is over.
struct Received {
    version: String,
    doc: Bytes,
}

/// Keeps a config stream open for as long as the process runs.
pub async fn run_config_stream(proxy: Arc<Proxy>, settings: Settings, admin: Option<SocketAddr>) {
    proxy.telemetry.managed.store(true, Relaxed);
    // Streams need the workload certificate: the operator knows a proxy
    // by it.
    proxy.identity.installed().await;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let err = session(&proxy, &settings, admin, &mut backoff).await;
        let was_connected = proxy.telemetry.control_plane_connected.swap(false, Relaxed);
        let delay = backoff.next_delay();
        if was_connected {
            warn!(
                endpoint = %settings.address,
                version = %proxy.current().version,
                "control plane lost ({err}); serving the last good config; reconnecting in {delay:?}"
            );
        } else {
            warn!(endpoint = %settings.address, "control plane unreachable ({err}); retrying in {delay:?}");
        }
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    proxy: &Proxy,
    settings: &Settings,
    admin: Option<SocketAddr>,
    backoff: &mut Backoff,
) -> StreamError {
    let channel = match connect(settings).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<ProxyMessage>(8);
    let hello = ProxyMessage {
        kind: Some(proxy_message::Kind::Hello(settings.identity.clone())),
    };
    // The receiver is alive: it was created just above.
    let _ = tx.send(hello).await;
    let mut inbound = match client.stream(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return e.into(),
    };
    proxy.telemetry.control_plane_connected.store(true, Relaxed);
    backoff.reset();
    info!(endpoint = %settings.address, "connected to the control plane");
    let mut received = None;
    loop {
        let msg: ConfigMessage =
            match tokio::time::timeout(settings.idle_timeout, inbound.message()).await {
                Err(_) => return StreamError::Idle(settings.idle_timeout),
                Ok(Err(status)) => return status.into(),
                Ok(Ok(None)) => return StreamError::Closed,
                Ok(Ok(Some(m))) => m,
            };
        let Some(config_message::Kind::Snapshot(snapshot)) = msg.kind else {
            continue; // keepalive
        };
        let reply = receive(proxy, &mut received, snapshot, admin);
        if tx.send(reply).await.is_err() {
            return StreamError::Closed;
        }
    }
}

/// Rebuilds a snapshot's whole document (over the last one received, for
/// a delta), keeps it as the next delta's base, and applies it; or refuses
/// it and keeps the running config.
fn receive(
    proxy: &Proxy,
    received: &mut Option<Received>,
    snapshot: Snapshot,
    admin: Option<SocketAddr>,
) -> ProxyMessage {
    let version = snapshot.version.clone();
    let last = received.take();
    let rebuilt = delta::whole_document(
        last.as_ref().map(|r| (r.version.as_str(), &r.doc[..])),
        snapshot,
    );
    let result = rebuilt.map_err(Refused::from).and_then(|doc| {
        let applied = apply(proxy, &version, &doc, admin);
        *received = Some(Received {
            version: version.clone(),
            doc,
        });
        applied
    });
    match result {
        Ok(()) => ack(version),
        Err(e) => {
            proxy.refused();
            warn!(%version, error = %e, "refused config snapshot; the running config stays");
            ProxyMessage {
                kind: Some(proxy_message::Kind::Nack(Nack {
                    version,
                    error: e.to_string(),
                })),
            }
        }
    }
}

/// Applies a whole document, unless it is what already runs.
fn apply(
    proxy: &Proxy,
    version: &str,
    doc: &[u8],
    admin: Option<SocketAddr>,
) -> Result<(), Refused> {
    if proxy.configured() && proxy.current().version == version {
        // A reconnect re-sends what is already running.
        return Ok(());
    }
    let config = parse(doc, admin)?;
    proxy.apply(config, Some(version.to_owned()));
    info!(%version, "applied config snapshot");
    Ok(())
}

fn ack(version: String) -> ProxyMessage {
    ProxyMessage {
        kind: Some(proxy_message::Kind::Ack(Ack { version })),
    }
}

/// Parses a snapshot; the admin address comes from the command line, so a
/// listener that takes it is refused here.
fn parse(bytes: &[u8], admin: Option<SocketAddr>) -> Result<config::Config, ConfigError> {
    let mut config = config::from_json(bytes)?;
    if let Some(admin) = admin {
        if let Some((i, _)) = config
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| l.address.port() == admin.port() && overlaps(l.address, admin))
        {
            return Err(ConfigError {
                path: format!("listeners[{i}].address"),
                line: None,
                message: format!("{admin} is this proxy's admin address"),
            });
        }
        config.admin = Some(config::Admin { address: admin });
    }
    Ok(config)
}

/// Whether two listen addresses would collide (same IP, or either is the
/// unspecified address).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(version: &str, json: &str) -> Snapshot {
        Snapshot {
            version: version.into(),
            config_json: json.as_bytes().to_vec().into(),
            base: String::new(),
        }
    }

    fn delta(version: &str, base: &str, json: &str) -> Snapshot {
        Snapshot {
            base: base.into(),
            ..whole(version, json)
        }
    }

    /// One stream's receiving side.
    struct Stream {
        proxy: Arc<Proxy>,
        received: Option<Received>,
        admin: Option<SocketAddr>,
    }

    impl Stream {
        fn new(admin: Option<&str>) -> Stream {
            Stream {
                proxy: Proxy::new(),
                received: None,
                admin: admin.map(|a| a.parse().expect("address")),
            }
        }

        fn send(&mut self, snapshot: Snapshot) -> proxy_message::Kind {
            receive(&self.proxy, &mut self.received, snapshot, self.admin)
                .kind
                .expect("a reply")
        }

        fn listener_port(&self) -> Option<u16> {
            let current = self.proxy.current();
            current.config.listeners.first().map(|l| l.address.port())
        }
    }

    fn acked(version: &str) -> proxy_message::Kind {
        proxy_message::Kind::Ack(Ack {
            version: version.into(),
        })
    }

    fn nack_error(reply: proxy_message::Kind) -> String {
        match reply {
            proxy_message::Kind::Nack(n) => n.error,
            other => panic!("expected a NACK, got {other:?}"),
        }
    }

    const GOOD: &str = r#"{"backends":[{"name":"b","endpoints":["127.0.0.1:1"]}],
        "listeners":[{"name":"l","address":"127.0.0.1:18080","routes":[{"name":"r","backends":[{"name":"b"}]}]}]}"#;

    #[test]
    fn good_snapshot_is_acked_and_applied() {
        let mut stream = Stream::new(None);
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        assert_eq!(stream.proxy.current().version, "v1");
    }

    #[test]
    fn bad_snapshot_is_nacked_and_the_old_config_stays() {
        let mut stream = Stream::new(Some("0.0.0.0:15021"));
        let good = r#"{"listeners":[{"name":"l","address":"0.0.0.0:18080"}]}"#;
        assert_eq!(stream.send(whole("v1", good)), acked("v1"));
        let clash = r#"{"listeners":[{"name":"l","address":"0.0.0.0:15021"}]}"#;
        let error = nack_error(stream.send(whole("v2", clash)));
        assert!(error.contains("listeners[0].address"), "{error}");
        let error = nack_error(stream.send(whole("v3", "{\"listeners\": 3}")));
        assert!(error.contains("listeners"), "{error}");
        assert_eq!(stream.proxy.current().version, "v1");
    }

    #[test]
    fn a_delta_over_the_last_document_received_is_applied() {
        let mut stream = Stream::new(None);
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        let moved = r#"{"listeners":[{"name":"l","address":"127.0.0.1:18081","routes":[{"name":"r","backends":[{"name":"b"}]}]}]}"#;
        assert_eq!(stream.send(delta("v2", "v1", moved)), acked("v2"));
        assert_eq!(stream.proxy.current().version, "v2");
        assert_eq!(stream.listener_port(), Some(18081));
        // The backends came from v1's document.
        assert_eq!(stream.proxy.current().config.backends.len(), 1);
    }

    #[test]
    fn a_delta_over_a_refused_document_is_applied_too() {
        let mut stream = Stream::new(Some("0.0.0.0:15021"));
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        let clash = r#"{"listeners":[{"name":"l","address":"0.0.0.0:15021"}]}"#;
        nack_error(stream.send(delta("v2", "v1", clash)));
        // The operator's next delta is over v2, which it sent.
        let fixed = r#"{"listeners":[{"name":"l","address":"0.0.0.0:18082"}]}"#;
        assert_eq!(stream.send(delta("v3", "v2", fixed)), acked("v3"));
        assert_eq!(stream.listener_port(), Some(18082));
    }

    #[test]
    fn a_delta_over_another_version_is_nacked_until_a_whole_document_comes() {
        let mut stream = Stream::new(None);
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        let error = nack_error(stream.send(delta("v3", "v2", "{}")));
        assert!(
            error.contains("over version v2") && error.contains("v1"),
            "{error}"
        );
        assert_eq!(stream.proxy.current().version, "v1");
        let error = nack_error(stream.send(delta("v4", "v1", "{}")));
        assert!(error.contains("no whole document"), "{error}");
        let error = nack_error(Stream::new(None).send(delta("v1", "v0", "{}")));
        assert!(error.contains("no whole document"), "{error}");
        assert_eq!(stream.send(whole("v5", GOOD)), acked("v5"));
    }

    #[test]
    fn a_malformed_delta_is_nacked_and_the_config_stays() {
        let mut stream = Stream::new(None);
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        let error = nack_error(stream.send(delta("v2", "v1", "[\"listeners\"]")));
        assert!(error.contains("config delta"), "{error}");
        assert_eq!(stream.proxy.current().version, "v1");
    }

    #[test]
    fn a_reconnect_resending_the_running_version_is_acked_and_becomes_the_base() {
        let mut stream = Stream::new(None);
        assert_eq!(stream.send(whole("v1", GOOD)), acked("v1"));
        let mut again = Stream {
            proxy: stream.proxy,
            received: None,
            admin: None,
        };
        assert_eq!(again.send(whole("v1", GOOD)), acked("v1"));
        let moved = r#"{"listeners":[{"name":"l","address":"127.0.0.1:18083"}]}"#;
        assert_eq!(again.send(delta("v2", "v1", moved)), acked("v2"));
    }
}
