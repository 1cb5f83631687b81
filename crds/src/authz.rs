//! The `AuthorizationPolicy` resource: Istio's shape and semantics, so that
//! policies carry over by changing only the `apiVersion`. The rules are the
//! very types the proxies evaluate ([`sluice_proto::authz`]).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
pub use sluice_proto::authz::{Action, Condition, From, Operation, Source, To};

/// Desired state of an [`AuthorizationPolicy`].
// clippy reads the repeated `type_ = ...` of printcolumn(...) as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "ap",
    category = "sluice",
    status = "AuthorizationPolicyStatus",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
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
pub struct AuthorizationPolicySpec {
    /// The workloads (pods) the policy applies to, by label. Absent: every
    /// workload of the namespace; in the operator's namespace (the mesh's
    /// root namespace), every workload of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default), `DENY` or `AUDIT`.
    #[serde(default)]
    pub action: Action,
    /// Rules, any of which may match. An `ALLOW` policy without rules
    /// allows nothing (deny all); `rules: [{}]` matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<sluice_proto::authz::Rule>,
}

/// What the operator made of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicyStatus {
    /// `Accepted`: True when proxies get the policy; False (reason
    /// `Invalid`) when it is left out of every snapshot, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// Pods by label.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a pod must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether a pod with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}
