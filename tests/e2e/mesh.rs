//! End-to-end: the mesh control plane. The operator (a host process) pushes
//! config over gRPC to a real `sluice-proxy gateway` pod and to sidecars;
//! traffic is real HTTP through them to demo-app pods.
//!
//! The scenarios run one after another (they share the gateway, and two of
//! them stop the operator or make the gateway refuse a snapshot), each in a
//! namespace and under a hostname of its own.

mod main_support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use sluice_tests::Cluster;
use sluice_tests::operator::{
    ADMIN_PORT, GATEWAY_NS, Operator, demo_app_container, http, proxy_env, proxy_volumes,
    start_mesh_with,
};
use sluice_tests::wait::{deployment_available, pod_ready, poll, ready_endpoints};
use tokio::sync::{Mutex, OnceCell};

mod adoption;
mod analysis;
mod blue_green;
mod dashboard;
mod dedicated_gateway;
mod gateway_tls;
mod identity;
mod jwt;
mod opaque_tcp;
mod probes;
mod rollouts;
mod route_filters;
mod semantics;
mod strategies;
mod trust;

fn main() -> ExitCode {
    main_support::run_sequential(&[
        (
            "gateway_routes_by_host_and_writes_gateway_api_status",
            |c| Box::pin(logged(c, gateway_routes)),
        ),
        (
            "https_listeners_serve_certificates_from_secrets_by_sni_with_reference_grants",
            |c| Box::pin(logged(c, gateway_tls::https_listeners)),
        ),
        (
            "a_dedicated_gateway_gets_its_own_proxies_and_service_and_takes_them_when_deleted",
            |c| Box::pin(logged(c, dedicated_gateway::own_proxies)),
        ),
        (
            "httproute_redirect_rewrite_header_and_query_and_regex_matches_on_the_gateway",
            |c| Box::pin(logged(c, route_filters::matches_and_filters)),
        ),
        ("weighted_split_of_2000_requests_is_50_50", |c| {
            Box::pin(logged(c, weighted_split))
        }),
        (
            "patching_weights_to_0_100_switches_within_2s_without_errors",
            |c| Box::pin(logged(c, switch_under_load)),
        ),
        ("scaling_and_pod_deletion_follow_endpoints", |c| {
            Box::pin(logged(c, scaling_and_deletion))
        }),
        (
            "operator_down_gateway_serves_last_config_and_converges_after_restart",
            |c| Box::pin(logged(c, operator_restart)),
        ),
        (
            "unappliable_snapshot_is_nacked_and_the_old_config_keeps_serving",
            |c| Box::pin(logged(c, nack_keeps_old_config)),
        ),
        (
            "sidecar_routes_services_by_name_within_their_timeouts_and_splits_by_gamma_route",
            |c| Box::pin(logged(c, sidecar_gamma)),
        ),
        ("rollout_walks_its_steps_and_is_promoted", |c| {
            Box::pin(logged(c, rollouts::canary_steps_and_promote))
        }),
        ("rollout_with_a_failing_canary_rolls_back_on_its_own", |c| {
            Box::pin(logged(c, rollouts::failing_canary_is_rolled_back))
        }),
        ("rollout_at_low_traffic_is_never_rolled_back", |c| {
            Box::pin(logged(c, rollouts::low_traffic_canary_is_never_rolled_back))
        }),
        ("rollout_resumes_its_step_after_an_operator_restart", |c| {
            Box::pin(logged(c, rollouts::operator_restart_resumes_the_step))
        }),
        (
            "header_and_mirror_routes_reach_the_canary_through_gateway_and_sidecar",
            |c| Box::pin(logged(c, strategies::header_routes)),
        ),
        (
            "request_mirror_copies_to_yellow_while_clients_see_blue",
            |c| Box::pin(logged(c, strategies::request_mirror)),
        ),
        (
            "mirror_route_rolls_back_a_failing_canary_that_clients_never_see",
            |c| {
                Box::pin(logged(
                    c,
                    strategies::mirror_route_rolls_back_a_canary_clients_never_see,
                ))
            },
        ),
        (
            "rollout_adopts_a_deployment_without_errors_and_follows_its_template",
            |c| Box::pin(logged(c, adoption::adopts_a_deployment)),
        ),
        (
            "analysis_templates_judge_with_prometheus_web_and_job_metrics_and_roll_back",
            |c| Box::pin(logged(c, analysis::templates_judge_the_canary)),
        ),
        (
            "blue_green_previews_switches_without_errors_and_switches_back",
            |c| Box::pin(logged(c, blue_green::blue_green)),
        ),
        (
            "rollout_promote_ends_one_pause_only_and_full_goes_to_100",
            |c| Box::pin(logged(c, semantics::promote_ends_one_pause_only)),
        ),
        (
            "rollout_without_routing_runs_shares_of_pods_and_keeps_stable",
            |c| Box::pin(logged(c, semantics::replica_shares_without_traffic_routing)),
        ),
        (
            "rollout_promotion_moves_stable_only_to_a_fully_ready_canary",
            |c| {
                Box::pin(logged(
                    c,
                    semantics::promotion_waits_for_a_fully_ready_canary,
                ))
            },
        ),
        (
            "rollout_with_a_deleted_route_sends_all_traffic_to_stable_and_names_it",
            |c| Box::pin(logged(c, semantics::a_deleted_route_takes_traffic_back)),
        ),
        (
            "rollout_with_only_inconclusive_analysis_pauses_instead_of_promoting",
            |c| Box::pin(logged(c, semantics::inconclusive_analysis_pauses)),
        ),
        (
            "rollout_scaled_by_a_real_hpa_keeps_each_revisions_share",
            |c| Box::pin(logged(c, semantics::an_autoscaled_rollout_keeps_its_shares)),
        ),
        (
            "a_gateway_listener_on_the_admin_port_is_refused_and_the_mesh_converges",
            |c| Box::pin(logged(c, semantics::a_bad_object_never_stalls_the_mesh)),
        ),
        (
            "a_panicking_rollout_controller_fails_healthz_and_releases_the_lease",
            |c| Box::pin(logged(c, semantics::a_panicking_controller_is_noticed)),
        ),
        (
            "dashboard_in_chromium_shows_the_split_and_a_rollback",
            |c| Box::pin(logged(c, dashboard::shows_the_split_and_a_rollback)),
        ),
        (
            "injection_adds_a_native_sidecar_and_traffic_goes_through_both_proxies",
            |c| Box::pin(logged(c, identity::injection_adds_a_native_sidecar)),
        ),
        (
            "interception_passes_through_what_the_mesh_does_not_route",
            |c| {
                Box::pin(logged(
                    c,
                    identity::interception_passes_through_what_the_mesh_does_not_route,
                ))
            },
        ),
        (
            "l4_authorization_policy_on_an_http_port_answers_403_rbac_access_denied",
            |c| Box::pin(logged(c, identity::l4_policy_denies_a_principal)),
        ),
        ("l7_authorization_policy_allows_only_get", |c| {
            Box::pin(logged(c, identity::l7_policy_allows_only_get))
        }),
        (
            "request_authentication_refuses_bad_jwts_and_request_principals_require_one",
            |c| Box::pin(logged(c, jwt::request_authentication)),
        ),
        (
            "opaque_tcp_and_pod_addresses_go_between_sidecars_over_mtls",
            |c| Box::pin(logged(c, opaque_tcp::opaque_tcp_over_mtls)),
        ),
        (
            "grpc_health_probes_run_in_the_sidecar_under_strict_mtls",
            |c| Box::pin(logged(c, probes::grpc_probes_run_in_the_sidecar)),
        ),
        (
            "certificates_are_bound_to_the_token_and_strict_refuses_plaintext",
            |c| Box::pin(logged(c, identity::certificates_are_bound_to_identity)),
        ),
        (
            "certificates_rotate_under_steady_traffic_without_failures",
            |c| Box::pin(logged(c, identity::rotation_under_load)),
        ),
        (
            "root_rotation_keeps_admitting_pods_and_mesh_traffic_flowing",
            |c| {
                Box::pin(logged(
                    c,
                    identity::root_rotation_keeps_admitting_and_serving,
                ))
            },
        ),
        (
            "control_plane_gives_no_config_to_plaintext_or_other_identities",
            |c| Box::pin(logged(c, trust::other_identities_get_nothing)),
        ),
        (
            "forged_failures_from_another_pod_do_not_roll_back_a_healthy_canary",
            |c| {
                Box::pin(logged(
                    c,
                    trust::forged_failures_do_not_roll_back_a_healthy_canary,
                ))
            },
        ),
        (
            "diluting_reports_from_another_pod_do_not_save_a_failing_canary",
            |c| {
                Box::pin(logged(
                    c,
                    trust::diluting_reports_do_not_save_a_failing_canary,
                ))
            },
        ),
        (
            "dashboard_promote_needs_patch_on_the_rollout_and_the_dashboards_origin",
            |c| Box::pin(logged(c, trust::dashboard_actions_follow_kubernetes_rbac)),
        ),
        (
            "rollout_twenty_healthy_canaries_at_low_traffic_none_rolled_back",
            |c| {
                Box::pin(logged(
                    c,
                    rollouts::twenty_healthy_canaries_no_false_rollback,
                ))
            },
        ),
        // Last: while the window is full, new series of any scenario are
        // refused.
        (
            "a_flood_of_100000_telemetry_keys_is_capped_and_ages_out",
            |c| Box::pin(logged(c, trust::a_flood_of_keys_is_capped_and_ages_out)),
        ),
    ])
}

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a scenario; on failure, prints the operator's and the gateway
/// proxy's last log lines beside the error, which stays the cause alone
/// (the harness shows it at both ends of the failure's message).
async fn logged<F, Fut>(cluster: Arc<Cluster>, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Cluster>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let result = scenario(cluster.clone()).await;
    let Err(e) = result else { return Ok(()) };
    let mut logs = String::new();
    if let Some(mesh) = MESH.get() {
        let op = mesh.operator.lock().await;
        let log = op.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        logs.push_str("--- sluice-operator (last 40 lines) ---\n");
        for l in tail.into_iter().rev() {
            logs.push_str(l);
            logs.push('\n');
        }
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client(), GATEWAY_NS);
    if let Ok(list) = pods
        .list(&ListParams::default().labels("app=sluice-gateway"))
        .await
    {
        for p in list.items {
            let name = p.name_any();
            let log = cluster.logs(GATEWAY_NS, &name, "proxy", 30).await;
            logs.push_str(&format!("--- gateway {name} ---\n{log}\n"));
        }
    }
    // One write: scenarios run in parallel.
    println!("--- logs at a mesh scenario's failure ({e}) ---\n{logs}");
    Err(e)
}
const GATEWAY_PORT: u16 = 18080;

