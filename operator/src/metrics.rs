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

use crate::access::Denied;
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
    pub result: &'static str,
}

/// Label of the config bytes counter: how a snapshot was sent.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotKindLabel {
    /// `whole` or `delta`.
    pub kind: &'static str,
}

/// Labels of refusals by a gRPC service or an HTTP endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The service or endpoint (`config`, `telemetry`, `tls`, `dashboard`,
    /// `debug`).
    pub service: String,
    /// Why, as a short token (e.g. `no_certificate`, `address`).
    pub reason: String,
}

/// Label of a refusal counter with a single dimension.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why, as a short token.
    pub reason: String,
}

/// Label of the Rollout pass counter: how a pass ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabel {
    /// See [`PassResult`].
    pub result: &'static str,
}

/// How a pass of the Rollout controller ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// It observed, decided and applied.
    Done,
    /// It failed (the API server refused or failed) and is retried.
    Failed,
    /// It found the cache behind this process's own last write and waited.
    CacheBehind,
}

impl PassResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PassResult::Done => "done",
            PassResult::Failed => "failed",
            PassResult::CacheBehind => "cache_behind",
        }
    }
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Proxies with an open config stream.
    pub proxies_connected: Family<RoleLabel, Gauge>,
    /// Snapshots sent.
    pub pushes: Counter,
    /// Snapshot bytes sent, whole documents and deltas apart.
    pub push_bytes: Family<SnapshotKindLabel, Counter>,
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
    /// Connections and streams the control plane refused.
    pub control_plane_refused: Family<RefusedLabels, Counter>,
    /// Telemetry deltas refused (a report about what the reporter may not
    /// speak for, or of the wrong shape).
    pub telemetry_refused: Family<ReasonLabel, Counter>,
    /// Series held by the telemetry window.
    pub telemetry_series: Gauge,
    /// Dashboard, debug and admission requests refused.
    pub http_refused: Family<RefusedLabels, Counter>,
    /// Webhook notifications by result (`sent`, `failed`, `dropped`).
    pub notifications: Family<ResultLabel, Counter>,
    /// Rollout controller passes, by how they ended.
    pub rollout_passes: Family<PassLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            proxies_connected: Family::default(),
            pushes: Counter::default(),
            push_bytes: Family::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            push_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            compute_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            telemetry_reports: Counter::default(),
            telemetry_relayed: Counter::default(),
            telemetry_relay_dropped: Counter::default(),
            certificates: Family::default(),
            control_plane_refused: Family::default(),
            telemetry_refused: Family::default(),
            telemetry_series: Gauge::default(),
            http_refused: Family::default(),
            notifications: Family::default(),
            rollout_passes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "proxies_connected",
            "Proxies with an open config stream",
            m.proxies_connected.clone(),
        );
        registry.register(
            "config_push_bytes",
            "Config snapshot bytes sent to proxies, by kind (whole or delta)",
            m.push_bytes.clone(),
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
        registry.register(
            "control_plane_refused",
            "gRPC connections and streams refused, by service and reason",
            m.control_plane_refused.clone(),
        );
        registry.register(
            "telemetry_refused",
            "Telemetry deltas refused, by reason",
            m.telemetry_refused.clone(),
        );
        registry.register(
            "telemetry_series",
            "Series held by the telemetry window",
            m.telemetry_series.clone(),
        );
        registry.register(
            "http_refused",
            "Dashboard, debug and admission requests refused, by endpoint and reason",
            m.http_refused.clone(),
        );
        registry.register(
            "notifications",
            "Webhook notifications of rollout decisions, by result (sent; failed after every retry; dropped with the queue full)",
            m.notifications.clone(),
        );
        registry.register(
            "rollout_passes",
            "Rollout controller passes, by result (done; failed and retried with a growing wait; cache_behind: waited for the cache to show this process's own last write)",
            m.rollout_passes.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a refusal by HTTP surface `service` that answers it itself
    /// (e.g. an admission webhook's denial).
    pub fn count_refusal(&self, service: &str, reason: &str) {
        self.http_refused
            .get_or_create(&RefusedLabels {
                service: service.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a webhook notification's outcome.
    pub fn notification(&self, result: &'static str) {
        self.notifications
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a Rollout controller pass.
    pub fn rollout_pass(&self, result: PassResult) {
        self.rollout_passes
            .get_or_create(&PassLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts a refusal by gRPC service `service`.
    pub fn refused(&self, service: &str, reason: &str) {
        self.control_plane_refused
            .get_or_create(&RefusedLabels {
                service: service.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a refusal by HTTP surface `service` (the dashboard, the
    /// debug endpoint) and answers it with its status and reason.
    pub fn refuse_http(&self, service: &str, denied: &Denied) -> axum::response::Response {
        self.count_refusal(service, denied.reason());
        (denied.status(), format!("{denied}\n")).into_response()
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
    access: Arc<crate::access::Access>,
}

/// Serves `/metrics`, `/healthz` (503 with what failed once a supervised
/// task panicked, ended or stalled), `/readyz` and `/debug/traffic` (the
/// telemetry window's totals per destination and revision, as JSON; its
/// revisions are what a forger would aim at, so only for loopback or a user
/// Kubernetes allows to list Rollouts everywhere).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    traffic: Arc<TrafficWindow>,
    health: crate::health::Supervisor,
    access: Arc<crate::access::Access>,
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
            access,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "metrics endpoint listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
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

async fn traffic_handler(
    State(s): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let every = crate::access::Action {
        verb: "list",
        namespace: None,
        name: None,
    };
    let checked = match s.access.authenticate(peer, &headers).await {
        Ok(user) => s.access.allow(&user, every).await,
        Err(d) => Err(d),
    };
    if let Err(d) = checked {
        return s.metrics.refuse_http("debug", &d);
    }
    axum::Json(s.traffic.summary(std::time::Duration::from_secs(30))).into_response()
}
