//! The Sluice operator: the mesh control plane (and, with later work, the
//! rollout controller), as a library so that its decisions are unit-tested
//! and the binary stays thin.
//!
//! Data flows one way: reflectors ([`world`]) → a pure translation
//! ([`mesh`]) → versioned snapshots pushed to proxies ([`push`]) and
//! Gateway API status ([`status`]); proxies stream traffic back
//! ([`traffic`]).

pub mod ca;
pub mod dashboard;
pub mod health;
pub mod inject;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod push;
pub mod rollout;
pub mod status;
pub mod traffic;
pub mod world;