/// The operator and the gateway proxy, shared by every scenario.
struct Mesh {
    operator: Mutex<Operator>,
    gateway_ip: String,
}

static MESH: OnceCell<Arc<Mesh>> = OnceCell::const_new();

async fn mesh(cluster: &Cluster) -> anyhow::Result<Arc<Mesh>> {
    MESH.get_or_try_init(|| async {
        // Certificates live seconds, so every scenario runs across rotations.
        // Test faults on: the supervision scenario makes the controller panic.
        // Dashboard actions on: the trust scenarios promote through it.
        let (operator, gateway_ip) = start_mesh_with(
            cluster,
            &[
                "--cert-ttl=6s",
                "--test-faults",
                "--dashboard-actions",
                // Short, so that the flood scenario sees its series age out;
                // longer than every analysis interval and dashboard wait here.
                "--telemetry-window=30s",
            ],
        )
        .await?;
        Ok(Arc::new(Mesh {
            operator: Mutex::new(operator),
            gateway_ip,
        }))
    })
    .await
    .cloned()
}

/// One response, as a client saw it.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    served_by: String,
}

impl Reply {
    fn colour(&self) -> &str {
        self.body.trim()
    }
}

async fn get(ip: &str, port: u16, host: &str, path: &str) -> anyhow::Result<Reply> {
    get_with(ip, port, host, path, &[]).await
}

