//! Telemetry relay between operator replicas. Each proxy streams its
//! reports to the one replica its connection landed on, but analysis runs
//! on the leader and every replica serves the dashboard: so each replica
//! passes the reports it gets from proxies on to its peers (the other
//! ready endpoints of its own Service), marked `relayed` so that they go no
//! further. A peer that is down loses what was meant for it; reports are
//! deltas over a sliding window, so the next ones make up for it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use sluice_proto::mesh::TelemetryReport;
use sluice_proto::mesh::telemetry_client::TelemetryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Reports queued per peer before new ones are dropped.
const QUEUE: usize = 256;
/// Pause before reconnecting to a peer.
const RECONNECT: Duration = Duration::from_secs(1);

/// The replicas to relay to, each with its sending task.
#[derive(Debug)]
pub struct Relay {
    peers: Mutex<BTreeMap<IpAddr, mpsc::Sender<TelemetryReport>>>,
    port: u16,
    metrics: Arc<Metrics>,
}

impl Relay {
    /// A relay to peers' gRPC port `port`; it has no peers until
    /// [`watch_peers`] finds them.
    pub fn new(port: u16, metrics: Arc<Metrics>) -> Arc<Relay> {
        Arc::new(Relay {
            peers: Mutex::default(),
            port,
            metrics,
        })
    }

    /// Queues a proxy's report for every peer; a full queue drops it.
    pub fn send(&self, report: &TelemetryReport) {
        let Ok(peers) = self.peers.lock() else { return };
        for tx in peers.values() {
            let relayed = TelemetryReport {
                relayed: true,
                ..report.clone()
            };
            if tx.try_send(relayed).is_err() {
                self.metrics.telemetry_relay_dropped.inc();
            }
        }
    }

    /// Makes `ips` the peers: starts a task for each new one and stops
    /// those of peers that left (dropping their sender ends their task).
    fn set_peers(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let mut next = BTreeMap::new();
        for ip in ips {
            let tx = peers.remove(&ip).unwrap_or_else(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(forward(format!("http://{ip}:{}", self.port), rx));
                tx
            });
            next.insert(ip, tx);
        }
        *peers = next;
    }
}

/// Streams `rx` to the peer at `url`, reconnecting until `rx` closes.
async fn forward(url: String, mut rx: mpsc::Receiver<TelemetryReport>) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.clone()) else {
        warn!(%url, "not a peer address");
        return;
    };
    let mut client = TelemetryClient::new(endpoint.connect_lazy());
    loop {
        let (tx, stream_rx) = mpsc::channel(QUEUE);
        let call = client.report(ReceiverStream::new(stream_rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => {
                    debug!(%url, "relay stream ended: {:?}", result.err());
                    break;
                }
                report = rx.recv() => match report {
                    Some(r) => {
                        if tx.send(r).await.is_err() {
                            break;
                        }
                    }
                    // The peer left.
                    None => return,
                },
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Keeps the relay's peers equal to the ready endpoints of Service
/// `namespace/service` other than `own_ip`.
pub async fn watch_peers(
    client: kube::Client,
    relay: Arc<Relay>,
    namespace: String,
    service: String,
    own_ip: IpAddr,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut slices = std::pin::pin!(watcher(api, config).default_backoff());
    let mut by_name: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    while let Some(event) = slices.next().await {
        match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                by_name.insert(s.metadata.name.clone().unwrap_or_default(), ready(&s));
            }
            Ok(watcher::Event::Delete(s)) => {
                by_name.remove(s.metadata.name.as_deref().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => by_name.clear(),
            Ok(watcher::Event::InitDone) => {}
            Err(e) => {
                warn!("operator endpoints: {e}");
                continue;
            }
        }
        let mut ips: Vec<IpAddr> = by_name.values().flatten().copied().collect();
        ips.sort();
        ips.dedup();
        relay.set_peers(ips.into_iter().filter(|ip| *ip != own_ip));
    }
}

/// The ready addresses of a slice.
fn ready(slice: &EndpointSlice) -> Vec<IpAddr> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect()
}
