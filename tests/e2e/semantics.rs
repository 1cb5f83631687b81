//! Rollout step semantics as Argo Rollouts users know them, on the real
//! cluster: promote ends one pause, weights without traffic routing are
//! shares of pods (stable never below its share), promotion waits for a
//! fully ready canary, a route that disappears takes traffic back, and an
//! analysis that never gets traffic pauses instead of promoting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_crds::{Rollout, RolloutPhase, RolloutReason};
use sluice_tests::Cluster;
use sluice_tests::operator::demo_app_container;
use sluice_tests::wait::poll;

use super::rollouts::{
    HANDS_ON_STEPS, event_note, healthy_blue, host, phase, rollout, set_image, step_index, until,
    wait_condition, weight,
};
use super::{mesh, tally};

fn reason(ro: &Rollout) -> Option<RolloutReason> {
    ro.status.as_ref().and_then(|s| s.reason)
}

fn stable_revision(ro: &Rollout) -> Option<String> {
    ro.status.as_ref().and_then(|s| s.stable_revision.clone())
}

fn canary_revision(ro: &Rollout) -> Option<String> {
    ro.status.as_ref().and_then(|s| s.canary_revision.clone())
}

/// `kubectl sluice ARGS` in `ns`.
fn sluice(cluster: &Cluster, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["sluice", "-n", ns];
    all.extend_from_slice(args);
    Ok(cluster.kubectl(&all, None)?)
}

/// `kubectl sluice promote` at the first (timed) pause ends that pause
/// only: the rollout goes on to `setWeight 50` and stops at the next pause;
/// `promote --full` then goes to 100%. A promote whose first pass cannot
/// write the route is kept, not dropped, and still ends one pause only.
pub async fn promote_ends_one_pause_only(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-promote";
    let steps = HANDS_ON_STEPS.replace("5s", "1h");
    healthy_blue(&cluster, ns, &steps, "{}").await?;
    let before = rollout(&cluster, ns).await?;
    set_image(&cluster, ns, "yellow", 0.0).await?;
    until(&cluster, ns, "paused at step 2, weight 20", |ro| {
        weight(ro) == 20 && step_index(ro) == Some(1) && phase(ro) == Some(RolloutPhase::Paused)
    })
    .await?;
    let mesh = mesh(&cluster).await?;
    let failed_passes = || async {
        let op = mesh.operator.lock().await;
        let labels = r#"result="failed""#;
        anyhow::Ok(op.counter("sluice_rollout_passes_total", labels).await?)
    };
    let failed_before = failed_passes().await?;
    // The pass that takes the promote cannot set the weight.
    let frozen = FrozenRoute::freeze(&cluster, ns, "handson").await?;
    sluice(&cluster, ns, &["promote", "handson"])?;
    let note = event_note(&cluster, ns, "RequestPending").await?;
    let ro = rollout(&cluster, ns).await?;
    ensure!(
        weight(&ro) == 20 && step_index(&ro) == Some(1),
        "while the route refused the weight ({note}): {:?}",
        ro.status
    );
    let failed = failed_passes().await?;
    ensure!(
        failed > failed_before,
        "the refused pass was not counted: sluice_rollout_passes_total{{result=\"failed\"}} {failed_before} -> {failed}"
    );
    frozen.thaw()?;
    let ro = until(&cluster, ns, "paused again at step 4, weight 50", |ro| {
        step_index(ro) == Some(3) && weight(ro) == 50
    })
    .await?;
    eprintln!("semantics: a promote whose pass could not set the weight was kept: {note}");
    ensure!(
        phase(&ro) == Some(RolloutPhase::Paused)
            && reason(&ro) == Some(RolloutReason::PausedUntilPromoted),
        "after one promote: {:?}",
        ro.status
    );
    ensure!(
        stable_revision(&ro) == stable_revision(&before),
        "one promote made the canary stable: {:?}",
        ro.status
    );
    sluice(&cluster, ns, &["promote", "--full", "handson"])?;
    until(&cluster, ns, "Healthy on the new revision", |ro| {
        phase(ro) == Some(RolloutPhase::Healthy) && canary_revision(ro).is_none()
    })
    .await?;
    Ok(())
}

