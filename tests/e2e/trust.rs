//! End-to-end: the control plane believes certificates, not claims. A
//! plaintext client gets nothing; a valid certificate of one workload does
//! not get another's config; a pod with its own identity cannot move a
//! Rollout's analysis by reporting about traffic it did not receive; a
//! dashboard user may do what the API server says and no more; a flood of
//! distinct telemetry keys is refused past the window's cap.
//!
//! The clients here are enrolled as proxies are (token, `Certificates.Sign`,
//! mTLS) and speak for pods in the host's network namespace, whose address
//! is the one the operator sees them connect from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use sluice_crds::{Rollout, RolloutPhase};
use sluice_proto::mesh::config_discovery_client::ConfigDiscoveryClient;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::telemetry_client::TelemetryClient;
use sluice_proto::mesh::{
    ProxyIdentity, ProxyMessage, TelemetryReport, TrafficDelta, proxy_message,
};
use sluice_tests::Cluster;
use sluice_tests::mesh_client::{MeshClient, host_pod, service_account_token};
use sluice_tests::operator::{GATEWAY_NS, Operator, http};
use sluice_tests::wait::poll;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::rollouts::{
    HANDS_ON_STEPS, healthy_blue, host, phase, rollout, set_image, step_index, until, weight,
};
use super::{Load, mesh};

/// The forgers' namespace: each runs as a service account of its own.
const NS: &str = "trust";

/// A client with its own valid identity (`trust/<name>`), for its own pod.
struct Impostor {
    cluster: Arc<Cluster>,
    grpc: std::net::SocketAddr,
    name: String,
    hello: ProxyIdentity,
}

impl Impostor {
    async fn start(
        cluster: &Arc<Cluster>,
        grpc: std::net::SocketAddr,
        name: &str,
    ) -> anyhow::Result<Self> {
        cluster.create_namespace(NS).await?;
        host_pod(cluster, NS, name, name).await?;
        Ok(Impostor {
            cluster: cluster.clone(),
            grpc,
            name: name.to_owned(),
            hello: hello(NS, name, name, Role::Sidecar),
        })
    }

    /// A fresh certificate: the mesh's live seconds, and a handshake with
    /// an expired one fails.
    async fn client(&self) -> anyhow::Result<MeshClient> {
        Ok(MeshClient::enroll(&self.cluster, self.grpc, NS, &self.name).await?)
    }

    /// Streams `reports` (each `deltas`) over one telemetry stream, one
    /// every 50 ms; returns the number of deltas sent.
    async fn report(&self, reports: usize, deltas: &[TrafficDelta]) -> anyhow::Result<u64> {
        let client = self.client().await?;
        stream_reports(
            &client,
            &self.hello,
            reports,
            Duration::from_millis(50),
            || deltas.to_vec(),
        )
        .await
    }
}

fn hello(ns: &str, pod: &str, sa: &str, role: Role) -> ProxyIdentity {
    ProxyIdentity {
        namespace: ns.into(),
        pod_name: pod.into(),
        role: role.into(),
        service_account: sa.into(),
        ..Default::default()
    }
}

