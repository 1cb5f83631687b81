//! Rollouts end to end: a real control plane and node, the
//! gateway proxy and the operator's Rollout controller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use sluice_crds::{Rollout, RolloutPhase};
use sluice_tests::Cluster;
use sluice_tests::operator::demo_app_container;
use sluice_tests::wait::poll;

use super::{GATEWAY_PORT, Load, TIMEOUT, mesh, tally, until_gateway_answers};

/// Each scenario's own host: Gateways on one port must not claim the same
/// hostname.
pub(crate) fn host(ns: &str) -> String {
    format!("{ns}.example.com")
}

/// Service `name` in `ns`, selecting the `app: handson` pods on port 8080
/// (the controller pins it to a revision).
pub(crate) fn service(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: handson}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
---
"#
    )
}

/// Gateway `gw` in `ns` with an HTTP listener per (name, hostname).
pub(crate) fn gateway(ns: &str, listeners: &[(&str, &str)]) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(name, host)| {
            format!(
                "  - {{name: {name}, port: {GATEWAY_PORT}, protocol: HTTP, hostname: \"{host}\"}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: {ns}}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n{listeners}---\n"
    )
}

/// The hands-on's stable and canary Services, its Gateway and its HTTPRoute
/// with weights (all to stable).
pub(crate) fn routed_services(ns: &str) -> String {
    format!(
        r#"{stable}{canary}{gateway}apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: handson, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs:
    - {{name: handson-stable, port: 8080, weight: 100}}
    - {{name: handson-canary, port: 8080, weight: 0}}
---
"#,
        stable = service(ns, "handson-stable"),
        canary = service(ns, "handson-canary"),
        gateway = gateway(ns, &[("http", &host(ns))]),
    )
}

/// Rollout `handson` of demo-app `blue` with `strategy` (the YAML under
/// `strategy:`).
pub(crate) fn blue_rollout(ns: &str, strategy: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata: {{name: handson, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: handson}}}}
  template:
    metadata: {{labels: {{app: handson}}}}
    spec:
      containers:
{container}  strategy:
{strategy}"#,
        container = demo_app_container("blue", 6)
    )
}

/// The hands-on's canary strategy (its Services and route) with `steps`
/// and `analysis`.
pub(crate) fn canary_strategy(steps: &str, analysis: &str) -> String {
    format!(
        r#"    canary:
      stableService: handson-stable
      canaryService: handson-canary
      trafficRouting:
        httpRoutes: [{{name: handson}}]
      scaleDownDelaySeconds: 2
      abortScaleDownDelaySeconds: 2
      steps: {steps}
      analysis: {analysis}
"#
    )
}

/// [`routed_services`] and a Rollout of demo-app `blue` with `steps`.
pub(crate) fn resources(ns: &str, steps: &str, analysis: &str) -> String {
    routed_services(ns) + &blue_rollout(ns, &canary_strategy(steps, analysis))
}

pub(crate) const HANDS_ON_STEPS: &str =
    "[{setWeight: 20}, {pause: {duration: 5s}}, {setWeight: 50}, {pause: {}}]";

pub(crate) async fn rollout(cluster: &Cluster, ns: &str) -> anyhow::Result<Rollout> {
    Ok(Api::<Rollout>::namespaced(cluster.client(), ns)
        .get("handson")
        .await?)
}

/// `kubectl wait` until Rollout `ns/name` has `condition`, `seconds` at
/// most: the command users run. On a timeout, the error carries where the
/// Rollout stood.
pub(crate) fn wait_condition(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    condition: &str,
    seconds: u32,
) -> anyhow::Result<()> {
    let rollout = format!("rollout/{name}");
    let waited = cluster.kubectl(
        &[
            "wait",
            "-n",
            ns,
            &rollout,
            &format!("--for=condition={condition}"),
            &format!("--timeout={seconds}s"),
        ],
        None,
    );
    let Err(e) = waited else { return Ok(()) };
    let status = cluster
        .kubectl(
            &["get", "-n", ns, &rollout, "-o", "jsonpath={.status}"],
            None,
        )
        .unwrap_or_else(|e| format!("(not read: {e})"));
    Err(anyhow::Error::new(e).context(format!(
        "{ns}/{name} is not {condition} after {seconds}s; its status: {status}"
    )))
}