/// [`get`] with extra request headers.
async fn get_with(
    ip: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut req = http()
        .get(format!("http://{ip}:{port}{path}"))
        .header(reqwest::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let served_by = resp
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(Reply {
        status,
        body: resp.text().await?,
        served_by,
    })
}

/// Waits until `host` answers `want` through the gateway.
async fn until_gateway_answers(mesh: &Mesh, host: &str, want: &str) -> anyhow::Result<()> {
    until_answers(&mesh.gateway_ip, GATEWAY_PORT, host, want).await
}

/// Waits until `ip:port` answers 200 `want` for `host`. A timeout says
/// what came last (a status and body, or why no answer came), which tells
/// a route not yet pushed from a network path not yet made.
async fn until_answers(ip: &str, port: u16, host: &str, want: &str) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::from("nothing yet"));
    let outcome = poll(
        &format!("{ip}:{port} to answer {want:?} for {host}"),
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let reply = get(ip, port, host, "/").await;
            if reply
                .as_ref()
                .is_ok_and(|r| r.status == 200 && r.colour() == want)
            {
                return Ok(Some(()));
            }
            *last.lock().unwrap_or_else(|p| p.into_inner()) = described(&reply);
            Ok(None)
        },
    )
    .await;
    outcome.map_err(|e| {
        let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
        anyhow::anyhow!("{e}; the last answer: {last}")
    })
}

/// One attempt's outcome in a line: the status, who served it and the
/// start of the body, or the error's whole chain.
fn described(reply: &anyhow::Result<Reply>) -> String {
    match reply {
        Ok(r) => {
            let body: String = r.body.chars().take(120).collect();
            format!("{} from {:?}: {body:?}", r.status, r.served_by)
        }
        Err(e) => format!("{e:#}"),
    }
}

/// Pod `client`: curl beside a hand-written sidecar (no injection), which
/// takes the app's requests on 127.0.0.1:15001.
async fn sidecar_client(mesh: &Mesh, ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  containers:
  - name: curl
    image: {curl}
  - name: sluice-proxy
    image: {proxy}
    args: [sidecar, --workers, "1"]
{proxy_env}
{volumes}
"#,
        curl = sluice_proto::images::CURL,
        proxy = sluice_proto::images::PROXY,
        proxy_env = proxy_env(&mesh.operator.lock().await.grpc_url(), 4),
        volumes = proxy_volumes(2),
    )
}

/// `n` sequential requests; counts by colour (non-200 as `status N`).
async fn tally(mesh: &Mesh, host: &str, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    tally_with(mesh, host, &[], n).await
}

/// [`tally`] with extra request headers.
async fn tally_with(
    mesh: &Mesh,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = get_with(&mesh.gateway_ip, GATEWAY_PORT, host, "/", headers).await?;
        let key = if r.status == 200 {
            r.colour().to_owned()
        } else {
            format!("status {} {}", r.status, r.body.trim())
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

/// A steady client: sequential requests until stopped, each recorded with
/// the moment it was sent. Its bounds (120 s, 120,000 requests) outlast
/// the waits it feeds: a canary judged by its traffic must still be
/// receiving some when a slow node brings its pods up late.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Result<Reply, String>)>>,
}

impl Load {
    fn start(ip: String, host: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline && seen.len() < 120_000
            {
                let at = Instant::now();
                let r = get(&ip, GATEWAY_PORT, &host, "/")
                    .await
                    .map_err(|e| e.to_string());
                seen.push((at, r));
            }
            seen
        });
        Load { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Vec<(Instant, Result<Reply, String>)>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// Failed requests of a load run, described.
fn failures(seen: &[(Instant, Result<Reply, String>)]) -> Vec<String> {
    seen.iter()
        .filter_map(|(_, r)| match r {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("{} {}", r.status, r.body.trim())),
            Err(e) => Some(e.clone()),
        })
        .collect()
}

/// Fails unless every request of a load run succeeded, naming the first
/// failures and `during` what.
fn none_failed(seen: &[(Instant, Result<Reply, String>)], during: &str) -> anyhow::Result<()> {
    let failed = failures(seen);
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed {during}: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    Ok(())
}

/// Demo-app Deployment `name` (labels app=`app`, version=`color`) and a
/// Service of the same name selecting it.
fn version(ns: &str, name: &str, app: &str, color: &str, replicas: i32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {app}, version: {color}}}}}
  template:
    metadata: {{labels: {{app: {app}, version: {color}}}}}
    spec:
      containers:
{container}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {app}, version: {color}}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#,
        container = demo_app_container(color, 6)
    )
}

