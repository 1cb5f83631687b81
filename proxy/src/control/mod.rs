//! The proxy's side of the control-plane contract (`sluice-proto`): the
//! workload certificate first (over server-authenticated TLS, with the
//! pod's token), then one config stream that applies pushed snapshots and
//! one telemetry stream that reports traffic deltas, both over mTLS with
//! that certificate. Each reconnects on its own with jittered backoff;
//! while the config stream is down the proxy keeps serving its last good
//! config (fail static).

mod backoff;
mod certificates;
mod config_stream;
mod report;

use std::sync::Arc;
use std::time::Duration;

pub use backoff::Backoff;
pub use certificates::{CertificateSettings, run_certificates};
pub use config_stream::run_config_stream;
pub use report::{DeltaTracker, run_reporter};

use sluice_identity::channel::{self, ChannelError, ControlPlaneAddress};
use sluice_proto::mesh::ProxyIdentity;

/// Where the control plane is and who this proxy is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's gRPC address.
    pub address: ControlPlaneAddress,
    /// TLS towards it: its identity is verified, and this proxy's
    /// certificate presented once it has one.
    pub tls: Arc<rustls::ClientConfig>,
    /// Sent first on every stream; the operator checks it against the
    /// certificate and the connection's address.
    pub identity: ProxyIdentity,
    /// A stream on which nothing (not even a keepalive) arrived for this
    /// long is considered dead and reopened.
    pub idle_timeout: Duration,
    /// How often traffic deltas are reported.
    pub report_interval: Duration,
}

/// A TLS channel to the control plane.
async fn connect(settings: &Settings) -> Result<tonic::transport::Channel, ChannelError> {
    channel::connect(&settings.address, settings.tls.clone()).await
}
