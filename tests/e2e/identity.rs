//! End-to-end: workload identity, mTLS and AuthorizationPolicy. Pods with a
//! sidecar and a projected token (audience `sluice`) get certificates from
//! the operator's CA; sidecars talk mTLS; policies are enforced on the
//! destination's inbound side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_proto::authz::DENIED_BODY;
use sluice_proto::bootstrap::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
use sluice_proto::mesh::SignRequest;
use sluice_proto::mesh::certificates_client::CertificatesClient;
use sluice_tests::Cluster;
use sluice_tests::mesh_client::{MeshClient, spiffe_csr, token_request};
use sluice_tests::operator::{
    ADMIN_PORT, GATEWAY_NS, demo_app_container, http, proxy_counter, sidecar_requests,
};
use sluice_tests::wait::{deployment_available, pod_ready, pods_by_label, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The client image: curl and a shell.
const CURL: &str = sluice_proto::images::CURL;
use tokio::sync::OnceCell;

use super::{TIMEOUT, mesh};

pub(crate) const NS: &str = "authz";
const TD: &str = "cluster.local";

/// The namespace, opted into injection, with an mTLS mode.
fn namespace(mode: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n  labels: {{sluice.dev/inject: enabled, sluice.dev/mtls-mode: {mode}}}\n"
    )
}

/// A client pod (curl) under its own service account; the injector adds
/// the sidecar.
fn client_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {NS}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  serviceAccountName: {name}\n  containers:\n  - name: curl\n    image: {CURL}\n"
    )
}

/// The namespace, opted into injection: `handson` (blue) and the client
/// pods `curl`, `curl-allow` and `curl-deny`, each with its own service
/// account; none of the manifests mentions a sidecar.
pub(crate) async fn setup(cluster: &Cluster) -> anyhow::Result<()> {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        mesh(cluster).await?;
        cluster.create_namespace(NS).await?;
        cluster.apply(&namespace("PERMISSIVE"))?;
        cluster.apply(&format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: handson, namespace: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: handson-blue, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: handson, version: blue}}}}
  template:
    metadata: {{labels: {{app: handson, version: blue}}}}
    spec:
      serviceAccountName: handson
      containers:
{container}---
apiVersion: v1
kind: Service
metadata: {{name: handson, namespace: {NS}}}
spec:
  selector: {{app: handson}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#,
            container = demo_app_container("blue", 6)
        ))?;
        for name in ["curl", "curl-allow", "curl-deny"] {
            cluster.apply(&client_pod(name))?;
        }
        let client = cluster.client();
        deployment_available(&client, NS, "handson-blue", TIMEOUT).await?;
        for name in ["curl", "curl-allow", "curl-deny"] {
            pod_ready(&client, NS, name, TIMEOUT).await?;
        }
        // Every sidecar has its certificate and the mesh path answers.
        for name in ["curl", "curl-allow", "curl-deny"] {
            poll(
                &format!("{name} to reach handson over mTLS"),
                TIMEOUT,
                Duration::from_millis(200),
                || async { Ok((call(cluster, name, "GET", "/").await?.0 == "200").then_some(())) },
            )
            .await?;
        }
        anyhow::Ok(())
    })
    .await?;
    Ok(())
}

