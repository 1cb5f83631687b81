//! The Sluice operator: the rollout controller and the mesh control plane,
//! as a library so that its decisions are unit-tested and the binary stays
//! thin.
//!
//! Data flows one way: reflectors ([`world`]) → a pure translation
//! ([`mesh`]) → versioned snapshots pushed to proxies ([`push`]) and
//! Gateway API status ([`status`]); proxies stream traffic back
//! ([`traffic`]). Every caller of the control plane ([`control_plane`]) is
//! who its certificate and address prove ([`trust`]); dashboard and debug
//! users are who Kubernetes says ([`access`]).

pub mod access;
pub mod ca;
pub mod control_plane;
pub mod dashboard;
pub mod gateway_infra;
pub mod health;
pub mod inject;
pub mod jwks;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod push;
pub mod rollout;
pub mod status;
pub mod stored;
pub mod traffic;
pub mod trust;
pub mod world;
