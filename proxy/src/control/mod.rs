//! The proxy's side of the control-plane contract (`sluice-proto`): one
//! config stream that applies pushed snapshots, and one telemetry stream that
//! reports traffic deltas. Both reconnect on their own with jittered
//! backoff; while the config stream is down the proxy keeps serving its last
//! good config (fail static).

mod backoff;
mod certificates;
mod config_stream;
mod report;

use std::time::Duration;

pub use backoff::Backoff;
pub use certificates::{CertificateSettings, run_certificates};
pub use config_stream::run_config_stream;
pub use report::run_reporter;

use sluice_proto::mesh::ProxyIdentity;

/// Where the control plane is and who this proxy is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's gRPC address, e.g. `http://sluice-operator.sluice-system:15010`.
    pub endpoint: String,
    /// Sent first on every stream.
    pub identity: ProxyIdentity,
    /// The workload name telemetry reports as the source.
    pub workload: String,
    /// A stream on which nothing (not even a keepalive) arrived for this
    /// long is considered dead and reopened.
    pub idle_timeout: Duration,
    /// How often traffic deltas are reported.
    pub report_interval: Duration,
}

/// The connection to the control plane, with the timeouts every stream uses.
async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
}
