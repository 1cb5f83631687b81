//! The config stream: hello, then apply or refuse every snapshot, ACKing or
//! NACKing each version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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
        let reply = apply(proxy, &snapshot, admin);
        if tx.send(reply).await.is_err() {
            return StreamError::Closed;
        }
    }
}

/// Applies a snapshot, or refuses it and keeps the running config.
fn apply(proxy: &Proxy, snapshot: &Snapshot, admin: Option<SocketAddr>) -> ProxyMessage {
    let version = snapshot.version.clone();
    if proxy.configured() && proxy.current().version == version {
        // A reconnect re-sends what is already running.
        return ack(version);
    }
    match parse(&snapshot.config_json, admin) {
        Ok(config) => {
            proxy.apply(config, Some(version.clone()));
            info!(%version, "applied config snapshot");
            ack(version)
        }
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

    fn snapshot(version: &str, json: &str) -> Snapshot {
        Snapshot {
            version: version.into(),
            config_json: json.as_bytes().to_vec().into(),
        }
    }

    fn kind(m: ProxyMessage) -> proxy_message::Kind {
        m.kind.expect("a reply")
    }

    #[test]
    fn good_snapshot_is_acked_and_applied() {
        let proxy = Proxy::new();
        let json = r#"{"backends":[{"name":"b","endpoints":["127.0.0.1:1"]}],
            "listeners":[{"name":"l","address":"127.0.0.1:18080","routes":[{"name":"r","backends":[{"name":"b"}]}]}]}"#;
        let reply = apply(&proxy, &snapshot("v1", json), None);
        assert_eq!(
            kind(reply),
            proxy_message::Kind::Ack(Ack {
                version: "v1".into()
            })
        );
        assert_eq!(proxy.current().version, "v1");
    }

    #[test]
    fn bad_snapshot_is_nacked_and_the_old_config_stays() {
        let proxy = Proxy::new();
        let good = r#"{"listeners":[{"name":"l","address":"0.0.0.0:18080"}]}"#;
        assert!(matches!(
            kind(apply(&proxy, &snapshot("v1", good), None)),
            proxy_message::Kind::Ack(_)
        ));
        let clash = r#"{"listeners":[{"name":"l","address":"0.0.0.0:15021"}]}"#;
        let admin: SocketAddr = "0.0.0.0:15021".parse().expect("address");
        match kind(apply(&proxy, &snapshot("v2", clash), Some(admin))) {
            proxy_message::Kind::Nack(n) => {
                assert_eq!(n.version, "v2");
                assert!(n.error.contains("listeners[0].address"), "{}", n.error);
            }
            other => panic!("expected a NACK, got {other:?}"),
        }
        match kind(apply(&proxy, &snapshot("v3", "{\"listeners\": 3}"), None)) {
            proxy_message::Kind::Nack(n) => assert!(n.error.contains("listeners"), "{}", n.error),
            other => panic!("expected a NACK, got {other:?}"),
        }
        assert_eq!(proxy.current().version, "v1");
    }
}
