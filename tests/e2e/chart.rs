//! End-to-end: the Helm chart. `helm lint` is clean and `helm template`
//! deterministic; `helm install` runs two operator replicas in the cluster
//! with exactly the chart's RBAC (any `forbidden` in their logs fails the
//! test); one leads (a Lease), the other takes over when it is killed and
//! handles what changes afterwards; the webhook injects, and an unmodified
//! curl in the mesh reaches `handson:8080` through both sidecars, which
//! find the operator by its Service name; `helm upgrade`
//! applies new values; `helm uninstall` leaves only the CRDs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gateway_api::gatewayclasses::GatewayClass;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use sluice_tests::Cluster;
use sluice_tests::operator::{dashboard_token, http, sidecar_requests};
use sluice_tests::toolchain::workspace_root;
use sluice_tests::wait::{deployment_available, poll};

const NS: &str = "sluice-system";
/// Short lease timing so that the failover is quick to observe.
const LEASE: u64 = 6;

fn chart() -> String {
    workspace_root().join("charts/sluice").display().to_string()
}

async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt("sluice-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn operator_pods(cluster: &Cluster) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NS);
    Ok(pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=sluice-operator"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Fails when an operator replica logged a permission error.
async fn no_forbidden(cluster: &Cluster) -> anyhow::Result<()> {
    for p in operator_pods(cluster).await? {
        let log = cluster.logs(NS, &p.name_any(), "operator", 100_000).await;
        ensure!(
            log.contains("connected"),
            "{}: no operator log:\n{log}",
            p.name_any(),
        );
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .take(5)
            .collect();
        ensure!(
            bad.is_empty(),
            "{} lacks permissions:\n{}",
            p.name_any(),
            bad.join("\n")
        );
    }
    Ok(())
}

async fn accepted(classes: &Api<GatewayClass>, name: &str) -> anyhow::Result<Option<()>> {
    Ok(classes.get_opt(name).await?.and_then(|c| {
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
            .then_some(())
    }))
}

/// Item 2 of the flow, with the operator the chart runs in the cluster:
/// label `handson`, restart `handson-blue`, and its pods have the app and
/// the proxy; an unmodified `curl http://handson:8080/` from another
/// injected pod answers `blue` through both proxies (the counters of each
/// grow). Sidecars find the operator by its Service name.
async fn handson_through_both_proxies(cluster: &Cluster) -> anyhow::Result<()> {
    let examples = workspace_root().join("examples/handson");
    let file = |name: &str| examples.join(name).display().to_string();
    let client = cluster.client();
    cluster.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: handson}\n")?;
    cluster.kubectl(&["apply", "-f", &file("10-handson-blue.yaml")], None)?;
    deployment_available(&client, "handson", "handson-blue", Duration::from_secs(120)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "handson");
    let sidecars = |p: &Pod| {
        p.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.name == "sluice-proxy")
            .count()
    };
    let before = pods
        .list(&ListParams::default().labels("app=handson"))
        .await?;
    ensure!(
        before.items.iter().all(|p| sidecars(p) == 0),
        "handson-blue has a proxy before its namespace is labelled"
    );
    cluster.kubectl(
        &["label", "namespace", "handson", "sluice.dev/inject=enabled"],
        None,
    )?;
    cluster.restart_deployment("handson", "handson-blue")?;
    let after = poll(
        "handson pods, all with the proxy",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=handson"))
                .await?
                .items;
            let settled = list.len() == 2
                && list
                    .iter()
                    .all(|p| sidecars(p) == 1 && p.metadata.deletion_timestamp.is_none());
            Ok(settled.then_some(list))
        },
    )
    .await?;
    // As `kubectl get pods` shows it: the app and the proxy, both ready.
    let listing = cluster.kubectl(
        &[
            "get",
            "pods",
            "-n",
            "handson",
            "-l",
            "app=handson",
            "--no-headers",
        ],
        None,
    )?;
    ensure!(
        listing.lines().count() == 2
            && listing
                .lines()
                .all(|l| l.split_whitespace().nth(1) == Some("2/2")),
        "kubectl get pods:\n{listing}"
    );
    cluster.kubectl(&["apply", "-f", &file("50-clients.yaml")], None)?;
    for pod in ["curl", "curl-allow"] {
        sluice_tests::wait::pod_ready(&client, "handson", pod, Duration::from_secs(120)).await?;
    }
    hands_on_commands(cluster, &after).await?;
    let ip_of = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    let curl_ip = ip_of(&pods.get("curl").await?).context("curl has no IP")?;
    let server_ips: Vec<String> = after.iter().filter_map(ip_of).collect();
    let curl = || async {
        cluster
            .exec_in_pod(
                "handson",
                "curl",
                &["curl", "-s", "-m", "2", "http://handson:8080/"],
            )
            .await
    };
    // The first answer waits for both sidecars' certificates and config.
    poll(
        "curl http://handson:8080/ to answer blue",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { Ok((curl().await?.stdout.trim() == "blue").then_some(())) },
    )
    .await?;
    let (out_before, in_before) = sidecar_requests(&curl_ip, &server_ips, 8080).await?;
    for _ in 0..5 {
        let out = curl().await?;
        ensure!(
            out.stdout.trim() == "blue",
            "curl answered {:?}",
            out.stdout
        );
    }
    let (out_after, in_after) = sidecar_requests(&curl_ip, &server_ips, 8080).await?;
    println!(
        "curl http://handson:8080/ x5 -> blue; client sidecar counted {}, server sidecars {}",
        out_after - out_before,
        in_after - in_before
    );
    ensure!(
        out_after - out_before >= 5.0 && in_after - in_before >= 5.0,
        "5 requests: the client sidecar counted {}, the server sidecars {}",
        out_after - out_before,
        in_after - in_before
    );
    replicas_see_the_same_traffic(cluster, 5).await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete("handson", &DeleteParams::default())
        .await?;
    Ok(())
}

