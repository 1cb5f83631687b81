//! `cargo xtask bench control-plane`: how long an HTTPRoute change takes to
//! reach every connected proxy.
//!
//! A real test-bed control plane and the real operator; the proxies are
//! lightweight clients of the real gRPC contract (hello, decode each
//! snapshot, ACK), so that 1,000 of them fit on one small machine. For each
//! size, 100 weight changes are written to the API one after another; a
//! change's time runs from just before the API write to the moment the last
//! proxy has ACKed the snapshot carrying the new weight. The operator's RSS
//! and CPU come from `/proc`.
//!
//! Every proxy speaks mTLS, as real ones do: one gateway identity is
//! enrolled (token, `Certificates.Sign`) for a pod in the host's network
//! namespace, and each simulated proxy opens its own TLS connection with
//! that certificate and names that pod in its hello.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use sluice_proto::config::Config;
use sluice_proto::mesh::config_discovery_client::ConfigDiscoveryClient;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::{Ack, ProxyIdentity, ProxyMessage, config_message, proxy_message};
use sluice_tests::Cluster;
use sluice_tests::mesh_client::{MeshClient, host_pod};
use sluice_tests::operator::{GATEWAY_NS, Operator};
use sluice_tests::procfs::{cpu_ticks, quantile, rss_kib, ticks_per_second};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

const NS: &str = "bench";
/// The backend whose weight every change sets.
const WATCHED: &str = "bench/yellow:8080";
const DEADLINE: Duration = Duration::from_secs(60);
/// The pod every simulated gateway speaks for, and its service account.
const GATEWAY_POD: &str = "bench-gateway";
const GATEWAY_ACCOUNT: &str = "bench-gateway";

#[derive(Parser)]
#[command(about = "Time from an HTTPRoute write to every proxy's ACK")]
struct Args {
    /// Connected proxy counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    proxies: Vec<usize>,
    /// Changes per size (with 100, p99 is the second-slowest, not the max).
    #[arg(long, default_value_t = 100)]
    changes: u32,
}

/// A proxy saw `weight` (ACK sent) at `at`.
struct Seen {
    proxy: usize,
    weight: u32,
    at: Instant,
}

fn main() -> Result<()> {
    let args = Args::parse();
    sluice_tests::procfs::bench_runtime()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    eprintln!("starting the test-bed control plane and the operator");
    let cluster = Cluster::start().await?;
    cluster.install_gateway_api().await?;
    cluster.create_namespace(NS).await?;
    cluster.apply(&resources())?;
    // The operator keeps its CA there.
    cluster.create_namespace(GATEWAY_NS).await?;
    let operator = Operator::start(&cluster).await?;
    host_pod(&cluster, GATEWAY_NS, GATEWAY_POD, GATEWAY_ACCOUNT).await?;
    let mesh = MeshClient::enroll(&cluster, operator.grpc, GATEWAY_NS, GATEWAY_ACCOUNT).await?;
    let routes = Api::<DynamicObject>::namespaced_with(
        cluster.client(),
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        )),
    );
    let mut rows = Vec::new();
    let mut weight = 50;
    for &n in &args.proxies {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sims = JoinSet::new();
        let connecting = Instant::now();
        // Connect in waves so that the handshakes do not all time out at once.
        let clients: Vec<_> = futures::stream::iter(0..n)
            .map(|i| {
                let mesh = mesh.clone();
                async move { connect(&mesh).await.map(|c| (i, c)) }
            })
            .buffer_unordered(100)
            .collect()
            .await;
        for c in clients {
            let (i, client) = c?;
            sims.spawn(simulated_proxy(i, client, tx.clone()));
        }
        drop(tx);
        let mut latest = vec![None; n];
        wait_all(&mut rx, &mut latest, weight, &mut sims).await?;
        eprintln!(
            "{n} proxies connected and configured in {:?}",
            connecting.elapsed()
        );
        let cpu_before = cpu_ticks(operator.pid())?;
        let clients_before = cpu_ticks(std::process::id())?;
        let wall = Instant::now();
        let mut times = Vec::new();
        let mut firsts = Vec::new();
        for _ in 0..args.changes {
            weight = if weight >= 99 { 1 } else { weight + 1 };
            let start = Instant::now();
            routes
                .patch(
                    "route",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"rules": [{"backendRefs": [
                        {"name": "blue", "port": 8080, "weight": 100 - weight},
                        {"name": "yellow", "port": 8080, "weight": weight},
                    ]}]}})),
                )
                .await?;
            let (first, last) = wait_all(&mut rx, &mut latest, weight, &mut sims).await?;
            firsts.push(first.saturating_duration_since(start));
            times.push(last.saturating_duration_since(start));
        }
        let cpu_seconds = (cpu_ticks(operator.pid())? - cpu_before) as f64 / ticks_per_second();
        let clients_seconds =
            (cpu_ticks(std::process::id())? - clients_before) as f64 / ticks_per_second();
        let wall = wall.elapsed().as_secs_f64();
        times.sort();
        firsts.sort();
        let row = Row {
            proxies: n,
            p50: quantile(&times, 0.50),
            p99: quantile(&times, 0.99),
            max: times.last().copied().unwrap_or_default(),
            first_p50: quantile(&firsts, 0.50),
            first_p99: quantile(&firsts, 0.99),
            rss_mib: rss_kib(operator.pid(), "VmRSS:")? as f64 / 1024.0,
            cpu_percent: 100.0 * cpu_seconds / wall,
            clients_cpu_percent: 100.0 * clients_seconds / wall,
        };
        eprintln!("{}", row.line());
        rows.push(row);
        sims.shutdown().await;
    }
    println!(
        "\nHTTPRoute weight change (API write) -> every proxy ACKed, {} changes per size",
        args.changes
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>15} {:>12} {:>14} {:>13}",
        "proxies",
        "p50",
        "p99",
        "max",
        "first ACK p50/p99",
        "operator RSS",
        "operator CPU",
        "clients CPU"
    );
    for r in &rows {
        println!("{}", r.line());
    }
    println!(
        "operator peak RSS {:.1} MiB",
        rss_kib(operator.pid(), "VmHWM:")? as f64 / 1024.0
    );
    Ok(())
}