/// An HTTPRoute whose updates the API server refuses (a
/// ValidatingAdmissionPolicy on a label), so that a pass fails after it
/// has taken a request.
struct FrozenRoute<'a> {
    cluster: &'a Cluster,
    ns: &'a str,
    route: &'a str,
}

/// The policy: an update of a route labelled `sluice-test/frozen` that
/// keeps the label is refused; adding or removing the label is not.
fn freeze_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: sluice-test-frozen-routes-{ns}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [gateway.networking.k8s.io], apiVersions: ["*"], operations: [UPDATE], resources: [httproutes]}}
  validations:
  - expression: >-
      !(has(oldObject.metadata.labels) && 'sluice-test/frozen' in oldObject.metadata.labels
      && has(object.metadata.labels) && 'sluice-test/frozen' in object.metadata.labels)
    message: the route is frozen
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: sluice-test-frozen-routes-{ns}}}
spec:
  policyName: sluice-test-frozen-routes-{ns}
  validationActions: [Deny]
  matchResources: {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}}}
"#
    )
}

impl<'a> FrozenRoute<'a> {
    /// Freezes `route` and waits until the API server refuses an update of
    /// it (the policy takes a moment to be in force).
    async fn freeze(
        cluster: &'a Cluster,
        ns: &'a str,
        route: &'a str,
    ) -> anyhow::Result<FrozenRoute<'a>> {
        cluster.apply(&freeze_policy(ns))?;
        let kind_name = format!("httproute/{route}");
        cluster.kubectl(
            &["label", "-n", ns, &kind_name, "sluice-test/frozen=1"],
            None,
        )?;
        let mut probe = 0u32;
        poll(
            "the frozen route to refuse an update",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                probe += 1;
                let note = format!("sluice-test/probe={probe}");
                let tried = cluster.kubectl(
                    &["annotate", "--overwrite", "-n", ns, &kind_name, &note],
                    None,
                );
                async move {
                    Ok(match tried {
                        Err(e) if e.to_string().contains("the route is frozen") => Some(()),
                        _ => None,
                    })
                }
            },
        )
        .await?;
        Ok(FrozenRoute { cluster, ns, route })
    }

    /// Lets the route be updated again and removes the policy.
    fn thaw(self) -> anyhow::Result<()> {
        let kind_name = format!("httproute/{}", self.route);
        self.cluster.kubectl(
            &["label", "-n", self.ns, &kind_name, "sluice-test/frozen-"],
            None,
        )?;
        self.cluster
            .kubectl(&["delete", "-f", "-"], Some(&freeze_policy(self.ns)))?;
        Ok(())
    }
}

/// A Rollout without `trafficRouting`: `replicas` demo-app pods behind a
/// plain Service, weights as shares of pods.
fn replica_rollout(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
{container}  strategy:
    canary:
      scaleDownDelaySeconds: 1
      steps: [{{setWeight: 20}}, {{pause: {{}}}}]
"#,
        container = demo_app_container("blue", 6)
    )
}

/// Spec replicas and ready pods of `rollout`'s ReplicaSet of `revision`.
async fn replica_set(
    cluster: &Cluster,
    ns: &str,
    rollout: &str,
    revision: &str,
) -> anyhow::Result<(i32, i32)> {
    let list = Api::<ReplicaSet>::namespaced(cluster.client(), ns)
        .list(&ListParams::default().labels(&format!(
            "sluice.dev/rollout={rollout},rollouts-pod-template-hash={revision}"
        )))
        .await?;
    let rs = list.items.first().context("no ReplicaSet")?;
    Ok((
        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    ))
}