/// A Gateway of class `sluice` with one HTTP listener for `host`.
fn gateway(ns: &str, name: &str, host: &str, port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}}}
spec:
  gatewayClassName: sluice
  listeners:
  - {{name: http, port: {port}, protocol: HTTP, hostname: "{host}"}}
"#
    )
}

/// An HTTPRoute on Gateway `gw` splitting between `blue` and `yellow`.
fn split_route(ns: &str, gw: &str, blue: u32, yellow: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: handson, namespace: {ns}}}
spec:
  parentRefs: [{{name: {gw}}}]
  rules:
  - backendRefs:
    - {{name: handson-blue, port: 8080, weight: {blue}}}
    - {{name: handson-yellow, port: 8080, weight: {yellow}}}
"#
    )
}

/// Blue and yellow behind a Gateway for `host`, split by weight.
async fn two_versions(
    cluster: &Cluster,
    mesh: &Mesh,
    ns: &str,
    host: &str,
    blue: u32,
    yellow: u32,
) -> anyhow::Result<()> {
    cluster.create_namespace(ns).await?;
    cluster.apply(&version(ns, "handson-blue", "handson", "blue", 1))?;
    cluster.apply(&version(ns, "handson-yellow", "handson", "yellow", 1))?;
    cluster.apply(&gateway(ns, "gw", host, GATEWAY_PORT))?;
    cluster.apply(&split_route(ns, "gw", blue, yellow))?;
    let client = cluster.client();
    deployment_available(&client, ns, "handson-blue", TIMEOUT).await?;
    deployment_available(&client, ns, "handson-yellow", TIMEOUT).await?;
    if blue > 0 {
        until_gateway_answers(mesh, host, "blue").await?;
    }
    if yellow > 0 {
        until_gateway_answers(mesh, host, "yellow").await?;
    }
    Ok(())
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    kind: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == kind)
}

async fn gateway_routes(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let ns = "handson";
    cluster.create_namespace(ns).await?;
    cluster.apply(&version(ns, "handson-blue", "handson", "blue", 1))?;
    cluster.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: handson, namespace: handson}
spec:
  selector: {app: handson}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: handson, namespace: handson}
spec:
  parentRefs: [{name: handson-gateway}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: not-there, port: 8080}]
  - backendRefs: [{name: handson, port: 8080}]
"#,
    )?;
    cluster.apply(&gateway(
        ns,
        "handson-gateway",
        "app.example.com",
        GATEWAY_PORT,
    ))?;
    deployment_available(&cluster.client(), ns, "handson-blue", TIMEOUT).await?;
    until_gateway_answers(&mesh, "app.example.com", "blue").await?;

    let other = get(&mesh.gateway_ip, GATEWAY_PORT, "other.example.com", "/").await?;
    ensure!(
        other.status == 404,
        "another host got {} {:?}",
        other.status,
        other.body
    );
    let missing = get(
        &mesh.gateway_ip,
        GATEWAY_PORT,
        "app.example.com",
        "/missing",
    )
    .await?;
    ensure!(
        missing.status == 500,
        "a backendRef to a missing Service got {} {:?}",
        missing.status,
        missing.body
    );

    let client = cluster.client();
    let classes: Api<GatewayClass> = Api::all(client.clone());
    poll(
        "GatewayClass sluice Accepted",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let c = classes.get("sluice").await?;
            let conds = c.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(condition(&conds, "Accepted")
                .filter(|c| c.status == "True")
                .map(|_| ()))
        },
    )
    .await?;
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), ns);
    let gw_ip = mesh.gateway_ip.clone();
    poll(
        "Gateway Accepted, Programmed, with the gateway's address and one route",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let g = gateways.get("handson-gateway").await?;
            let Some(st) = g.status else { return Ok(None) };
            let conds = st.conditions.unwrap_or_default();
            let ok = |k: &str| {
                condition(&conds, k).is_some_and(|c| {
                    c.status == "True" && c.observed_generation == g.metadata.generation
                })
            };
            let addressed = st
                .addresses
                .unwrap_or_default()
                .iter()
                .any(|a| a.value == gw_ip);
            let attached = st
                .listeners
                .unwrap_or_default()
                .first()
                .map(|l| l.attached_routes)
                == Some(1);
            Ok((ok("Accepted") && ok("Programmed") && addressed && attached).then_some(()))
        },
    )
    .await?;
    let routes: Api<HttpRoute> = Api::namespaced(client, ns);
    let parent = poll(
        "HTTPRoute parent status from sluice",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let r = routes.get("handson").await?;
            Ok(r.status.and_then(|s| {
                s.parents
                    .into_iter()
                    .find(|p| p.controller_name == "sluice.dev/gateway-controller")
            }))
        },
    )
    .await?;
    let accepted = condition(&parent.conditions, "Accepted").context("no Accepted condition")?;
    ensure!(accepted.status == "True", "Accepted: {accepted:?}");
    let resolved =
        condition(&parent.conditions, "ResolvedRefs").context("no ResolvedRefs condition")?;
    ensure!(
        resolved.status == "False"
            && resolved.reason == "BackendNotFound"
            && resolved.message.contains("not-there"),
        "ResolvedRefs: {resolved:?}"
    );
    Ok(())
}

