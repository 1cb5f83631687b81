//! Application probes served by the sidecar. With interception on, the
//! kubelet's plaintext probe to an app port would land on the sidecar's
//! inbound side (and be refused in STRICT mTLS), so the injector points the
//! app's HTTP and TCP probes at the sidecar's admin port instead, as Istio
//! does, and hands the sidecar the original probes in [`APP_PROBES_ENV`].
//! gRPC health probes move the same way. The sidecar runs each against the
//! app over loopback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The sidecar's env var holding [`AppProbes`] as JSON.
pub const APP_PROBES_ENV: &str = "SLUICE_APP_PROBES";

/// The sidecar's admin port, where the rewritten probes point.
pub const ADMIN_PORT: u16 = 15021;

/// Admin paths (from [`probe_path`]) to the probes they run.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// One original probe of an app container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    /// The app's port (named ports already resolved).
    pub port: u16,
    /// What the probe asks the app.
    pub check: Check,
    /// The probe's `timeoutSeconds`.
    pub timeout_seconds: u32,
}

/// The kind of an [`AppProbe`], as the kubelet has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Check {
    /// Connect, nothing more.
    TcpSocket,
    /// An HTTP GET: any status from 200 to 399 passes.
    HttpGet(HttpGet),
    /// A `grpc.health.v1.Health/Check` call: `SERVING` passes.
    Grpc(Grpc),
}

/// The gRPC part of an [`AppProbe`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grpc {
    /// The service name asked about; empty asks about the server as a whole.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// The HTTP part of an [`AppProbe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    /// Request path (with its query).
    pub path: String,
    /// Extra request headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// The admin path of `container`'s probe of `kind` (`readiness`,
/// `liveness` or `startup`).
pub fn probe_path(container: &str, kind: &str) -> String {
    format!("/app-health/{container}/{kind}")
}