/// Injection: the labelled namespace's pods got the proxy as a native
/// sidecar, an opted-out pod did not, and a request goes through both
/// proxies (their metrics count it) over mTLS; an injected Job completes.
pub async fn injection_adds_a_native_sidecar(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    setup(&cluster).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), NS);
    let handson = pods_by_label(&cluster.client(), NS, "app=handson")
        .await?
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .context("no handson pod")?;
    let spec = handson.spec.clone().context("no spec")?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "sluice-proxy")
        .context("handson has no sluice-proxy init container")?;
    ensure!(
        sidecar.restart_policy.as_deref() == Some("Always"),
        "the sidecar is not native: {:?}",
        sidecar.restart_policy
    );
    ensure!(
        spec.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            == ["app"],
        "the app's containers changed: {:?}",
        spec.containers.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: opted-out\n  namespace: {NS}\n  annotations: {{sluice.dev/inject: \"false\"}}\nspec:\n  containers:\n  - {{name: curl, image: {CURL}}}\n"
    ))?;
    let opted = pods.get("opted-out").await?;
    let inits = opted
        .spec
        .and_then(|s| s.init_containers)
        .unwrap_or_default();
    ensure!(inits.is_empty(), "an opted-out pod was injected: {inits:?}");
    pods.delete("opted-out", &DeleteParams::default()).await?;

    let servers = [handson.status.and_then(|s| s.pod_ip).context("no IP")?];
    let client_ip = pod_ip(&cluster, "curl").await?;
    let (out_before, in_before) = sidecar_requests(&client_ip, &servers, 8080).await?;
    for _ in 0..10 {
        let (code, body) = call(&cluster, "curl", "GET", "/").await?;
        ensure!(code == "200" && body.trim() == "blue", "{code} {body}");
    }
    let (out_after, in_after) = sidecar_requests(&client_ip, &servers, 8080).await?;
    ensure!(
        out_after - out_before >= 10.0 && in_after - in_before >= 10.0,
        "10 requests: client sidecar counted {}, server sidecar {}",
        out_after - out_before,
        in_after - in_before
    );

    // Transparent interception (on for every injected pod): an unmodified
    // curl to the Service's name goes through both sidecars, and the app's
    // readiness probe is served by its sidecar.
    let probe = spec.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .context("handson lost its readiness probe")?;
    ensure!(
        probe.path.as_deref() == Some("/app-health/app/readiness")
            && probe.port == IntOrString::Int(i32::from(ADMIN_PORT)),
        "the app's probe was not moved to the sidecar: {probe:?}"
    );
    let url = "http://handson:8080/";
    let (out_before, in_before) = sidecar_requests(&client_ip, &servers, 8080).await?;
    for _ in 0..5 {
        let out = cluster
            .exec_in_pod(NS, "curl", &["curl", "-s", "-m", "2", url])
            .await?;
        ensure!(
            out.stdout.trim() == "blue",
            "intercepted curl: {:?}",
            out.stdout
        );
    }
    let (out_after, in_after) = sidecar_requests(&client_ip, &servers, 8080).await?;
    ensure!(
        out_after - out_before >= 5.0 && in_after - in_before >= 5.0,
        "intercepted requests: client sidecar counted {}, server sidecar {}",
        out_after - out_before,
        in_after - in_before
    );

    // Native sidecar order, by the kubelet: the app starts once the proxy's
    // startup probe passed, so its very first request finds the proxy ready.
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ordered, namespace: {NS}}}\nspec:\n  serviceAccountName: curl\n  containers:\n  - name: app\n    image: {CURL}\n    command: [sh, -c, \"curl -s -o /dev/null -w 'proxy at app start: %{{http_code}}\\\\n' http://127.0.0.1:{ADMIN_PORT}/ready; exec sluice-pause\"]\n"
    ))?;
    pod_ready(&cluster.client(), NS, "ordered", TIMEOUT).await?;
    let said = poll(
        "the ordered pod's app to log",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let log = cluster.logs(NS, "ordered", "app", 10).await;
            Ok(log.contains("proxy at app start").then_some(log))
        },
    )
    .await?;
    ensure!(
        said.contains("proxy at app start: 200"),
        "the app started before its proxy was ready: {said:?}"
    );
    pods.delete("ordered", &DeleteParams::default()).await?;

    // A Job completes: its curl starts only once the proxy is ready (its
    // first request already goes through the mesh), and the native sidecar
    // stops with it instead of keeping the pod alive.
    cluster.apply(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: curl-once, namespace: {NS}}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      serviceAccountName: curl\n      containers:\n      - {{name: curl, image: {CURL}, command: [curl, -sf, -m, \"5\", \"http://handson:8080/\"]}}\n"
    ))?;
    cluster.kubectl(
        &[
            "wait",
            "-n",
            NS,
            "--for=condition=complete",
            "job/curl-once",
            "--timeout=60s",
        ],
        None,
    )?;
    cluster.kubectl(
        &["delete", "-n", NS, "job/curl-once", "--cascade=background"],
        None,
    )?;
    Ok(())
}

