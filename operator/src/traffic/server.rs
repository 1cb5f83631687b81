//! The `Telemetry` gRPC service: feeds every report into the window and
//! passes proxies' reports on to the other replicas ([`super::relay`]).

use std::sync::Arc;

use sluice_proto::mesh::telemetry_server::Telemetry;
use sluice_proto::mesh::{TelemetryAck, TelemetryReport};
use tonic::{Request, Response, Status, Streaming};

use super::{Relay, TrafficWindow};
use crate::metrics::Metrics;

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct TelemetryServer {
    window: Arc<TrafficWindow>,
    metrics: Arc<Metrics>,
    relay: Option<Arc<Relay>>,
}

impl TelemetryServer {
    /// Feeds `window`, and with a `relay`, the other replicas.
    pub fn new(
        window: Arc<TrafficWindow>,
        metrics: Arc<Metrics>,
        relay: Option<Arc<Relay>>,
    ) -> TelemetryServer {
        TelemetryServer {
            window,
            metrics,
            relay,
        }
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryServer {
    async fn report(
        &self,
        request: Request<Streaming<TelemetryReport>>,
    ) -> Result<Response<TelemetryAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(report) = stream.message().await? {
            self.metrics.telemetry_reports.inc();
            self.window.record(&report.bucket_bounds_ms, &report.deltas);
            if report.relayed {
                self.metrics.telemetry_relayed.inc();
            } else if let Some(relay) = &self.relay {
                relay.send(&report);
            }
        }
        Ok(Response::new(TelemetryAck {}))
    }
}
