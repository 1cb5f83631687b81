//! Blue-green end to end: the new revision answers on the preview
//! Service's hostname while the active one keeps every client, the switch
//! loses no request of a steady client, and a failing post-promotion
//! analysis switches the active Service back on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use sluice_crds::{Rollout, RolloutPhase, RolloutReason};
use sluice_tests::Cluster;

use super::rollouts::{
    all_answer_within_5s, blue_rollout, event_note, gateway, host, phase, rollout, service,
    set_image, until, wait_condition,
};
use super::{Load, Mesh, mesh, none_failed, tally, until_gateway_answers};

/// The preview Service's hostname in scenario `ns`.
fn preview_host(ns: &str) -> String {
    format!("preview.{}", host(ns))
}

/// A blue-green strategy promoted by hand, with a post-promotion analysis.
const BLUE_GREEN: &str = "    blueGreen:
      activeService: handson-active
      previewService: handson-preview
      autoPromotionEnabled: false
      scaleDownDelaySeconds: 10
      abortScaleDownDelaySeconds: 5
      postPromotionAnalysis: {interval: 1s, window: 10s, minRequests: 20, maxErrorRate: 0.05}
";

/// Active and preview Services, a Gateway with a listener for each
/// hostname, a route to each Service, and a blue-green Rollout of `blue`
/// promoted by hand, with a post-promotion analysis.
fn resources(ns: &str) -> String {
    let route = |name: &str, listener: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{name: gw, sectionName: {listener}}}]\n  rules:\n  - backendRefs: [{{name: {name}, port: 8080}}]\n---\n"
        )
    };
    format!(
        r#"{active}{preview}{gateway}{active_route}{preview_route}{rollout}"#,
        active = service(ns, "handson-active"),
        preview = service(ns, "handson-preview"),
        gateway = gateway(ns, &[("active", &host(ns)), ("preview", &preview_host(ns))]),
        active_route = route("handson-active", "active"),
        preview_route = route("handson-preview", "preview"),
        rollout = blue_rollout(ns, BLUE_GREEN),
    )
}

/// The revision hash `service`'s selector is pinned to.
async fn pinned(cluster: &Cluster, ns: &str, service: &str) -> anyhow::Result<String> {
    let svc = Api::<Service>::namespaced(cluster.client(), ns)
        .get(service)
        .await?;
    svc.spec
        .and_then(|s| s.selector)
        .and_then(|s| s.get("rollouts-pod-template-hash").cloned())
        .with_context(|| format!("Service {service} is not pinned to a revision"))
}

/// Sets the image to `colour` and waits until its preview is ready and
/// waits for promotion; returns the Rollout then.
async fn previewed(
    cluster: &Cluster,
    mesh: &Mesh,
    ns: &str,
    colour: &str,
    error_rate: f64,
) -> anyhow::Result<Rollout> {
    let before = rollout(cluster, ns).await?;
    let stable = before.status.and_then(|s| s.stable_revision);
    set_image(cluster, ns, colour, error_rate).await?;
    let ro = until(
        cluster,
        ns,
        &format!("the {colour} preview to wait for promotion"),
        |ro| {
            ro.status.as_ref().is_some_and(|s| {
                s.reason == Some(RolloutReason::PausedUntilPromoted)
                    && s.canary_revision.is_some()
                    && s.stable_revision == stable
            })
        },
    )
    .await?;
    if error_rate == 0.0 {
        until_gateway_answers(mesh, &preview_host(ns), colour).await?;
    }
    Ok(ro)
}

fn colours(seen: &[(Instant, Result<super::Reply, String>)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, r) in seen {
        if let Ok(r) = r {
            *out.entry(r.colour().to_owned()).or_insert(0) += 1;
        }
    }
    out
}

