//! A Rollout of an existing Deployment (`workloadRef`) end to end: the
//! Deployment serving through the gateway is taken over with no failed
//! request of a steady client, scaled to 0, and an edit of its image starts
//! a canary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, ResourceExt};
use sluice_crds::RolloutPhase;
use sluice_tests::Cluster;
use sluice_tests::operator::demo_app_container;
use sluice_tests::wait::{deployment_available, poll};

use super::rollouts::{
    all_answer_within_5s, canary_strategy, host, phase, routed_services, until, wait_condition,
    weight,
};
use super::{Load, TIMEOUT, mesh, none_failed, tally, until_gateway_answers};

/// The hands-on's `handson-blue` Deployment behind stable and canary
/// Services and a weighted HTTPRoute (all to stable).
fn before(ns: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: handson-blue, namespace: {ns}, labels: {{app: handson, version: blue}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: handson, version: blue}}}}
  template:
    metadata: {{labels: {{app: handson, version: blue}}}}
    spec:
      containers:
{container}---
{routed}"#,
        container = demo_app_container("blue", 6),
        routed = routed_services(ns),
    )
}

/// A Rollout of `handson-blue`, with no template of its own.
fn rollout(ns: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {{name: handson, namespace: {ns}}}
spec:
  replicas: 2
  workloadRef: {{apiVersion: apps/v1, kind: Deployment, name: handson-blue}}
  strategy:
{strategy}"#,
        strategy = canary_strategy("[{setWeight: 20}, {pause: {}}]", "{}")
    )
}

/// `handson-blue` is adopted under a steady client (no request fails), is
/// scaled to 0 once the Rollout's pods serve, and `kubectl set image` on it
/// starts a canary of the Rollout.
pub async fn adopts_a_deployment(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-adopt";
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&before(ns))?;
    deployment_available(&cluster.client(), ns, "handson-blue", TIMEOUT).await?;
    until_gateway_answers(&mesh, &host(ns), "blue").await?;

    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    cluster.apply(&rollout(ns))?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), ns);
    let scaled = poll(
        "the Deployment to be scaled to 0 with no pod left",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let d = deployments.get("handson-blue").await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas) == Some(0);
            let left = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            Ok((want && left == 0).then_some(d))
        },
    )
    .await?;
    wait_condition(&cluster, ns, "handson", "Healthy", 60)?;
    let seen = load.finish().await?;
    none_failed(&seen, "while the Deployment was adopted")?;
    ensure!(seen.len() > 50, "only {} requests were sent", seen.len());
    ensure!(
        scaled
            .labels()
            .get("sluice.dev/workload-of")
            .map(String::as_str)
            == Some("handson"),
        "the adopted Deployment is not labelled: {:?}",
        scaled.labels()
    );
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    ensure!(
        tree.contains("Workload:   Deployment handson-blue"),
        "kubectl sluice get:\n{tree}"
    );
    eprintln!(
        "adoption: {} requests during the take-over, 0 failed; Deployment at 0",
        seen.len()
    );

    // The template changes where the team's manifests change it.
    let refused = cluster
        .kubectl(
            &[
                "sluice",
                "-n",
                ns,
                "set",
                "image",
                "handson",
                "app=sluice/demo-app:yellow",
            ],
            None,
        )
        .err()
        .context("set image on an adopted Rollout succeeded")?;
    ensure!(
        refused.to_string().contains("from Deployment handson-blue"),
        "set image on an adopted Rollout: {refused}"
    );
    cluster.kubectl(
        &[
            "set",
            "image",
            "-n",
            ns,
            "deployment/handson-blue",
            "app=sluice/demo-app:yellow",
        ],
        None,
    )?;
    let ro = until(
        &cluster,
        ns,
        "a canary of the Deployment's new image at 20%",
        |ro| weight(ro) == 20 && phase(ro) == Some(RolloutPhase::Paused),
    )
    .await?;
    let counts = tally(&mesh, &host(ns), 300).await?;
    ensure!(
        counts.get("yellow").copied().unwrap_or(0) > 20
            && counts.get("blue").copied().unwrap_or(0) > 150,
        "at weight 20: {counts:?}"
    );
    let d = deployments.get("handson-blue").await?;
    ensure!(
        d.spec.as_ref().and_then(|s| s.replicas) == Some(0),
        "the Deployment was scaled up again"
    );
    cluster.kubectl(&["sluice", "-n", ns, "promote", "--full", "handson"], None)?;
    wait_condition(&cluster, ns, "handson", "Healthy", 60)?;
    let took = all_answer_within_5s(&mesh, ns, "yellow", 20, std::time::Instant::now()).await?;
    eprintln!(
        "adoption: the Deployment's new image went through the canary ({counts:?} at 20%) to stable {:?}; all yellow within {took:?}",
        ro.status.and_then(|s| s.canary_revision)
    );
    Ok(())
}
