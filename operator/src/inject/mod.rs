//! Sidecar injection: a pod created in a namespace labelled
//! `sluice.dev/inject=enabled` gets the proxy as a Kubernetes native sidecar
//! (an init container with `restartPolicy: Always`, so it is ready before the
//! app starts and does not keep a Job alive), one projected volume with the
//! token it trades for its certificate and the mesh roots it verifies the
//! operator with, and the env it needs. [`patch`] is pure and
//! idempotent; [`webhook`] serves it to the API server.

pub mod probes;
pub mod validate;
pub mod webhook;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use sluice_proto::bootstrap::{
    ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY, ROOT_CERT_PATH, SECRETS_DIR, TOKEN_AUDIENCE, TOKEN_PATH,
};
use sluice_proto::config::{CONTROL_PLANE_PORT, PROXY_UID};
use sluice_proto::probes::{ADMIN_PORT, APP_PROBES_ENV};

use crate::mesh::services::{PROXY_CONTAINER, has_sidecar};

/// The namespace label that opts a namespace in.
pub const NAMESPACE_LABEL: &str = "sluice.dev/inject";
/// The pod annotation that opts a pod out (`"false"`).
pub const POD_ANNOTATION: &str = "sluice.dev/inject";
/// The init step that installs the interception rules.
pub const INIT_CONTAINER: &str = "sluice-init";
/// Set on injected pods.
pub const STATUS_ANNOTATION: &str = "sluice.dev/status";

/// What injected sidecars run and where they connect.
#[derive(Debug, Clone)]
pub struct InjectSettings {
    /// The proxy image.
    pub image: String,
    /// The control plane's gRPC URL as pods reach it (`https://`).
    pub control_plane: String,
    /// The SPIFFE ID the control plane presents.
    pub control_plane_identity: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// `RUST_LOG` of the proxy.
    pub log_level: String,
    /// Add the interception init step to every injected pod (else only to
    /// pods annotated `sluice.dev/intercept: "true"`).
    pub intercept: bool,
}

/// The pod annotation that turns interception on or off for one pod.
pub const INTERCEPT_ANNOTATION: &str = "sluice.dev/intercept";

/// The JSON Patch (RFC 6902) that injects the sidecar into `pod`, or none
/// when it has one already or opted out.
pub fn patch(pod: &Pod, settings: &InjectSettings) -> Option<Vec<Value>> {
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_ANNOTATION))
        .is_some_and(|v| v == "false");
    if opted_out || has_sidecar(pod) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let mut sidecar = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "args": ["sidecar"],
        "restartPolicy": "Always",
        "env": proxy_env(settings),
        "ports": [{"name": "sluice-admin", "containerPort": ADMIN_PORT}],
        // The app starts once the proxy has its config and certificate.
        "startupProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 1, "failureThreshold": 300},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [token_mount()],
    });
    let volume = token_volume();
    let intercept = match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INTERCEPT_ANNOTATION))
        .map(String::as_str)
    {
        Some("true") => true,
        Some("false") => false,
        _ => settings.intercept,
    };
    // The interception rules first (they let the control plane's port
    // through), then the proxy, before any other init step.
    let mut first = Vec::new();
    let mut ops = Vec::new();
    if intercept {
        // The kubelet's probes would meet the sidecar's inbound side.
        let (rewrites, probes) = probes::rewrite(spec);
        if !probes.is_empty()
            && let (Some(env), Ok(text)) = (
                sidecar["env"].as_array_mut(),
                serde_json::to_string(&probes),
            )
        {
            env.push(json!({"name": APP_PROBES_ENV, "value": text}));
        }
        ops.extend(rewrites);
        let cp_port = settings
            .control_plane
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .unwrap_or(CONTROL_PLANE_PORT);
        first.push(json!({
            "name": INIT_CONTAINER,
            "image": settings.image,
            "args": ["intercept", "--exclude-outbound-ports", cp_port.to_string()],
            "securityContext": {"runAsUser": 0, "runAsNonRoot": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}},
        }));
    }
    first.push(sidecar);
    if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": first}));
    } else {
        for (i, c) in first.into_iter().enumerate() {
            ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}"), "value": c}));
        }
    }
    if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
    }
    if pod.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({"op": "add", "path": "/metadata/annotations/sluice.dev~1status", "value": "injected"}));
    ops.extend(scrape_annotations(pod));
    Some(ops)
}

/// The env every proxy the operator starts (sidecar or dedicated gateway)
/// bootstraps from: where the control plane is, whom it must present, and
/// the pod's own names (from the downward API, which the pod cannot lie
/// about to itself).
pub fn proxy_env(settings: &InjectSettings) -> Vec<Value> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    vec![
        json!({"name": "SLUICE_CONTROL_PLANE", "value": settings.control_plane}),
        json!({"name": "SLUICE_CONTROL_PLANE_IDENTITY", "value": settings.control_plane_identity}),
        json!({"name": "SLUICE_TRUST_DOMAIN", "value": settings.trust_domain}),
        json!({"name": "RUST_LOG", "value": settings.log_level}),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
}

/// The name of the proxy's token volume.
const TOKEN_VOLUME: &str = "sluice-token";