/// Blue is active; yellow is previewed (preview hostname yellow, active
/// still all blue), promoted under a steady client with no failed request,
/// and passes its post-promotion analysis; red is previewed, promoted,
/// fails its post-promotion analysis and the active Service is switched
/// back to yellow.
pub async fn blue_green(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-bluegreen";
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&resources(ns))?;
    // The README's example is admitted as it stands.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/rollouts/blue-green.yaml")
        .display()
        .to_string();
    cluster.kubectl(
        &["apply", "--dry-run=server", "-n", ns, "-f", &example],
        None,
    )?;
    wait_condition(&cluster, ns, "handson", "Healthy", 60)?;
    until_gateway_answers(&mesh, &host(ns), "blue").await?;
    until_gateway_answers(&mesh, &preview_host(ns), "blue").await?;

    let ro = previewed(&cluster, &mesh, ns, "yellow", 0.0).await?;
    let st = ro.status.clone().context("no status")?;
    let (blue, yellow) = (
        st.stable_revision.clone().context("no stable")?,
        st.canary_revision.clone().context("no preview")?,
    );
    let active = tally(&mesh, &host(ns), 100).await?;
    ensure!(
        active.get("blue") == Some(&100),
        "active answered {active:?} while yellow was only previewed"
    );
    ensure!(pinned(&cluster, ns, "handson-active").await? == blue);
    ensure!(pinned(&cluster, ns, "handson-preview").await? == yellow);
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    for want in [
        "Strategy:   blue-green".to_owned(),
        format!("Active:     handson-active → {blue}"),
        format!("Preview:    handson-preview → {yellow}"),
        "(preview)".to_owned(),
    ] {
        ensure!(
            tree.contains(&want),
            "kubectl sluice get lacks {want:?}:\n{tree}"
        );
    }

    // The switch under a steady client.
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    let promoted_at = Instant::now();
    cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    until(
        &cluster,
        ns,
        "yellow to pass its post-promotion analysis",
        |ro| {
            ro.status.as_ref().is_some_and(|s| {
                s.stable_revision.as_deref() == Some(yellow.as_str())
                    && s.phase == Some(RolloutPhase::Healthy)
            })
        },
    )
    .await?;
    let took = promoted_at.elapsed();
    let switched = all_answer_within_5s(&mesh, ns, "yellow", 20, promoted_at).await?;
    let seen = load.finish().await?;
    none_failed(&seen, "during the switch")?;
    let counts = colours(&seen);
    ensure!(
        counts.get("yellow").copied().unwrap_or(0) > 0,
        "the steady client never reached yellow: {counts:?}"
    );
    // The status moves on to the stable revision's: the event keeps what
    // the analysis judged.
    let judged = event_note(&cluster, ns, "PostPromotionAnalysisPassed").await?;
    ensure!(
        judged.contains(&yellow) && judged.contains("requests"),
        "post-promotion analysis event: {judged}"
    );
    ensure!(pinned(&cluster, ns, "handson-active").await? == yellow);
    eprintln!(
        "blue-green: switched to yellow (all yellow {switched:?} after promote; stable after {took:?}; {judged}); steady client {counts:?}, 0 failed"
    );

    // A failing revision is switched back to on its own.
    let ro = previewed(&cluster, &mesh, ns, "red", 0.5).await?;
    let red = ro
        .status
        .and_then(|s| s.canary_revision)
        .context("no red preview")?;
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    wait_condition(&cluster, ns, "handson", "RolledBack", 60)?;
    let back = all_answer_within_5s(&mesh, ns, "yellow", 50, Instant::now()).await?;
    let seen = load.finish().await?;
    let counts = colours(&seen);
    let ro = rollout(&cluster, ns).await?;
    let st = ro.status.clone().context("no status")?;
    ensure!(
        phase(&ro) == Some(RolloutPhase::Degraded)
            && st.reason == Some(RolloutReason::AnalysisFailed)
            && st.stable_revision.as_deref() == Some(yellow.as_str()),
        "after the failed post-promotion analysis: {st:?}"
    );
    ensure!(
        counts.get("red").copied().unwrap_or(0) > 0,
        "red was never active: {counts:?}"
    );
    ensure!(pinned(&cluster, ns, "handson-active").await? == yellow);
    ensure!(pinned(&cluster, ns, "handson-preview").await? == red);
    // The dashboard says which revision each Service selects.
    let base = format!("http://{}", mesh.operator.lock().await.dashboard);
    let shot = super::dashboard::artifacts()?.join("dashboard-blue-green.png");
    let dom = super::dashboard::browse(&format!("{base}/?namespace={ns}"), &shot).await?;
    let want =
        format!("Blue-green: active handson-active → {yellow} · preview handson-preview → {red}");
    ensure!(
        dom.contains(&want),
        "the dashboard does not show {want:?}:\n{dom}"
    );
    eprintln!(
        "blue-green: red switched to and back ({counts:?}; all yellow again within {back:?}), analysis {:?}",
        st.analysis
    );
    Ok(())
}
