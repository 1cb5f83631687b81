//! Progressive delivery beyond weighted steps, end to end: header routes
//! (`setHeaderRoute`) through the gateway and between sidecars, request
//! mirroring (Gateway API's `RequestMirror`) through the gateway, and
//! mirror routes (`setMirrorRoute`) that judge a canary on copies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use gateway_api::httproutes::HttpRoute;
use kube::Api;
use sluice_crds::RolloutPhase;
use sluice_tests::Cluster;
use sluice_tests::operator::proxy_counter;
use sluice_tests::wait::{deployment_available, pod_ready, poll};

use super::rollouts::{
    healthy_blue, host, phase, rollout, set_image, step_index, until, wait_condition, weight,
};
use super::{
    GATEWAY_PORT, Load, Mesh, TIMEOUT, gateway, mesh, sidecar_client, tally_with,
    until_gateway_answers, version,
};

/// Two header routes (an exact value, and a prefix the proxies match as a
/// regex) and a mirror route, then a step that removes the first.
const HEADER_STEPS: &str = r#"[{setHeaderRoute: {name: testers, match: [{headerName: x-canary, headerValue: {exact: "yes"}}]}}, {setHeaderRoute: {name: staff, match: [{headerName: x-user, headerValue: {prefix: "staff-"}}]}}, {setMirrorRoute: {name: shadow, match: [{headers: {x-shadow: {exact: "1"}}}]}}, {pause: {}}, {setHeaderRoute: {name: testers}}, {pause: {}}]"#;

/// `n` requests through the gateway with `headers`, by colour.
async fn through_gateway(
    mesh: &Mesh,
    ns: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    tally_with(mesh, &host(ns), headers, n).await
}