/// The projected volume with the token a proxy trades for its certificate
/// and the mesh roots it verifies the operator with.
pub fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [
            {"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "path": TOKEN_PATH, "expirationSeconds": 3600
            }},
            {"configMap": {"name": ROOT_CERT_CONFIGMAP, "items": [{"key": ROOT_CERT_KEY, "path": ROOT_CERT_PATH}]}},
        ]}
    })
}

/// Where the proxy container mounts [`token_volume`].
pub fn token_mount() -> Value {
    json!({"name": TOKEN_VOLUME, "mountPath": SECRETS_DIR, "readOnly": true})
}

/// The `prometheus.io/*` annotations that point a Prometheus configured the
/// usual way at the proxy's `/metrics`, as Istio's injector sets them;
/// none when the pod names its own scrape target.
fn scrape_annotations(pod: &Pod) -> Vec<Value> {
    let own = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("prometheus.io/scrape"));
    if own {
        return Vec::new();
    }
    [
        ("scrape", "true".to_owned()),
        ("port", sluice_proto::probes::ADMIN_PORT.to_string()),
        ("path", "/metrics".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| {
        json!({"op": "add", "path": format!("/metadata/annotations/prometheus.io~1{key}"), "value": value})
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: sluice_proto::images::PROXY.into(),
            control_plane: "https://cp:15010".into(),
            control_plane_identity: "spiffe://cluster.local/ns/sluice-system/sa/sluice-operator"
                .into(),
            trust_domain: "cluster.local".into(),
            log_level: "info".into(),
            intercept: false,
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn apply(p: &Pod, ops: Vec<Value>) -> Pod {
        let mut doc = serde_json::to_value(p).expect("json");
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    fn init_names(p: &Pod) -> Vec<String> {
        p.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn injects_a_native_sidecar_once() {
        let p = pod(
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app", "image": "x"}]}}),
        );
        let injected = apply(&p, patch(&p, &settings()).expect("a patch"));
        let spec = injected.spec.as_ref().expect("spec");
        let inits = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(inits[0].name, PROXY_CONTAINER);
        assert_eq!(inits[0].restart_policy.as_deref(), Some("Always"));
        // The app waits for the proxy's config and certificate.
        assert_eq!(
            inits[0]
                .startup_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/ready")
        );
        // One volume: the token and the roots to verify the operator with.
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TOKEN_VOLUME)
            .expect("the bootstrap volume");
        let sources = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.clone())
            .unwrap_or_default();
        assert!(sources.iter().any(|s| s.service_account_token.is_some()));
        assert!(sources.iter().any(|s| {
            s.config_map
                .as_ref()
                .is_some_and(|c| c.name == ROOT_CERT_CONFIGMAP)
        }));
        assert_eq!(
            injected
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STATUS_ANNOTATION))
                .map(String::as_str),
            Some("injected")
        );
        // Idempotent: an injected pod is left alone.
        assert!(patch(&injected, &settings()).is_none());
    }

    #[test]
    fn keeps_existing_init_containers_and_volumes_after_the_proxy() {
        let p = pod(
            json!({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "x"}],
            "volumes": [{"name": "data", "emptyDir": {}}]}}),
        );
        let injected = apply(&p, patch(&p, &settings()).expect("a patch"));
        assert_eq!(init_names(&injected), [PROXY_CONTAINER, "migrate"]);
        assert_eq!(
            injected
                .spec
                .expect("spec")
                .volumes
                .unwrap_or_default()
                .len(),
            2
        );
    }

    #[test]
    fn interception_comes_first_when_asked() {
        let p = pod(
            json!({"metadata": {"name": "a", "annotations": {INTERCEPT_ANNOTATION: "true"}}, "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "x"}]}}),
        );
        let injected = apply(&p, patch(&p, &settings()).expect("a patch"));
        assert_eq!(
            init_names(&injected),
            [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]
        );
        let plain =
            pod(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "app"}]}}));
        let injected = apply(&plain, patch(&plain, &settings()).expect("a patch"));
        assert_eq!(init_names(&injected), [PROXY_CONTAINER]);
    }

    #[test]
    fn intercepted_pods_have_their_probes_served_by_the_sidecar() {
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{
            "name": "app", "image": "x",
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}));
        let intercepting = InjectSettings {
            intercept: true,
            ..settings()
        };
        let injected = apply(&p, patch(&p, &intercepting).expect("a patch"));
        let spec = injected.spec.expect("spec");
        let probe = spec.containers[0]
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(probe.path.as_deref(), Some("/app-health/app/readiness"));
        let sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == PROXY_CONTAINER)
            .expect("the sidecar");
        let env = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == APP_PROBES_ENV)
            .and_then(|e| e.value.clone())
            .expect("the app's probes");
        let probes: sluice_proto::probes::AppProbes =
            serde_json::from_str(&env).expect("probes JSON");
        assert_eq!(probes["/app-health/app/readiness"].port, 8080);
        // Without interception the probes stay as they are.
        let plain = apply(&p, patch(&p, &settings()).expect("a patch"));
        assert_eq!(
            plain.spec.expect("spec").containers[0].readiness_probe,
            p.spec.as_ref().expect("spec").containers[0].readiness_probe
        );
    }

    #[test]
    fn a_pod_can_opt_out() {
        let p = pod(
            json!({"metadata": {"name": "a", "annotations": {POD_ANNOTATION: "false"}}, "spec": {"containers": [{"name": "app"}]}}),
        );
        assert!(patch(&p, &settings()).is_none());
    }
}
