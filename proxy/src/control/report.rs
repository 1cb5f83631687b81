//! The telemetry stream: every interval, the change of each telemetry cell
//! since the last report. A sidecar reports what its own pod received (its
//! inbound side, which the operator attributes to the pod); a gateway what
//! it sent, per (destination service, revision). Neither names itself: the
//! operator knows the reporter by its certificate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::telemetry_client::TelemetryClient;
use sluice_proto::mesh::{TelemetryReport, TrafficDelta};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::{Backoff, Settings, connect};
use crate::compiled::INBOUND_PREFIX;
use crate::state::Proxy;
use crate::telemetry::{CellKey, CellSnapshot};

/// Remembers the counters last reported, to send deltas.
#[derive(Debug, Default)]
pub struct DeltaTracker {
    last: HashMap<CellKey, CellSnapshot>,
}

impl DeltaTracker {
    /// The deltas since the previous call. A sidecar (`role`) reports its
    /// inbound cells; a gateway the cells of backends that are a Service's,
    /// per (service, revision). Other cells (static backends, unrouted
    /// requests) are not reported.
    pub fn deltas(&mut self, proxy: &Proxy, role: Role) -> Vec<TrafficDelta> {
        let current = proxy.current();
        let services: HashMap<&str, &str> = current
            .config
            .backends
            .iter()
            .filter_map(|b| b.service.as_deref().map(|s| (b.name.as_str(), s)))
            .collect();
        let mut sums: BTreeMap<(String, String), TrafficDelta> = BTreeMap::new();
        for cell in proxy.telemetry.cells() {
            let now = cell.snapshot();
            let before = self.last.insert(cell.key.clone(), now.clone());
            let inbound = cell.key.backend.starts_with(INBOUND_PREFIX);
            let target = match role {
                Role::Sidecar if inbound => None,
                Role::Gateway if !inbound => match services.get(&*cell.key.backend) {
                    Some(service) => Some(*service),
                    None => continue,
                },
                _ => continue,
            };
            let before = before.unwrap_or_default();
            let requests = now.requests.saturating_sub(before.requests);
            if requests == 0 {
                continue;
            }
            let (namespace, name) = match target {
                Some(service) => service.split_once('/').unwrap_or(("", service)),
                None => ("", ""),
            };
            let revision = if inbound { "" } else { &*cell.key.revision };
            let d = sums
                .entry((format!("{namespace}/{name}"), revision.to_owned()))
                .or_insert_with(|| TrafficDelta {
                    destination_service: name.to_owned(),
                    destination_namespace: namespace.to_owned(),
                    destination_revision: revision.to_owned(),
                    latency_buckets: vec![0; sluice_proto::telemetry::LATENCY_CELLS],
                    inbound,
                    ..Default::default()
                });
            d.requests += requests;
            d.errors += now.errors_5xx.saturating_sub(before.errors_5xx);
            for (i, n) in now.latency.iter().enumerate() {
                let prev = before.latency.get(i).copied().unwrap_or(0);
                if let Some(slot) = d.latency_buckets.get_mut(i) {
                    *slot += n.saturating_sub(prev);
                }
            }
        }
        sums.into_values().collect()
    }
}

/// Keeps a telemetry stream open for as long as the process runs.
pub async fn run_reporter(proxy: Arc<Proxy>, settings: Settings) {
    proxy.identity.installed().await;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut tracker = DeltaTracker::default();
    loop {
        let err = session(&proxy, &settings, &mut tracker, &mut backoff).await;
        let delay = backoff.next_delay();
        warn!(endpoint = %settings.address, "telemetry stream: {err}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    proxy: &Proxy,
    settings: &Settings,
    tracker: &mut DeltaTracker,
    backoff: &mut Backoff,
) -> String {
    let channel = match connect(settings).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut client = TelemetryClient::new(channel);
    let (tx, rx) = mpsc::channel::<TelemetryReport>(4);
    let call = client.report(ReceiverStream::new(rx));
    tokio::pin!(call);
    let mut tick = tokio::time::interval(settings.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bounds = sluice_proto::telemetry::bounds_with_inf();
    let role = Role::try_from(settings.identity.role).unwrap_or(Role::Sidecar);
    let mut first = true;
    loop {
        tokio::select! {
            result = &mut call => {
                return match result {
                    Ok(_) => "the control plane ended the stream".into(),
                    Err(status) => status.to_string(),
                };
            }
            _ = tick.tick() => {
                let deltas = tracker.deltas(proxy, role);
                // Send the first report even if empty: it opens the stream.
                if deltas.is_empty() && !first {
                    continue;
                }
                first = false;
                let report = TelemetryReport {
                    identity: Some(settings.identity.clone()),
                    bucket_bounds_ms: bounds.clone(),
                    deltas,
                    timestamp_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                    relayed: false,
                };
                debug!(cells = report.deltas.len(), "telemetry report");
                if tx.send(report).await.is_err() {
                    return "the stream closed".into();
                }
                backoff.reset();
            }
        }
    }
}
