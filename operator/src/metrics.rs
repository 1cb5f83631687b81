//! The operator's Prometheus metrics and its health/metrics HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::traffic::TrafficWindow;

/// Label of per-role gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// `gateway` or `sidecar`.
    pub role: String,
}

/// Label of outcome counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// e.g. `issued` or `refused`.
    pub result: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Proxies with an open config stream.
    pub proxies_connected: Family<RoleLabel, Gauge>,
    /// Snapshots sent.
    pub pushes: Counter,
    /// ACKs received.
    pub acks: Counter,
    /// NACKs received.
    pub nacks: Counter,
    /// From a snapshot's send to its ACK.
    pub push_ack_seconds: Histogram,
    /// Time to compute every audience's snapshot after a change.
    pub compute_seconds: Histogram,
    /// Telemetry reports received (from proxies and from peers).
    pub telemetry_reports: Counter,
    /// Telemetry reports received from peer replicas.
    pub telemetry_relayed: Counter,
    /// Reports not relayed to a peer whose queue was full.
    pub telemetry_relay_dropped: Counter,
    /// Workload certificate requests, issued or refused.
    pub certificates: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            proxies_connected: Family::default(),
            pushes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            push_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            compute_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            telemetry_reports: Counter::default(),
            telemetry_relayed: Counter::default(),
            telemetry_relay_dropped: Counter::default(),
            certificates: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "proxies_connected",
            "Proxies with an open config stream",
            m.proxies_connected.clone(),
        );
        registry.register(
            "config_push_ack_seconds",
            "Time from sending a snapshot to its ACK",
            m.push_ack_seconds.clone(),
        );
        registry.register(
            "snapshot_compute_seconds",
            "Time to compute all snapshots after a change",
            m.compute_seconds.clone(),
        );
        let counters = [
            (
                "config_pushes",
                "Config snapshots sent to proxies",
                &m.pushes,
            ),
            ("config_acks", "Config snapshots ACKed by proxies", &m.acks),
            (
                "config_nacks",
                "Config snapshots refused (NACKed) by proxies",
                &m.nacks,
            ),
            (
                "telemetry_reports",
                "Telemetry reports received, from proxies and relayed by peer replicas",
                &m.telemetry_reports,
            ),
            (
                "telemetry_relayed",
                "Telemetry reports relayed by peer replicas",
                &m.telemetry_relayed,
            ),
            (
                "telemetry_relay_dropped",
                "Telemetry reports not relayed because a peer's queue was full",
                &m.telemetry_relay_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "certificates",
            "Workload certificate requests by result (issued, refused)",
            m.certificates.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Prometheus text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    traffic: Arc<TrafficWindow>,
    health: crate::health::Supervisor,
}

/// Serves `/metrics`, `/healthz` (503 with what failed once a supervised
/// task panicked, ended or stalled), `/readyz` and `/debug/traffic` (the
/// telemetry window's totals per destination and revision, as JSON).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    traffic: Arc<TrafficWindow>,
    health: crate::health::Supervisor,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/debug/traffic", get(traffic_handler))
        .with_state(AppState {
            metrics,
            traffic,
            health,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "metrics endpoint listening");
    axum::serve(listener, app).await
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

async fn traffic_handler(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(s.traffic.summary(std::time::Duration::from_secs(30)))
}
