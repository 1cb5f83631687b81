//! Small constructors of Kubernetes objects for the translation's tests.

use std::sync::Arc;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Pod, Service};
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
        "metadata": {"name": format!("{svc}-abc"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
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
