//! The mesh model: what the cluster's Gateway API resources, Services,
//! EndpointSlices and Pods mean for each proxy, computed as a pure function
//! of observed state so that it is unit-tested without a cluster.
//!
//! [`translate`] yields one proxy config per distinct audience (the shared
//! gateway proxies one, each dedicated Gateway's proxies one, sidecars one
//! per namespace and inbound side) and the Gateway API
//! status each object should show.

pub mod authn;
pub mod certificates;
pub mod filters;
pub mod gateway;
pub mod grants;
pub mod inbound;
pub mod policies;
pub mod rules;
pub mod services;
pub mod sidecar;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod properties;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::{HttpRoute, HttpRouteStatusParentsParentRef};
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_crds::AuthorizationPolicy;
use sluice_proto::config::{Config, MeshTls, MtlsMode};

use services::ServiceIndex;

/// The `controllerName` of Sluice's GatewayClass.
pub const CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

/// The label on HTTPRoutes the Rollout controller manages beside a user's
/// route (header and mirror routes to a canary), naming the Rollout: they
/// win precedence ties with other routes, as Argo Rollouts' managed routes
/// come first.
pub const CANARY_ROUTES_LABEL: &str = "sluice.dev/canary-routes-of";

/// Condition reasons of the Gateway API that Sluice uses.
pub mod reason {
    /// Accepted.
    pub const ACCEPTED: &str = "Accepted";
    /// Programmed.
    pub const PROGRAMMED: &str = "Programmed";
    /// Refs resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A backendRef names a Service that does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// A backendRef names a kind other than Service.
    pub const INVALID_KIND: &str = "InvalidKind";
    /// A backendRef or certificateRef to another namespace without a grant.
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    /// A certificateRef names no usable `kubernetes.io/tls` Secret.
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    /// A parentRef's sectionName or port selects no listener.
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// A listener names route kinds Sluice does not serve.
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    /// A filter (or combination) Sluice cannot serve.
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    /// Another listener holds the port with the other protocol.
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    /// No listener admits the route.
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    /// No listener hostname intersects the route's.
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    /// A listener protocol Sluice does not serve.
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    /// A listener port the proxy cannot serve (its own admin port, or one
    /// another listener holds with the other protocol).
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    /// The data plane has not taken the config yet.
    pub const PENDING: &str = "Pending";
    /// The data plane refused the config.
    pub const INVALID: &str = "Invalid";
}

/// A condition as the translation decides it; the status writer adds
/// `observedGeneration` and keeps `lastTransitionTime` when it is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `type`.
    pub kind: &'static str,
    /// `status` True or False.
    pub ok: bool,
    /// `reason`.
    pub reason: &'static str,
    /// `message`.
    pub message: String,
}

impl Cond {
    /// A True condition whose reason is its type.
    pub fn yes(kind: &'static str, reason: &'static str) -> Cond {
        Cond {
            kind,
            ok: true,
            reason,
            message: String::new(),
        }
    }

    /// A False condition.
    pub fn no(kind: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            kind,
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// Observed state, as the reflectors hold it.
#[derive(Debug, Default, Clone)]
pub struct MeshInput {
    /// GatewayClasses.
    pub classes: Vec<Arc<GatewayClass>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// HTTPRoutes.
    pub routes: Vec<Arc<HttpRoute>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// Namespaces (their `sluice.dev/mtls-mode` label).
    pub namespaces: Vec<Arc<Namespace>>,
    /// AuthorizationPolicies.
    pub policies: Vec<Arc<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub authentications: Vec<Arc<sluice_crds::RequestAuthentication>>,
    /// The JWKS documents of their `jwksUri`s, as fetched, by URI.
    pub jwks: Arc<BTreeMap<String, authn::Fetched>>,
    /// ReferenceGrants.
    pub grants: Vec<Arc<ReferenceGrant>>,
    /// `kubernetes.io/tls` Secrets (certificates of HTTPS listeners).
    pub tls_secrets: Vec<Arc<Secret>>,
    /// Sidecars connected, by (namespace, pod): each gets a snapshot.
    pub sidecar_pods: BTreeSet<(String, String)>,
    /// Mesh-wide identity and mTLS settings.
    pub mesh: MeshSettings,
}

/// Mesh-wide settings from the operator's flags and its CA.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSettings {
    /// `cluster.local` in SPIFFE IDs; empty without a CA (no mTLS).
    pub trust_domain: String,
    /// The roots proxies trust.
    pub roots_pem: Vec<String>,
    /// The mTLS mode of namespaces without a `sluice.dev/mtls-mode` label.
    pub mode: MtlsMode,
    /// Policies here without a selector apply to every workload.
    pub root_namespace: String,
    /// The GatewayClass whose Gateways each get their own proxies
    /// (Deployment and Service); empty: none. Gateways of Sluice's other
    /// classes share the installed gateway.
    pub dedicated_class: String,
}

impl MeshSettings {
    /// What proxies are told about the mesh's identities, when there is a CA.
    pub fn mesh_tls(&self) -> Option<MeshTls> {
        (!self.trust_domain.is_empty()).then(|| MeshTls {
            trust_domain: self.trust_domain.clone(),
            roots_pem: self.roots_pem.clone(),
        })
    }
}

/// Which gateway proxies serve a Gateway: the shared ones the chart
/// installs (every Gateway of a shared class), or the Gateway's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GatewayInfra {
    /// The installed gateway, shared by every Gateway of a shared class.
    Shared,
    /// The proxies deployed for one Gateway of the dedicated class.
    Dedicated {
        /// The Gateway's namespace.
        namespace: String,
        /// The Gateway's name.
        name: String,
    },
}

