//! The gRPC contract between the Sluice control plane and its proxies,
//! generated from `sluice/mesh/v1alpha1/mesh.proto`. Both the operator and
//! the proxy depend on this crate, and on nothing of each other.

/// `sluice.mesh.v1alpha1`: config push, telemetry.
pub mod mesh {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("sluice.mesh.v1alpha1");
}

pub mod authn;
pub mod authz;
pub mod bootstrap;
pub mod config;
pub mod delta;
pub mod images;
pub mod probes;
pub mod telemetry;
