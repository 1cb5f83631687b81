//! The `Telemetry` gRPC service: feeds every report into the window.

use std::sync::Arc;

use sluice_proto::mesh::telemetry_server::Telemetry;
use sluice_proto::mesh::{TelemetryAck, TelemetryReport};
use tonic::{Request, Response, Status, Streaming};

use super::TrafficWindow;
use crate::metrics::Metrics;

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct TelemetryServer {
    window: Arc<TrafficWindow>,
    metrics: Arc<Metrics>,
}

impl TelemetryServer {
    /// Feeds `window`.
    pub fn new(window: Arc<TrafficWindow>, metrics: Arc<Metrics>) -> TelemetryServer {
        TelemetryServer { window, metrics }
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
        }
        Ok(Response::new(TelemetryAck {}))
    }
}