/// `n` requests from the client pod's app container to
/// `handson-stable:8080` through its sidecar, with `headers`, by colour
/// (one curl run on one connection).
async fn through_sidecar(
    cluster: &Cluster,
    ns: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut argv = vec![
        "curl".to_owned(),
        "-s".into(),
        "-m".into(),
        "10".into(),
        "-w".into(),
        "\\n".into(),
        "-H".into(),
        "Host: handson-stable:8080".into(),
    ];
    for (k, v) in headers {
        argv.push("-H".into());
        argv.push(format!("{k}: {v}"));
    }
    argv.extend(std::iter::repeat_n("http://127.0.0.1:15001/".to_owned(), n));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster.exec_in_pod(ns, "client", &argv).await?;
    let mut counts = BTreeMap::new();
    for line in out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Waits until every one of `n` requests sent both ways with `headers`
/// answers `want`.
async fn until_both_answer(
    cluster: &Arc<Cluster>,
    mesh: &Mesh,
    ns: &str,
    headers: &[(&str, &str)],
    want: &str,
) -> anyhow::Result<()> {
    let all = |c: &BTreeMap<String, usize>| c.len() == 1 && c.get(want) == Some(&20);
    poll(
        &format!("gateway and sidecar to answer {want} with {headers:?}"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let gw = through_gateway(mesh, ns, headers, 20).await?;
            if !all(&gw) {
                return Ok(None);
            }
            let sc = through_sidecar(cluster, ns, headers, 20).await?;
            Ok(all(&sc).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// A canary at weight 0 answers requests that carry the testers' or the
/// staff's header, through the gateway and from a sidecar, while everyone
/// else gets stable; a later step removes one route, and the promotion
/// removes the other and the companion route with it.
pub async fn header_routes(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "ro-header";
    let mesh = mesh(&cluster).await?;
    healthy_blue(&cluster, ns, HEADER_STEPS, "{}").await?;
    // Mesh routing too, and a client with a sidecar.
    cluster.apply(&super::rollouts::resources(ns, HEADER_STEPS, "{}").replace(
        "httpRoutes: [{name: handson}]",
        "httpRoutes: [{name: handson}]\n        mesh: {}",
    ))?;
    cluster.apply(&sidecar_client(&mesh, ns).await)?;
    pod_ready(&cluster.client(), ns, "client", TIMEOUT).await?;
    until_both_answer(&cluster, &mesh, ns, &[], "blue").await?;
    // The README's examples are admitted as they stand.
    for example in ["header-route.yaml", "mirror-route.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/rollouts")
            .join(example)
            .display()
            .to_string();
        cluster.kubectl(&["apply", "--dry-run=server", "-n", ns, "-f", &path], None)?;
    }

    set_image(&cluster, ns, "yellow", 0.0).await?;
    let ro = until(&cluster, ns, "both header routes, paused", |ro| {
        step_index(ro) == Some(3) && phase(ro) == Some(RolloutPhase::Paused)
    })
    .await?;
    let st = ro.status.clone().context("no status")?;
    ensure!(
        st.header_routes == ["testers", "staff"]
            && st.mirror_routes == ["shadow"]
            && weight(&ro) == 0,
        "status at the pause: {st:?}"
    );
    until_both_answer(&cluster, &mesh, ns, &[("x-canary", "yes")], "yellow").await?;
    until_both_answer(&cluster, &mesh, ns, &[("x-user", "staff-42")], "yellow").await?;
    for others in [
        &[][..],
        &[("x-canary", "no")][..],
        &[("x-user", "guest-staff-1")][..],
    ] {
        let gw = through_gateway(&mesh, ns, others, 100).await?;
        ensure!(
            gw.get("blue") == Some(&100),
            "{others:?} through the gateway at weight 0: {gw:?}"
        );
        let sc = through_sidecar(&cluster, ns, others, 50).await?;
        ensure!(
            sc.get("blue") == Some(&50),
            "{others:?} from the sidecar at weight 0: {sc:?}"
        );
    }
    copies_reach_the_canary(&cluster, &mesh, ns).await?;
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    ensure!(
        tree.contains("testers (x-canary=yes), staff (x-user^=staff-)")
            && tree.contains("Mirror routes to the canary: shadow (100% of /* x-shadow=1)"),
        "kubectl sluice get:\n{tree}"
    );
    let routes: Api<HttpRoute> = Api::namespaced(cluster.client(), ns);
    ensure!(
        routes.get_opt("handson-handson-canary").await?.is_some(),
        "no companion route"
    );

    // The next step removes the testers' route only.
    cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    until(&cluster, ns, "the testers' route removed", |ro| {
        step_index(ro) == Some(5)
            && ro
                .status
                .as_ref()
                .is_some_and(|s| s.header_routes == ["staff"])
    })
    .await?;
    until_both_answer(&cluster, &mesh, ns, &[("x-canary", "yes")], "blue").await?;
    until_both_answer(&cluster, &mesh, ns, &[("x-user", "staff-7")], "yellow").await?;

    // Promotion ends the canary and every header route with it.
    cluster.kubectl(&["sluice", "-n", ns, "promote", "handson"], None)?;
    wait_condition(&cluster, ns, "handson", "Healthy", 60)?;
    let ro = rollout(&cluster, ns).await?;
    ensure!(
        ro.status
            .as_ref()
            .is_some_and(|s| s.header_routes.is_empty()),
        "header routes after promotion: {:?}",
        ro.status
    );
    until_companion_gone(&routes).await?;
    until_both_answer(&cluster, &mesh, ns, &[("x-user", "staff-7")], "yellow").await?;
    until_both_answer(&cluster, &mesh, ns, &[], "yellow").await?;
    Ok(())
}

/// An HTTPRoute whose rule mirrors to yellow: clients get blue's answers
/// only, and the gateway sends yellow a copy of each request, counted on
/// yellow's backend.
pub async fn request_mirror(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "mirror";
    let host = host(ns);
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(ns).await?;
    cluster.apply(&version(ns, "blue", "web", "blue", 1))?;
    cluster.apply(&version(ns, "yellow", "web", "yellow", 1))?;
    cluster.apply(&gateway(ns, "gw", &host, GATEWAY_PORT))?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirrored, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: yellow, port: 8080}}}}
    backendRefs: [{{name: blue, port: 8080}}]
"#
    ))?;
    let client = cluster.client();
    deployment_available(&client, ns, "blue", TIMEOUT).await?;
    deployment_available(&client, ns, "yellow", TIMEOUT).await?;
    let counted = |backend: &'static str| {
        let ip = mesh.gateway_ip.clone();
        async move {
            proxy_counter(
                &ip,
                "sluice_requests_total",
                &format!("backend=\"mirror/{backend}:8080\""),
            )
            .await
        }
    };
    // Until the route is live.
    until_gateway_answers(&mesh, &host, "blue").await?;
    let before = counted("blue").await?;
    let seen = through_gateway(&mesh, ns, &[], 50).await?;
    ensure!(seen.get("blue") == Some(&50), "clients saw {seen:?}");
    // Every request answered by blue was copied to yellow, once.
    let (blue, yellow) = poll(
        "yellow's copies to catch up with blue's answers",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let (b, y) = (counted("blue").await?, counted("yellow").await?);
            Ok((b - before >= 50.0 && y == b).then_some((b, y)))
        },
    )
    .await?;
    eprintln!("mirror: blue answered {blue}, yellow got {yellow} copies");
    Ok(())
}