async fn named(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<Rollout> {
    Ok(Api::<Rollout>::namespaced(cluster.client(), ns)
        .get(name)
        .await?)
}

/// Without traffic routing, 10 replicas at `setWeight: 20` run 2 canary
/// pods beside 8 stable ones, and 1 replica keeps its stable pod while the
/// canary surges; both reach their pause without any analysis to requeue
/// them (the controller sees the canary pods become ready).
pub async fn replica_shares_without_traffic_routing(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-replicas";
    cluster.create_namespace(ns).await?;
    for (name, replicas) in [("ten", 10), ("one", 1)] {
        cluster.apply(&replica_rollout(ns, name, replicas))?;
    }
    for name in ["ten", "one"] {
        wait_condition(&cluster, ns, name, "Healthy", 120)?;
    }
    let api: Api<Rollout> = Api::namespaced(cluster.client(), ns);
    let started = Instant::now();
    for name in ["ten", "one"] {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "sluice/demo-app:yellow"},
            ]))?),
        )
        .await?;
    }
    for (name, replicas, canary_pods, stable_pods) in [("ten", 10, 2, 8), ("one", 1, 1, 1)] {
        let ro = sluice_tests::wait::poll(
            &format!("{name}: paused at weight 20"),
            Duration::from_secs(90),
            Duration::from_millis(200),
            || async {
                let ro = named(&cluster, ns, name).await?;
                let at = weight(&ro) == 20 && phase(&ro) == Some(RolloutPhase::Paused);
                Ok(at.then_some(ro))
            },
        )
        .await?;
        eprintln!(
            "semantics: {name} ({replicas} replicas) paused at weight 20 {:.1?} after the change",
            started.elapsed()
        );
        let stable = stable_revision(&ro).context("no stable")?;
        let canary = canary_revision(&ro).context("no canary")?;
        let (c_spec, c_ready) = replica_set(&cluster, ns, name, &canary).await?;
        let (s_spec, s_ready) = replica_set(&cluster, ns, name, &stable).await?;
        ensure!(
            (c_spec, c_ready) == (canary_pods, canary_pods),
            "{name}: canary ReplicaSet {c_spec} wanted, {c_ready} ready; expected {canary_pods}"
        );
        ensure!(
            s_spec == stable_pods && s_ready >= stable_pods,
            "{name}: stable ReplicaSet {s_spec} wanted, {s_ready} ready; expected {stable_pods}"
        );
    }
    Ok(())
}

