//! What a dedicated Gateway's proxies are made of: a ServiceAccount (their
//! identity), a Deployment and a Service, computed from the Gateway alone
//! so that the same Gateway always yields the same objects.

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use kube::ResourceExt;
use serde_json::{Value, json};
use sluice_proto::config::PROXY_UID;
use sluice_proto::probes::ADMIN_PORT;

use crate::inject::{InjectSettings, POD_ANNOTATION, proxy_env, token_mount, token_volume};
use crate::push::fnv1a;

/// The label on a dedicated Gateway's objects and pods that names it (the
/// Gateway API's own, as other implementations set it).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The Gateway annotation (on the Gateway or in `spec.infrastructure`)
/// that picks its Service's type: `ClusterIP` (the default), `NodePort`
/// or `LoadBalancer`.
pub const SERVICE_TYPE_ANNOTATION: &str = "sluice.dev/service-type";

/// The name of a dedicated Gateway's ServiceAccount, Deployment and
/// Service: `<gateway>-<class>`, as Istio names them, shortened with a
/// hash when it would not fit a Service name (63 characters).
pub fn resource_name(gateway: &str, class: &str) -> String {
    let name = format!("{gateway}-{class}");
    if name.len() <= 63 {
        return name;
    }
    let cut = name
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= 54)
        .last()
        .unwrap_or(0);
    format!(
        "{}-{:08x}",
        name[..cut].trim_end_matches('-'),
        fnv1a(name.as_bytes()) as u32
    )
}

/// The objects of one dedicated Gateway, as server-side apply bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// The proxies' ServiceAccount.
    pub account: Value,
    /// The proxies.
    pub deployment: Value,
    /// The Service in front of them, one port per listener port; absent
    /// while no listener has a usable port.
    pub service: Option<Value>,
}

/// The objects `gw` (of the dedicated class) needs, owned by it so that
/// deleting it deletes them; none while it has no uid yet.
pub fn objects(gw: &Gateway, proxy: &InjectSettings) -> Option<Objects> {
    let uid = gw.uid()?;
    let gw_name = gw.name_any();
    let name = resource_name(&gw_name, &gw.spec.gateway_class_name);
    let (labels, annotations) = propagated(gw);
    let metadata = json!({
        "name": name,
        "namespace": gw.namespace(),
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": gw_name,
            "uid": uid,
            "controller": true,
        }],
    });
    let with_kind = |api: &str, kind: &str, spec: Option<Value>| {
        let mut o = json!({"apiVersion": api, "kind": kind, "metadata": metadata});
        if let Some(spec) = spec {
            o["spec"] = spec;
        }
        o
    };
    Some(Objects {
        account: with_kind("v1", "ServiceAccount", None),
        deployment: with_kind(
            "apps/v1",
            "Deployment",
            Some(deployment_spec(
                &name,
                &gw_name,
                &labels,
                &annotations,
                proxy,
            )),
        ),
        service: service_spec(gw).map(|spec| with_kind("v1", "Service", Some(spec))),
    })
}

/// The labels and annotations every object (and pod) of `gw` carries: the
/// ones `spec.infrastructure` asks for, and the Gateway's name label, which
/// the user's cannot replace (the Deployment selects its pods by it).
fn propagated(gw: &Gateway) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let infra = gw.spec.infrastructure.as_ref();
    let mut labels = infra.and_then(|i| i.labels.clone()).unwrap_or_default();
    labels.insert(GATEWAY_NAME_LABEL.to_owned(), gw.name_any());
    let annotations = infra
        .and_then(|i| i.annotations.clone())
        .unwrap_or_default();
    (labels, annotations)
}

fn deployment_spec(
    account: &str,
    gw_name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    proxy: &InjectSettings,
) -> Value {
    let mut pod_annotations = annotations.clone();
    // A gateway pod is a proxy already: no sidecar in injected namespaces.
    pod_annotations.insert(POD_ANNOTATION.to_owned(), "false".to_owned());
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ] {
        pod_annotations.entry(k.to_owned()).or_insert(v);
    }
    // No `replicas`: one at creation (the default), then whoever scales it
    // (a user, an HPA) owns the count, which the periodic apply leaves be.
    json!({
        "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gw_name}},
        "template": {
            "metadata": {"labels": labels, "annotations": pod_annotations},
            "spec": {
                "serviceAccountName": account,
                // The proxy authenticates with its projected token only.
                "automountServiceAccountToken": false,
                // Listeners on 80 and 443 without root or a capability.
                "securityContext": {
                    "runAsNonRoot": true, "runAsUser": PROXY_UID, "runAsGroup": PROXY_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                },
                "containers": [{
                    "name": "proxy",
                    "image": proxy.image,
                    "args": ["gateway"],
                    "env": proxy_env(proxy),
                    "ports": [{"name": "sluice-admin", "containerPort": ADMIN_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 1},
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [token_mount()],
                }],
                "volumes": [token_volume()],
            },
        },
    })
}

