//! The `RequestAuthentication` resource: Istio's shape and semantics, so
//! that a resource carries over by changing only the `apiVersion`. Its
//! rules are the very type sidecars enforce ([`sluice_proto::authn`]).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
pub use sluice_proto::authn::{JwtHeader, JwtRule};

use crate::authz::{AuthorizationPolicyStatus, WorkloadSelector};

/// Desired state of a [`RequestAuthentication`]: the JWT issuers the
/// selected workloads trust. A request with a token of another issuer, or
/// one that fails verification, is refused (`401`); a request without a
/// token passes, unauthenticated: pair it with an AuthorizationPolicy
/// (`requestPrincipals: ["*"]`) to require one.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    namespaced,
    shortname = "ra",
    category = "sluice",
    status = "AuthorizationPolicyStatus",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// The workloads (pods) it applies to, by label. Absent: every
    /// workload of the namespace; in the mesh's root namespace, every
    /// workload of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The trusted issuers, each with its keys (`jwks` inline, or
    /// `jwksUri`, which the operator fetches and refreshes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}