async fn weighted_split(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let host = "split.example.com";
    two_versions(&cluster, &mesh, "split", host, 50, 50).await?;
    let counts = tally(&mesh, host, 2000).await?;
    for colour in ["blue", "yellow"] {
        let n = counts.get(colour).copied().unwrap_or(0);
        ensure!(
            (900..=1100).contains(&n),
            "{colour} got {n} of 2000 (want 50% ± 5%): {counts:?}"
        );
    }
    ensure!(counts.len() == 2, "unexpected answers: {counts:?}");
    Ok(())
}

async fn switch_under_load(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (ns, host) = ("switch", "switch.example.com");
    two_versions(&cluster, &mesh, ns, host, 50, 50).await?;
    let load = Load::start(mesh.gateway_ip.clone(), host.into());
    // Some traffic before the change.
    poll(
        "load to start",
        TIMEOUT,
        Duration::from_millis(50),
        || async { Ok((!load.task.is_finished()).then_some(())) },
    )
    .await?;
    let pushed = |kind: &'static str| {
        let mesh = mesh.clone();
        async move {
            let op = mesh.operator.lock().await;
            op.counter(
                "sluice_config_push_bytes_total",
                &format!("kind=\"{kind}\""),
            )
            .await
        }
    };
    let (delta_before, whole_before) = (pushed("delta").await?, pushed("whole").await?);
    let patched_at = Instant::now();
    cluster.kubectl(
        &["patch", "httproute", "handson", "-n", ns, "--type=json", "-p",
          r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/weight","value":0},{"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":100}]"#],
        None,
    )?;
    // Keep sending until yellow has answered alone for a while.
    poll(
        "only yellow for 200 consecutive requests",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let r = tally(&mesh, host, 200).await?;
            Ok((r.len() == 1 && r.contains_key("yellow")).then_some(()))
        },
    )
    .await?;
    let seen = load.finish().await?;
    none_failed(&seen, "during the switch")?;
    let last_blue = seen
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|r| r.colour() == "blue"))
        .map(|(at, _)| *at)
        .max();
    if let Some(last) = last_blue {
        let after = last.saturating_duration_since(patched_at);
        ensure!(
            after < Duration::from_secs(2),
            "blue still answered {after:?} after the patch"
        );
        eprintln!(
            "switch: last blue response {after:?} after kubectl patch returned; {} requests, 0 failed",
            seen.len()
        );
    }
    ensure!(seen.len() > 50, "only {} requests were sent", seen.len());
    // The gateway got the change as a delta over what it ran.
    let delta = pushed("delta").await? - delta_before;
    let whole = pushed("whole").await? - whole_before;
    ensure!(
        delta > 0.0,
        "the weight change went out whole ({whole} bytes)"
    );
    eprintln!("switch: {delta} bytes of deltas sent, {whole} of whole documents");
    Ok(())
}

/// A forward to the admin port of the gateway pod that has `ip`: its
/// `/config` answers on loopback only.
async fn gateway_admin(
    cluster: &Cluster,
    label: &str,
    ip: &str,
    port: u16,
) -> anyhow::Result<sluice_tests::PortForward> {
    let pod = sluice_tests::wait::pods_by_label(&cluster.client(), GATEWAY_NS, label)
        .await?
        .into_iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip)
        })
        .and_then(|p| p.metadata.name)
        .with_context(|| format!("no gateway pod ({label}) with IP {ip}"))?;
    Ok(cluster.port_forward(GATEWAY_NS, &pod, port).await?)
}