/// One Service port per distinct listener port (the first listener on a
/// port names it); the proxy listens on the same port.
fn service_spec(gw: &Gateway) -> Option<Value> {
    let mut ports: BTreeMap<u16, Value> = BTreeMap::new();
    for l in &gw.spec.listeners {
        let Ok(port) = u16::try_from(l.port) else {
            continue;
        };
        if port == ADMIN_PORT {
            continue;
        }
        ports.entry(port).or_insert_with(|| {
            json!({
                "name": format!("{}-{port}", l.protocol.to_ascii_lowercase()),
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
            })
        });
    }
    if ports.is_empty() {
        return None;
    }
    Some(json!({
        "type": service_type(gw),
        "selector": {GATEWAY_NAME_LABEL: gw.name_any()},
        "ports": ports.into_values().collect::<Vec<_>>(),
    }))
}

/// The Service type [`SERVICE_TYPE_ANNOTATION`] asks for, else ClusterIP.
fn service_type(gw: &Gateway) -> &'static str {
    let infra = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.annotations.as_ref())
        .and_then(|a| a.get(SERVICE_TYPE_ANNOTATION));
    match infra.or_else(|| gw.annotations().get(SERVICE_TYPE_ANNOTATION)) {
        Some(t) if t == "NodePort" => "NodePort",
        Some(t) if t == "LoadBalancer" => "LoadBalancer",
        _ => "ClusterIP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: "sluice/proxy:dev".into(),
            control_plane: "https://sluice-operator.sluice-system.svc:15010".into(),
            control_plane_identity: "spiffe://cluster.local/ns/sluice-system/sa/sluice-operator"
                .into(),
            trust_domain: "cluster.local".into(),
            log_level: "info".into(),
            intercept: true,
        }
    }

    fn gateway(extra: Value) -> Gateway {
        let mut gw = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "shop", "uid": "u-1"},
            "spec": {"gatewayClassName": "sluice-dedicated", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "other-host", "port": 80, "protocol": "HTTP", "hostname": "b.example.com"},
                {"name": "https", "port": 443, "protocol": "HTTPS"},
            ]},
        });
        if let (Some(spec), Some(extra)) = (gw["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(gw).expect("gateway")
    }

    #[test]
    fn a_gateway_gets_an_account_a_deployment_and_a_service_it_owns() {
        let o = objects(&gateway(json!({})), &settings()).expect("objects");
        for obj in [
            &o.account,
            &o.deployment,
            o.service.as_ref().expect("service"),
        ] {
            assert_eq!(obj["metadata"]["name"], "edge-sluice-dedicated");
            assert_eq!(obj["metadata"]["namespace"], "shop");
            assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "u-1");
            assert_eq!(obj["metadata"]["labels"][GATEWAY_NAME_LABEL], "edge");
        }
        let pod = &o.deployment["spec"]["template"];
        assert_eq!(pod["spec"]["serviceAccountName"], "edge-sluice-dedicated");
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(["gateway"]));
        assert_eq!(pod["metadata"]["annotations"][POD_ANNOTATION], "false");
        assert_eq!(
            o.deployment["spec"]["selector"]["matchLabels"],
            json!({GATEWAY_NAME_LABEL: "edge"})
        );
        assert!(
            o.deployment["spec"].get("replicas").is_none(),
            "the replica count is left to whoever scales it"
        );
    }

    #[test]
    fn the_service_has_one_port_per_listener_port() {
        let o = objects(&gateway(json!({})), &settings()).expect("objects");
        let svc = o.service.expect("service");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        let ports: Vec<(u64, &str)> = svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap_or(0),
                    p["name"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(ports, vec![(80, "http-80"), (443, "https-443")]);
    }

    #[test]
    fn infrastructure_labels_and_annotations_reach_every_object_and_the_pods() {
        let gw = gateway(json!({"infrastructure": {
            "labels": {"team": "web", GATEWAY_NAME_LABEL: "not-it"},
            "annotations": {"cost-centre": "42", SERVICE_TYPE_ANNOTATION: "NodePort"},
        }}));
        let o = objects(&gw, &settings()).expect("objects");
        let svc = o.service.expect("service");
        let pod = &o.deployment["spec"]["template"]["metadata"];
        for meta in [
            &o.account["metadata"],
            &o.deployment["metadata"],
            &svc["metadata"],
            pod,
        ] {
            assert_eq!(meta["labels"]["team"], "web");
            assert_eq!(meta["labels"][GATEWAY_NAME_LABEL], "edge", "ours wins");
            assert_eq!(meta["annotations"]["cost-centre"], "42");
        }
        assert_eq!(svc["spec"]["type"], "NodePort");
    }

    #[test]
    fn a_gateway_without_a_uid_yet_gets_nothing() {
        let mut gw = gateway(json!({}));
        gw.metadata.uid = None;
        assert_eq!(objects(&gw, &settings()), None);
    }

    #[test]
    fn long_names_are_shortened_to_fit_a_service_name() {
        let long = "a".repeat(60);
        let name = resource_name(&long, "sluice-dedicated");
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, resource_name(&"a".repeat(61), "sluice-dedicated"));
        assert_eq!(resource_name("edge", "sluice"), "edge-sluice");
    }
}
