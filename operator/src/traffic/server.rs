//! The `Telemetry` gRPC service. A stream from a proxy is bound to the pod
//! its certificate and address prove; each delta is kept only if that
//! proxy may speak for it ([`crate::trust::reports`]), then recorded and
//! passed on to the other replicas ([`super::relay`]) as already checked.
//! A stream from another replica (the operator's own identity) carries
//! such checked deltas and is recorded as is.

use std::sync::Arc;

use sluice_proto::mesh::telemetry_server::Telemetry;
use sluice_proto::mesh::{TelemetryAck, TelemetryReport, TrafficDelta};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::{Relay, TrafficWindow};
use crate::metrics::{Metrics, ReasonLabel};
use crate::trust::reports::{self, DeltaRefusal};
use crate::trust::{Peer, Reason, Refusal, TrustSettings, VerifiedProxy, verify_proxy};
use crate::world::World;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct TelemetryServer {
    window: Arc<TrafficWindow>,
    metrics: Arc<Metrics>,
    relay: Option<Arc<Relay>>,
    world: World,
    trust: Arc<TrustSettings>,
}

impl TelemetryServer {
    /// Feeds `window`, and with a `relay`, the other replicas; checks
    /// proxies against `world`.
    pub fn new(
        window: Arc<TrafficWindow>,
        metrics: Arc<Metrics>,
        relay: Option<Arc<Relay>>,
        world: World,
        trust: Arc<TrustSettings>,
    ) -> TelemetryServer {
        TelemetryServer {
            window,
            metrics,
            relay,
            world,
            trust,
        }
    }

    fn refuse(&self, r: Refusal) -> Status {
        self.metrics.refused("telemetry", r.reason.as_str());
        warn!("telemetry stream refused: {r}");
        r.status()
    }

    fn refused_delta(&self, reason: &str, n: u64) {
        if n > 0 {
            self.metrics
                .telemetry_refused
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc_by(n);
        }
    }

    fn record(&self, deltas: &[TrafficDelta]) {
        let overflow = self.window.record(deltas);
        self.refused_delta("window_full", overflow.0 as u64);
        self.metrics
            .telemetry_series
            .set(i64::try_from(self.window.series_count()).unwrap_or(i64::MAX));
    }

    /// One report of a verified proxy.
    fn take(&self, proxy: &VerifiedProxy, report: TelemetryReport) {
        self.metrics.telemetry_reports.inc();
        if report.relayed {
            self.refused_delta("relayed_by_proxy", report.deltas.len() as u64);
            return;
        }
        let deltas = reports::admit(proxy, report.deltas, |r: DeltaRefusal| {
            self.refused_delta(r.as_str(), 1);
        });
        if deltas.is_empty() {
            return;
        }
        self.record(&deltas);
        if let Some(relay) = &self.relay {
            relay.send(TelemetryReport {
                deltas,
                relayed: true,
                ..report
            });
        }
    }

    /// A stream from another replica: checked deltas, kept as they are.
    async fn relayed(&self, mut stream: Streaming<TelemetryReport>) -> Result<(), Status> {
        while let Some(report) = stream.message().await? {
            self.metrics.telemetry_reports.inc();
            self.metrics.telemetry_relayed.inc();
            let mut shape = 0;
            let deltas: Vec<TrafficDelta> = report
                .deltas
                .into_iter()
                .filter(|d| {
                    let ok = reports::well_formed(d);
                    shape += u64::from(!ok);
                    ok
                })
                .collect();
            self.refused_delta(DeltaRefusal::Shape.as_str(), shape);
            self.record(&deltas);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryServer {
    async fn report(
        &self,
        request: Request<Streaming<TelemetryReport>>,
    ) -> Result<Response<TelemetryAck>, Status> {
        let peer = Peer::of(&request, &self.trust.trust_domain).map_err(|r| self.refuse(r))?;
        let mut stream = request.into_inner();
        if peer.id == self.trust.operator {
            self.relayed(stream).await?;
            return Ok(Response::new(TelemetryAck {}));
        }
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(TelemetryAck {}));
        };
        if first.relayed {
            return Err(self.refuse(Refusal::new(
                Reason::NotOperator,
                format!("{} is not an operator replica: it may not relay", peer.id),
            )));
        }
        let hello = first.identity.clone().unwrap_or_default();
        let proxy = verify_proxy(&self.world, &peer, &hello, &self.trust.root_namespace)
            .await
            .map_err(|r| self.refuse(r))?;
        debug!(pod = %format!("{}/{}", proxy.namespace, proxy.pod), "telemetry stream");
        self.take(&proxy, first);
        while let Some(report) = stream.message().await? {
            self.take(&proxy, report);
        }
        Ok(Response::new(TelemetryAck {}))
    }
}