/// A canary that answers half its requests with 500, at weight 0 behind a
/// mirror route: the gateway copies every request to it, its errors fail
/// the analysis and it is rolled back, while clients only ever got
/// stable's answers.
pub async fn mirror_route_rolls_back_a_canary_clients_never_see(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    let ns = "ro-mirror";
    let steps = "[{setMirrorRoute: {name: shadow, match: [{path: {prefix: /}}]}}, {pause: {}}]";
    healthy_blue(&cluster, ns, steps, "{}").await?;
    let mesh = mesh(&cluster).await?;
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    set_image(&cluster, ns, "red", 0.5).await?;
    until(&cluster, ns, "the mirror route in force", |ro| {
        ro.status
            .as_ref()
            .is_some_and(|s| s.mirror_routes == ["shadow"])
    })
    .await?;
    let tree = cluster.kubectl(&["sluice", "-n", ns, "get", "rollout", "handson"], None)?;
    ensure!(
        tree.contains("Mirror routes to the canary: shadow (100% of /*)"),
        "kubectl sluice get:\n{tree}"
    );
    wait_condition(&cluster, ns, "handson", "RolledBack", 60)?;
    let seen = load.finish().await?;
    let ro = rollout(&cluster, ns).await?;
    let st = ro.status.clone().context("no status")?;
    ensure!(
        phase(&ro) == Some(RolloutPhase::Degraded)
            && st.reason == Some(sluice_crds::RolloutReason::AnalysisFailed)
            && st.mirror_routes.is_empty(),
        "after the rollback: {st:?}"
    );
    let figures = st.analysis.clone().context("no analysis")?;
    ensure!(
        figures.canary_requests >= 20,
        "the canary was judged on {} requests",
        figures.canary_requests
    );
    let not_blue: Vec<String> = seen
        .iter()
        .filter_map(|(_, r)| match r {
            Ok(r) if r.status == 200 && r.colour() == "blue" => None,
            Ok(r) => Some(format!("{} {}", r.status, r.colour())),
            Err(e) => Some(e.clone()),
        })
        .collect();
    ensure!(
        not_blue.is_empty() && seen.len() > 50,
        "{} of {} client requests were not answered by blue: {:?}",
        not_blue.len(),
        seen.len(),
        &not_blue[..not_blue.len().min(5)]
    );
    eprintln!(
        "mirror route: canary judged on {} copies (error rate {}), rolled back; {} client requests all blue",
        figures.canary_requests,
        figures.canary_error_rate.as_deref().unwrap_or("-"),
        seen.len()
    );
    let routes: Api<HttpRoute> = Api::namespaced(cluster.client(), ns);
    until_companion_gone(&routes).await?;
    Ok(())
}

/// Requests with `x-shadow: 1` get stable's answers through the gateway and
/// from the sidecar, and each proxy sends the canary a copy of each,
/// counted on the canary's backend.
async fn copies_reach_the_canary(cluster: &Cluster, mesh: &Mesh, ns: &str) -> anyhow::Result<()> {
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client(), ns)
        .get("client")
        .await?;
    let client_ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("the client has no IP")?;
    let label = format!("backend=\"{ns}/handson-canary:8080\"");
    let copies = |ip: String| {
        let label = label.clone();
        async move { proxy_counter(&ip, "sluice_requests_total", &label).await }
    };
    let before = (
        copies(mesh.gateway_ip.clone()).await?,
        copies(client_ip.clone()).await?,
    );
    let shadow = [("x-shadow", "1")];
    let gw = through_gateway(mesh, ns, &shadow, 20).await?;
    let sc = through_sidecar(cluster, ns, &shadow, 20).await?;
    ensure!(
        gw.get("blue") == Some(&20) && sc.get("blue") == Some(&20),
        "mirrored requests answered: gateway {gw:?}, sidecar {sc:?}"
    );
    let counted = poll(
        "20 copies from the gateway and 20 from the sidecar",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let gw = copies(mesh.gateway_ip.clone()).await? - before.0;
            let sc = copies(client_ip.clone()).await? - before.1;
            Ok((gw >= 20.0 && sc >= 20.0).then_some((gw, sc)))
        },
    )
    .await?;
    eprintln!(
        "mirror route: copies to the canary: {} from the gateway, {} from the sidecar",
        counted.0, counted.1
    );
    Ok(())
}

/// Waits until the Rollout's companion of route `handson` is deleted.
async fn until_companion_gone(routes: &Api<HttpRoute>) -> anyhow::Result<()> {
    poll(
        "the companion route to be deleted",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(routes
                .get_opt("handson-handson-canary")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}
