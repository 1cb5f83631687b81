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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{TelemetryServer, TrafficWindow};
    use sluice_proto::mesh::TelemetryAck;
    use sluice_proto::mesh::telemetry_server::{Telemetry, TelemetryServer as TelemetryService};
    use tonic::{Request, Response, Status, Streaming};

    /// A peer that records the (timestamp, relayed) of what it receives.
    #[derive(Clone, Default)]
    struct Peer(Arc<Mutex<Vec<(i64, bool)>>>);

    #[tonic::async_trait]
    impl Telemetry for Peer {
        async fn report(
            &self,
            request: Request<Streaming<TelemetryReport>>,
        ) -> Result<Response<TelemetryAck>, Status> {
            let mut stream = request.into_inner();
            while let Some(r) = stream.message().await? {
                if let Ok(mut seen) = self.0.lock() {
                    seen.push((r.timestamp_ms, r.relayed));
                }
            }
            Ok(Response::new(TelemetryAck {}))
        }
    }

    /// Serves `service` on a free loopback port.
    async fn serve<S: Telemetry>(service: S) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TelemetryService::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        port
    }

    async fn report_to(port: u16, timestamp_ms: i64, relayed: bool) {
        let mut client = TelemetryClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let report = TelemetryReport {
            timestamp_ms,
            relayed,
            ..TelemetryReport::default()
        };
        client
            .report(futures::stream::iter([report]))
            .await
            .expect("report");
    }

    #[tokio::test]
    async fn proxy_reports_reach_the_peer_once_and_relayed_ones_go_no_further() {
        let peer = Peer::default();
        let relay = Relay::new(serve(peer.clone()).await, Arc::new(Metrics::default()));
        relay.set_peers(["127.0.0.1".parse().expect("ip")]);
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(TrafficWindow::new(Duration::from_secs(60)));
        let port = serve(TelemetryServer::new(window, metrics.clone(), Some(relay))).await;

        // From a proxy (1, 3) and from a peer (2): each recorded here, only
        // the proxies' passed on, marked; the stream to the peer keeps order.
        report_to(port, 1, false).await;
        report_to(port, 2, true).await;
        report_to(port, 3, false).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = peer.0.lock().map(|s| s.clone()).unwrap_or_default();
            if seen.last().is_some_and(|(t, _)| *t == 3) {
                assert_eq!(seen, vec![(1, true), (3, true)]);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the peer got {seen:?} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.telemetry_reports.get(), 3);
        assert_eq!(metrics.telemetry_relayed.get(), 1);
    }
}