/// Who receives a snapshot: what a proxy's hello says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Audience {
    /// The gateway proxies of one infrastructure.
    Gateway(GatewayInfra),
    /// The sidecar of one pod: (namespace, pod).
    Sidecar(String, String),
}

/// One distinct config: one per gateway infrastructure, or the sidecars' of one
/// namespace with one inbound side (pods with the same ports, mTLS mode and
/// policies share it, so it is serialised once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigKey {
    /// The config of the gateway proxies of one infrastructure.
    Gateway(GatewayInfra),
    /// (namespace, hash of the inbound side).
    Sidecar(String, u64),
}

/// Status the translation wants on one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayDraft {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The proxies that serve it.
    pub infra: GatewayInfra,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Gateway-level `Accepted`.
    pub accepted: Cond,
    /// Per listener: name, attached routes, conditions.
    pub listeners: Vec<ListenerDraft>,
}

/// Status of one Gateway listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerDraft {
    /// Listener name.
    pub name: String,
    /// Routes attached to it.
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Conflicted`.
    pub conditions: Vec<Cond>,
    /// Whether the proxies serve it, or why not (its `Programmed`).
    pub programmed: Result<(), String>,
    /// Its `supportedKinds` (of the Gateway API group).
    pub route_kinds: Vec<&'static str>,
}

/// Status the translation wants on one HttpRoute: one entry per parent
/// Sluice serves.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteDraft {
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Per parentRef: `Accepted` and `ResolvedRefs`.
    pub parents: Vec<(HttpRouteStatusParentsParentRef, Vec<Cond>)>,
}

/// What [`translate`] computes.
#[derive(Debug, Default)]
pub struct MeshOutput {
    /// Every distinct config.
    pub configs: BTreeMap<ConfigKey, Config>,
    /// Which config each connected sidecar gets (gateways get
    /// [`ConfigKey::Gateway`] of their infrastructure).
    pub sidecars: BTreeMap<Audience, ConfigKey>,
    /// GatewayClasses of Sluice (name, generation), all accepted.
    pub classes: Vec<(String, Option<i64>)>,
    /// Gateways of Sluice's classes.
    pub gateways: Vec<GatewayDraft>,
    /// HTTPRoutes with a parent Sluice serves, by (namespace, name).
    pub routes: BTreeMap<(String, String), RouteDraft>,
    /// Every AuthorizationPolicy, by (namespace, name): accepted, or left
    /// out of every snapshot and why.
    pub policies: BTreeMap<(String, String), policies::PolicyDraft>,
    /// Every RequestAuthentication, by (namespace, name): accepted, pushed
    /// without keys (pending), or left out and why.
    pub authentications: BTreeMap<(String, String), policies::PolicyDraft>,
    /// Services with annotations of Sluice's that do not parse, by
    /// (namespace, name): what is wrong with each.
    pub invalid_service_annotations: BTreeMap<(String, String), Vec<services::InvalidAnnotation>>,
}

/// Computes every audience's config and every status from observed state.
pub fn translate(input: &MeshInput) -> MeshOutput {
    let index = ServiceIndex::build(
        &input.services,
        &input.slices,
        &input.pods,
        &input.mesh.trust_domain,
    )
    .with_grants(grants::Grants::of(&input.grants));
    let checked = policies::Checked::of(&input.policies);
    let resolved = authn::Resolved::of(&input.authentications, &input.jwks);
    let mut out = MeshOutput {
        invalid_service_annotations: index
            .invalid_annotations()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect(),
        ..MeshOutput::default()
    };
    gateway::translate(input, &index, &mut out);
    sidecar::translate(input, &index, &checked, &resolved, &mut out);
    out.policies = checked.drafts;
    out.authentications = resolved.drafts;
    out
}