/// Without a final `setWeight: 100`, promotion scales the canary to full
/// size and moves `stableService` only once every canary pod is ready.
pub async fn promotion_waits_for_a_fully_ready_canary(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-full";
    healthy_blue(&cluster, ns, "[{setWeight: 50}]", "null").await?;
    let first = stable_revision(&rollout(&cluster, ns).await?);
    // The new revision's pods take 4 s to be ready.
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "sluice/demo-app:yellow"},
                {"op": "add", "path": "/spec/template/spec/containers/0/readinessProbe/initialDelaySeconds", "value": 4},
            ]))?),
        )
        .await?;
    let services: Api<Service> = Api::namespaced(cluster.client(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut promoting_seen = false;
    loop {
        ensure!(
            Instant::now() < deadline,
            "not promoted within 90 s (Promoting seen: {promoting_seen})"
        );
        let ro = rollout(&cluster, ns).await?;
        promoting_seen |= reason(&ro) == Some(RolloutReason::Promoting);
        let selector = services
            .get("handson-stable")
            .await?
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("rollouts-pod-template-hash").cloned());
        if let (Some(pinned), Some(canary)) = (&selector, canary_revision(&ro))
            && *pinned == canary
        {
            let (_, ready) = replica_set(&cluster, ns, "handson", &canary).await?;
            ensure!(
                ready >= 2,
                "stableService points at {canary} with {ready} of 2 pods ready"
            );
        }
        if phase(&ro) == Some(RolloutPhase::Healthy)
            && canary_revision(&ro).is_none()
            && stable_revision(&ro) != first
        {
            let stable = stable_revision(&ro).context("no stable")?;
            let (_, ready) = replica_set(&cluster, ns, "handson", &stable).await?;
            ensure!(ready >= 2, "promoted with {ready} of 2 pods ready");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        promoting_seen,
        "the canary was never seen scaling up before the switch"
    );
    Ok(())
}

/// A second HTTPRoute deleted mid-canary: the route that is left gets 100%
/// stable, the Rollout is Degraded with a reason naming the route; with the
/// route back, the canary carries on at its weight.
pub async fn a_deleted_route_takes_traffic_back(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-route";
    let mesh = mesh(&cluster).await?;
    healthy_blue(&cluster, ns, "[{setWeight: 50}, {pause: {}}]", "null").await?;
    let second = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: second, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["second.{ns}.example.com"]
  rules:
  - backendRefs:
    - {{name: handson-stable, port: 8080, weight: 100}}
    - {{name: handson-canary, port: 8080, weight: 0}}
"#
    );
    cluster.apply(&second)?;
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"strategy": {"canary": {"trafficRouting": {"httpRoutes": [{"name": "handson"}, {"name": "second"}]}}}}})),
        )
        .await?;
    set_image(&cluster, ns, "yellow", 0.0).await?;
    until(&cluster, ns, "weight 50", |ro| {
        weight(ro) == 50 && phase(ro) == Some(RolloutPhase::Paused)
    })
    .await?;
    let routes: Api<HttpRoute> = Api::namespaced(cluster.client(), ns);
    routes.delete("second", &DeleteParams::default()).await?;
    let deleted = std::time::Instant::now();
    let ro = until(&cluster, ns, "Degraded, naming the route", |ro| {
        reason(ro) == Some(RolloutReason::TrafficRouteMissing)
    })
    .await?;
    let noticed = deleted.elapsed();
    let message = ro
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    ensure!(
        phase(&ro) == Some(RolloutPhase::Degraded) && message.contains("second"),
        "{:?}",
        ro.status
    );
    let weights = sluice_tests::wait::poll(
        "the remaining route at 100% stable",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let r = routes.get("handson").await?;
            let w: Vec<(String, Option<i32>)> = r
                .spec
                .rules
                .iter()
                .flatten()
                .flat_map(|r| r.backend_refs.iter().flatten())
                .map(|b| (b.name.clone(), b.weight))
                .collect();
            let all_stable = w.iter().all(|(n, w)| {
                (n == "handson-stable" && *w == Some(100))
                    || (n == "handson-canary" && *w == Some(0))
            });
            Ok(all_stable.then_some(w))
        },
    )
    .await?;
    let counts = sluice_tests::wait::poll(
        "every answer from stable",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let counts = tally(&mesh, &host(ns), 100).await?;
            Ok(counts.keys().all(|k| k == "blue").then_some(counts))
        },
    )
    .await?;
    cluster.apply(&second)?;
    let recreated = std::time::Instant::now();
    until(&cluster, ns, "back at weight 50 with the route", |ro| {
        weight(ro) == 50 && phase(ro) == Some(RolloutPhase::Paused)
    })
    .await?;
    eprintln!(
        "semantics: route gone, Degraded {noticed:.1?} after the delete: {message}; remaining route {weights:?}; {counts:?}; back at weight 50 {:.1?} after the route came back",
        recreated.elapsed()
    );
    Ok(())
}

/// A canary whose analysis never gets enough requests is not promoted at
/// the end of its steps: it pauses (`InconclusiveAnalysis`, shown by
/// `kubectl sluice get`) until the user promotes. An inline analysis step
/// without traffic ends at the progress deadline the same way.
pub async fn inconclusive_analysis_pauses(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-quiet-end";
    healthy_blue(
        &cluster,
        ns,
        "[{setWeight: 20}]",
        "{interval: 1s, minRequests: 1000}",
    )
    .await?;
    let before = rollout(&cluster, ns).await?;
    set_image(&cluster, ns, "yellow", 0.0).await?;
    let ro = until(&cluster, ns, "paused, analysis inconclusive", |ro| {
        reason(ro) == Some(RolloutReason::InconclusiveAnalysis)
    })
    .await?;
    ensure!(
        phase(&ro) == Some(RolloutPhase::Paused)
            && stable_revision(&ro) == stable_revision(&before),
        "{:?}",
        ro.status
    );
    let shown = sluice(&cluster, ns, &["get", "rollout", "handson"])?;
    ensure!(
        shown.contains("InconclusiveAnalysis"),
        "kubectl sluice get:\n{shown}"
    );
    sluice(&cluster, ns, &["promote", "handson"])?;
    until(&cluster, ns, "promoted by the user", |ro| {
        phase(ro) == Some(RolloutPhase::Healthy) && canary_revision(ro).is_none()
    })
    .await?;

    let ns = "ro-quiet-step";
    healthy_blue(
        &cluster,
        ns,
        "[{setWeight: 20}, {analysis: {interval: 1s, minRequests: 1000}}, {setWeight: 50}]",
        "null",
    )
    .await?;
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 5}})),
        )
        .await?;
    let started = Instant::now();
    set_image(&cluster, ns, "yellow", 0.0).await?;
    let ro = until(
        &cluster,
        ns,
        "the analysis step to end at its deadline",
        |ro| reason(ro) == Some(RolloutReason::InconclusiveAnalysis),
    )
    .await?;
    ensure!(
        step_index(&ro) == Some(1) && weight(&ro) == 20,
        "{:?}",
        ro.status
    );
    eprintln!(
        "semantics: the analysis step paused {:.1?} after the change (deadline 5 s)",
        started.elapsed()
    );
    Ok(())
}

