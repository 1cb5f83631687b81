//! Request telemetry kept in atomic cells, one per (listener, route,
//! backend, revision), created when a config is compiled and looked up by
//! index on the hot path: recording a request touches only atomics, never a
//! lock or a map. Cells outlive reloads (same key, same cell), so counters
//! never reset; the admin endpoint encodes them as Prometheus text, and the
//! control-plane stream reads the same cells to send deltas.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

pub use sluice_proto::telemetry::LATENCY_BUCKETS_MS;

use crate::balance::Ejection;

/// What a cell counts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name (empty for TCP listeners and unrouted requests).
    pub route: Arc<str>,
    /// Backend name (empty when no backend was chosen).
    pub backend: Arc<str>,
    /// Revision label of the backend, if any.
    pub revision: Arc<str>,
}

/// Counters of one (listener, route, backend, revision).
#[derive(Debug)]
pub struct Cell {
    /// Its labels.
    pub key: CellKey,
    /// Responses by status code (index = code - 100; 100..=599).
    codes: Box<[AtomicU64; 500]>,
    /// Requests that got no response from the backend (connect failure,
    /// reset, timeout), answered by the proxy itself.
    upstream_failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of a cell's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellSnapshot {
    /// Total responses (including proxy-generated failures).
    pub requests: u64,
    /// 5xx responses.
    pub errors_5xx: u64,
    /// Proxy-generated failures (no upstream response).
    pub upstream_failures: u64,
    /// Latency bucket counts (not cumulative), last is +Inf.
    pub latency: Vec<u64>,
    /// Sum of latencies in microseconds.
    pub latency_sum_us: u64,
}