/// Sends `count` reports made by `deltas`, `every` apart, on one stream;
/// returns how many deltas went out.
async fn stream_reports(
    client: &MeshClient,
    hello: &ProxyIdentity,
    count: usize,
    every: Duration,
    mut deltas: impl FnMut() -> Vec<TrafficDelta>,
) -> anyhow::Result<u64> {
    let (tx, rx) = mpsc::channel(4);
    let mut telemetry = TelemetryClient::new(client.channel().await?);
    let call = tokio::spawn(async move { telemetry.report(ReceiverStream::new(rx)).await });
    let mut sent = 0;
    for i in 0..count {
        let batch = deltas();
        sent += batch.len() as u64;
        let report = TelemetryReport {
            identity: (i == 0).then(|| hello.clone()),
            deltas: batch,
            timestamp_ms: 0,
            ..Default::default()
        };
        if tx.send(report).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    drop(tx);
    call.await?.context("the telemetry stream")?;
    Ok(sent)
}

/// What a forger claims about the canary of `ns`: every request failed,
/// once as the destination's sidecar would say it, once as a gateway would.
fn forged(ns: &str, revision: &str, requests: u64, errors: u64) -> Vec<TrafficDelta> {
    [true, false]
        .into_iter()
        .map(|inbound| TrafficDelta {
            source_namespace: GATEWAY_NS.into(),
            source_workload: "sluice-gateway".into(),
            destination_service: "handson-canary".into(),
            destination_namespace: ns.into(),
            destination_revision: revision.into(),
            requests,
            errors,
            inbound,
            ..Default::default()
        })
        .collect()
}

/// Plaintext gets nothing; TLS without a certificate gets no config; a
/// valid certificate of `trust/curious` gets its own pod's config and no
/// one else's (`PermissionDenied`, counted).
pub async fn other_identities_get_nothing(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (grpc, op_metrics) = {
        let op = mesh.operator.lock().await;
        (
            op.grpc,
            op.counter("sluice_control_plane_refused_total", "").await?,
        )
    };
    let gateway_pod =
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client(), GATEWAY_NS)
            .list(&ListParams::default().labels("app=sluice-gateway"))
            .await?
            .items
            .into_iter()
            .next()
            .context("no gateway pod")?
            .name_any();
    let gateway_hello = hello(GATEWAY_NS, &gateway_pod, "sluice-gateway", Role::Gateway);

    // Plaintext (h2c) to the TLS port: no stream, let alone a snapshot.
    let plaintext = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        first_snapshot(ConfigDiscoveryClient::new(channel), gateway_hello.clone()).await
    };
    let plaintext = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .context("plaintext: no answer in 10 s")?;
    ensure!(
        plaintext.is_err(),
        "plaintext got a snapshot: {plaintext:?}"
    );

    // Server-authenticated TLS, no client certificate: the bootstrap
    // channel is for Certificates.Sign only.
    let bootstrap = MeshClient::bootstrap(&cluster, grpc, GATEWAY_NS).await?;
    let anonymous = first_snapshot(
        ConfigDiscoveryClient::new(bootstrap.channel().await?),
        gateway_hello.clone(),
    )
    .await;
    ensure!(
        matches!(&anonymous, Err(s) if s.code() == tonic::Code::Unauthenticated),
        "TLS without a certificate: {anonymous:?}"
    );

    let curious = Impostor::start(&cluster, grpc, "curious").await?;
    host_pod(&cluster, NS, "neighbour", "neighbour").await?;
    let config = || async {
        let client = curious.client().await?;
        Ok::<_, anyhow::Error>(ConfigDiscoveryClient::new(client.channel().await?))
    };
    // Its own pod: served (so the refusals below are about identity).
    let own = first_snapshot(config().await?, curious.hello.clone()).await;
    ensure!(own.is_ok(), "its own pod's config was refused: {own:?}");
    let asks = [
        ("the gateway's config", gateway_hello.clone()),
        (
            "a neighbour pod as itself",
            hello(NS, "neighbour", "curious", Role::Sidecar),
        ),
        (
            "a neighbour pod as the neighbour",
            hello(NS, "neighbour", "neighbour", Role::Sidecar),
        ),
        (
            "a gateway in its own namespace",
            hello(NS, "curious", "curious", Role::Gateway),
        ),
    ];
    for (what, ask) in asks {
        let got = first_snapshot(config().await?, ask).await;
        ensure!(
            matches!(&got, Err(s) if s.code() == tonic::Code::PermissionDenied),
            "trust/curious asking for {what}: {got:?}"
        );
    }
    let op = mesh.operator.lock().await;
    let after = op.counter("sluice_control_plane_refused_total", "").await?;
    ensure!(
        after >= op_metrics + 5.0,
        "refusals counted: {op_metrics} -> {after} (no certificate and four asks)"
    );
    let config_refused = op
        .counter("sluice_control_plane_refused_total", "service=\"config\"")
        .await?;
    println!(
        "trust: {} refusals counted ({config_refused} of config streams)",
        after - op_metrics
    );
    Ok(())
}