/// Waits until the Rollout's status passes `check`.
pub(crate) async fn until(
    cluster: &Cluster,
    ns: &str,
    what: &str,
    check: impl Fn(&Rollout) -> bool,
) -> anyhow::Result<Rollout> {
    let last = std::sync::Mutex::new(None);
    let found = poll(what, TIMEOUT, Duration::from_millis(100), || async {
        let ro = rollout(cluster, ns)
            .await
            .map_err(|e| sluice_tests::Error::Check(e.to_string()))?;
        if check(&ro) {
            return Ok(Some(ro));
        }
        *last.lock().unwrap_or_else(|p| p.into_inner()) = ro.status;
        Ok(None)
    })
    .await;
    // On a timeout, say where the Rollout stood.
    found.with_context(|| {
        format!(
            "the Rollout's last status: {:?}",
            last.lock().unwrap_or_else(|p| p.into_inner())
        )
    })
}

pub(crate) fn weight(ro: &Rollout) -> i32 {
    ro.status
        .as_ref()
        .and_then(|s| s.weights.as_ref())
        .map_or(-1, |w| w.canary)
}

pub(crate) fn phase(ro: &Rollout) -> Option<RolloutPhase> {
    ro.status.as_ref().and_then(|s| s.phase)
}

pub(crate) fn step_index(ro: &Rollout) -> Option<i32> {
    ro.status.as_ref().and_then(|s| s.current_step_index)
}

/// Sets the container's image (and env), starting a new revision.
pub(crate) async fn set_image(
    cluster: &Cluster,
    ns: &str,
    colour: &str,
    error_rate: f64,
) -> anyhow::Result<()> {
    Api::<Rollout>::namespaced(cluster.client(), ns)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                 "value": format!("sluice/demo-app:{colour}")},
                {"op": "add", "path": "/spec/template/spec/containers/0/env",
                 "value": [{"name": "ERROR_RATE", "value": error_rate.to_string()}]},
            ]))?),
        )
        .await?;
    Ok(())
}

/// A fresh namespace with the hands-on, `blue` Healthy behind the gateway.
pub(crate) async fn healthy_blue(
    cluster: &Arc<Cluster>,
    ns: &str,
    steps: &str,
    analysis: &str,
) -> anyhow::Result<()> {
    let mesh = mesh(cluster).await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&resources(ns, steps, analysis))?;
    wait_condition(cluster, ns, "handson", "Healthy", 60)?;
    // Refused or reset while the listener is being set up: not yet.
    until_gateway_answers(&mesh, &host(ns), "blue").await
}

/// Waits (5 s at most) until `n` requests in a row through the gateway are
/// answered by `colour`; how long after `since` that was.
pub(crate) async fn all_answer_within_5s(
    mesh: &super::Mesh,
    ns: &str,
    colour: &str,
    n: usize,
    since: Instant,
) -> anyhow::Result<Duration> {
    let done = poll(
        &format!("{n} requests in a row answered by {colour}"),
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async {
            let counts = tally(mesh, &host(ns), n).await?;
            Ok((counts.get(colour) == Some(&n)).then(|| since.elapsed()))
        },
    )
    .await?;
    Ok(done)
}