impl Cell {
    fn new(key: CellKey) -> Cell {
        Cell {
            key,
            codes: Box::new([const { AtomicU64::new(0) }; 500]),
            upstream_failures: AtomicU64::new(0),
            latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_MS.len() + 1],
            latency_sum_us: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Records one finished request.
    pub fn record(&self, status: u16, latency: Duration, upstream_failure: bool) {
        let idx = usize::from(status.clamp(100, 599) - 100);
        self.codes[idx].fetch_add(1, Relaxed);
        if upstream_failure {
            self.upstream_failures.fetch_add(1, Relaxed);
        }
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// Adds transferred bytes.
    pub fn add_bytes(&self, inbound: u64, outbound: u64) {
        self.bytes_in.fetch_add(inbound, Relaxed);
        self.bytes_out.fetch_add(outbound, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CellSnapshot {
        let codes: Vec<u64> = self.codes.iter().map(|c| c.load(Relaxed)).collect();
        CellSnapshot {
            requests: codes.iter().sum(),
            errors_5xx: codes[400..].iter().sum(),
            upstream_failures: self.upstream_failures.load(Relaxed),
            latency: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
        }
    }
}

/// Process-wide counters, and the registry of cells.
#[derive(Debug, Default)]
pub struct Telemetry {
    cells: Mutex<HashMap<CellKey, Arc<Cell>>>,
    /// Open downstream connections.
    pub open_connections: AtomicI64,
    /// The most downstream connections open at once (0: no limit).
    max_connections: AtomicU64,
    /// Downstream connections closed at once for being over the limit.
    pub connections_over_limit: AtomicU64,
    /// Connections closed after their idle timeout.
    pub idle_timeouts: AtomicU64,
    /// HTTP/1 connections closed for a request head that did not arrive
    /// within the header read timeout.
    pub header_read_timeouts: AtomicU64,
    /// Attempts to bind a listener's address that failed (each retry
    /// counts).
    pub listener_bind_failures: AtomicU64,
    /// Accepted downstream connections.
    pub accepted_connections: AtomicU64,
    /// Configs applied.
    pub reloads_ok: AtomicU64,
    /// Configs refused.
    pub reloads_failed: AtomicU64,
    /// Upstream connections opened.
    pub upstream_connects: AtomicU64,
    /// Upstream connection attempts that failed.
    pub upstream_connect_failures: AtomicU64,
    /// Endpoint ejections, indexed by [`Ejection`].
    ejections: [AtomicU64; 2],
    /// Intercepted connections passed to their original destination.
    pub passthrough_connections: AtomicU64,
    /// Intercepted outbound TCP carried over mTLS to another sidecar.
    pub mesh_tcp_connections: AtomicU64,
    /// Whether this proxy takes its config from a control plane.
    pub managed: AtomicBool,
    /// Whether the config stream to the control plane is up.
    pub control_plane_connected: AtomicBool,
    /// Inbound HTTP requests denied by authorization (403).
    pub authz_denied_requests: AtomicU64,
    /// Inbound HTTP requests whose JWT failed verification (401).
    pub jwt_refused_requests: AtomicU64,
    /// Inbound connections denied by authorization (closed).
    pub authz_denied_connections: AtomicU64,
    /// Requests and connections matched by an AUDIT policy.
    pub authz_audited: AtomicU64,
    /// Inbound plaintext connections refused by `STRICT` mTLS.
    pub plaintext_refused: AtomicU64,
    /// Downstream TLS handshakes that failed or ran past
    /// `--handshake-timeout`: inbound mTLS and gateway HTTPS listeners.
    pub tls_handshake_failures: AtomicU64,
    /// Admin requests for the running config from off the pod (refused).
    pub admin_config_refused: AtomicU64,
    /// HTTP/1 requests refused for ambiguous framing (400).
    pub framing_refused: AtomicU64,
    /// Mirror copies given up because their body could not follow the
    /// original's.
    pub mirror_copies_given_up: AtomicU64,
    /// Workload certificates installed.
    pub certificates_issued: AtomicU64,
    /// Certificate requests that failed.
    pub certificate_failures: AtomicU64,
    /// The current workload certificate's notAfter (Unix seconds), 0 without one.
    pub certificate_expiry: AtomicI64,
}

impl Telemetry {
    /// Sets the limit of downstream connections open at once.
    pub fn set_max_connections(&self, n: u64) {
        self.max_connections.store(n, Relaxed);
    }

    /// Whether a new downstream connection would exceed the limit; counts
    /// it when it would. One atomic read per accept, no lock.
    pub fn over_connection_limit(&self) -> bool {
        let max = self.max_connections.load(Relaxed);
        let open = u64::try_from(self.open_connections.load(Relaxed)).unwrap_or(0);
        let over = max != 0 && open >= max;
        if over {
            self.connections_over_limit.fetch_add(1, Relaxed);
        }
        over
    }

    /// Endpoint `endpoint` of `backend` is out of rotation for `out`
    /// because of `cause`: counted, and logged, since an ejection is the
    /// first sign of a workload going bad (at most one line per endpoint
    /// per second: an ejected endpoint is not tried again until it ends).
    pub fn ejected(
        &self,
        backend: &str,
        endpoint: std::net::SocketAddr,
        why: Ejection,
        out: Duration,
        cause: &dyn std::fmt::Display,
    ) {
        self.ejections[why as usize].fetch_add(1, Relaxed);
        tracing::info!(
            %backend,
            %endpoint,
            reason = why.as_str(),
            out_ms = out.as_millis() as u64,
            "endpoint ejected: {cause}"
        );
    }

    /// The cell for `key`, created on first use. Called when a config is
    /// compiled, never per request.
    pub fn cell(&self, key: CellKey) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Cell::new(key)))
            .clone()
    }

    /// Every cell, for scrapes and telemetry reports.
    pub fn cells(&self) -> Vec<Arc<Cell>> {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Arc<Cell>> = cells.values().cloned().collect();
        v.sort_by(|a, b| {
            (&a.key.listener, &a.key.route, &a.key.backend).cmp(&(
                &b.key.listener,
                &b.key.route,
                &b.key.backend,
            ))
        });
        v
    }
}

/// Encodes [`Telemetry`] for a prometheus-client registry.
#[derive(Debug)]
pub struct TelemetryCollector(pub Arc<Telemetry>);

impl Collector for TelemetryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.0;
        encode_cells(&t.cells(), &mut encoder)?;
        encode_counters(t, &mut encoder)?;
        encode_gauges(t, &mut encoder)
    }
}

