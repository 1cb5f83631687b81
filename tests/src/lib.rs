//! The Sluice test bed: a real Kubernetes control plane and a node agent on
//! this machine, for end-to-end tests and the local sandbox.
//!
//! [`Cluster::start`] builds (once, cached) and starts etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler on free ports, registers a node
//! whose pods run as local processes in network namespaces, and hands out a
//! [`kube::Client`]. Dropping the [`Cluster`] stops every process and removes
//! every namespace, mount and file it made, also when a test panics.

pub mod cluster;
pub mod control_plane;
pub mod error;
pub mod node;
pub mod operator;
pub mod pki;
pub mod process;
pub mod toolchain;
pub mod wait;

pub use cluster::Cluster;
pub use error::Error;
pub use node::pod::ExecOutput;
pub use toolchain::{Toolchain, workspace_root};