struct Row {
    proxies: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The first proxy's ACK: the API write, the watch event, translation
    /// and one push; the rest of `p50` is the fan-out to every proxy.
    first_p50: Duration,
    first_p99: Duration,
    rss_mib: f64,
    cpu_percent: f64,
    /// This process: the simulated proxies, decoding and ACKing.
    clients_cpu_percent: f64,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{:>8} {:>10} {:>10} {:>10} {:>15} {:>8.1} MiB {:>12.1} % {:>11.1} %",
            self.proxies,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            format!(
                "{:.1}/{:.1} ms",
                self.first_p50.as_secs_f64() * 1e3,
                self.first_p99.as_secs_f64() * 1e3
            ),
            self.rss_mib,
            self.cpu_percent,
            self.clients_cpu_percent
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Nearest-rank quantile of sorted durations.
/// Reads reports until every proxy's latest weight is `weight`; returns
/// when the first and the last of them got there.
async fn wait_all(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    latest: &mut [Option<(u32, Instant)>],
    weight: u32,
    sims: &mut JoinSet<Result<()>>,
) -> Result<(Instant, Instant)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let done = latest.iter().all(|l| l.is_some_and(|(w, _)| w == weight));
        if done {
            let times = || latest.iter().flatten().map(|(_, at)| *at);
            let first = times().min().context("no proxies")?;
            let last = times().max().context("no proxies")?;
            return Ok((first, last));
        }
        tokio::select! {
            seen = tokio::time::timeout_at(deadline.into(), rx.recv()) => match seen {
                Ok(Some(s)) => latest[s.proxy] = Some((s.weight, s.at)),
                Ok(None) => bail!("every simulated proxy stopped"),
                Err(_) => {
                    let behind = latest.iter().filter(|l| !l.is_some_and(|(w, _)| w == weight)).count();
                    bail!("{behind} proxies did not reach weight {weight} within {DEADLINE:?}");
                }
            },
            Some(ended) = sims.join_next() => {
                bail!("a simulated proxy stopped: {:?}", ended.map_err(anyhow::Error::from).and_then(|r| r));
            }
        }
    }
}

/// A connection of its own (TCP and TLS handshake) per simulated proxy.
async fn connect(mesh: &MeshClient) -> Result<ConfigDiscoveryClient<tonic::transport::Channel>> {
    let channel = tokio::time::timeout(Duration::from_secs(10), mesh.channel())
        .await
        .context("connecting to the control plane: timed out")??;
    Ok(ConfigDiscoveryClient::new(channel))
}

/// One gateway-role proxy: hello, then decode and ACK every snapshot,
/// reporting the watched backend's weight.
async fn simulated_proxy(
    id: usize,
    mut client: ConfigDiscoveryClient<tonic::transport::Channel>,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let hello = ProxyIdentity {
        namespace: GATEWAY_NS.into(),
        pod_name: GATEWAY_POD.into(),
        role: Role::Gateway.into(),
        service_account: GATEWAY_ACCOUNT.into(),
        ..Default::default()
    };
    tx.send(ProxyMessage {
        kind: Some(proxy_message::Kind::Hello(hello)),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(msg) = inbound.message().await? {
        let Some(config_message::Kind::Snapshot(snapshot)) = msg.kind else {
            continue;
        };
        let config: Config = serde_json::from_slice(&snapshot.config_json)?;
        tx.send(ProxyMessage {
            kind: Some(proxy_message::Kind::Ack(Ack {
                version: snapshot.version,
            })),
        })
        .await?;
        if let Some(weight) = watched_weight(&config) {
            let _ = seen.send(Seen {
                proxy: id,
                weight,
                at: Instant::now(),
            });
        }
    }
    bail!("sim-{id}: the operator closed the stream")
}

fn watched_weight(config: &Config) -> Option<u32> {
    config
        .listeners
        .iter()
        .flat_map(|l| &l.routes)
        .flat_map(|r| &r.backends)
        .find(|b| b.name == WATCHED)
        .map(|b| b.weight)
}

fn resources() -> String {
    let mut yaml = String::new();
    for name in ["blue", "yellow"] {
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
             spec: {{selector: {{app: {name}}}, ports: [{{port: 8080}}]}}\n---\n"
        );
    }
    yaml += &format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {NS}}}
spec:
  gatewayClassName: sluice
  listeners: [{{name: http, protocol: HTTP, port: 18080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route, namespace: {NS}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [app.bench]
  rules:
  - backendRefs:
    - {{name: blue, port: 8080, weight: 50}}
    - {{name: yellow, port: 8080, weight: 50}}
"#
    );
    yaml
}
