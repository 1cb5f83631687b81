//! The Sluice test bed: a real Kubernetes cluster on this machine, for
//! end-to-end tests and the local sandbox.
//!
//! [`Cluster::start`] builds (once, cached) and starts etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler on free ports, then a real
//! node (containerd, the kubelet, kube-proxy, CoreDNS) whose pods run
//! Sluice's own OCI images, and hands out a [`kube::Client`]. Dropping the
//! [`Cluster`] stops every process and puts the host back as it was (pods,
//! mounts, cgroups, iptables chains, sysctls), also when a test panics; a
//! node whose harness was killed is cleaned up by the next one.

pub mod cargo_env;
pub mod cluster;
pub mod control_plane;
pub mod error;
pub mod mesh_client;
pub mod node;
pub mod operator;
pub mod pki;
pub mod process;
pub mod procfs;
pub mod prometheus;
pub mod toolchain;
pub mod virtual_node;
pub mod wait;

pub use cluster::Cluster;
pub use cluster::{ExecOutput, PortForward};
pub use error::Error;
pub use toolchain::{Toolchain, workspace_root};
