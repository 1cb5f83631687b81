//! A sidecar's inbound side: the workload's ports, its mTLS mode (the
//! namespace's `sluice.dev/mtls-mode` label, else the mesh's), and the
//! AuthorizationPolicies and RequestAuthentications that select its pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sluice_crds::authz::WorkloadSelector;
use sluice_proto::authn::JwtRule;
use sluice_proto::authz::Policy;
use sluice_proto::config::{Inbound, InboundPort, ListenerProtocol, MtlsMode};

use super::MeshInput;
use super::authn::Resolved;
use super::policies::{Checked, to_proxy};
use super::services::PROXY_CONTAINER;

/// The namespace label that sets the mTLS mode of its workloads.
pub const MTLS_MODE_LABEL: &str = "sluice.dev/mtls-mode";

/// What of a pod its inbound side depends on besides its namespace: its
/// labels and ports, or that it is not known yet. Pods that agree on it
/// (a Deployment's replicas) get the same inbound side, so a translation
/// computes it once for all of them.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PodInputs<'a>(Option<(&'a BTreeMap<String, String>, Vec<InboundPort>)>);

impl<'a> PodInputs<'a> {
    /// `pod`'s, or those of a pod not known yet.
    pub fn of(pod: Option<&'a Pod>) -> PodInputs<'a> {
        PodInputs(pod.map(|p| (p.labels(), ports(p))))
    }
}

/// The inbound side of a pod in `namespace` (no ports and no policies
/// while the pod is not known yet: its snapshot follows as soon as it is).
/// Policies `checked` refused and RequestAuthentications `resolved` left
/// out are left out here too.
pub fn for_pod(
    input: &MeshInput,
    checked: &Checked,
    resolved: &Resolved,
    namespace: &str,
    pod: Option<&Pod>,
) -> Inbound {
    for_inputs(input, checked, resolved, namespace, &PodInputs::of(pod))
}

/// [`for_pod`] of any pod with `pod`'s inputs.
pub fn for_inputs(
    input: &MeshInput,
    checked: &Checked,
    resolved: &Resolved,
    namespace: &str,
    pod: &PodInputs<'_>,
) -> Inbound {
    let mode = mode(input, namespace);
    let Some((labels, ports)) = &pod.0 else {
        return Inbound {
            mode,
            ..Inbound::default()
        };
    };
    Inbound {
        mode,
        ports: ports.clone(),
        policies: policies(input, checked, namespace, labels),
        jwt_rules: jwt_rules(input, resolved, namespace, labels),
    }
}

/// Whether an object of namespace `of` with `selector` selects a pod of
/// `namespace` with `labels`: its own namespace's or the root namespace's,
/// no selector selecting all.
fn selects(
    input: &MeshInput,
    of: &str,
    selector: Option<&WorkloadSelector>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    (of == namespace || of == input.mesh.root_namespace)
        && selector.is_none_or(|s| s.matches(labels))
}

/// The rules of the RequestAuthentications selecting the pod, in name
/// order; an issuer a rule earlier in that order gave is skipped, as a
/// proxy trusts one key set per issuer.
fn jwt_rules(
    input: &MeshInput,
    resolved: &Resolved,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<JwtRule> {
    let mut selected: Vec<(String, String)> = input
        .authentications
        .iter()
        .filter(|a| {
            let ns = a.namespace().unwrap_or_default();
            selects(input, &ns, a.spec.selector.as_ref(), namespace, labels)
        })
        .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
        .collect();
    selected.sort();
    let mut out: Vec<JwtRule> = Vec::new();
    for key in selected {
        let Some(rules) = resolved.rules.get(&key) else {
            continue;
        };
        for r in rules {
            if !out.iter().any(|o| o.issuer == r.issuer) {
                out.push(r.clone());
            }
        }
    }
    out
}

fn mode(input: &MeshInput, namespace: &str) -> MtlsMode {
    let label = input
        .namespaces
        .iter()
        .find(|n| n.name_any() == namespace)
        .and_then(|n| n.labels().get(MTLS_MODE_LABEL).cloned());
    match label.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("STRICT") => MtlsMode::Strict,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        _ => input.mesh.mode,
    }
}

/// The app containers' declared TCP ports; a port named `tcp*` is opaque.
fn ports(pod: &Pod) -> Vec<InboundPort> {
    let mut out: Vec<InboundPort> = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        if c.name == PROXY_CONTAINER {
            continue;
        }
        for p in c.ports.iter().flatten() {
            let Ok(port) = u16::try_from(p.container_port) else {
                continue;
            };
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" || out.iter().any(|o| o.port == port)
            {
                continue;
            }
            let tcp = p
                .name
                .as_deref()
                .is_some_and(|n| super::services::opaque_port(n, None));
            out.push(InboundPort {
                port,
                protocol: if tcp {
                    ListenerProtocol::Tcp
                } else {
                    ListenerProtocol::Http
                },
            });
        }
    }
    out.sort_by_key(|p| p.port);
    out
}

