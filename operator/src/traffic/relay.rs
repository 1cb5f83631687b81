//! Telemetry relay between operator replicas. Each proxy streams its
//! reports to the one replica its connection landed on, but analysis runs
//! on the leader and every replica serves the dashboard: so each replica
//! passes the reports it gets from proxies on to its peers (the other
//! ready endpoints of its own Service), marked `relayed` so that they go no
//! further. Relays run over mTLS with the operator's own certificate, the
//! one identity a replica accepts relayed reports from. A peer that is down
//! loses what was meant for it; reports are deltas over a sliding window,
//! so the next ones make up for it.

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

use sluice_identity::channel::{self, ControlPlaneAddress};

use crate::metrics::Metrics;
use crate::stored::SERVICE_NAME_LABEL;

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
    tls: Arc<rustls::ClientConfig>,
}

impl Relay {
    /// A relay to peers' gRPC port `port` with `tls` (the operator's own
    /// certificate, expecting the same identity of the peer); it has no
    /// peers until [`watch_peers`] finds them.
    pub fn new(port: u16, metrics: Arc<Metrics>, tls: Arc<rustls::ClientConfig>) -> Arc<Relay> {
        Arc::new(Relay {
            peers: Mutex::default(),
            port,
            metrics,
            tls,
        })
    }

    /// Queues a checked report for every peer, marked relayed; a full
    /// queue drops it.
    pub fn send(&self, report: TelemetryReport) {
        let Ok(peers) = self.peers.lock() else { return };
        let relayed = TelemetryReport {
            relayed: true,
            ..report
        };
        for tx in peers.values() {
            if tx.try_send(relayed.clone()).is_err() {
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
                let address = ControlPlaneAddress::parse(&format!(
                    "https://{}",
                    std::net::SocketAddr::new(ip, self.port)
                ));
                match address {
                    Ok(a) => {
                        tokio::spawn(forward(a, self.tls.clone(), rx));
                    }
                    Err(e) => warn!("peer {ip}: {e}"),
                }
                tx
            });
            next.insert(ip, tx);
        }
        *peers = next;
    }
}

