//! End-to-end: the Helm chart. `helm lint` is clean and `helm template`
//! deterministic; `helm install` runs two operator replicas in the cluster
//! with exactly the chart's RBAC (any `forbidden` in their logs fails the
//! test); one leads (a Lease), the other takes over when it is killed and
//! handles what changes afterwards; the webhook injects; `helm upgrade`
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
        let path = cluster
            .node()
            .container_log(&p.uid().unwrap_or_default(), "operator");
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        ensure!(
            log.contains("connected"),
            "{}: no operator log at {}",
            p.name_any(),
            path.display()
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
        "image.tag=dev",
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
    ensure!(
        took <= Duration::from_secs(LEASE + 3),
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