/// Scenarios 1 and 2: Healthy, then a canary (started with `kubectl sluice
/// set image`) through its steps with the observed split following the
/// weights, and `kubectl sluice promote`.
pub async fn canary_steps_and_promote(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-steps";
    healthy_blue(&cluster, ns, HANDS_ON_STEPS, "{}").await?;
    let mesh = mesh(&cluster).await?;
    let set_image =
        |arg: &str| cluster.kubectl(&["sluice", "-n", ns, "set", "image", "handson", arg], None);
    // A container the template lacks is refused, naming those it has.
    let refused = set_image("web=sluice/demo-app:yellow")
        .err()
        .context("set image of a missing container succeeded")?;
    ensure!(
        refused
            .to_string()
            .contains("no container \"web\" (it has: app)"),
        "set image of a missing container: {refused}"
    );
    let out = set_image("app=sluice/demo-app:yellow")?;
    ensure!(out.contains("image updated"), "set image said: {out}");
    until(&cluster, ns, "canary weight 20", |ro| weight(ro) == 20).await?;
    let counts = tally(&mesh, &host(ns), 600).await?;
    let yellow = counts.get("yellow").copied().unwrap_or(0);
    eprintln!("rollout: at weight 20, {counts:?}");
    ensure!(
        (90..=150).contains(&yellow),
        "at weight 20 of 600 requests {yellow} went to yellow: {counts:?}"
    );
    let ro = until(
        &cluster,
        ns,
        "canary weight 50, paused until promoted",
        |ro| weight(ro) == 50 && phase(ro) == Some(RolloutPhase::Paused),
    )
    .await?;
    ensure!(step_index(&ro) == Some(3), "step {:?}", step_index(&ro));
    let counts = tally(&mesh, &host(ns), 1000).await?;
    let yellow = counts.get("yellow").copied().unwrap_or(0);
    eprintln!("rollout: at weight 50, {counts:?}");
    ensure!(
        (450..=550).contains(&yellow),
        "at weight 50 of 1000 requests {yellow} went to yellow: {counts:?}"
    );

    let out = cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    ensure!(
        out.contains("promote"),
        "kubectl sluice promote said {out:?}"
    );
    let status = cluster.kubectl(
        &["sluice", "-n", ns, "status", "handson", "--timeout", "60"],
        None,
    )?;
    eprintln!("rollout: kubectl sluice status: {}", status.trim());
    let ro = rollout(&cluster, ns).await?;
    let st = ro.status.clone().context("no status")?;
    ensure!(
        st.canary_revision.is_none() && weight(&ro) == 0,
        "status after promotion: {st:?}"
    );
    // Healthy is written when the stable Service selects the new revision;
    // the gateway follows once the EndpointSlice does (the old pods still
    // answer meanwhile, for scaleDownDelaySeconds): all yellow within 5 s.
    let last_blue = all_answer_within_5s(&mesh, ns, "yellow", 100, Instant::now()).await?;
    eprintln!("rollout: all yellow {last_blue:?} after Healthy");
    // The old stable (blue) scales to 0 after scaleDownDelaySeconds.
    let stable = st.stable_revision.clone().unwrap_or_default();
    let rs: Api<ReplicaSet> = Api::namespaced(cluster.client(), ns);
    poll(
        "blue's ReplicaSet to scale to 0",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let list = rs
                .list(&ListParams::default().labels("sluice.dev/rollout=handson"))
                .await?;
            let others: Vec<i32> = list
                .items
                .iter()
                .filter(|r| {
                    r.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("rollouts-pod-template-hash"))
                        != Some(&stable)
                })
                .map(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .collect();
            Ok((!others.is_empty() && others.iter().all(|n| *n == 0)).then_some(()))
        },
    )
    .await?;
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    ensure!(
        tree.contains(&format!("{stable} #2 (stable)"))
            && tree.contains("#1 (old)")
            && tree.contains("Healthy"),
        "kubectl sluice get:\n{tree}"
    );
    undo_goes_back_to_blue(&cluster, ns, &stable).await
}

