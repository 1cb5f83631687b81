//! The proxy's workload identity: its current certificate and the mesh's
//! trust roots (the `sluice-identity` crate, which the operator uses for
//! its own control-plane TLS too).

pub use sluice_identity::*;
