//! A sidecar's inbound side: the workload's ports, its mTLS mode (the
//! namespace's `sluice.dev/mtls-mode` label, else the mesh's) and the
//! AuthorizationPolicies that select its pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sluice_proto::authz::Policy;
use sluice_proto::config::{Inbound, InboundPort, ListenerProtocol, MtlsMode};

use super::MeshInput;
use super::policies::{Checked, to_proxy};
use super::services::PROXY_CONTAINER;

/// The namespace label that sets the mTLS mode of its workloads.
pub const MTLS_MODE_LABEL: &str = "sluice.dev/mtls-mode";

/// The inbound side of a pod in `namespace` (no ports and no policies
/// while the pod is not known yet: its snapshot follows as soon as it is).
/// Policies `checked` refused are left out.
pub fn for_pod(
    input: &MeshInput,
    checked: &Checked,
    namespace: &str,
    pod: Option<&Pod>,
) -> Inbound {
    let labels: BTreeMap<String, String> = pod.map(|p| p.labels().clone()).unwrap_or_default();
    Inbound {
        mode: mode(input, namespace),
        ports: pod.map(ports).unwrap_or_default(),
        policies: pod
            .map(|_| policies(input, checked, namespace, &labels))
            .unwrap_or_default(),
    }
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
            (ns == namespace || ns == input.mesh.root_namespace)
                && p.spec.selector.as_ref().is_none_or(|s| s.matches(labels))
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
        let inb = for_pod(&input, &checked, "h", input.pods.first().map(|p| &**p));
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
            for_pod(&input, &checked, "x", None).mode,
            MtlsMode::Permissive
        );
    }
}
