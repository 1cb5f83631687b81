//! gRPC health probes of injected pods under STRICT mTLS: the injector
//! moves them to the sidecar's admin port, as it does HTTP probes, and the
//! sidecar calls `grpc.health.v1.Health/Check` on the app over loopback.
//! The kubelet's own plaintext gRPC call would be refused by the sidecar
//! in STRICT mode, so a pod becoming ready shows the rewrite working.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use sluice_tests::Cluster;
use sluice_tests::operator::{ADMIN_PORT, http};
use sluice_tests::wait::{pod_ready, poll};

use super::rollouts::event_note_where;
use super::{TIMEOUT, mesh};

const NS: &str = "grpc-probes";

/// A demo-app pod serving gRPC health on 9090 with `health`, probed for
/// readiness by gRPC.
fn pod(name: &str, health: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  containers:
  - name: app
    image: sluice/demo-app:blue
    env:
    - {{name: GRPC_HEALTH_PORT, value: "9090"}}
    - {{name: GRPC_HEALTH, value: {health}}}
    ports: [{{name: grpc, containerPort: 9090}}]
    readinessProbe:
      grpc: {{port: 9090, service: sluice.Demo}}
      periodSeconds: 1
"#
    )
}

pub async fn grpc_probes_run_in_the_sidecar(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    mesh(&cluster).await?;
    cluster.create_namespace(NS).await?;
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n  labels: {{sluice.dev/inject: enabled, sluice.dev/mtls-mode: STRICT}}\n"
    ))?;
    cluster.apply(&pod("rpc-serving", "serving"))?;
    cluster.apply(&pod("rpc-not-serving", "not-serving"))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NS);

    pod_ready(&cluster.client(), NS, "rpc-serving", TIMEOUT).await?;
    let serving = pods.get("rpc-serving").await?;
    let probe = serving
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.readiness_probe.as_ref())
        .context("rpc-serving lost its readiness probe")?;
    let moved = probe.http_get.as_ref().is_some_and(|h| {
        h.path.as_deref() == Some("/app-health/app/readiness")
            && h.port == IntOrString::Int(i32::from(ADMIN_PORT))
    });
    ensure!(
        moved && probe.grpc.is_none(),
        "the gRPC probe was not moved to the sidecar: {probe:?}"
    );

    // The NOT_SERVING app: the sidecar says why, the kubelet reports the
    // probe failing, and the pod stays unready.
    let ip = poll(
        "rpc-not-serving to get an IP",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(pods
                .get("rpc-not-serving")
                .await?
                .status
                .and_then(|s| s.pod_ip))
        },
    )
    .await?;
    let said = poll(
        "the sidecar to report NOT_SERVING",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let Ok(resp) = http()
                .get(format!("http://{ip}:{ADMIN_PORT}/app-health/app/readiness"))
                .send()
                .await
            else {
                return Ok(None);
            };
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            Ok(body.contains("NOT_SERVING").then_some((status, body)))
        },
    )
    .await?;
    ensure!(
        said.0 == 503,
        "the sidecar's answer for NOT_SERVING: {said:?}"
    );
    let note = probe_failure(&cluster, "rpc-not-serving").await?;
    ensure!(note.contains("503"), "the kubelet's probe failure: {note}");
    let ready = pods
        .get("rpc-not-serving")
        .await?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ensure!(!ready, "a pod whose app is NOT_SERVING became ready");
    Ok(())
}

/// Waits for the kubelet's `Unhealthy` event on pod `name`; its note.
async fn probe_failure(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    event_note_where(cluster, NS, "Unhealthy", |e| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            && e.note
                .as_ref()
                .is_some_and(|n| n.contains("Readiness probe failed"))
    })
    .await
}
