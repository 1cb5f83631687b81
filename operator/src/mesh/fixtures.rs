//! Small constructors of Kubernetes objects for the translation's tests.

use std::sync::Arc;

use crate::stored::SERVICE_NAME_LABEL;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

pub fn service(ns: &str, name: &str, ports: &[(&str, i32, i32)]) -> Arc<Service> {
    parse(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "198.19.0.10", "ports": ports.iter().map(|(n, p, t)| json!({"name": n, "port": p, "targetPort": t})).collect::<Vec<_>>()}
    }))
}

pub fn slice(
    ns: &str,
    svc: &str,
    port: (&str, i32),
    eps: &[(&str, bool, &str)],
) -> Arc<EndpointSlice> {
    parse(json!({
        "metadata": {"name": format!("{svc}-abc"), "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "ports": [{"name": port.0, "port": port.1}],
        "endpoints": eps.iter().map(|(ip, ready, pod)| json!({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})).collect::<Vec<_>>()
    }))
}

pub fn pod(ns: &str, name: &str, hash: &str) -> Arc<Pod> {
    parse(
        json!({"metadata": {"name": name, "namespace": ns, "labels": {"pod-template-hash": hash}}}),
    )
}

pub fn class(name: &str, controller: &str) -> Arc<GatewayClass> {
    parse(
        json!({"metadata": {"name": name, "generation": 1}, "spec": {"controllerName": controller}}),
    )
}

pub fn gateway(ns: &str, name: &str, class: &str, listeners: Value) -> Arc<Gateway> {
    parse(
        json!({"metadata": {"name": name, "namespace": ns, "generation": 1}, "spec": {"gatewayClassName": class, "listeners": listeners}}),
    )
}

pub fn route(ns: &str, name: &str, spec: Value) -> Arc<HttpRoute> {
    parse(
        json!({"metadata": {"name": name, "namespace": ns, "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}),
    )
}

/// A `kubernetes.io/tls` Secret holding `chain` and `key` (PEM).
pub fn tls_secret(ns: &str, name: &str, chain: &str, key: &str) -> Arc<Secret> {
    use k8s_openapi::ByteString;
    let data = [("tls.crt", chain), ("tls.key", key)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
    }))
    .expect("a valid Secret");
    secret.data = Some(data);
    Arc::new(secret)
}

/// A self-signed certificate for `names`: (chain, key) in PEM.
pub fn certificate(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A ReferenceGrant in `ns` letting `from_kind`s of `from_ns` refer to
/// core `to_kind`s.
pub fn grant(ns: &str, from_kind: &str, from_ns: &str, to_kind: &str) -> Arc<ReferenceGrant> {
    parse(json!({
        "metadata": {"name": format!("{from_kind}-{to_kind}").to_lowercase(), "namespace": ns},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from_ns}],
            "to": [{"group": "", "kind": to_kind}],
        },
    }))
}