/// Interception takes everything, so what no route takes must still
/// work, as Istio keeps it working: outbound TLS to the API server passes
/// through to where it was going; a pod's port and an opaque (`tcp-*`)
/// Service port of a meshed pod are carried over mTLS to its sidecar, which
/// hands them to the app's port even though the pod does not declare it;
/// inbound, that port is served to a client outside the mesh too. The
/// unlisted app's TCP readiness probe is run by its sidecar.
pub async fn interception_passes_through_what_the_mesh_does_not_route(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    setup(&cluster).await?;
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: opaque, namespace: {NS}}}\nspec:\n  selector: {{app: unlisted}}\n  ports: [{{name: tcp-app, port: 9090}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: unlisted, namespace: {NS}, labels: {{app: unlisted}}}}\nspec:\n  containers:\n  - name: app\n    image: sluice/demo-app:green\n    env: [{{name: LISTEN, value: \"0.0.0.0:9090\"}}]\n    readinessProbe: {{tcpSocket: {{port: 9090}}, periodSeconds: 1}}\n"
    ))?;
    pod_ready(&cluster.client(), NS, "unlisted", TIMEOUT).await?;
    let unlisted = pod_ip(&cluster, "unlisted").await?;
    let passed = |ip: String| async move {
        proxy_counter(&ip, "sluice_passthrough_connections_total", "").await
    };
    // Inbound: from the host, outside the mesh.
    let before = passed(unlisted.clone()).await?;
    let body = http()
        .get(format!("http://{unlisted}:9090/"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        body.trim() == "green",
        "the unlisted port answered {body:?}"
    );
    ensure!(
        passed(unlisted.clone()).await? > before,
        "the unlisted pod's sidecar did not pass the connection through"
    );
    // Outbound: the API server's TLS, a pod's port, an opaque Service port.
    let client_ip = pod_ip(&cluster, "curl").await?;
    let carried = |ip: String| async move {
        proxy_counter(&ip, "sluice_mesh_tcp_connections_total", "").await
    };
    let before = passed(client_ip.clone()).await?;
    let carried_before = carried(client_ip.clone()).await?;
    let unlisted_before = passed(unlisted.clone()).await?;
    let healthz = format!("{}/healthz", cluster.apiserver());
    let direct = format!("http://{unlisted}:9090/");
    // A Service port named `tcp-*` is opaque: passed through, not routed.
    let opaque = "http://opaque:9090/".to_owned();
    for (url, want) in [(&healthz, "ok"), (&direct, "green"), (&opaque, "green")] {
        let out = cluster
            .exec_in_pod(NS, "curl", &["curl", "-sk", "-m", "5", url])
            .await?;
        ensure!(
            out.stdout.trim() == want,
            "{url} from an intercepted pod: {:?} {:?}",
            out.stdout,
            out.stderr
        );
    }
    let (passed_n, carried_n, handed_n) = (
        passed(client_ip.clone()).await? - before,
        carried(client_ip).await? - carried_before,
        passed(unlisted.clone()).await? - unlisted_before,
    );
    ensure!(
        passed_n == 1.0 && carried_n == 2.0 && handed_n >= 2.0,
        "the client's sidecar passed {passed_n} connections through (expected 1: the API server) \
         and carried {carried_n} over mTLS (expected 2); the unlisted pod's sidecar handed {handed_n} to its app"
    );
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client(), NS)
        .delete("unlisted", &DeleteParams::default())
        .await?;
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client(), NS)
        .delete("opaque", &DeleteParams::default())
        .await?;
    Ok(())
}

/// `curl` from `pod` through its sidecar to `handson:8080`: (status, body);
/// status `000` when the connection closed without a response.
async fn call(
    cluster: &Cluster,
    pod: &str,
    method: &str,
    path: &str,
) -> anyhow::Result<(String, String)> {
    call_with(cluster, pod, method, path, &[]).await
}

/// [`call`] with extra request headers (`Name: value`).
pub(crate) async fn call_with(
    cluster: &Cluster,
    pod: &str,
    method: &str,
    path: &str,
    headers: &[&str],
) -> anyhow::Result<(String, String)> {
    let url = format!("http://127.0.0.1:15001{path}");
    let mut argv = vec![
        "curl",
        "-s",
        "-m",
        "2",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "Host: handson:8080",
    ];
    for h in headers {
        argv.extend(["-H", h]);
    }
    if method == "POST" {
        argv.extend(["-d", "{}"]);
    }
    argv.push(&url);
    let out = cluster.exec_in_pod(NS, pod, &argv).await?;
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    Ok((code.trim().to_owned(), body.to_owned()))
}