/// The running config of the proxy whose admin port `admin` forwards to.
async fn running_config(admin: &sluice_tests::PortForward) -> anyhow::Result<serde_json::Value> {
    Ok(http()
        .get(format!("http://{}/config", admin.local()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The endpoints of `backend` in the gateway's running config.
async fn gateway_endpoints(
    admin: &sluice_tests::PortForward,
    backend: &str,
) -> anyhow::Result<Vec<String>> {
    let doc = running_config(admin).await?;
    Ok(doc["config"]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["name"] == backend)
        .flat_map(|b| b["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect())
}

async fn scaling_and_deletion(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (ns, host) = ("scale", "scale.example.com");
    two_versions(&cluster, &mesh, ns, host, 0, 100).await?;
    let admin = gateway_admin(&cluster, "app=sluice-gateway", &mesh.gateway_ip, ADMIN_PORT).await?;
    // Off the pod, the running config (routes, endpoints, policies) is refused.
    let remote = http()
        .get(format!("http://{}:{ADMIN_PORT}/config", mesh.gateway_ip))
        .send()
        .await?
        .status();
    ensure!(
        remote == reqwest::StatusCode::FORBIDDEN,
        "/config from the host over the pod's address: {remote}"
    );
    let client = cluster.client();
    cluster.kubectl(
        &[
            "scale",
            "deployment",
            "handson-yellow",
            "-n",
            ns,
            "--replicas=3",
        ],
        None,
    )?;
    poll(
        "3 ready yellow endpoints",
        TIMEOUT,
        Duration::from_millis(50),
        || async {
            Ok((ready_endpoints(&client, ns, "handson-yellow").await?.len() == 3).then_some(()))
        },
    )
    .await?;
    let ready_at = Instant::now();
    let in_gateway = poll(
        "3 yellow endpoints in the gateway's config",
        TIMEOUT,
        Duration::from_millis(10),
        || async {
            Ok((gateway_endpoints(&admin, "scale/handson-yellow:8080")
                .await?
                .len()
                == 3)
                .then(|| ready_at.elapsed()))
        },
    )
    .await?;
    eprintln!(
        "scale: endpoints reached the gateway {in_gateway:?} after the EndpointSlice showed them ready"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Names with addresses: a pod that never answers is looked up by its
    // address in the gateway's log (an ejection says why).
    let ips: BTreeMap<String, String> =
        sluice_tests::wait::pods_by_label(&client, ns, "version=yellow")
            .await?
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
            .collect();
    let names: Vec<String> = ips.keys().cloned().collect();
    ensure!(names.len() == 3, "pods: {ips:?}");
    // Every pod, the new ones included, answers within a bounded run.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = 0;
    while !names.iter().all(|n| seen.contains_key(n)) {
        ensure!(
            sent < 5_000 && ready_at.elapsed() < Duration::from_secs(10),
            "after {sent} requests in {:?} only {seen:?} answered (pods {ips:?})",
            ready_at.elapsed()
        );
        let r = get(&mesh.gateway_ip, GATEWAY_PORT, host, "/").await?;
        *seen.entry(r.served_by).or_insert(0) += 1;
        sent += 1;
    }
    let served = ready_at.elapsed();
    ensure!(
        served < Duration::from_secs(2),
        "new endpoints took {served:?} to receive traffic"
    );
    eprintln!("scale: all 3 pods served {served:?} after their endpoints were ready");

    // Delete one pod under load: once its endpoint has left the gateway's
    // config, no request may reach it, and no request may fail.
    let victim = names[0].clone();
    let victim_ip = ips[&victim].clone();
    let load = Load::start(mesh.gateway_ip.clone(), host.into());
    pods.delete(&victim, &DeleteParams::default()).await?;
    let gone_at = poll(
        "the deleted pod's endpoint to leave the gateway config",
        TIMEOUT,
        Duration::from_millis(20),
        || async {
            let eps = gateway_endpoints(&admin, "scale/handson-yellow:8080").await?;
            Ok(
                (!eps.is_empty() && !eps.iter().any(|e| e.starts_with(&format!("{victim_ip}:"))))
                    .then(Instant::now),
            )
        },
    )
    .await?;
    // Traffic for a little longer after it left.
    poll(
        "200 more requests after the endpoint left",
        TIMEOUT,
        Duration::from_millis(50),
        || async { Ok((tally(&mesh, host, 200).await?.len() == 1).then_some(())) },
    )
    .await?;
    let seen = load.finish().await?;
    // After the endpoint left the config nothing may fail. Before, the pod
    // can die while the gateway still lists it (Kubernetes gives no order
    // between the kill and the EndpointSlice update); retries on another
    // endpoint should hide that, and what they did not hide is reported.
    let (before, after): (Vec<_>, Vec<_>) =
        seen.iter().cloned().partition(|(at, _)| *at <= gone_at);
    let failed = failures(&after);
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed after the deleted pod's endpoint was gone: {:?}",
        failed.len(),
        after.len(),
        &failed[..failed.len().min(5)]
    );
    let early = failures(&before);
    eprintln!(
        "scale: {} of {} requests failed while the pod was dying, before its endpoint left: {early:?}",
        early.len(),
        before.len()
    );
    let late: Vec<_> = seen
        .iter()
        .filter(|(at, r)| *at > gone_at && r.as_ref().is_ok_and(|r| r.served_by == victim))
        .collect();
    ensure!(
        late.is_empty(),
        "{} requests reached {victim} after its endpoint was gone",
        late.len()
    );
    Ok(())
}

async fn gateway_ready_text(mesh: &Mesh) -> anyhow::Result<String> {
    Ok(http()
        .get(format!("http://{}:{ADMIN_PORT}/ready", mesh.gateway_ip))
        .send()
        .await?
        .text()
        .await?)
}

async fn operator_restart(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (ns, host) = ("restart", "restart.example.com");
    two_versions(&cluster, &mesh, ns, host, 0, 100).await?;
    let mut operator = mesh.operator.lock().await;
    operator.kill();
    poll(
        "the gateway to notice the control plane is gone",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            Ok(gateway_ready_text(&mesh)
                .await?
                .contains("disconnected")
                .then_some(()))
        },
    )
    .await?;
    let metrics = http()
        .get(format!("http://{}:{ADMIN_PORT}/metrics", mesh.gateway_ip))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("sluice_control_plane_connected 0"),
        "metrics do not say disconnected"
    );
    let counts = tally(&mesh, host, 200).await?;
    ensure!(
        counts.get("yellow") == Some(&200),
        "with the operator down the gateway answered {counts:?}"
    );

    // A change made while the operator is down is applied once it is back.
    cluster.apply(&split_route(ns, "gw", 100, 0))?;
    let still = tally(&mesh, host, 50).await?;
    ensure!(
        still.get("yellow") == Some(&50),
        "the route changed without a control plane: {still:?}"
    );
    operator.restart().await?;
    drop(operator);
    let start = Instant::now();
    until_gateway_answers(&mesh, host, "blue").await?;
    poll("only blue", TIMEOUT, Duration::from_millis(100), || async {
        let r = tally(&mesh, host, 100).await?;
        Ok((r.len() == 1 && r.contains_key("blue")).then_some(()))
    })
    .await?;
    eprintln!(
        "restart: converged {:?} after the operator was healthy again",
        start.elapsed()
    );
    poll(
        "the gateway to report the control plane connected",
        TIMEOUT,
        Duration::from_millis(100),
        || async { Ok((gateway_ready_text(&mesh).await? == "ready\n").then_some(())) },
    )
    .await?;
    Ok(())
}

/// The admin port of the second gateway proxy of [`nack_keeps_old_config`]:
/// one the operator cannot know of.
const ALT_ADMIN_PORT: u16 = 18099;

/// A second gateway proxy whose admin endpoint is on [`ALT_ADMIN_PORT`].
fn alt_gateway(url: &str) -> String {
    let env = proxy_env(url, 8).replace(
        &format!("port: {ADMIN_PORT}"),
        &format!("port: {ALT_ADMIN_PORT}"),
    );
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sluice-gateway-alt, namespace: {GATEWAY_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: sluice-gateway-alt}}}}
  template:
    metadata: {{labels: {{app: sluice-gateway-alt}}}}
    spec:
      terminationGracePeriodSeconds: 1
      serviceAccountName: sluice-gateway
      containers:
      - name: proxy
        image: {proxy}
        args: [gateway, --workers, "1", --admin, "0.0.0.0:{ALT_ADMIN_PORT}"]
{env}
{volumes}"#,
        proxy = sluice_proto::images::PROXY,
        volumes = proxy_volumes(6),
    )
}

