//! Authorization rules in Istio's `AuthorizationPolicy` shape, so that
//! policies carry over unchanged. One definition serves both sides: the
//! `AuthorizationPolicy` custom resource embeds [`Rule`] (with the `schema`
//! feature) and the operator pushes the policies selecting a workload to its
//! proxy as [`Policy`] values inside the config document.
//!
//! Every string in a list matches exactly, by prefix (`abc*`), by suffix
//! (`*abc`), or by presence (`*`).

use serde::{Deserialize, Serialize};

/// The body of the `403` a proxy answers a denied HTTP request with: Istio's
/// proxies answer exactly this, and clients and scripts match on it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow what matches; once any ALLOW policy selects a workload, what
    /// matches none of them is denied.
    #[default]
    Allow,
    /// Deny what matches; evaluated before ALLOW.
    Deny,
    /// Only record what matches (counted, never blocks).
    Audit,
}

/// One rule: every non-empty part must match; within `from` and `to`, any
/// entry may match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Who sends the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    /// What the request does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Extra conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// Wrapper kept for Istio's shape (`from: [{source: {...}}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// The peer's attributes.
    pub source: Source,
}

/// Wrapper kept for Istio's shape (`to: [{operation: {...}}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// The request's attributes.
    pub operation: Operation,
}

/// The peer: all given fields must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from mTLS, `<trust-domain>/ns/<ns>/sa/<sa>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces (from the mTLS identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer addresses: `10.1.2.3` or `10.1.0.0/16`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Request identities from a verified JWT, `<iss>/<sub>` (HTTP only;
    /// `*` asks for any verified token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Request identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

/// The request: all given fields must match. `hosts`, `methods` and `paths`
/// exist only for HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports of the workload, as strings (`"8080"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths (without the query).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A condition on one attribute: `request.headers[<name>]`, `source.ip`,
/// `source.namespace`, `source.principal`, `destination.port`,
/// `request.auth.principal`, `request.auth.audiences`,
/// `request.auth.claims[<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute.
    pub key: String,
    /// Values of which one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The condition keys a proxy understands; anything else is refused at
/// admission.
pub const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "request.auth.principal",
    "request.auth.audiences",
];

/// The prefix of JWT claim condition keys: `request.auth.claims[groups]`.
pub const CLAIM_KEY_PREFIX: &str = "request.auth.claims[";

/// The prefix of header condition keys: `request.headers[x-user]`.
pub const HEADER_KEY_PREFIX: &str = "request.headers[";

/// One policy as a proxy receives it: already selected for its workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// `namespace/name`, for logs and metrics.
    pub name: String,
    /// What a match does.
    #[serde(default)]
    pub action: Action,
    /// Rules, any of which may match. None: an ALLOW policy then matches
    /// nothing (deny all); a DENY policy matches nothing either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}
