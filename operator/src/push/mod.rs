//! Config push: snapshots computed once per change and shared by every
//! proxy of the same audience, a registry of connected proxies and their
//! ACK state, and the gRPC `ConfigDiscovery` service.

pub mod registry;
pub mod server;
pub mod snapshots;

pub use registry::Registry;
pub use server::{ConfigServer, ConfigServerParts};
pub use snapshots::{SnapshotSet, Snapshots, fnv1a};