/// A snapshot one proxy cannot apply (a Gateway listener on the port only
/// that proxy uses for its admin endpoint, which the operator cannot know
/// of): that proxy NACKs and keeps serving its last good config, the
/// operator counts it and says so on the Gateway, the other proxy applies
/// it; removing the Gateway lets the next snapshot through.
async fn nack_keeps_old_config(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let result = nack_then_fix(&cluster).await;
    // After a failure too: the second gateway left running would refuse
    // the snapshots of the scenarios after this one, and fail them as well.
    let removed = cluster.kubectl(
        &[
            "delete",
            "deployment",
            "-n",
            GATEWAY_NS,
            "sluice-gateway-alt",
            "--ignore-not-found",
        ],
        None,
    );
    result?;
    removed?;
    Ok(())
}

/// [`nack_keeps_old_config`] but for the removal of the second gateway.
async fn nack_then_fix(cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(cluster).await?;
    let (ns, host) = ("nack", "nack.example.com");
    two_versions(cluster, &mesh, ns, host, 100, 0).await?;
    let url = mesh.operator.lock().await.grpc_url();
    cluster.apply(&alt_gateway(&url))?;
    let client = cluster.client();
    deployment_available(&client, GATEWAY_NS, "sluice-gateway-alt", TIMEOUT).await?;
    let alt_ip = sluice_tests::wait::pods_by_label(&client, GATEWAY_NS, "app=sluice-gateway-alt")
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status?.pod_ip)
        .context("the second gateway has no IP")?;
    // The log spans the whole run: only what is written from here counts.
    let (before, log_from) = {
        let op = mesh.operator.lock().await;
        let nacks = op.metric("sluice_config_nacks_total").await?.unwrap_or(0.0);
        (nacks, op.log().len())
    };
    let admin = gateway_admin(cluster, "app=sluice-gateway-alt", &alt_ip, ALT_ADMIN_PORT).await?;
    let version_of = || async {
        let doc = running_config(&admin).await?;
        anyhow::Ok(doc["version"].as_str().unwrap_or_default().to_owned())
    };
    let running = version_of().await?;
    cluster.apply(&gateway(ns, "clash", "clash.example.com", ALT_ADMIN_PORT))?;
    {
        let op = mesh.operator.lock().await;
        poll(
            "the operator to count a NACK",
            TIMEOUT,
            Duration::from_millis(100),
            || async {
                Ok(
                    (op.metric("sluice_config_nacks_total").await?.unwrap_or(0.0) > before)
                        .then_some(()),
                )
            },
        )
        .await?;
        let log = op.log();
        let since = log.get(log_from..).unwrap_or_default();
        ensure!(
            since
                .lines()
                .any(|l| l.contains("NACK") && l.contains("admin address")),
            "the operator log does not show the NACK"
        );
    }
    ensure!(
        version_of().await? == running,
        "the second gateway replaced its config with a refused one"
    );
    // The first gateway proxy took it and still serves.
    let counts = tally(&mesh, host, 100).await?;
    ensure!(
        counts.get("blue") == Some(&100),
        "after the NACK the gateway answered {counts:?}"
    );
    let gateways: Api<Gateway> = Api::namespaced(cluster.client(), ns);
    poll(
        "Gateway Programmed=False (Invalid) naming the proxy's error",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let g = gateways.get("clash").await?;
            let conds = g.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(condition(&conds, "Programmed")
                .filter(|c| {
                    c.status == "False"
                        && c.reason == "Invalid"
                        && c.message.contains("admin address")
                })
                .map(|_| ()))
        },
    )
    .await?;
    // Removing the bad Gateway lets the next snapshot through. Its content
    // may equal the config still running (content-hashed versions), so the
    // sign is the proxy's ACK of it, not a new version.
    let acks = || async {
        let op = mesh.operator.lock().await;
        anyhow::Ok(op.metric("sluice_config_acks_total").await?.unwrap_or(0.0))
    };
    let acked_before = acks().await?;
    gateways.delete("clash", &DeleteParams::default()).await?;
    poll(
        "the gateway to ACK the config after the fix",
        TIMEOUT,
        Duration::from_millis(100),
        || async { Ok((acks().await? > acked_before).then_some(())) },
    )
    .await?;
    let counts = tally(&mesh, host, 50).await?;
    ensure!(
        counts.get("blue") == Some(&50),
        "after the fix the gateway answered {counts:?}"
    );
    Ok(())
}