/// One object the proxies cannot take (a Gateway listener on the proxy's
/// admin port) is left out and reported on its own status; every proxy
/// keeps converging: a weight change made afterwards reaches the gateway,
/// and no proxy refuses a snapshot.
pub async fn a_bad_object_never_stalls_the_mesh(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "isolation";
    let mesh = mesh(&cluster).await?;
    let host = format!("{ns}.example.com");
    super::two_versions(&cluster, &mesh, ns, &host, 100, 0).await?;
    let nacks = || async {
        let op = mesh.operator.lock().await;
        anyhow::Ok(op.metric("sluice_config_nacks_total").await?.unwrap_or(0.0))
    };
    let before = nacks().await?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: reserved, namespace: {ns}}}
spec:
  gatewayClassName: sluice
  listeners:
  - {{name: admin, port: {admin}, protocol: HTTP}}
"#,
        admin = sluice_proto::probes::ADMIN_PORT
    ))?;
    let gateways: Api<gateway_api::gateways::Gateway> = Api::namespaced(cluster.client(), ns);
    let why = sluice_tests::wait::poll(
        "the reserved-port listener to be refused on its status",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let gw = gateways.get("reserved").await?;
            let refused = gw
                .status
                .iter()
                .flat_map(|s| s.listeners.iter().flatten())
                .flat_map(|l| l.conditions.iter())
                .find(|c| c.type_ == "Accepted" && c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message));
            Ok(refused)
        },
    )
    .await?;
    ensure!(why.starts_with("PortUnavailable"), "{why}");
    // A change made afterwards still reaches the gateway.
    let changed = Instant::now();
    cluster.apply(&super::split_route(ns, "gw", 0, 100))?;
    sluice_tests::wait::poll(
        "the weight change to reach the gateway",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let counts = tally(&mesh, &host, 20).await?;
            Ok((counts.get("yellow") == Some(&20)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "isolation: listener refused ({why}); weight change live {:.1?} after the apply",
        changed.elapsed()
    );
    ensure!(
        nacks().await? == before,
        "a proxy refused a snapshot after the bad Gateway was applied"
    );
    gateways
        .delete("reserved", &DeleteParams::default())
        .await?;
    Ok(())
}

/// A panic in the Rollout controller (a test-only fault, `--test-faults`)
/// makes `/healthz` fail with what happened, releases the leader's Lease
/// and ends the process, so that Kubernetes would restart it; restarted,
/// the operator is healthy again.
pub async fn a_panicking_controller_is_noticed(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "fault";
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata:
  name: faulty
  namespace: {ns}
  annotations: {{sluice.dev/test-fault: panic}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: faulty}}}}
  template:
    metadata: {{labels: {{app: faulty}}}}
    spec:
      containers: [{{name: app, image: sluice/demo-app:blue}}]
  strategy:
    canary:
      steps: [{{setWeight: 50}}]
"#
    ))?;
    let mut op = mesh.operator.lock().await;
    let healthz = format!("http://{}/healthz", op.metrics);
    let said = sluice_tests::wait::poll(
        "/healthz to fail",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let r = sluice_tests::operator::http().get(&healthz).send().await;
            Ok(match r {
                Ok(r) if r.status() == 503 => Some(r.text().await?),
                _ => None,
            })
        },
    )
    .await?;
    ensure!(
        said.contains("rollout controller panicked"),
        "/healthz said {said:?}"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client(), sluice_tests::operator::GATEWAY_NS);
    sluice_tests::wait::poll(
        "the lease to be released",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let l = leases.get("sluice-operator").await?;
            let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            Ok(holder.is_empty().then_some(()))
        },
    )
    .await?;
    sluice_tests::wait::poll(
        "the operator to exit",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let gone = op.exited();
            async move { Ok(gone.then_some(())) }
        },
    )
    .await?;
    eprintln!("supervision: {}", said.trim());
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .delete("faulty", &DeleteParams::default())
        .await?;
    op.restart().await?;
    Ok(())
}