/// The first snapshot a config stream gets after `hello`.
async fn first_snapshot(
    mut client: ConfigDiscoveryClient<tonic::transport::Channel>,
    hello: ProxyIdentity,
) -> Result<String, tonic::Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(ProxyMessage {
        kind: Some(proxy_message::Kind::Hello(hello)),
    })
    .await
    .map_err(|_| tonic::Status::internal("the stream closed"))?;
    let mut stream = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no snapshot in 10 s"))??;
    drop(tx);
    match first.and_then(|m| m.kind) {
        Some(sluice_proto::mesh::config_message::Kind::Snapshot(s)) => Ok(s.version),
        other => Err(tonic::Status::internal(format!(
            "not a snapshot: {other:?}"
        ))),
    }
}

/// The canary revision of `ns`'s Rollout, once there is one.
async fn canary_revision(cluster: &Cluster, ns: &str) -> anyhow::Result<String> {
    let ro = until(cluster, ns, "a canary revision", |ro| {
        ro.status
            .as_ref()
            .is_some_and(|s| s.canary_revision.is_some())
    })
    .await?;
    ro.status
        .and_then(|s| s.canary_revision)
        .context("no canary revision")
}

fn stable(ro: &Rollout) -> Option<String> {
    ro.status.as_ref().and_then(|s| s.stable_revision.clone())
}

/// Forged 100% errors for a healthy canary the forger does not own: the
/// analysis never sees them, the canary is promoted, the refusals are
/// counted.
pub async fn forged_failures_do_not_roll_back_a_healthy_canary(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    let ns = "trust-healthy";
    let steps = "[{setWeight: 50}, {pause: {duration: 10s}}]";
    healthy_blue(&cluster, ns, steps, "{}").await?;
    let mesh = mesh(&cluster).await?;
    let grpc = mesh.operator.lock().await.grpc;
    let forger = Impostor::start(&cluster, grpc, "forger").await?;
    let before = refused_not_own(&*mesh.operator.lock().await).await?;
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    set_image(&cluster, ns, "yellow", 0.0).await?;
    let revision = canary_revision(&cluster, ns).await?;
    // 20 s of forged failures, well past the pause and several analyses.
    let forging = {
        let deltas = forged(ns, &revision, 1_000, 1_000);
        async move { forger.report(400, &deltas).await }
    };
    let (sent, promoted) = tokio::join!(
        forging,
        until(&cluster, ns, "the canary promoted", |ro| {
            phase(ro) == Some(RolloutPhase::Healthy)
                && ro
                    .status
                    .as_ref()
                    .is_some_and(|s| s.canary_revision.is_none())
        })
    );
    let sent = sent?;
    let ro = promoted?;
    let seen = load.finish().await?;
    ensure!(
        stable(&ro).as_deref() == Some(revision.as_str()),
        "the canary {revision} was not made stable: {:?}",
        ro.status
    );
    let after = refused_not_own(&*mesh.operator.lock().await).await?;
    ensure!(
        after - before >= sent as f64,
        "forged deltas: {sent} sent, {} refused as not its own pod's",
        after - before
    );
    println!(
        "trust: canary promoted under {sent} forged 100%-error deltas (all refused); {} real requests",
        seen.len()
    );
    Ok(())
}

async fn refused_not_own(op: &Operator) -> anyhow::Result<f64> {
    Ok(op
        .counter("sluice_telemetry_refused_total", "reason=\"not_own_pod\"")
        .await?)
}

