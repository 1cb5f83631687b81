//! Traffic telemetry from the proxies: the gRPC `Telemetry` service and the
//! sliding window that rollout analysis reads.

pub mod relay;
pub mod server;
pub mod window;

pub use relay::Relay;
pub use server::TelemetryServer;
pub use window::{Totals, TrafficKey, TrafficWindow};
