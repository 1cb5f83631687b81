//! What the operator's stores keep of a watched object: everything it reads,
//! without what it never does. Applied to each watch event before a store
//! (a reflector or the ReplicaSet index) keeps the object, since at 10,000
//! Rollouts the stores are most of the operator's memory.

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use sluice_crds::{AuthorizationPolicy, RequestAuthentication, Rollout};

/// The annotation in which `kubectl apply` keeps a copy of the whole object
/// as last applied: as large as the object itself, and never read here.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The label naming an EndpointSlice's Service: all the mesh reads of its
/// metadata besides its name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Drops what no part of the operator reads: managed fields and the
/// last-applied copy. Objects are only ever patched from their fields, never
/// written back whole, so nothing dropped here can be lost on the server.
pub fn trim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A kind a store keeps: [`trim`]med, and for the kinds stored by the
/// thousand and read by the mesh alone, cut down to the fields read.
pub trait Stored: Resource {
    /// Drops what no reader of the store uses.
    fn slim(&mut self) {
        trim(self.meta_mut());
    }

    /// A digest of what the mesh's translation reads of the object, for
    /// kinds where that is less than the whole object; `None`: every event
    /// counts.
    fn mesh_input(&self) -> Option<u64> {
        None
    }
}

/// A digest of an object's spec (by its generation), labels, annotations
/// and deletion: for kinds with a status subresource whose status only the
/// operator writes and the translation never reads. Without it, each status
/// write would wake a translation that changes nothing.
fn spec_and_metadata(meta: &ObjectMeta) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The kinds whose status the translation does not read.
macro_rules! spec_driven {
    ($($kind:ty),*) => {$(
        impl Stored for $kind {
            fn mesh_input(&self) -> Option<u64> {
                spec_and_metadata(self.meta())
            }
        }
    )*};
}

spec_driven!(
    GatewayClass,
    Gateway,
    HttpRoute,
    ReferenceGrant,
    AuthorizationPolicy,
    RequestAuthentication
);

impl Stored for Secret {}
impl Stored for Pod {}
impl Stored for Namespace {}
impl Stored for Rollout {}
impl Stored for ReplicaSet {}

/// What every reader of a stored Service or EndpointSlice needs of its
/// metadata: its name and namespace; `keep` says which labels and
/// annotations besides.
fn slim_meta(meta: &mut ObjectMeta, keep: impl Fn(&str) -> bool) {
    let kept = |map: Option<std::collections::BTreeMap<String, String>>| {
        let map: std::collections::BTreeMap<_, _> =
            map?.into_iter().filter(|(k, _)| keep(k)).collect();
        (!map.is_empty()).then_some(map)
    };
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        labels: kept(meta.labels.take()),
        annotations: kept(meta.annotations.take()),
        ..ObjectMeta::default()
    };
}

/// Whether an annotation is one Sluice reads (`sluice.dev` or a subdomain).
fn sluice_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(prefix, _)| prefix == "sluice.dev" || prefix.ends_with(".sluice.dev"))
}

/// The mesh reads a Service's ports, cluster IP and Sluice's annotations;
/// a Rollout, its selector and ports; a dedicated Gateway's status, the
/// load balancer's addresses.
impl Stored for Service {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, sluice_key);
        self.spec = self.spec.take().map(|s| ServiceSpec {
            cluster_ip: s.cluster_ip,
            ports: s.ports,
            selector: s.selector,
            ..ServiceSpec::default()
        });
        self.status = self.status.take().map(|s| ServiceStatus {
            load_balancer: s.load_balancer,
            conditions: None,
        });
    }
}