/// The address of the handson pod that serves (not one still going away
/// after a restart).
pub(crate) async fn handson_ip(cluster: &Cluster) -> anyhow::Result<String> {
    pods_by_label(&cluster.client(), NS, "app=handson")
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status?.pod_ip)
        .context("the handson pod has no IP")
}

async fn pod_ip(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), NS);
    pods.get(name)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("no pod IP")
}

pub(crate) fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: handson}}}}\n{body}"
    )
}

pub(crate) async fn delete_policy(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let api: Api<sluice_crds::AuthorizationPolicy> = Api::namespaced(cluster.client(), NS);
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// Hands-on step 5: an L4 DENY (principal and port only) on `curl-deny`'s
/// identity: on this HTTP port its requests get Istio's `403 RBAC: access
/// denied` within 2 s, counted as denied requests; `curl-allow` keeps
/// working; deleting the policy restores both.
pub async fn l4_policy_denies_a_principal(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let checked = deny_curl_deny_checks(cluster.clone()).await;
    // Pass or fail, leave no policy behind for the scenarios after this one.
    let _ = delete_policy(&cluster, "deny-curl-deny").await;
    checked
}

async fn deny_curl_deny_checks(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    setup(&cluster).await?;
    for pod in ["curl-allow", "curl-deny"] {
        let (code, body) = call(&cluster, pod, "GET", "/").await?;
        ensure!(code == "200", "{pod} before the policy: {code} {body}");
    }
    let ip = handson_ip(&cluster).await?;
    let denied_before = proxy_counter(&ip, "sluice_authz_denied_requests_total", "").await?;
    let applied = Instant::now();
    cluster.apply(&policy(
        "deny-curl-deny",
        &format!(
            "  action: DENY\n  rules:\n  - from: [{{source: {{principals: [\"{TD}/ns/{NS}/sa/curl-deny\"]}}}}]\n    to: [{{operation: {{ports: [\"8080\"]}}}}]\n"
        ),
    ))?;
    poll(
        "curl-deny to get 403",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { Ok((call(&cluster, "curl-deny", "GET", "/").await?.0 == "403").then_some(())) },
    )
    .await?;
    let took = applied.elapsed();
    println!(
        "L4 DENY effective {} ms after the apply returned",
        took.as_millis()
    );
    ensure!(
        took <= Duration::from_secs(2),
        "the DENY policy took {took:?} (target 2 s)"
    );
    // Stays denied with Istio's answer, and the other identity is fine.
    for _ in 0..5 {
        let (code, body) = call(&cluster, "curl-deny", "GET", "/").await?;
        ensure!(
            code == "403" && body == DENIED_BODY,
            "curl-deny under the policy: {code} {body:?}"
        );
        let (code, body) = call(&cluster, "curl-allow", "GET", "/").await?;
        ensure!(code == "200", "curl-allow under the policy: {code} {body}");
    }
    let denied = proxy_counter(&ip, "sluice_authz_denied_requests_total", "").await?;
    ensure!(
        denied >= denied_before + 5.0,
        "the handson sidecar counted {} denied requests under the policy (want >= 5)",
        denied - denied_before
    );
    // The dashboard lists the policy on the workload with the sidecar's count.
    let dashboard = mesh(&cluster).await?.operator.lock().await.dashboard;
    let rows: serde_json::Value = http()
        .get(format!("http://{dashboard}/api/policies?namespace={NS}"))
        .send()
        .await?
        .json()
        .await?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["workload"] == "handson (blue)"))
        .context("no handson row on the dashboard")?;
    ensure!(
        row["denied"].as_u64().unwrap_or(0) >= 1
            && row["policies"].to_string().contains("authz/deny-curl-deny"),
        "dashboard policies row: {row}"
    );
    delete_policy(&cluster, "deny-curl-deny").await?;
    poll(
        "curl-deny to be served again",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { Ok((call(&cluster, "curl-deny", "GET", "/").await?.0 == "200").then_some(())) },
    )
    .await?;
    let (code, _) = call(&cluster, "curl-allow", "GET", "/").await?;
    ensure!(code == "200", "curl-allow after the delete: {code}");
    Ok(())
}

