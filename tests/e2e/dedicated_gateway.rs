//! A Gateway of the dedicated class gets proxies of its own, as Istio
//! deploys Gateways: a Deployment and a Service `<gateway>-<class>` in its
//! namespace carrying `spec.infrastructure`'s labels and annotations, its
//! status showing the Service's address, which serves its routes (and the
//! shared gateway does not); deleting the Gateway deletes them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use sluice_tests::Cluster;
use sluice_tests::wait::{deployment_available, poll};

use super::{GATEWAY_PORT, TIMEOUT, described, get, mesh, until_answers, version};

const NS: &str = "edge";
/// What the operator names the Gateway's objects: `<gateway>-<class>`.
const OBJECTS: &str = "edge-sluice-dedicated";
const HOST: &str = "edge.example.com";
/// The Gateway's pods: the Gateway API's name label, which they carry.
const PODS: &str = "gateway.networking.k8s.io/gateway-name=edge";

/// The Gateway's status once it is Programmed with an address: that address.
async fn programmed_address(gateways: &Api<Gateway>) -> anyhow::Result<String> {
    let address = poll(
        "Gateway edge Accepted, Programmed, with its Service's address",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let g = gateways.get("edge").await?;
            let Some(st) = g.status else { return Ok(None) };
            let conds = st.conditions.unwrap_or_default();
            let ok = |k: &str| conds.iter().any(|c| c.type_ == k && c.status == "True");
            let address = st
                .addresses
                .unwrap_or_default()
                .into_iter()
                .find(|a| a.r#type.as_deref() == Some("IPAddress"))
                .map(|a| a.value);
            Ok(address.filter(|_| ok("Accepted") && ok("Programmed")))
        },
    )
    .await?;
    Ok(address)
}

pub async fn own_proxies(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(NS).await?;
    cluster.apply(&version(NS, "handson-blue", "handson", "blue", 1))?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice-dedicated}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {NS}}}
spec:
  gatewayClassName: sluice-dedicated
  infrastructure:
    labels: {{team: web}}
    annotations: {{cost-centre: "42"}}
  listeners:
  - {{name: http, port: 80, protocol: HTTP, hostname: {HOST}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: edge, namespace: {NS}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: handson-blue, port: 8080}}]
"#
    ))?;
    let client = cluster.client();
    deployment_available(&client, NS, "handson-blue", TIMEOUT).await?;
    deployment_available(&client, NS, OBJECTS, TIMEOUT).await?;

    // The objects and the pods carry what spec.infrastructure asks for.
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get(OBJECTS)
        .await?;
    let service = Api::<Service>::namespaced(client.clone(), NS)
        .get(OBJECTS)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(PODS))
        .await?;
    ensure!(!pods.items.is_empty(), "no pod of the Gateway's own");
    let metas = [&deployment.metadata, &service.metadata]
        .into_iter()
        .chain(pods.items.iter().map(|p| &p.metadata));
    for meta in metas {
        let (labels, annotations) = (
            meta.labels.clone().unwrap_or_default(),
            meta.annotations.clone().unwrap_or_default(),
        );
        ensure!(
            labels.get("team").map(String::as_str) == Some("web")
                && annotations.get("cost-centre").map(String::as_str) == Some("42"),
            "{:?} lacks the infrastructure labels or annotations: {labels:?} {annotations:?}",
            meta.name
        );
    }
    for pod in &pods.items {
        let containers = pod.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
        let inits = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map_or(0, Vec::len);
        ensure!(
            containers == 1 && inits == 0,
            "the gateway pod {} got more than its proxy",
            pod.name_any()
        );
    }

    // Its status shows the Service's address, where its route answers.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), NS);
    let address = programmed_address(&gateways).await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no cluster IP")?;
    ensure!(
        address == cluster_ip,
        "status address {address}, Service {cluster_ip}"
    );
    if let Err(e) = until_answers(&address, 80, HOST, "blue").await {
        let path = path_to_pods(&client, &address).await;
        bail!("the Gateway's address does not answer its route: {e:#}\n{path}");
    }
    // The shared gateway does not serve it (nor listen at all on that
    // port while no shared Gateway does).
    if let Ok(shared) = get(&mesh.gateway_ip, GATEWAY_PORT, HOST, "/").await {
        ensure!(
            shared.status == 404,
            "the shared gateway answered {} for {HOST}",
            shared.status
        );
    }

    // The Gateway owns its objects: they go with it.
    gateways.delete("edge", &DeleteParams::default()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client, NS);
    poll(
        "the Gateway's Deployment and Service deleted with it",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let gone = deployments.get_opt(OBJECTS).await?.is_none()
                && services.get_opt(OBJECTS).await?.is_none();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// How the Service's `address` reaches the Gateway's pods, for a failure
/// that says which link is missing: each pod asked directly (no
/// kube-proxy between), and kube-proxy's NAT rules for the address.
async fn path_to_pods(client: &kube::Client, address: &str) -> String {
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(PODS))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pod in pods {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let direct = match &ip {
            Some(ip) => described(&get(ip, 80, HOST, "/").await),
            None => "no pod IP".to_owned(),
        };
        out.push_str(&format!(
            "pod {} at {ip:?} asked directly: {direct}\n",
            pod.name_any()
        ));
    }
    match sluice_tests::process::run("iptables-save", &["-t", "nat"]) {
        Ok(rules) => out.push_str(&nat_rules_for(&rules, address)),
        Err(e) => out.push_str(&format!("iptables-save: {e}\n")),
    }
    out
}

/// The NAT rules that match `address`, and those of the chains they jump
/// to, two levels down (kube-proxy's service chain, then its endpoints').
fn nat_rules_for(rules: &str, address: &str) -> String {
    let target = |line: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != "-j")
            .nth(1)
            .map(str::to_owned)
    };
    let host = format!("{address}/32");
    let mut picked: Vec<&str> = rules.lines().filter(|l| l.contains(&host)).collect();
    let mut chains: Vec<String> = picked.iter().filter_map(|l| target(l)).collect();
    for _ in 0..2 {
        let below: Vec<&str> = rules
            .lines()
            .filter(|l| chains.iter().any(|c| l.starts_with(&format!("-A {c} "))))
            .collect();
        chains = below.iter().filter_map(|l| target(l)).collect();
        picked.extend(below);
    }
    if picked.is_empty() {
        return format!("no NAT rule for {address}\n");
    }
    picked.iter().map(|l| format!("{l}\n")).collect()
}