/// A canary answering 50% errors is rolled back while another pod floods
/// reports of error-free traffic to it.
pub async fn diluting_reports_do_not_save_a_failing_canary(
    cluster: Arc<Cluster>,
) -> anyhow::Result<()> {
    let ns = "trust-bad";
    healthy_blue(&cluster, ns, HANDS_ON_STEPS, "{}").await?;
    let mesh = mesh(&cluster).await?;
    let grpc = mesh.operator.lock().await.grpc;
    let diluter = Impostor::start(&cluster, grpc, "diluter").await?;
    let before = refused_not_own(&*mesh.operator.lock().await).await?;
    let load = Load::start(mesh.gateway_ip.clone(), host(ns));
    set_image(&cluster, ns, "red", 0.5).await?;
    let revision = canary_revision(&cluster, ns).await?;
    // 20 s of reports, sent while the canary is judged: the wait for the
    // rollback is polled beside them, never blocking their task.
    let diluting = {
        let deltas = forged(ns, &revision, 100_000, 0);
        async move { diluter.report(400, &deltas).await }
    };
    let rolled_back = async {
        let ro = until(&cluster, ns, "RolledBack", |ro| {
            ro.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "RolledBack" && c.status == "True")
            })
        })
        .await?;
        // Read at the rollback, while the diluter still streams.
        let refused = refused_not_own(&*mesh.operator.lock().await).await? - before;
        anyhow::Ok((ro, refused))
    };
    let (sent, waited) = tokio::join!(diluting, rolled_back);
    let (ro, refused_by_then) = waited?;
    let sent = sent?;
    load.finish().await?;
    ensure!(weight(&ro) == 0, "after the rollback: {:?}", ro.status);
    ensure!(
        refused_by_then > 0.0,
        "no diluting delta had reached the operator when the canary was rolled back"
    );
    println!(
        "trust: the failing canary was rolled back under {sent} diluting deltas ({refused_by_then} refused as not its own pod's by then)"
    );
    Ok(())
}

/// A user whose token may read Rollouts cannot promote from the dashboard
/// (403); one allowed to `patch` the Rollout can (202), but only with the
/// dashboard's own header and origin.
pub async fn dashboard_actions_follow_kubernetes_rbac(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "trust-dash";
    healthy_blue(&cluster, ns, &HANDS_ON_STEPS.replace("5s", "1h"), "{}").await?;
    let mesh = mesh(&cluster).await?;
    let (dashboard, http_refused_before) = {
        let op = mesh.operator.lock().await;
        (
            op.dashboard,
            op.counter("sluice_http_refused_total", "").await?,
        )
    };
    cluster.apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: rollout-viewer, namespace: {ns}}}
