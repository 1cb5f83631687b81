//! End-to-end: opaque TCP between sidecars is carried over mTLS, as Istio
//! carries it. In a STRICT namespace (where a sidecar refuses plaintext),
//! a client reaches a Service port named `tcp-*` and the server pod by its
//! address; both go from the client's sidecar to the server's over mTLS,
//! and a TCP AuthorizationPolicy on the server judges the client's
//! certificate identity.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use sluice_tests::Cluster;
use sluice_tests::operator::proxy_counter;
use sluice_tests::wait::{deployment_available, pod_ready, poll};

use super::{TIMEOUT, mesh};

const NS: &str = "opaque-tcp";
const CURL: &str = sluice_proto::images::CURL;

/// The namespace (STRICT), the server `db` (demo-app behind an opaque
/// port) and two clients with identities of their own.
fn manifests() -> String {
    let client = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {NS}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  serviceAccountName: {name}\n  containers:\n  - name: curl\n    image: {CURL}\n---\n"
        )
    };
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
  labels: {{sluice.dev/inject: enabled, sluice.dev/mtls-mode: STRICT}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: db, namespace: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      serviceAccountName: db
      containers:
      - name: app
        image: sluice/demo-app:blue
        ports: [{{name: tcp-web, containerPort: 8080}}]
        readinessProbe:
          tcpSocket: {{port: tcp-web}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {NS}}}
spec:
  selector: {{app: db}}
  ports: [{{name: tcp-web, port: 8080, targetPort: tcp-web}}]
---
{client}{intruder}"#,
        client = client("client"),
        intruder = client("intruder"),
    )
}

/// What `pod` gets from `url`: curl's body, or its error.
async fn fetch(cluster: &Cluster, pod: &str, url: &str) -> anyhow::Result<String> {
    let out = cluster
        .exec_in_pod(NS, pod, &["curl", "-s", "-S", "-m", "2", url])
        .await?;
    let body = out.stdout.trim();
    Ok(if body.is_empty() {
        format!("(no body) {}", out.stderr.trim())
    } else {
        body.to_owned()
    })
}

async fn pod_ip(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    pods.get(name)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("no pod IP")
}

pub async fn opaque_tcp_over_mtls(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    mesh(&cluster).await?;
    cluster.create_namespace(NS).await?;
    cluster.apply(&manifests())?;
    let client = cluster.client();
    deployment_available(&client, NS, "db", TIMEOUT).await?;
    for name in ["client", "intruder"] {
        pod_ready(&client, NS, name, TIMEOUT).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let db_pod = pods
        .list(&kube::api::ListParams::default().labels("app=db"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .context("no db pod")?;
    let db_ip = pod_ip(&pods, &db_pod).await?;
    let client_ip = pod_ip(&pods, "client").await?;
    let carried = || proxy_counter(&client_ip, "sluice_mesh_tcp_connections_total", "");
    let passed = || proxy_counter(&client_ip, "sluice_passthrough_connections_total", "");

    // By the Service's name: its opaque port. STRICT refuses plaintext, so
    // an answer means the client's sidecar used mTLS.
    let by_service = "http://db:8080/color";
    let last = std::sync::Mutex::new(String::new());
    let reached = poll(
        "the client to reach db's opaque port",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let got = fetch(&cluster, "client", by_service).await?;
            let done = got == "blue";
            if let Ok(mut l) = last.lock() {
                *l = got;
            }
            Ok(done.then_some(()))
        },
    )
    .await;
    if let Err(e) = reached {
        let said = last.lock().map(|l| l.clone()).unwrap_or_default();
        let client_log = cluster.logs(NS, "client", "sluice-proxy", 20).await;
        let server_log = cluster.logs(NS, &db_pod, "sluice-proxy", 20).await;
        anyhow::bail!(
            "{e}; curl said {said:?}\n--- client sidecar ---\n{client_log}\n--- db sidecar ---\n{server_log}"
        );
    }
    let (carried_before, passed_before) = (carried().await?, passed().await?);
    let by_address = format!("http://{db_ip}:8080/color");
    for url in [by_service, by_address.as_str()] {
        let got = fetch(&cluster, "client", url).await?;
        ensure!(got == "blue", "{url} from the client: {got:?}");
    }
    let (carried_n, passed_n) = (
        carried().await? - carried_before,
        passed().await? - passed_before,
    );
    ensure!(
        carried_n >= 2.0 && passed_n == 0.0,
        "the client's sidecar carried {carried_n} connections over mTLS and passed {passed_n} through"
    );

    // The server's sidecar knows who connects: a DENY on the intruder's
    // identity closes its connections, the client's keep working.
    ensure!(
        fetch(&cluster, "intruder", by_service).await? == "blue",
        "the intruder before the policy"
    );
    cluster.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: no-intruder, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: db}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/{NS}/sa/intruder\"]}}}}]\n"
    ))?;
    poll(
        "the intruder to be refused",
        TIMEOUT,
        Duration::from_millis(200),
        || async { Ok((fetch(&cluster, "intruder", by_service).await? != "blue").then_some(())) },
    )
    .await?;
    for url in [by_service, by_address.as_str()] {
        let got = fetch(&cluster, "client", url).await?;
        ensure!(
            got == "blue",
            "{url} from the client under the policy: {got:?}"
        );
        let got = fetch(&cluster, "intruder", url).await?;
        ensure!(
            got != "blue",
            "{url} from the intruder under the policy: {got:?}"
        );
    }
    Ok(())
}