async fn sidecar_gamma(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let ns = "mesh";
    cluster.create_namespace(ns).await?;
    cluster.apply(&version(ns, "handson-blue", "handson", "blue", 1))?;
    cluster.apply(&version(ns, "handson-yellow", "handson", "yellow", 1))?;
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: handson, namespace: {ns}}}
spec:
  selector: {{app: handson}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
---
{client}"#,
        client = sidecar_client(&mesh, ns).await,
    ))?;
    let client = cluster.client();
    deployment_available(&client, ns, "handson-blue", TIMEOUT).await?;
    deployment_available(&client, ns, "handson-yellow", TIMEOUT).await?;
    pod_ready(&client, ns, "client", TIMEOUT).await?;
    // One request from the client's app through its sidecar: the status
    // and the body.
    let request = |host: &'static str, path: &'static str| {
        let cluster = cluster.clone();
        async move {
            let out = cluster
                .exec_in_pod(
                    ns,
                    "client",
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "3",
                        "-w",
                        "\n%{http_code}",
                        "-H",
                        &format!("Host: {host}"),
                        &format!("http://127.0.0.1:15001{path}"),
                    ],
                )
                .await?;
            let (body, status) = out.stdout.trim_end().rsplit_once('\n').unwrap_or_default();
            anyhow::Ok((status.to_owned(), body.trim().to_owned()))
        }
    };
    let curl = move |host: &'static str| async move { anyhow::Ok(request(host, "/").await?.1) };
    // Without a route, the Service's own endpoints (both versions).
    poll(
        "the sidecar to route handson.mesh.svc to both versions",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..20 {
                seen.insert(curl("handson.mesh.svc").await?);
            }
            Ok((seen.contains("blue") && seen.contains("yellow")).then_some(()))
        },
    )
    .await?;
    // The Service's timeout annotation bounds its sidecar route while no
    // HTTPRoute decides: a response slower than 300 ms is a 504 from the
    // sidecar, a fast one passes.
    let with_timeout = |value: &str| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: handson
  namespace: {ns}
  annotations: {{"{annotation}": "{value}"}}
spec:
  selector: {{app: handson}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#,
            annotation = sluice_crds::annotations::REQUEST_TIMEOUT,
        )
    };
    // A value that is not a duration sets nothing, and the Service gets a
    // Warning Event naming the annotation and the value.
    cluster.apply(&with_timeout("300 ms"))?;
    let note = rollouts::event_note_where(&cluster, ns, "InvalidAnnotation", |e| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("handson")
    })
    .await?;
    ensure!(
        note.contains(sluice_crds::annotations::REQUEST_TIMEOUT) && note.contains("\"300 ms\""),
        "the warning does not name the annotation and its value: {note}"
    );
    cluster.apply(&with_timeout("300ms"))?;
    let status = move |path: &'static str| async move {
        anyhow::Ok(request("handson.mesh.svc", path).await?.0)
    };
    poll(
        "a 1 s response to time out at the Service's 300 ms",
        TIMEOUT,
        Duration::from_millis(200),
        || async { Ok((status("/burn?ms=1000").await? == "504").then_some(())) },
    )
    .await?;
    let fast = status("/").await?;
    ensure!(fast == "200", "a fast request answered {fast}");
    // A GAMMA route on the Service sends everything to yellow.
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: handson-mesh, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: handson, port: 8080}}]
  rules:
  - backendRefs:
    - {{name: handson-blue, port: 8080, weight: 0}}
    - {{name: handson-yellow, port: 8080, weight: 100}}
"#
    ))?;
    poll(
        "the GAMMA route to take effect for handson:8080",
        TIMEOUT,
        Duration::from_millis(100),
        || async {
            let mut all_yellow = true;
            for _ in 0..20 {
                all_yellow &= curl("handson:8080").await? == "yellow";
            }
            Ok(all_yellow.then_some(()))
        },
    )
    .await?;
    for host in ["handson.mesh.svc.cluster.local:8080", "handson"] {
        let c = curl(host).await?;
        ensure!(c == "yellow", "{host} answered {c:?}");
    }
    let (unknown, _) = request("nothing.mesh.svc", "/").await?;
    if unknown != "404" {
        bail!("an unknown service answered {unknown}");
    }
    Ok(())
}