/// Streams `rx` to the peer at `address`, reconnecting until `rx` closes.
async fn forward(
    address: ControlPlaneAddress,
    tls: Arc<rustls::ClientConfig>,
    mut rx: mpsc::Receiver<TelemetryReport>,
) {
    loop {
        let channel = match channel::connect(&address, tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                debug!(%address, "relay: {e}");
                // Drop what queued meanwhile; end when the peer left.
                loop {
                    match rx.try_recv() {
                        Ok(_) => continue,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        let mut client = TelemetryClient::new(channel);
        let (tx, stream_rx) = mpsc::channel(QUEUE);
        let call = client.report(ReceiverStream::new(stream_rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => {
                    debug!(%address, "relay stream ended: {:?}", result.err());
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
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
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
    use crate::ca::Authority;
    use crate::ca::authority::test_authority;
    use crate::traffic::{TelemetryServer, TrafficWindow};
    use crate::trust::TrustSettings;
    use sluice_identity::{MeshIdentity, SpiffeId};
    use sluice_proto::mesh::telemetry_server::{Telemetry, TelemetryServer as TelemetryService};
    use sluice_proto::mesh::{ProxyIdentity, TelemetryAck, TrafficDelta};
    use tonic::{Request, Response, Status, Streaming};

    /// A peer that records the (revision, relayed) of what it receives.
    #[derive(Clone, Default)]
    struct Peer(Arc<Mutex<Vec<(String, bool)>>>);

    #[tonic::async_trait]
    impl Telemetry for Peer {
        async fn report(
            &self,
            request: Request<Streaming<TelemetryReport>>,
        ) -> Result<Response<TelemetryAck>, Status> {
            let mut stream = request.into_inner();
            while let Some(r) = stream.message().await? {
                if let Ok(mut seen) = self.0.lock() {
                    for d in r.deltas {
                        seen.push((d.destination_revision, r.relayed));
                    }
                }
            }
            Ok(Response::new(TelemetryAck {}))
        }
    }

    /// A CA and an identity issued by it.
    struct Pki {
        ca: Authority,
    }

    impl Pki {
        fn new() -> Pki {
            Pki {
                ca: test_authority(Duration::from_secs(600)),
            }
        }

        fn identity(&self, ns: &str, sa: &str) -> Arc<MeshIdentity> {
            let identity = Arc::new(MeshIdentity::default());
            let settings = crate::ca::own::OwnSettings {
                spiffe_id: format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
                names: vec!["127.0.0.1".into()],
            };
            crate::ca::own::renew(&self.ca, &identity, &settings).expect("issued");
            identity
        }
    }

    fn operator_id() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/sluice-system/sa/sluice-operator").expect("id")
    }

    /// Serves `service` over the control plane's TLS on a free loopback port.
    async fn serve<S: Telemetry>(service: S, identity: &Arc<MeshIdentity>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming =
            crate::control_plane::incoming(listener, identity, Arc::new(Metrics::default()))
                .expect("tls");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TelemetryService::new(service))
                .serve_with_incoming(incoming),
        );
        port
    }

    fn tls(identity: &Arc<MeshIdentity>) -> Arc<rustls::ClientConfig> {
        sluice_identity::verify::control_plane_client_config(identity, &operator_id().to_string())
            .expect("tls")
    }

    /// Sends one report as `identity` (claiming pod `h/web-1`); the result.
    async fn report_as(
        identity: &Arc<MeshIdentity>,
        port: u16,
        relayed: bool,
        revision: &str,
    ) -> Result<(), Status> {
        let address =
            ControlPlaneAddress::parse(&format!("https://127.0.0.1:{port}")).expect("address");
        let channel = channel::connect(&address, tls(identity))
            .await
            .expect("connect");
        let report = TelemetryReport {
            identity: Some(ProxyIdentity {
                namespace: "h".into(),
                pod_name: "web-1".into(),
                role: sluice_proto::mesh::proxy_identity::Role::Sidecar as i32,
                ..Default::default()
            }),
            relayed,
            deltas: vec![TrafficDelta {
                destination_revision: revision.into(),
                requests: 10,
                inbound: true,
                ..Default::default()
            }],
            ..TelemetryReport::default()
        };
        TelemetryClient::new(channel)
            .report(futures::stream::iter([report]))
            .await
            .map(|_| ())
    }

    fn web_pod() -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "h", "labels": {"pod-template-hash": "abc"}},
            "spec": {"serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        }))
        .expect("pod")
    }

    #[tokio::test]
    async fn checked_reports_reach_the_peer_once_and_only_the_operator_may_relay() {
        let pki = Pki::new();
        let operator = pki.identity("sluice-system", "sluice-operator");
        let peer = Peer::default();
        let peer_port = serve(peer.clone(), &operator).await;
        let relay = Relay::new(peer_port, Arc::new(Metrics::default()), tls(&operator));
        relay.set_peers(["127.0.0.1".parse().expect("ip")]);
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(TrafficWindow::new(Duration::from_secs(60), 100));
        let mesh = crate::mesh::MeshSettings {
            trust_domain: "cluster.local".into(),
            roots_pem: pki.ca.roots_pem.clone(),
            mode: sluice_proto::config::MtlsMode::Permissive,
            root_namespace: "sluice-system".into(),
            dedicated_class: String::new(),
        };
        let trust = Arc::new(TrustSettings {
            trust_domain: "cluster.local".into(),
            root_namespace: "sluice-system".into(),
            operator: operator_id(),
        });
        let server = TelemetryServer::new(
            window.clone(),
            metrics.clone(),
            Some(relay),
            crate::world::World::with_pods(vec![web_pod()], mesh),
            trust,
        );
        let port = serve(server, &operator).await;

        // The pod's own sidecar: recorded, attributed, relayed once.
        let web = pki.identity("h", "web");
        report_as(&web, port, false, "").await.expect("own report");
        // Another replica's relay: recorded, not passed on.
        report_as(&operator, port, true, "from-peer")
            .await
            .expect("relay");
        // A proxy posing as a replica, and one of another account.
        let posing = report_as(&web, port, true, "").await;
        assert_eq!(
            posing.map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        let other = pki.identity("h", "curl");
        let foreign = report_as(&other, port, false, "").await;
        assert_eq!(
            foreign.map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = peer.0.lock().map(|s| s.clone()).unwrap_or_default();
            if !seen.is_empty() {
                assert_eq!(seen, vec![("abc".to_owned(), true)]);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the peer got nothing within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let by_rev = window.sum(Duration::from_secs(60), |_| true, |k| k.revision.clone());
        assert_eq!(
            by_rev.keys().cloned().collect::<Vec<_>>(),
            ["abc", "from-peer"]
        );
        assert_eq!(metrics.telemetry_relayed.get(), 1);
        let refused = metrics.encode();
        assert!(
            refused.contains(r#"sluice_control_plane_refused_total{service="telemetry",reason="not_operator"} 1"#)
                && refused.contains(r#"sluice_control_plane_refused_total{service="telemetry",reason="service_account"} 1"#),
            "{refused}"
        );
    }
}