/// A HorizontalPodAutoscaler (the real one of kube-controller-manager,
/// with metrics-server reading the kubelet) scales a Rollout through its
/// scale subresource under CPU load; a canary started afterwards runs its
/// share of the autoscaled size, and the controller and the HPA do not
/// fight over the pods.
pub async fn an_autoscaled_rollout_keeps_its_shares(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-hpa";
    mesh(&cluster).await?;
    cluster.install_metrics_server().await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {{name: hpa, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: hpa}}}}
  template:
    metadata: {{labels: {{app: hpa}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: sluice/demo-app:blue
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
        resources: {{requests: {{cpu: 20m}}}}
  strategy:
    canary:
      steps: [{{setWeight: 50}}, {{pause: {{}}}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: hpa, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: sluice.dev/v1alpha1, kind: Rollout, name: hpa}}
  minReplicas: 1
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
"#
    ))?;
    wait_condition(&cluster, ns, "hpa", "Healthy", 60)?;
    let started = Instant::now();
    let ro = {
        let _load = CpuLoad::start(cluster.clone(), ns.to_owned());
        sluice_tests::wait::poll(
            "the HPA to scale the Rollout up",
            Duration::from_secs(150),
            Duration::from_millis(500),
            || async {
                let ro = named(&cluster, ns, "hpa").await?;
                let ready = ro
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok((ro.spec.replicas >= 2 && ready >= 2).then_some(ro))
            },
        )
        .await?
    };
    let replicas = ro.spec.replicas;
    eprintln!(
        "semantics: the HPA scaled the Rollout to {replicas} {:.1?} after the load began",
        started.elapsed()
    );
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .patch(
            "hpa",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "sluice/demo-app:yellow"},
            ]))?),
        )
        .await?;
    let ro = sluice_tests::wait::poll(
        "the canary paused at weight 50",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let ro = named(&cluster, ns, "hpa").await?;
            Ok((weight(&ro) == 50 && phase(&ro) == Some(RolloutPhase::Paused)).then_some(ro))
        },
    )
    .await?;
    // Each revision runs its share of what the HPA set, and holds it.
    let share = |r: i32| (r + 1) / 2;
    let (stable, canary) = (
        stable_revision(&ro).context("no stable")?,
        canary_revision(&ro).context("no canary")?,
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let ro = named(&cluster, ns, "hpa").await?;
        let r = ro.spec.replicas;
        let (s, _) = replica_set(&cluster, ns, "hpa", &stable).await?;
        let (c, _) = replica_set(&cluster, ns, "hpa", &canary).await?;
        ensure!(
            s == share(r) && c == share(r),
            "at {r} replicas: stable {s}, canary {c}; expected {} each",
            share(r)
        );
        seen.insert((r, s, c));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(seen.len() <= 2, "the pods moved back and forth: {seen:?}");
    eprintln!("semantics: at weight 50 with {replicas} replicas: {seen:?}");
    cluster.kubectl(&["delete", "namespace", ns, "--wait=false"], None)?;
    Ok(())
}

/// CPU load on every pod of `app=hpa`: `/burn` requests from the host, a
/// few at a time, until dropped (at most 150 s or 5,000 requests).
struct CpuLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl CpuLoad {
    fn start(cluster: Arc<Cluster>, ns: String) -> CpuLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            let http = sluice_tests::operator::http();
            let started = Instant::now();
            let mut sent = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(150)
                && sent < 5000
            {
                let ips: Vec<String> =
                    sluice_tests::wait::pods_by_label(&cluster.client(), &ns, "app=hpa")
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| p.status?.pod_ip)
                        .collect();
                let requests = ips
                    .iter()
                    .cycle()
                    .take(4)
                    .map(|ip| http.get(format!("http://{ip}:8080/burn?ms=200")).send());
                let _ = futures::future::join_all(requests).await;
                sent += 4;
            }
        });
        CpuLoad { stop }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