/// Policies of the pod's namespace and of the root namespace whose
/// selector matches the pod's labels (no selector: all of them), in a
/// stable order.
fn policies(
    input: &MeshInput,
    checked: &Checked,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Policy> {
    let mut out: Vec<Policy> = input
        .policies
        .iter()
        .filter(|p| {
            let ns = p.namespace().unwrap_or_default();
            selects(input, &ns, p.spec.selector.as_ref(), namespace, labels)
                && checked.accepted(&ns, &p.name_any())
        })
        .map(|p| to_proxy(p))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshSettings;
    use serde_json::json;
    use std::sync::Arc;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    #[test]
    fn selects_policies_mode_and_ports() {
        let input = MeshInput {
            pods: vec![parse(json!({
                "metadata": {"name": "blue-1", "namespace": "h", "labels": {"app": "handson"}},
                "spec": {"containers": [
                    {"name": "app", "ports": [{"name": "http", "containerPort": 8080}, {"name": "tcp-db", "containerPort": 5432}]},
                    {"name": "sluice-proxy", "ports": [{"containerPort": 15021}]}
                ]}
            }))],
            namespaces: vec![parse(
                json!({"metadata": {"name": "h", "labels": {MTLS_MODE_LABEL: "STRICT"}}}),
            )],
            policies: vec![
                parse(
                    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "mine", "namespace": "h"},
                    "spec": {"selector": {"matchLabels": {"app": "handson"}}, "action": "DENY", "rules": [{}]}}),
                ),
                parse(
                    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "other-app", "namespace": "h"},
                    "spec": {"selector": {"matchLabels": {"app": "other"}}}}),
                ),
                parse(
                    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "mesh-wide", "namespace": "sluice-system"}, "spec": {"action": "AUDIT"}}),
                ),
                parse(
                    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "elsewhere", "namespace": "x"}, "spec": {}}),
                ),
            ],
            mesh: MeshSettings {
                root_namespace: "sluice-system".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let checked = Checked::of(&input.policies);
        let inb = for_pod(
            &input,
            &checked,
            &Resolved::default(),
            "h",
            input.pods.first().map(|p| &**p),
        );
        assert_eq!(inb.mode, MtlsMode::Strict);
        let names: Vec<&str> = inb.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["h/mine", "sluice-system/mesh-wide"]);
        assert_eq!(
            inb.ports,
            vec![
                InboundPort {
                    port: 5432,
                    protocol: ListenerProtocol::Tcp
                },
                InboundPort {
                    port: 8080,
                    protocol: ListenerProtocol::Http
                },
            ]
        );
        // Another namespace falls back to the mesh's mode.
        assert_eq!(
            for_pod(&input, &checked, &Resolved::default(), "x", None).mode,
            MtlsMode::Permissive
        );
    }

    #[test]
    fn jwt_rules_of_the_selecting_request_authentications_one_per_issuer() {
        let jwks = r#"{"keys": []}"#;
        let authn = |name: &str, ns: &str, selector: serde_json::Value, issuers: &[&str]| {
            let rules: Vec<serde_json::Value> = issuers
                .iter()
                .map(|i| json!({"issuer": i, "jwks": jwks}))
                .collect();
            parse::<sluice_crds::RequestAuthentication>(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "RequestAuthentication",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": selector, "jwtRules": rules}
            }))
        };
        let input = MeshInput {
            pods: vec![parse(json!({
                "metadata": {"name": "shop-1", "namespace": "h", "labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "app"}]}
            }))],
            authentications: vec![
                authn(
                    "b-mine",
                    "h",
                    json!({"matchLabels": {"app": "shop"}}),
                    &["idp-1", "idp-2"],
                ),
                authn("a-mesh", "sluice-system", json!(null), &["idp-2"]),
                authn(
                    "c-other",
                    "h",
                    json!({"matchLabels": {"app": "bank"}}),
                    &["idp-3"],
                ),
                authn("d-elsewhere", "x", json!(null), &["idp-4"]),
            ],
            mesh: MeshSettings {
                root_namespace: "sluice-system".into(),
                ..MeshSettings::default()
            },
            ..MeshInput::default()
        };
        let checked = Checked::of(&[]);
        let resolved = Resolved::of(&input.authentications, &BTreeMap::new());
        let inb = for_pod(
            &input,
            &checked,
            &resolved,
            "h",
            input.pods.first().map(|p| &**p),
        );
        let issuers: Vec<&str> = inb.jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
        // h/b-mine sorts before sluice-system/a-mesh: its idp-2 is kept.
        assert_eq!(issuers, ["idp-1", "idp-2"]);
    }
}
