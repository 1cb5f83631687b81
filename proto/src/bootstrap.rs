//! How a proxy reaches and trusts the control plane before its first
//! snapshot: the files the injector and the chart mount into its pod, the
//! ConfigMap the operator publishes in every namespace (as Istio publishes
//! `istio-ca-root-cert`), and the identity the operator presents.

/// The name of the proxy's container in a meshed pod: the mesh counts a
/// pod as a sidecar's when one of its containers has it.
pub const PROXY_CONTAINER: &str = "sluice-proxy";

/// Where the injector and the chart mount a proxy's bootstrap files (one
/// projected volume: the token and the mesh roots).
pub const SECRETS_DIR: &str = "/var/run/secrets/sluice.dev";

/// The projected service-account token's file name in [`SECRETS_DIR`].
pub const TOKEN_PATH: &str = "token";

/// The mesh roots' file name in [`SECRETS_DIR`].
pub const ROOT_CERT_PATH: &str = "root-cert.pem";

/// The audience of the token a proxy trades for its certificate.
pub const TOKEN_AUDIENCE: &str = "sluice";

/// The ConfigMap, in every namespace, that holds the mesh roots.
pub const ROOT_CERT_CONFIGMAP: &str = "sluice-ca-root-cert";

/// The roots' key in [`ROOT_CERT_CONFIGMAP`] (the file name it is mounted as).
pub const ROOT_CERT_KEY: &str = ROOT_CERT_PATH;

/// The operator's service account, as the chart names it.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "sluice-operator";

/// The operator's namespace, as the chart's defaults name it.
pub const OPERATOR_NAMESPACE: &str = "sluice-system";

/// `SECRETS_DIR/name`.
pub fn secret_file(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}