/// The hands-on's own commands, as a reader types them: `kubectl exec` of
/// an unmodified curl (CoreDNS resolves `handson`, the init step's iptables
/// rules send it through the sidecar) and `kubectl logs` of the operator and
/// of a sidecar.
async fn hands_on_commands(cluster: &Cluster, servers: &[Pod]) -> anyhow::Result<()> {
    let argv = [
        "exec",
        "curl-allow",
        "-n",
        "handson",
        "--",
        "/bin/sh",
        "-c",
        "curl -s -o /dev/null -w '%{http_code}\\n' handson:8080",
    ];
    let code = poll(
        "kubectl exec curl-allow ... curl handson:8080 to print 200",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let out = cluster.kubectl(&argv, None)?;
            Ok((out == "200\n").then_some(out))
        },
    )
    .await?;
    println!(
        "kubectl exec curl-allow -n handson -- /bin/sh -c \"curl ... handson:8080\" -> {code}"
    );
    let operator = cluster.kubectl(&["logs", "-n", NS, "deployment/sluice-operator"], None)?;
    ensure!(
        operator.contains("control plane listening"),
        "kubectl logs deployment/sluice-operator:\n{operator}"
    );
    let server = servers.first().context("no handson pod")?.name_any();
    let sidecar = cluster.kubectl(
        &["logs", "-n", "handson", &server, "-c", "sluice-proxy"],
        None,
    )?;
    ensure!(
        !sidecar.trim().is_empty(),
        "kubectl logs {server} -c sluice-proxy printed nothing"
    );
    Ok(())
}

/// Each proxy reports to one operator replica, which relays to the other:
/// both replicas' dashboards show the same `handson` traffic, at least
/// `at_least` requests (so the leader's analysis sees all of it too).
async fn replicas_see_the_same_traffic(cluster: &Cluster, at_least: u64) -> anyhow::Result<()> {
    // From the host, not loopback: the dashboard asks the API server.
    let token = dashboard_token(cluster, Duration::from_secs(600)).await?;
    let ips: Vec<String> = operator_pods(cluster)
        .await?
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .collect();
    ensure!(ips.len() == 2, "operator replicas: {ips:?}");
    let totals = poll(
        "both operator replicas to show the same handson traffic",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let mut totals = Vec::new();
            for ip in &ips {
                let response = http()
                    .get(format!("http://{ip}:20001/api/graph?namespace=handson"))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                let status = response.status();
                let body = response.text().await?;
                if !status.is_success() {
                    return Err(sluice_tests::Error::Check(format!(
                        "the dashboard at {ip}: {status} {body}"
                    )));
                }
                let graph: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| sluice_tests::Error::Check(format!("{e}: {body}")))?;
                let requests: u64 = graph["edges"]
                    .as_array()
                    .iter()
                    .flat_map(|edges| edges.iter())
                    .filter_map(|e| e["requests"].as_u64())
                    .sum();
                totals.push(requests);
            }
            let agree =
                totals.iter().all(|t| *t >= at_least) && totals.windows(2).all(|w| w[0] == w[1]);
            Ok(agree.then_some(totals))
        },
    )
    .await?;
    println!("both operator replicas show {} handson requests", totals[0]);
    Ok(())
}