/// Hands-on step 6: an ALLOW policy for `GET` from `curl`: GET 200, POST
/// and DELETE 403 `RBAC: access denied`.
pub async fn l7_policy_allows_only_get(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let checked = get_only_checks(cluster.clone()).await;
    // Pass or fail, leave no policy behind for the scenarios after this one.
    let _ = delete_policy(&cluster, "get-only").await;
    checked
}

async fn get_only_checks(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    setup(&cluster).await?;
    let (code, _) = call(&cluster, "curl", "POST", "/").await?;
    ensure!(code == "200", "POST before the policy: {code}");
    cluster.apply(&policy(
        "get-only",
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{TD}/ns/{NS}/sa/curl\"]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n"
        ),
    ))?;
    poll(
        "POST to be denied",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { Ok((call(&cluster, "curl", "POST", "/").await?.0 == "403").then_some(())) },
    )
    .await?;
    let (code, body) = call(&cluster, "curl", "GET", "/").await?;
    ensure!(code == "200" && body.trim() == "blue", "GET: {code} {body}");
    for (method, path) in [("POST", "/"), ("DELETE", "/id/123")] {
        let (code, body) = call(&cluster, "curl", method, path).await?;
        ensure!(
            code == "403" && body == DENIED_BODY,
            "{method} {path}: {code} {body:?}"
        );
    }
    // Another identity matches no ALLOW rule at all: on an HTTP port that is
    // a 403 too, as Istio answers, not a closed connection.
    let (code, body) = call(&cluster, "curl-allow", "GET", "/").await?;
    ensure!(
        code == "403" && body == DENIED_BODY,
        "curl-allow under an ALLOW for curl only: {code} {body:?}"
    );
    delete_policy(&cluster, "get-only").await?;
    poll(
        "POST to be allowed again",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { Ok((call(&cluster, "curl", "POST", "/").await?.0 == "200").then_some(())) },
    )
    .await?;
    Ok(())
}

/// A token of service account `sa` for `audience`.
async fn token(cluster: &Cluster, sa: &str, audience: &str) -> anyhow::Result<String> {
    Ok(token_request(cluster, NS, sa, Some(audience), Duration::from_secs(600)).await?)
}

fn csr(id: &str) -> anyhow::Result<String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(spiffe_csr(id, &key)?)
}

/// A client certificate for the TLS checks: `(chain, key)`.
struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A leaf for `id` signed by `issuer`, valid from `from` to `to` (seconds
/// relative to now).
fn leaf(
    id: &str,
    issuer: &rcgen::Issuer<'_, KeyPair>,
    from: i64,
    to: i64,
) -> anyhow::Result<ClientCert> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time_now();
    p.not_before = now + rcgen_duration(from);
    p.not_after = now + rcgen_duration(to);
    let cert = p.signed_by(&key, issuer)?;
    Ok(ClientCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration(secs: i64) -> time::Duration {
    time::Duration::seconds(secs)
}

/// Accepts any server certificate: these checks are about what the
/// sidecar accepts from clients.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET / over TLS to the handson sidecar's inbound port, presenting
/// `cert` (or none): the status line, or the error.
async fn tls_get(ip: &str, cert: Option<ClientCert>) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain, c.key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sluice_proto::config::inbound_server_name(8080))
        .map_err(|e| e.to_string())?;
    let io = async {
        let tcp = tokio::net::TcpStream::connect((ip, sluice_proto::config::INBOUND_PORT)).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: handson\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(Duration::from_secs(5), io).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(buf)) if buf.is_empty() => Err("closed without a response".into()),
        Ok(Ok(buf)) => Ok(String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()),
    }
}