/// The mesh reads a slice's Service, ports, and each endpoint's addresses,
/// readiness and pod.
impl Stored for EndpointSlice {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, |k| k == SERVICE_NAME_LABEL);
        for ep in self.endpoints.iter_mut().flatten() {
            ep.hints = None;
            ep.hostname = None;
            ep.node_name = None;
            ep.zone = None;
            ep.deprecated_topology = None;
            if let Some(target) = &mut ep.target_ref {
                target.api_version = None;
                target.field_path = None;
                target.resource_version = None;
                target.uid = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::ResourceExt;

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy_and_keeps_other_annotations() {
        let mut meta = ObjectMeta {
            name: Some("demo".into()),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            annotations: Some(
                [
                    (
                        LAST_APPLIED.to_owned(),
                        "{\"a whole\": \"copy\"}".to_owned(),
                    ),
                    ("sluice.dev/revision".to_owned(), "3".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        };
        trim(&mut meta);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations,
            Some([("sluice.dev/revision".to_owned(), "3".to_owned())].into())
        );
        assert_eq!(meta.name.as_deref(), Some("demo"));
    }

    #[test]
    fn a_stored_service_keeps_what_the_mesh_and_rollouts_read() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "7",
                "uid": "0e3f", "labels": {"app": "web"},
                "annotations": {
                    "timeout.sluice.dev/request": "2s",
                    "sluice.dev/other": "x",
                    "meta.helm.sh/release-name": "shop",
                },
            },
            "spec": {
                "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"],
                "ipFamilies": ["IPv4"], "sessionAffinity": "None", "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "kubernetes.io/h2c"}],
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]},
                "conditions": [{"type": "LoadBalancerReady", "status": "True", "lastTransitionTime": "2026-12-03T06:00:00Z", "reason": "Ready", "message": ""}],
            },
        }))
        .unwrap();
        let mut slim = svc.clone();
        slim.slim();
        let spec = slim.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip, svc.spec.as_ref().unwrap().cluster_ip);
        assert_eq!(spec.ports, svc.spec.as_ref().unwrap().ports);
        assert_eq!(spec.selector, svc.spec.as_ref().unwrap().selector);
        assert_eq!(
            (spec.cluster_ips.as_ref(), spec.type_.as_ref()),
            (None, None)
        );
        let status = slim.status.as_ref().unwrap();
        assert_eq!(
            status.load_balancer,
            svc.status.as_ref().unwrap().load_balancer
        );
        assert_eq!(status.conditions, None);
        assert_eq!(
            (
                slim.metadata.name.as_deref(),
                slim.metadata.namespace.as_deref()
            ),
            (Some("web"), Some("shop"))
        );
        assert_eq!(slim.metadata.labels, None);
        let kept: Vec<&str> = slim.annotations().keys().map(String::as_str).collect();
        assert_eq!(kept, ["sluice.dev/other", "timeout.sluice.dev/request"]);
    }

    #[test]
    fn a_stored_endpoint_slice_keeps_its_service_ports_and_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-x7k2p", "namespace": "shop", "generateName": "web-",
                "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T06:00:00Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "0e3f"}],
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": ["10.0.0.5"], "conditions": {"ready": true},
                "nodeName": "node-1", "zone": "a", "hints": {"forZones": [{"name": "a"}]},
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "9f"},
            }],
        }))
        .unwrap();
        let mut slim = slice.clone();
        slim.slim();
        assert_eq!(slim.ports, slice.ports);
        assert_eq!(
            slim.labels().get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(slim.labels().len(), 1);
        assert_eq!(slim.metadata.annotations, None);
        assert_eq!(slim.metadata.owner_references, None);
        let ep = &slim.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.addresses, ["10.0.0.5"]);
        assert_eq!(ep.conditions.as_ref().and_then(|c| c.ready), Some(true));
        let target = ep.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                target.kind.as_deref(),
                target.namespace.as_deref(),
                target.name.as_deref()
            ),
            (Some("Pod"), Some("shop"), Some("web-1"))
        );
        assert_eq!(
            (
                ep.node_name.as_ref(),
                ep.hints.as_ref(),
                target.uid.as_ref()
            ),
            (None, None, None)
        );
    }

    #[test]
    fn an_object_whose_only_annotation_was_the_copy_has_none() {
        let mut meta = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into()),
            ..ObjectMeta::default()
        };
        trim(&mut meta);
        assert_eq!(meta.annotations, None);
    }
}