/// The per-(listener, route, backend, revision) families.
fn encode_cells(cells: &[Arc<Cell>], encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    {
        let mut family = encoder.encode_descriptor(
            "sluice_requests",
            "HTTP requests by listener, route, backend, revision and status code.",
            None,
            MetricType::Counter,
        )?;
        for cell in cells {
            for (i, c) in cell.codes.iter().enumerate() {
                let n = c.load(Relaxed);
                if n == 0 {
                    continue;
                }
                let code = (i + 100).to_string();
                let labels = labels(&cell.key, &[("code", &code)]);
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sluice_request_duration_seconds",
            "Time from request to upstream response headers.",
            None,
            MetricType::Histogram,
        )?;
        for cell in cells {
            let counts: Vec<u64> = cell.latency.iter().map(|c| c.load(Relaxed)).collect();
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MS
                .iter()
                .map(|ms| ms / 1000.0)
                .chain([f64::INFINITY])
                .zip(counts.iter().copied())
                .collect();
            let sum = cell.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let labels = labels(&cell.key, &[]);
            family
                .encode_family(&labels)?
                .encode_histogram::<Vec<(String, String)>>(sum, count, &buckets, None)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sluice_upstream_failures",
            "Requests answered by the proxy because the backend gave no response.",
            None,
            MetricType::Counter,
        )?;
        for cell in cells {
            let n = cell.upstream_failures.load(Relaxed);
            if n > 0 {
                ConstCounter::new(n).encode(family.encode_family(&labels(&cell.key, &[]))?)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sluice_bytes",
            "Bytes proxied, by direction.",
            None,
            MetricType::Counter,
        )?;
        for cell in cells {
            for (dir, v) in [("in", &cell.bytes_in), ("out", &cell.bytes_out)] {
                let n = v.load(Relaxed);
                if n > 0 {
                    ConstCounter::new(n)
                        .encode(family.encode_family(&labels(&cell.key, &[("direction", dir)]))?)?;
                }
            }
        }
    }
    Ok(())
}

/// The proxy-wide counters without labels: (name, help, value).
fn plain_counters(t: &Telemetry) -> [(&'static str, &'static str, &AtomicU64); 20] {
    [
        (
            "sluice_connections_accepted",
            "Downstream connections accepted.",
            &t.accepted_connections,
        ),
        (
            "sluice_upstream_connects",
            "Upstream connections opened.",
            &t.upstream_connects,
        ),
        (
            "sluice_upstream_connect_failures",
            "Upstream connection attempts that failed.",
            &t.upstream_connect_failures,
        ),
        (
            "sluice_passthrough_connections",
            "Intercepted connections the mesh does not route, passed to their original destination.",
            &t.passthrough_connections,
        ),
        (
            "sluice_mesh_tcp_connections",
            "Intercepted outbound TCP connections no route takes, carried over mTLS to the destination's sidecar.",
            &t.mesh_tcp_connections,
        ),
        (
            "sluice_authz_denied_requests",
            "Inbound HTTP requests denied by an authorization policy (403).",
            &t.authz_denied_requests,
        ),
        (
            "sluice_jwt_refused_requests",
            "Inbound HTTP requests refused because their JWT failed verification (401).",
            &t.jwt_refused_requests,
        ),
        (
            "sluice_authz_denied_connections",
            "Inbound connections closed by an authorization policy.",
            &t.authz_denied_connections,
        ),
        (
            "sluice_authz_audited",
            "Requests and connections that matched an AUDIT policy.",
            &t.authz_audited,
        ),
        (
            "sluice_admin_config_refused",
            "Requests for /config on the admin port from off the pod, refused (403).",
            &t.admin_config_refused,
        ),
        (
            "sluice_listener_bind_failures",
            "Attempts to bind a listener's address that failed (the port is taken); retried, 250 ms doubling to 30 s.",
            &t.listener_bind_failures,
        ),
        (
            "sluice_idle_timeouts",
            "Connections closed after --connection-idle-timeout without a byte either way.",
            &t.idle_timeouts,
        ),
        (
            "sluice_header_read_timeouts",
            "HTTP/1 connections closed because a request head, once started, did not arrive within --header-read-timeout.",
            &t.header_read_timeouts,
        ),
        (
            "sluice_connections_over_limit",
            "Downstream connections closed at once: the proxy had its --max-connections open.",
            &t.connections_over_limit,
        ),
        (
            "sluice_framing_refused",
            "HTTP/1 requests refused for ambiguous or broken framing (400, connection closed).",
            &t.framing_refused,
        ),
        (
            "sluice_mirror_copies_given_up",
            "Mirror copies given up (not counted for the mirror backend): their upstream fell behind the original's body, or the original failed.",
            &t.mirror_copies_given_up,
        ),
        (
            "sluice_plaintext_refused",
            "Inbound plaintext connections refused by STRICT mTLS.",
            &t.plaintext_refused,
        ),
        (
            "sluice_tls_handshake_failures",
            "Downstream TLS handshakes that failed (inbound mTLS: no, expired or foreign certificate; gateway HTTPS: no certificate for the name) or ran past --handshake-timeout.",
            &t.tls_handshake_failures,
        ),
        (
            "sluice_certificates_issued",
            "Workload certificates received from the control plane.",
            &t.certificates_issued,
        ),
        (
            "sluice_certificate_failures",
            "Workload certificate requests that failed.",
            &t.certificate_failures,
        ),
    ]
}

/// The proxy-wide counters.
fn encode_counters(t: &Telemetry, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    for (name, help, v) in plain_counters(t) {
        ConstCounter::new(v.load(Relaxed)).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    {
        let mut reloads = encoder.encode_descriptor(
            "sluice_config_reloads",
            "Configuration documents applied or refused.",
            None,
            MetricType::Counter,
        )?;
        for (result, v) in [("applied", &t.reloads_ok), ("refused", &t.reloads_failed)] {
            ConstCounter::new(v.load(Relaxed))
                .encode(reloads.encode_family(&[("result", result)])?)?;
        }
    }
    let mut ejections = encoder.encode_descriptor(
            "sluice_upstream_ejections",
            "Endpoints taken out of rotation for a while, by reason: unreachable (a connection failed) or 5xx (a run of 5xx answers).",
            None,
            MetricType::Counter,
        )?;
    for why in [Ejection::Unreachable, Ejection::Failing] {
        ConstCounter::new(t.ejections[why as usize].load(Relaxed))
            .encode(ejections.encode_family(&[("reason", why.as_str())])?)?;
    }
    Ok(())
}

/// The proxy-wide gauges.
fn encode_gauges(t: &Telemetry, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let gauge = ConstGauge::new(t.open_connections.load(Relaxed));
    gauge.encode(encoder.encode_descriptor(
        "sluice_open_connections",
        "Open downstream connections.",
        None,
        MetricType::Gauge,
    )?)?;
    let expiry = t.certificate_expiry.load(Relaxed);
    if expiry > 0 {
        ConstGauge::new(expiry).encode(encoder.encode_descriptor(
            "sluice_certificate_expiry_timestamp_seconds",
            "When the workload certificate in use expires (Unix time).",
            None,
            MetricType::Gauge,
        )?)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        ConstGauge::new(i64::from(expiry > now)).encode(encoder.encode_descriptor(
            "sluice_certificate_valid",
            "1 while the workload certificate in use is valid; 0 once it has expired (renewal keeps being retried, and /ready fails).",
            None,
            MetricType::Gauge,
        )?)?;
    }
    if t.managed.load(Relaxed) {
        ConstGauge::new(i64::from(t.control_plane_connected.load(Relaxed))).encode(
            encoder.encode_descriptor(
                "sluice_control_plane_connected",
                "1 while the config stream to the control plane is up; 0 while the proxy serves its last good config alone.",
                None,
                MetricType::Gauge,
            )?,
        )?;
    }
    Ok(())
}

fn labels(key: &CellKey, extra: &[(&'static str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![
        ("listener".to_owned(), key.listener.to_string()),
        ("route".to_owned(), key.route.to_string()),
        ("backend".to_owned(), key.backend.to_string()),
        ("revision".to_owned(), key.revision.to_string()),
    ];
    v.extend(
        extra
            .iter()
            .map(|(k, val)| ((*k).to_owned(), (*val).to_owned())),
    );
    v
}