rules:
- {{apiGroups: [sluice.dev], resources: [rollouts], verbs: [get, list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: rollout-releaser, namespace: {ns}}}
rules:
- {{apiGroups: [sluice.dev], resources: [rollouts], verbs: [get, list, watch, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rollout-viewer}}
subjects: [{{kind: ServiceAccount, name: viewer, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: releaser, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rollout-releaser}}
subjects: [{{kind: ServiceAccount, name: releaser, namespace: {ns}}}]
"#
    ))?;
    let viewer = service_account_token(&cluster, ns, "viewer", None).await?;
    let releaser = service_account_token(&cluster, ns, "releaser", None).await?;
    set_image(&cluster, ns, "yellow", 0.0).await?;
    until(&cluster, ns, "paused at step 2", |ro| {
        step_index(ro) == Some(1) && phase(ro) == Some(RolloutPhase::Paused)
    })
    .await?;
    let promote = format!("http://{dashboard}/api/rollouts/{ns}/handson/promote");
    let post = |token: &str, header: bool, origin: Option<&str>| {
        let mut req = http().post(&promote).bearer_auth(token);
        if header {
            req = req.header("x-sluice-action", "promote");
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move {
            let r = req.send().await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.text().await?))
        }
    };
    let read = http()
        .get(format!("http://{dashboard}/api/rollouts?namespace={ns}"))
        .bearer_auth(&viewer)
        .send()
        .await?;
    ensure!(
        read.status().as_u16() == 200,
        "the viewer cannot read: {}",
        read.status()
    );
    let cases = [
        ("the viewer", post(&viewer, true, None).await?, 403),
        (
            "a made-up token",
            post("not-a-token", true, None).await?,
            401,
        ),
        (
            "the releaser without the dashboard's header",
            post(&releaser, false, None).await?,
            403,
        ),
        (
            "the releaser from another site",
            post(&releaser, true, Some("http://elsewhere.example")).await?,
            403,
        ),
    ];
    for (who, (status, body), want) in &cases {
        ensure!(status == want, "{who}: {status} {body} (want {want})");
    }
    let still = rollout(&cluster, ns).await?;
    ensure!(
        step_index(&still) == Some(1),
        "a refused promote moved the Rollout: {:?}",
        still.status
    );
    let (status, body) = post(&releaser, true, None).await?;
    ensure!(status == 202, "the releaser: {status} {body}");
    until(&cluster, ns, "past the promoted pause", |ro| {
        step_index(ro).is_some_and(|i| i >= 2)
    })
    .await?;
    let refused_after = mesh
        .operator
        .lock()
        .await
        .counter("sluice_http_refused_total", "")
        .await?;
    ensure!(
        refused_after >= http_refused_before + 4.0,
        "dashboard refusals counted: {http_refused_before} -> {refused_after}"
    );
    println!(
        "trust: dashboard {}; the releaser promoted",
        cases
            .iter()
            .map(|(who, (s, _), _)| format!("{who} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The most series the mesh's operator keeps (its default).
const MAX_SERIES: f64 = 20_000.0;
/// How much the operator's RSS may grow under the flood.
const FLOOD_RSS_BOUND_KIB: u64 = 64 * 1024;

/// 100,000 distinct keys from a gateway's identity (which may report any
/// destination): past the cap they are refused and counted, the series
/// never exceed it, RSS stays within a bound, and after the window the
/// flood's series are gone.
pub async fn a_flood_of_keys_is_capped_and_ages_out(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (grpc, pid) = {
        let op = mesh.operator.lock().await;
        (op.grpc, op.pid())
    };
    host_pod(&cluster, GATEWAY_NS, "flooding-gateway", "sluice-gateway").await?;
    let hello = hello(
        GATEWAY_NS,
        "flooding-gateway",
        "sluice-gateway",
        Role::Gateway,
    );
    let op = mesh.operator.lock().await;
    let full_before = op
        .counter("sluice_telemetry_refused_total", "reason=\"window_full\"")
        .await?;
    let series_before = op.counter("sluice_telemetry_series", "").await?;
    let rss_before = rss_kib(pid)?;
    drop(op);
    let mut next = 0u64;
    let client = MeshClient::enroll(&cluster, grpc, GATEWAY_NS, "sluice-gateway").await?;
    let started = Instant::now();
    let sent = stream_reports(&client, &hello, 100, Duration::from_millis(10), || {
        (0..1_000)
            .map(|_| {
                next += 1;
                TrafficDelta {
                    destination_namespace: "flood".into(),
                    destination_service: format!("svc-{next}"),
                    destination_revision: "r".into(),
                    requests: 1,
                    ..Default::default()
                }
            })
            .collect()
    })
    .await?;
    let sending = started.elapsed();
    ensure!(sent == 100_000, "sent {sent} keys");
    let op = mesh.operator.lock().await;
    // At most the cap's worth of the flood fits, however many earlier
    // series age out meanwhile (the window sweeps while this runs).
    let want_refused = sent as f64 - MAX_SERIES;
    let full = poll(
        "the flood past the cap refused",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let n = op
                .counter("sluice_telemetry_refused_total", "reason=\"window_full\"")
                .await?
                - full_before;
            Ok((n >= want_refused).then_some(n))
        },
    )
    .await?;
    let series = op.counter("sluice_telemetry_series", "").await?;
    let rss_flooded = rss_kib(pid)?;
    ensure!(
        series <= MAX_SERIES,
        "{series} series held (cap {MAX_SERIES})"
    );
    ensure!(
        rss_flooded <= rss_before + FLOOD_RSS_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {rss_flooded} KiB under the flood"
    );
    // The window is 30 s in this mesh: the flood's series age out.
    let aged = poll(
        "the flood's series to age out",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let n = op.counter("sluice_telemetry_series", "").await?;
            Ok((n <= series_before + 100.0).then_some(n))
        },
    )
    .await?;
    let rss_after = rss_kib(pid)?;
    ensure!(
        rss_after <= rss_before + FLOOD_RSS_BOUND_KIB,
        "RSS after the window: {rss_after} KiB (before the flood {rss_before} KiB)"
    );
    println!(
        "trust: 100,000 keys in {:?}: {full} refused (window_full), {series} series held; RSS {} -> {} -> {} MiB; {aged} series after the window",
        sending,
        rss_before / 1024,
        rss_flooded / 1024,
        rss_after / 1024
    );
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    match line.split_whitespace().nth(1).map(str::parse) {
        Some(Ok(kib)) => Ok(kib),
        _ => bail!("VmRSS: {line}"),
    }
}