/// `kubectl sluice undo` restores blue's template: its own ReplicaSet
/// (no twin) comes back as the canary, and once promoted is stable as
/// revision 3.
async fn undo_goes_back_to_blue(cluster: &Cluster, ns: &str, yellow: &str) -> anyhow::Result<()> {
    let refused = cluster
        .kubectl(
            &["sluice", "-n", ns, "undo", "handson", "--to-revision", "7"],
            None,
        )
        .err()
        .context("undo to a missing revision succeeded")?;
    ensure!(
        refused
            .to_string()
            .contains("no revision 7 (there are: 1, 2)"),
        "undo --to-revision 7: {refused}"
    );
    let out = cluster.kubectl(&["sluice", "-n", ns, "undo", "handson"], None)?;
    ensure!(out.contains("back to revision 1"), "undo said: {out}");
    let ro = until(cluster, ns, "blue back as the canary", |ro| {
        ro.status
            .as_ref()
            .and_then(|s| s.canary_revision.as_deref())
            .is_some_and(|c| c != yellow)
    })
    .await?;
    let blue = ro
        .status
        .and_then(|s| s.canary_revision)
        .context("no canary")?;
    cluster.kubectl(&["sluice", "-n", ns, "promote", "--full", "handson"], None)?;
    until(cluster, ns, "blue stable again", |ro| {
        phase(ro) == Some(RolloutPhase::Healthy)
            && ro
                .status
                .as_ref()
                .and_then(|s| s.stable_revision.as_deref())
                == Some(&blue)
    })
    .await?;
    let rs: Api<ReplicaSet> = Api::namespaced(cluster.client(), ns);
    let list = rs
        .list(&ListParams::default().labels("sluice.dev/rollout=handson"))
        .await?;
    ensure!(
        list.items.len() == 2,
        "undo made a new ReplicaSet: {:?}",
        list.items
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    ensure!(
        tree.contains(&format!("{blue} #3 (stable)")),
        "kubectl sluice get after the undo:\n{tree}"
    );
    let mesh = mesh(cluster).await?;
    poll(
        "blue to answer again",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let counts = tally(&mesh, &host(ns), 50).await?;
            Ok((counts.get("blue") == Some(&50)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Scenario 3: a canary answering 50% errors is rolled back on its own.
pub async fn failing_canary_is_rolled_back(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-bad";
    healthy_blue(&cluster, ns, HANDS_ON_STEPS, "{}").await?;
    let mesh = mesh(&cluster).await?;
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    set_image(&cluster, ns, "red", 0.5).await?;
    wait_condition(&cluster, ns, "handson", "RolledBack", 60)?;
    let rolled_back_at = Instant::now();
    // All traffic back on stable: the weights are written before the
    // status, and the gateway has them within moments of the status.
    let settled = all_answer_within_5s(&mesh, ns, "blue", 200, rolled_back_at).await?;
    eprintln!("rollout: 200 requests in a row all blue, done {settled:?} after RolledBack");
    let seen = load.finish().await?;
    let red: Vec<Instant> = seen
        .iter()
        .filter(|(_, r)| {
            r.as_ref()
                .is_ok_and(|r| r.status == 500 || r.colour() == "red")
        })
        .map(|(at, _)| *at)
        .collect();
    let first = red
        .first()
        .copied()
        .context("the canary never got a request")?;
    let last = red.last().copied().unwrap_or(first);
    eprintln!(
        "rollout: canary's first request to 100% stable: {:?} ({} canary responses; RolledBack seen {:?} after the first)",
        last.duration_since(first),
        red.len(),
        rolled_back_at.duration_since(first)
    );
    ensure!(
        last.duration_since(first) <= Duration::from_secs(12),
        "rollback took {:?} from the canary's first request",
        last.duration_since(first)
    );
    let ro = rollout(&cluster, ns).await?;
    ensure!(
        phase(&ro) == Some(RolloutPhase::Degraded) && weight(&ro) == 0,
        "{:?}",
        ro.status
    );
    let why = event_note(&cluster, ns, "AnalysisFailed").await?;
    eprintln!("rollout: event: {why}");
    ensure!(
        why.contains("error rate"),
        "the event does not give the error rate: {why}"
    );
    Ok(())
}

/// Waits for an Event of `reason` in `ns` and returns its note.
pub(crate) async fn event_note(
    cluster: &Cluster,
    ns: &str,
    reason: &str,
) -> anyhow::Result<String> {
    event_note_where(cluster, ns, reason, |_| true).await
}

/// Waits for an Event of `reason` in `ns` that `keep` accepts; its note.
pub(crate) async fn event_note_where(
    cluster: &Cluster,
    ns: &str,
    reason: &str,
    keep: impl Fn(&Event) -> bool,
) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(cluster.client(), ns);
    let (events, keep) = (&events, &keep);
    let note = poll(
        &format!("a {reason} event"),
        TIMEOUT,
        Duration::from_millis(200),
        || async move {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && keep(e))
                .and_then(|e| e.note))
        },
    )
    .await?;
    Ok(note)
}

/// Scenario 4: a canary with errors but fewer requests than minRequests is
/// judged Inconclusive, never rolled back.
pub async fn low_traffic_canary_is_never_rolled_back(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-quiet";
    healthy_blue(
        &cluster,
        ns,
        "[{setWeight: 50}, {pause: {}}]",
        "{interval: 1s, minRequests: 1000}",
    )
    .await?;
    let mesh = mesh(&cluster).await?;
    set_image(&cluster, ns, "green", 0.5).await?;
    until(&cluster, ns, "canary weight 50", |ro| weight(ro) == 50).await?;
    let start = rollout(&cluster, ns).await?;
    let first_eval = start
        .status
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .and_then(|a| a.evaluated_at.clone());
    // Light traffic: 40 requests, a few of them failing at the canary.
    let counts = tally(&mesh, &host(ns), 40).await?;
    eprintln!("rollout: light traffic {counts:?}");
    // Three more evaluations, each Inconclusive, none a rollback.
    let mut evaluations = 0;
    let mut last = first_eval;
    let deadline = Instant::now() + TIMEOUT;
    while evaluations < 3 {
        ensure!(
            Instant::now() < deadline,
            "only {evaluations} analysis evaluations in {TIMEOUT:?}"
        );
        let ro = until(&cluster, ns, "a new analysis evaluation", |ro| {
            ro.status
                .as_ref()
                .and_then(|s| s.analysis.as_ref())
                .and_then(|a| a.evaluated_at.clone())
                != last
        })
        .await?;
        let st = ro.status.clone().unwrap_or_default();
        ensure!(!st.aborted, "rolled back at low traffic: {st:?}");
        let a = st.analysis.clone().unwrap_or_default();
        ensure!(
            a.verdict == Some(sluice_crds::Verdict::Inconclusive),
            "verdict {:?} with {} requests",
            a.verdict,
            a.canary_requests
        );
        last = a.evaluated_at.clone();
        evaluations += 1;
    }
    Ok(())
}

/// Scenario 5: the operator killed mid-rollout resumes from the same step.
pub async fn operator_restart_resumes_the_step(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-restart";
    healthy_blue(&cluster, ns, HANDS_ON_STEPS, "{}").await?;
    let mesh = mesh(&cluster).await?;
    set_image(&cluster, ns, "yellow", 0.0).await?;
    let before = until(&cluster, ns, "paused at step 4 with weight 50", |ro| {
        weight(ro) == 50 && step_index(ro) == Some(3)
    })
    .await?;
    {
        let mut op = mesh.operator.lock().await;
        op.kill();
        op.restart().await?;
    }
    // A request the controller does not know is still removed once it has
    // reconciled: proof that the restarted operator looked at the rollout.
    let api: Api<Rollout> = Api::namespaced(cluster.client(), ns);
    api.patch(
        "handson",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"sluice.dev/request": "none"}}})),
    )
    .await?;
    let after = until(
        &cluster,
        ns,
        "the restarted operator to reconcile the rollout",
        |ro| {
            !ro.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("sluice.dev/request"))
        },
    )
    .await?;
    ensure!(
        before
            .status
            .as_ref()
            .and_then(|s| s.stable_revision.clone())
            == after
                .status
                .as_ref()
                .and_then(|s| s.stable_revision.clone())
    );
    ensure!(
        step_index(&after) == Some(3)
            && weight(&after) == 50
            && phase(&after) == Some(RolloutPhase::Paused),
        "after the restart: {:?}",
        after.status
    );
    let counts = tally(&mesh, &host(ns), 400).await?;
    let yellow = counts.get("yellow").copied().unwrap_or(0);
    ensure!(
        (160..=240).contains(&yellow),
        "after the restart, at weight 50: {counts:?}"
    );
    cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    until(&cluster, ns, "Healthy on yellow", |ro| {
        phase(ro) == Some(RolloutPhase::Healthy)
            && ro
                .status
                .as_ref()
                .is_some_and(|s| s.canary_revision.is_none())
    })
    .await?;
    Ok(())
}