/// Identity checks: a token of one service account gets no certificate for
/// another; certificates from a foreign root or expired ones are refused;
/// `STRICT` refuses clients without a mesh certificate.
pub async fn certificates_are_bound_to_identity(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    setup(&cluster).await?;
    let mesh = mesh(&cluster).await?;
    let grpc = mesh.operator.lock().await.grpc;
    // Server-authenticated TLS with the published roots, as a proxy that
    // has no certificate yet: only the token says who is asking.
    let bootstrap = MeshClient::bootstrap(&cluster, grpc, NS).await?;
    let mut ca = CertificatesClient::new(bootstrap.channel().await?);
    let allow_token = token(&cluster, "curl-allow", "sluice").await?;
    let own = ca
        .sign(SignRequest {
            csr_pem: csr(&format!("spiffe://{TD}/ns/{NS}/sa/curl-allow"))?,
            token: allow_token.clone(),
        })
        .await;
    ensure!(own.is_ok(), "its own identity was refused: {own:?}");
    let other = ca
        .sign(SignRequest {
            csr_pem: csr(&format!("spiffe://{TD}/ns/{NS}/sa/curl-deny"))?,
            token: allow_token,
        })
        .await;
    match other {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => bail!("curl-allow's token got curl-deny's identity: {other:?}"),
    }
    let wrong_audience = ca
        .sign(SignRequest {
            csr_pem: csr(&format!("spiffe://{TD}/ns/{NS}/sa/curl-allow"))?,
            token: token(&cluster, "curl-allow", "some-other-audience").await?,
        })
        .await;
    match wrong_audience {
        Err(s) if s.code() == tonic::Code::Unauthenticated => {}
        other => bail!("a token for another audience was accepted: {other:?}"),
    }

    // Client certificates at the handson sidecar's inbound port.
    let ip = handson_ip(&cluster).await?;
    let secret: Secret = Api::namespaced(cluster.client(), GATEWAY_NS)
        .get("sluice-ca")
        .await?;
    let data = secret.data.unwrap_or_default();
    let pem = |k: &str| -> anyhow::Result<String> {
        Ok(String::from_utf8(
            data.get(k).context("CA secret key")?.0.clone(),
        )?)
    };
    let mesh_ca =
        rcgen::Issuer::from_ca_cert_pem(&pem("ca.crt")?, KeyPair::from_pem(&pem("ca.key")?)?)?;
    let id = format!("spiffe://{TD}/ns/{NS}/sa/curl-allow");
    let good = tls_get(&ip, Some(leaf(&id, &mesh_ca, -60, 600)?)).await;
    ensure!(
        good.as_deref().is_ok_and(|l| l.contains(" 200")),
        "a valid mesh certificate was not served: {good:?}"
    );
    let expired = tls_get(&ip, Some(leaf(&id, &mesh_ca, -600, -60)?)).await;
    ensure!(
        expired.is_err(),
        "an expired certificate was served: {expired:?}"
    );
    let foreign_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut foreign_params = CertificateParams::default();
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign = rcgen::Issuer::new(foreign_params, foreign_key);
    let foreign_leaf = tls_get(&ip, Some(leaf(&id, &foreign, -60, 600)?)).await;
    ensure!(
        foreign_leaf.is_err(),
        "a certificate of a foreign root was served: {foreign_leaf:?}"
    );
    let none = tls_get(&ip, None).await;
    ensure!(
        none.is_err(),
        "TLS without a client certificate was served: {none:?}"
    );
    println!("refused: expired {expired:?}; foreign root {foreign_leaf:?}; none {none:?}");

    // STRICT: plaintext to the inbound port is refused and counted; mesh
    // clients keep working.
    let refused_before = proxy_counter(&ip, "sluice_plaintext_refused_total", "").await?;
    let plaintext = || async {
        http()
            .get(format!(
                "http://{ip}:{}/",
                sluice_proto::config::INBOUND_PORT
            ))
            .header("host", "handson")
            .send()
            .await
    };
    ensure!(
        plaintext().await.is_err(),
        "plaintext without a redirect was served"
    );
    // Plaintext to the app port is intercepted and, in PERMISSIVE, served.
    let app_plaintext = || async {
        http()
            .get(format!("http://{ip}:8080/"))
            .send()
            .await?
            .text()
            .await
    };
    let served = app_plaintext().await?;
    ensure!(
        served.trim() == "blue",
        "PERMISSIVE at the app port: {served:?}"
    );
    ensure!(
        proxy_counter(&ip, "sluice_plaintext_refused_total", "").await? == refused_before,
        "PERMISSIVE counted plaintext as refused"
    );
    cluster.apply(&namespace("STRICT"))?;
    let result = poll(
        "STRICT to refuse plaintext",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let _ = plaintext().await;
            Ok(
                (proxy_counter(&ip, "sluice_plaintext_refused_total", "").await? > refused_before)
                    .then_some(()),
            )
        },
    )
    .await;
    let (code, _) = call(&cluster, "curl-allow", "GET", "/").await?;
    // Interception sends plaintext for the app port to the sidecar too,
    // which refuses it now; the kubelet's probe, moved to the admin port,
    // still passes.
    let at_app_port = app_plaintext().await;
    let probe = http()
        .get(format!("http://{ip}:{ADMIN_PORT}/app-health/app/readiness"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    // A pod started under STRICT becomes ready: the kubelet's probes, moved
    // to the sidecar's admin port, pass where plaintext to the app cannot.
    let restarted = strict_pod_becomes_ready(&cluster).await;
    cluster.apply(&namespace("PERMISSIVE"))?;
    result?;
    restarted?;
    ensure!(code == "200", "a mesh client under STRICT: {code}");
    ensure!(
        at_app_port.is_err(),
        "STRICT served plaintext at the app port: {at_app_port:?}"
    );
    ensure!(
        matches!(probe, Ok(200)),
        "the app's probe through the sidecar under STRICT: {probe:?}"
    );
    Ok(())
}

/// Replaces the handson pod and waits for the new one to be ready.
async fn strict_pod_becomes_ready(cluster: &Cluster) -> anyhow::Result<()> {
    Ok(cluster.restart_deployment(NS, "handson-blue")?)
}

/// Certificates live seconds (`--cert-ttl` of this test's operator) and are
/// renewed at half-life; a steady stream of requests sees no failure.
pub async fn rotation_under_load(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    setup(&cluster).await?;
    let client_ip = pod_ip(&cluster, "curl-allow").await?;
    let server_ip = handson_ip(&cluster).await?;
    let issued = |ip: String| async move {
        proxy_counter(&ip, "sluice_certificates_issued_total", "").await
    };
    let (client_before, server_before) = (
        issued(client_ip.clone()).await?,
        issued(server_ip.clone()).await?,
    );
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut n = 0;
    // A steady pace across ~4 renewals (TTL 6 s, renewed every 3 s);
    // bounded at 300 requests and 20 s.
    let mut pace = tokio::time::interval(Duration::from_millis(40));
    while n < 300 && start.elapsed() < Duration::from_secs(20) {
        pace.tick().await;
        n += 1;
        let (code, body) = call(&cluster, "curl-allow", "GET", "/").await?;
        if code != "200" {
            failures.push(format!("#{n} at {:?}: {code} {body}", start.elapsed()));
        }
    }
    let (client_after, server_after) = (issued(client_ip).await?, issued(server_ip).await?);
    println!(
        "rotation: {n} requests in {:?}, {} failed; certificates issued meanwhile: client {}, server {}",
        start.elapsed(),
        failures.len(),
        client_after - client_before,
        server_after - server_before
    );
    ensure!(failures.is_empty(), "failed during rotation: {failures:?}");
    ensure!(
        client_after - client_before >= 2.0 && server_after - server_before >= 2.0,
        "too few rotations to prove anything: client {client_before}→{client_after}, server {server_before}→{server_after}"
    );
    Ok(())
}

/// A new self-signed mesh root (P-256): its certificate and key, PEM.
fn new_root() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice e2e rotated root");
    let now = time_now();
    p.not_before = now + rcgen_duration(-60);
    p.not_after = now + rcgen_duration(86_400);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes keys of the CA Secret (the operator re-reads it every 10 s).
async fn patch_ca(cluster: &Cluster, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let secret = Secret {
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(cluster.client(), GATEWAY_NS)
        .patch("sluice-ca", &PatchParams::default(), &Patch::Merge(&secret))
        .await?;
    Ok(())
}

/// Waits until the roots published in [`NS`] and the injector's caBundle
/// both pass `check`.
async fn roots_published(
    cluster: &Cluster,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client(), NS);
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(cluster.client());
    poll(
        what,
        Duration::from_secs(45),
        Duration::from_millis(250),
        || async {
            let published = maps
                .get_opt(ROOT_CERT_CONFIGMAP)
                .await?
                .and_then(|c| c.data?.get(ROOT_CERT_KEY).cloned())
                .unwrap_or_default();
            let bundle = hooks
                .get_opt("sluice-injector")
                .await?
                .and_then(|h| h.webhooks?.into_iter().next()?.client_config.ca_bundle)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            Ok((check(&published) && check(&bundle)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Root rotation as users do it: sign with a new CA while proxies trust
/// the old and the new root, then drop the old root. Mesh traffic keeps
/// flowing with no failed request, and a pod created after the old root is
/// gone is still admitted (the webhook's certificate was renewed) and
/// joins the mesh.
pub async fn root_rotation_keeps_admitting_and_serving(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    setup(&cluster).await?;
    let secret = Api::<Secret>::namespaced(cluster.client(), GATEWAY_NS)
        .get("sluice-ca")
        .await?;
    let data = secret.data.unwrap_or_default();
    let old_key = if data.contains_key("root.crt") {
        "root.crt"
    } else {
        "ca.crt"
    };
    let old_root = String::from_utf8(data.get(old_key).context("no old root")?.0.clone())?;
    let (new_cert, new_key) = new_root()?;
    let (old_pem, new_pem) = (old_root.trim().to_owned(), new_cert.trim().to_owned());

    // Mesh traffic throughout: bounded in count and time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut failures) = (0, Vec::new());
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && n < 1_000
                && start.elapsed() < Duration::from_secs(150)
            {
                n += 1;
                match call(&cluster, "curl-allow", "GET", "/").await {
                    Ok((code, _)) if code == "200" => {}
                    Ok((code, body)) => failures.push(format!("#{n}: {code} {body}")),
                    Err(e) => failures.push(format!("#{n}: {e}")),
                }
            }
            (n, failures)
        })
    };
    let started = Instant::now();
    let both = format!("{old_pem}\n{new_pem}\n");
    patch_ca(
        &cluster,
        &[
            ("ca.crt", &new_cert),
            ("ca.key", &new_key),
            ("root.crt", &both),
        ],
    )
    .await?;
    roots_published(&cluster, "old and new roots published", |r| {
        r.contains(&old_pem) && r.contains(&new_pem)
    })
    .await?;
    // Two renewals of each proxy after that: their certificates are the
    // new CA's.
    let (client_ip, server_ip) = (
        pod_ip(&cluster, "curl-allow").await?,
        handson_ip(&cluster).await?,
    );
    let issued = |ip: String| async move {
        proxy_counter(&ip, "sluice_certificates_issued_total", "").await
    };
    let (client0, server0) = (
        issued(client_ip.clone()).await?,
        issued(server_ip.clone()).await?,
    );
    poll(
        "two renewals of each proxy",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let (c, s) = (
                issued(client_ip.clone()).await?,
                issued(server_ip.clone()).await?,
            );
            Ok((c >= client0 + 2.0 && s >= server0 + 2.0).then_some(()))
        },
    )
    .await?;
    patch_ca(&cluster, &[("root.crt", &new_cert)]).await?;
    roots_published(&cluster, "the new root alone published", |r| {
        r.contains(&new_pem) && !r.contains(&old_pem)
    })
    .await?;
    let dropped = started.elapsed();
    cluster.apply(&client_pod("curl-after-rotation"))?;
    pod_ready(&cluster.client(), NS, "curl-after-rotation", TIMEOUT).await?;
    poll(
        "the new pod to reach handson over mTLS",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok((call(&cluster, "curl-after-rotation", "GET", "/").await?.0 == "200").then_some(()))
        },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, failures) = traffic.await?;
    println!(
        "rotation of the root: old root dropped {dropped:?} after the new CA; {n} mesh requests, {} failed; a new pod admitted and served",
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "failed during the root rotation: {failures:?}"
    );
    ensure!(n >= 10, "only {n} requests during the rotation");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client(), NS)
        .delete("curl-after-rotation", &DeleteParams::default())
        .await?;
    Ok(())
}