pub async fn install_failover_upgrade_uninstall(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    cluster.install_gateway_api().await?;
    let chart = chart();
    let lint = cluster.helm(&["lint", &chart])?;
    ensure!(
        lint.contains("0 chart(s) failed") && !lint.contains("[WARNING]"),
        "helm lint:\n{lint}"
    );
    let render = || cluster.helm(&["template", "sluice", &chart, "-n", NS]);
    ensure!(render()? == render()?, "helm template is not deterministic");

    let values = [
        "--set",
        &format!("operator.leaseDuration={LEASE}"),
        "--set",
        "operator.renewDeadline=4",
    ];
    let mut install = vec![
        "install",
        "sluice",
        chart.as_str(),
        "-n",
        NS,
        "--create-namespace",
    ];
    install.extend(values);
    cluster.helm(&install)?;
    let client = cluster.client();
    deployment_available(&client, NS, "sluice-operator", Duration::from_secs(120)).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let ready = deployments
        .get("sluice-operator")
        .await?
        .status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ensure!(ready == 2, "{ready} operator replicas ready");

    // One replica leads; it writes the GatewayClass status.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let leader = poll(
        "a leader",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { Ok(holder(&leases).await?) },
    )
    .await?;
    let classes: Api<GatewayClass> = Api::all(client.clone());
    poll(
        "GatewayClass sluice Accepted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { Ok(accepted(&classes, "sluice").await?) },
    )
    .await?;
    // The webhook (through the Service) injects.
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: chart-app, labels: {sluice.dev/inject: enabled}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: chart-app}\nspec:\n  containers:\n  - {name: app, image: sluice/demo-app:blue}\n",
    )?;
    let injected = Api::<Pod>::namespaced(client.clone(), "chart-app")
        .get("app")
        .await?
        .spec
        .and_then(|s| s.init_containers)
        .unwrap_or_default();
    ensure!(
        injected.iter().any(|c| c.name == "sluice-proxy"),
        "the chart's webhook did not inject: {injected:?}"
    );
    handson_through_both_proxies(&cluster).await?;
    no_forbidden(&cluster).await?;

    // Kill the leader: the other replica takes over within the lease.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let killed = Instant::now();
    pods.delete(&leader, &DeleteParams::default().grace_period(0))
        .await?;
    let next = poll(
        "a new leader",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { Ok(holder(&leases).await?.filter(|h| *h != leader)) },
    )
    .await?;
    let took = killed.elapsed();
    println!("leader {leader} killed; {next} leads {took:.1?} later (lease {LEASE} s)");
    // The kubelet stops it with SIGTERM, on which it releases the lease;
    // had it crashed instead, the lease would run out at most LEASE after
    // its last renewal. Either way within LEASE and the poll period.
    ensure!(
        took <= Duration::from_secs(LEASE) + Duration::from_millis(500),
        "takeover took {took:?} (lease {LEASE} s)"
    );
    // A change made afterwards is handled by the new leader.
    cluster.apply("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice-after}\nspec: {controllerName: sluice.dev/gateway-controller}\n")?;
    poll(
        "GatewayClass sluice-after Accepted by the new leader",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { Ok(accepted(&classes, "sluice-after").await?) },
    )
    .await?;
    classes
        .delete("sluice-after", &DeleteParams::default())
        .await?;
    // The replacement of the killed replica runs too before its log is read.
    deployment_available(&client, NS, "sluice-operator", Duration::from_secs(120)).await?;
    no_forbidden(&cluster).await?;

    // Upgrade with changed values.
    let mut upgrade = vec!["upgrade", "sluice", chart.as_str(), "-n", NS];
    upgrade.extend(values);
    upgrade.extend([
        "--set",
        "dashboard.actions=true",
        "--set",
        "operator.logLevel=debug",
    ]);
    cluster.helm(&upgrade)?;
    let args = deployments
        .get("sluice-operator")
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.args.clone()))
        .unwrap_or_default();
    ensure!(
        args.iter().any(|a| a == "--dashboard-actions"),
        "the upgrade did not apply: {args:?}"
    );
    deployment_available(&client, NS, "sluice-operator", Duration::from_secs(120)).await?;

    // Uninstall: nothing left but the CRDs.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete("chart-app", &DeleteParams::default())
        .await?;
    cluster.helm(&["uninstall", "sluice", "-n", NS, "--wait"])?;
    poll("everything the chart made to be gone", Duration::from_secs(60), Duration::from_millis(250), || async {
        let left = cluster.kubectl(&[
            "get",
            "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,secrets,leases",
            "-n",
            NS,
            "-o",
            "name",
        ], None)?;
        let left: Vec<&str> = left
            .lines()
            .filter(|l| !l.contains("serviceaccount/default") && !l.contains("kube-root-ca"))
            .collect();
        let cluster_wide = cluster.kubectl(&[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,gatewayclasses",
            "-o",
            "name",
        ], None)?;
        let cluster_left: Vec<&str> = cluster_wide.lines().filter(|l| l.contains("sluice")).collect();
        Ok((left.is_empty() && cluster_left.is_empty()).then_some(()))
    })
    .await
    .context(cluster.kubectl(&["get", "all,secrets,leases", "-n", NS], None).unwrap_or_default())?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    ensure!(
        secrets.get_opt("sluice-ca").await?.is_none(),
        "the CA Secret outlived the release"
    );
    ensure!(
        cluster
            .kubectl(
                &[
                    "get",
                    "crd",
                    "rollouts.sluice.dev",
                    "authorizationpolicies.sluice.dev",
                    "-o",
                    "name"
                ],
                None
            )?
            .lines()
            .count()
            == 2,
        "the CRDs should stay (Helm never deletes them)"
    );
    Ok(())
}