/// The target of zero false rollbacks: 20 healthy canaries in a row, each
/// under light traffic just above `minRequests`, each judged over two
/// evaluations; none may be rolled back.
pub async fn twenty_healthy_canaries_no_false_rollback(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    let ns = "ro-twenty";
    healthy_blue(
        &cluster,
        ns,
        "[{setWeight: 50}, {pause: {}}]",
        "{interval: 1s}",
    )
    .await?;
    let mesh = mesh(&cluster).await?;
    let api: Api<Rollout> = Api::namespaced(cluster.client(), ns);
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    for run in 0..20 {
        let before = rollout(&cluster, ns).await?;
        let previous = before
            .status
            .as_ref()
            .and_then(|s| s.canary_revision.clone());
        api.patch(
            "handson",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"run": run.to_string()}}}}})),
        )
        .await?;
        let started = until(&cluster, ns, "a new canary at weight 50", |ro| {
            let st = ro.status.as_ref();
            weight(ro) == 50
                && st.and_then(|s| s.canary_revision.clone()).is_some()
                && st.and_then(|s| s.canary_revision.clone()) != previous
        })
        .await?;
        let counts = tally(&mesh, &host(ns), 60).await?;
        ensure!(counts.keys().all(|k| k == "blue"), "run {run}: {counts:?}");
        let mut last = started
            .status
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .and_then(|a| a.evaluated_at.clone());
        for _ in 0..2 {
            let ro = until(&cluster, ns, "the next analysis evaluation", |ro| {
                let st = ro.status.as_ref();
                st.is_some_and(|s| s.aborted)
                    || st
                        .and_then(|s| s.analysis.as_ref())
                        .and_then(|a| a.evaluated_at.clone())
                        != last
            })
            .await?;
            let st = ro.status.clone().unwrap_or_default();
            ensure!(
                !st.aborted,
                "run {run}: a healthy canary was rolled back: {:?}",
                st.message
            );
            let a = st.analysis.unwrap_or_default();
            *verdicts
                .entry(a.verdict.map_or("-", |v| v.as_str()).to_owned())
                .or_default() += 1;
            last = a.evaluated_at;
        }
    }
    eprintln!("rollout: 20 healthy canaries at low traffic, 0 rolled back; verdicts {verdicts:?}");
    Ok(())
}
