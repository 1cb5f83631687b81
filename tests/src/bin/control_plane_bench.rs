//! `cargo xtask bench control-plane`: how long an HTTPRoute change takes to
//! reach every connected proxy.
//!
//! A real test-bed control plane and the real operator; the proxies are
//! lightweight clients of the real gRPC contract (hello, decode each
//! snapshot, ACK), so that 1,000 of them fit on one small machine; by
//! default each distinct snapshot is decoded once for all of them (see
//! [`Decode`]). For each
//! size, 100 weight changes are written to the API one after another; a
//! change's time runs from just before the API write to the moment the last
//! proxy has ACKed the snapshot carrying the new weight. The operator's RSS
//! and CPU come from `/proc`.
//!
//! Every proxy speaks mTLS, as real ones do. With `--role gateway` (the
//! default) one gateway identity is enrolled (token, `Certificates.Sign`)
//! for a pod in the host's network namespace, and each simulated proxy
//! opens its own TLS connection with that certificate and names that pod
//! in its hello: they all share one snapshot.
//!
//! With `--role sidecar` each simulated proxy is a distinct pod's sidecar:
//! the pods are real API objects bound to a node without a kubelet
//! ([`VirtualNode`]), each with its own loopback address, from which its
//! proxy connects (the operator believes a hello only from the named pod's
//! address). `--groups` AuthorizationPolicies each select a share of the
//! pods, so that there are that many distinct sidecar snapshots, each
//! carrying the mesh's table of every pod's identity. The change is the
//! weight of a GAMMA route (parent: a Service), which every sidecar gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use sluice_proto::config::Config;
use sluice_proto::delta;
use sluice_proto::mesh::config_discovery_client::ConfigDiscoveryClient;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::mesh::telemetry_client::TelemetryClient;
use sluice_proto::mesh::{
    Ack, ProxyIdentity, ProxyMessage, Snapshot, TelemetryReport, TrafficDelta, config_message,
    proxy_message,
};
use sluice_tests::Cluster;
use sluice_tests::mesh_client::{MeshClient, host_pod};
use sluice_tests::operator::{GATEWAY_NS, Operator};
use sluice_tests::procfs::{cpu_ticks, quantile, rss_kib, ticks_per_second};
use sluice_tests::virtual_node::{VirtualNode, loopback_address};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

const NS: &str = "bench";
/// The simulated sidecars' service account (one enrolment serves all).
const SIDECAR_ACCOUNT: &str = "bench-sidecar";
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
    /// What the simulated proxies are.
    #[arg(long, value_enum, default_value_t = BenchRole::Gateway)]
    role: BenchRole,
    /// With `--role sidecar`: policy groups, hence distinct snapshots.
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// With `--role sidecar`: after the changes, every sidecar of the
    /// largest size reports telemetry each second for this many minutes
    /// (0: no telemetry phase).
    #[arg(long, default_value_t = 0)]
    telemetry_minutes: u64,
    /// How the simulated proxies decode snapshots.
    #[arg(long, value_enum, default_value_t = Decode::Once)]
    decode: Decode,
}

/// Who pays for decoding. A real proxy decodes on its own core, in
/// parallel with every other proxy; here a thousand simulated ones share
/// the operator's two cores, so decoding each copy measures the machine's
/// contention more than the operator's fan-out.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Decode {
    /// Each distinct snapshot (by version) is decoded once, by the first
    /// proxy that receives it; the others wait for that decode, then ACK.
    Once,
    /// Every proxy decodes every snapshot it receives.
    Each,
}

/// Each snapshot version decoded so far.
type Decoded = Arc<Mutex<HashMap<String, Arc<OnceCell<Document>>>>>;

/// A snapshot's whole document (rebuilt from a delta as a proxy does) and
/// the watched weight in it.
type Document = (Bytes, Option<u32>);

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchRole {
    /// Gateway proxies, all of one pod: one shared snapshot.
    Gateway,
    /// Sidecars, each of its own pod.
    Sidecar,
}

impl BenchRole {
    /// The HTTPRoute whose weights change.
    fn route(self) -> &'static str {
        match self {
            BenchRole::Gateway => "route",
            BenchRole::Sidecar => "mesh-route",
        }
    }
}

/// Who a simulated proxy is: its hello and the address it connects from.
#[derive(Clone)]
struct Speaker {
    hello: ProxyIdentity,
    from: Option<std::net::IpAddr>,
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
    if args.role == BenchRole::Sidecar {
        // AuthorizationPolicies are served only if installed at start.
        cluster.install_crds().await?;
    }
    cluster.create_namespace(NS).await?;
    cluster.apply(&resources(args.role, args.groups))?;
    // The operator keeps its CA there.
    cluster.create_namespace(GATEWAY_NS).await?;
    let operator = Operator::start(&cluster).await?;
    let (mesh, speakers, _node) = match args.role {
        BenchRole::Gateway => gateways(&cluster, &operator, &args).await?,
        BenchRole::Sidecar => sidecars(&cluster, &operator, &args).await?,
    };
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
    let mut telemetry_rows = Vec::new();
    let mut weight = 50;
    for &n in &args.proxies {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sims = JoinSet::new();
        let connecting = Instant::now();
        // Connect in waves so that the handshakes do not all time out at once.
        let clients: Vec<_> = futures::stream::iter(0..n)
            .map(|i| {
                let (mesh, from) = (mesh.clone(), speakers[i].from);
                async move { connect(&mesh, from).await.map(|c| (i, c)) }
            })
            .buffer_unordered(100)
            .collect()
            .await;
        let decoded = (args.decode == Decode::Once).then(Decoded::default);
        for c in clients {
            let (i, client) = c?;
            let sim = Simulated {
                id: i,
                hello: speakers[i].hello.clone(),
                route: args.role.route(),
                decoded: decoded.clone(),
            };
            sims.spawn(sim.run(client, tx.clone()));
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
        let pushed = || operator.counter("sluice_config_push_bytes_total", "");
        let pushed_before = pushed().await?;
        let computed = || async {
            let seconds = operator.counter("sluice_snapshot_compute_seconds_sum", "");
            let count = operator.counter("sluice_snapshot_compute_seconds_count", "");
            Ok::<_, sluice_tests::Error>((seconds.await?, count.await?))
        };
        let computed_before = computed().await?;
        let wall = Instant::now();
        let mut times = Vec::new();
        let mut firsts = Vec::new();
        for _ in 0..args.changes {
            weight = if weight >= 99 { 1 } else { weight + 1 };
            let start = Instant::now();
            routes
                .patch(
                    args.role.route(),
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
        let pushed = pushed().await? - pushed_before;
        let computed_after = computed().await?;
        let translations = computed_after.1 - computed_before.1;
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
            bytes_per_push: pushed / (n as f64 * f64::from(args.changes.max(1))),
            translations_per_change: translations / f64::from(args.changes.max(1)),
            translation_mean: Duration::from_secs_f64(
                (computed_after.0 - computed_before.0) / translations.max(1.0),
            ),
        };
        eprintln!("{}", row.line());
        rows.push(row);
        if n == speakers.len() && args.telemetry_minutes > 0 {
            let minutes = telemetry(&mesh, &speakers, &operator, args.telemetry_minutes).await?;
            telemetry_rows = minutes;
        }
        sims.shutdown().await;
    }
    println!(
        "\nHTTPRoute weight change (API write) -> every proxy ACKed, {} changes per size, {}, {}",
        args.changes,
        match args.role {
            BenchRole::Gateway => "gateway proxies of one pod".to_owned(),
            BenchRole::Sidecar =>
                format!("sidecars of distinct pods, {} snapshot groups", args.groups),
        },
        match args.decode {
            Decode::Once => "each distinct snapshot decoded once",
            Decode::Each => "every proxy decoding every snapshot",
        }
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>15} {:>12} {:>14} {:>13} {:>12} {:>15}",
        "proxies",
        "p50",
        "p99",
        "max",
        "first ACK p50/p99",
        "operator RSS",
        "operator CPU",
        "clients CPU",
        "bytes/push",
        "translations"
    );
    for r in &rows {
        println!("{}", r.line());
    }
    if !telemetry_rows.is_empty() {
        println!(
            "\n{} sidecars reporting telemetry each second, by minute:",
            speakers.len()
        );
        println!(
            "{:>6} {:>14} {:>14} {:>16}",
            "minute", "operator RSS", "operator CPU", "reports sent"
        );
        for (i, m) in telemetry_rows.iter().enumerate() {
            println!(
                "{:>6} {:>10.1} MiB {:>12.1} % {:>16}",
                i + 1,
                m.rss_mib,
                m.cpu_percent,
                m.reports
            );
        }
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
    /// Snapshot bytes the operator sent per proxy and change (deltas, and
    /// whole documents where a stream had no base).
    bytes_per_push: f64,
    /// Translations of the whole mesh the operator made per change.
    translations_per_change: f64,
    /// How long one took, on average.
    translation_mean: Duration,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{:>8} {:>10} {:>10} {:>10} {:>15} {:>8.1} MiB {:>12.1} % {:>11.1} % {:>12.0} {:>15}",
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
            self.clients_cpu_percent,
            self.bytes_per_push,
            format!(
                "{:.1} x {}",
                self.translations_per_change,
                ms(self.translation_mean)
            )
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
    let at_weight = |l: &Option<(u32, Instant)>| l.is_some_and(|(w, _)| w == weight);
    // Counted as reports arrive: a scan of every proxy per report would
    // cost this process (which shares the operator's cores) a million
    // checks per change at 1,000 proxies.
    let mut behind = latest.iter().filter(|l| !at_weight(l)).count();
    loop {
        if behind == 0 {
            let times = || latest.iter().flatten().map(|(_, at)| *at);
            let first = times().min().context("no proxies")?;
            let last = times().max().context("no proxies")?;
            return Ok((first, last));
        }
        tokio::select! {
            seen = tokio::time::timeout_at(deadline.into(), rx.recv()) => match seen {
                Ok(Some(s)) => {
                    let was = at_weight(&latest[s.proxy]);
                    latest[s.proxy] = Some((s.weight, s.at));
                    match (was, at_weight(&latest[s.proxy])) {
                        (false, true) => behind -= 1,
                        (true, false) => behind += 1,
                        _ => {}
                    }
                }
                Ok(None) => bail!("every simulated proxy stopped"),
                Err(_) => {
                    bail!("{behind} proxies did not reach weight {weight} within {DEADLINE:?}");
                }
            },
            Some(ended) = sims.join_next() => {
                bail!("a simulated proxy stopped: {:?}", ended.map_err(anyhow::Error::from).and_then(|r| r));
            }
        }
    }
}

/// One minute of the telemetry phase.
struct Minute {
    rss_mib: f64,
    /// Percent of one core over the minute.
    cpu_percent: f64,
    /// Reports the simulated sidecars sent during the minute.
    reports: u64,
}

/// Every speaker reports telemetry over a connection of its own (as a
/// proxy does) once a second for `minutes`: one inbound delta of 10
/// requests. Returns the operator's RSS and CPU each minute.
async fn telemetry(
    mesh: &MeshClient,
    speakers: &[Speaker],
    operator: &Operator,
    minutes: u64,
) -> Result<Vec<Minute>> {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(60 * minutes);
    let mut reporters = JoinSet::new();
    for (i, s) in speakers.iter().enumerate() {
        let (mesh, s, sent) = (mesh.clone(), s.clone(), sent.clone());
        // Spread over the second, as independent proxies are.
        let offset = Duration::from_millis((i as u64 * 997) % 1000);
        reporters.spawn(async move {
            let channel = mesh.channel_from(s.from).await?;
            report(channel, s.hello, offset, end, &sent).await
        });
    }
    let mut out = Vec::new();
    let mut before = (cpu_ticks(operator.pid())?, 0, Instant::now());
    for _ in 0..minutes {
        let minute_end = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < minute_end {
            tokio::select! {
                _ = tokio::time::sleep_until(minute_end) => {}
                Some(ended) = reporters.join_next() => ended??,
            }
        }
        let now = (
            cpu_ticks(operator.pid())?,
            sent.load(std::sync::atomic::Ordering::Relaxed),
            Instant::now(),
        );
        let secs = now.2.duration_since(before.2).as_secs_f64();
        out.push(Minute {
            rss_mib: rss_kib(operator.pid(), "VmRSS:")? as f64 / 1024.0,
            cpu_percent: 100.0 * (now.0 - before.0) as f64 / ticks_per_second() / secs,
            reports: now.1 - before.1,
        });
        eprintln!(
            "telemetry minute {}: RSS {:.1} MiB, CPU {:.1} %",
            out.len(),
            out[out.len() - 1].rss_mib,
            out[out.len() - 1].cpu_percent
        );
        before = now;
    }
    reporters.shutdown().await;
    Ok(out)
}

/// One sidecar's telemetry stream until `end`.
async fn report(
    channel: tonic::transport::Channel,
    hello: ProxyIdentity,
    offset: Duration,
    end: Instant,
    sent: &std::sync::atomic::AtomicU64,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let mut client = TelemetryClient::new(channel);
    let call = tokio::spawn(async move { client.report(ReceiverStream::new(rx)).await });
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut latency = vec![0; sluice_proto::telemetry::LATENCY_CELLS];
    latency[3] = 10;
    while Instant::now() < end {
        tick.tick().await;
        let report = TelemetryReport {
            identity: Some(hello.clone()),
            bucket_bounds_ms: sluice_proto::telemetry::bounds_with_inf(),
            deltas: vec![TrafficDelta {
                requests: 10,
                latency_buckets: latency.clone(),
                inbound: true,
                ..Default::default()
            }],
            timestamp_ms: i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis(),
            )?,
            relayed: false,
        };
        if tx.send(report).await.is_err() {
            bail!(
                "{}: the operator ended the telemetry stream",
                hello.pod_name
            );
        }
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    drop(tx);
    call.await??;
    Ok(())
}

/// A connection of its own (TCP and TLS handshake) per simulated proxy,
/// from `from` if given.
async fn connect(
    mesh: &MeshClient,
    from: Option<std::net::IpAddr>,
) -> Result<ConfigDiscoveryClient<tonic::transport::Channel>> {
    let channel = tokio::time::timeout(Duration::from_secs(10), mesh.channel_from(from))
        .await
        .context("connecting to the control plane: timed out")??;
    Ok(ConfigDiscoveryClient::new(channel))
}

/// One proxy: hello, then decode and ACK every snapshot, reporting the
/// watched backend's weight.
/// One simulated proxy.
struct Simulated {
    id: usize,
    hello: ProxyIdentity,
    /// The HTTPRoute whose weight it reports.
    route: &'static str,
    /// Shared decodes ([`Decode::Once`]), or none: decode each.
    decoded: Option<Decoded>,
}

/// The last document a simulated proxy received: a delta's base.
type Received = Option<(String, Bytes)>;

impl Simulated {
    /// Hello, then for each snapshot: decode, ACK, report the weight.
    async fn run(
        self,
        mut client: ConfigDiscoveryClient<tonic::transport::Channel>,
        seen: mpsc::UnboundedSender<Seen>,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(ProxyMessage {
            kind: Some(proxy_message::Kind::Hello(self.hello.clone())),
        })
        .await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let mut received: Received = None;
        while let Some(msg) = inbound.message().await? {
            let Some(config_message::Kind::Snapshot(snapshot)) = msg.kind else {
                continue;
            };
            let (doc, weight) = self.decode(&received, &snapshot).await?;
            received = Some((snapshot.version.clone(), doc));
            tx.send(ProxyMessage {
                kind: Some(proxy_message::Kind::Ack(Ack {
                    version: snapshot.version,
                })),
            })
            .await?;
            if let Some(weight) = weight {
                let _ = seen.send(Seen {
                    proxy: self.id,
                    weight,
                    at: Instant::now(),
                });
            }
        }
        bail!("sim-{}: the operator closed the stream", self.id)
    }

    /// `snapshot`'s whole document and the watched weight in it, decoded
    /// here or by whichever proxy got this version first.
    async fn decode(&self, received: &Received, snapshot: &Snapshot) -> Result<Document> {
        let decode = || -> Result<Document> {
            let last = received.as_ref().map(|(v, doc)| (v.as_str(), &doc[..]));
            let doc = delta::whole_document(last, snapshot.clone())?;
            let config: Config = serde_json::from_slice(&doc)?;
            Ok((doc, watched_weight(&config, self.route)))
        };
        let Some(decoded) = &self.decoded else {
            return decode();
        };
        let cell = decoded
            .lock()
            .map_err(|_| anyhow::anyhow!("a decode panicked"))?
            .entry(snapshot.version.clone())
            .or_default()
            .clone();
        Ok(cell.get_or_try_init(|| async { decode() }).await?.clone())
    }
}

/// The watched backend's weight in the routes translated from HTTPRoute
/// `route` (a sidecar also has each Service's own route to it).
fn watched_weight(config: &Config, route: &str) -> Option<u32> {
    let prefix = format!("{NS}/{route}/");
    config
        .listeners
        .iter()
        .flat_map(|l| &l.routes)
        .filter(|r| r.name.starts_with(&prefix))
        .flat_map(|r| &r.backends)
        .find(|b| b.name == WATCHED)
        .map(|b| b.weight)
}

/// Enrols the gateway identity of a pod in the host's network namespace,
/// which every simulated gateway speaks for.
async fn gateways(
    cluster: &Cluster,
    operator: &Operator,
    args: &Args,
) -> Result<(MeshClient, Vec<Speaker>, Option<VirtualNode>)> {
    host_pod(cluster, GATEWAY_NS, GATEWAY_POD, GATEWAY_ACCOUNT).await?;
    let mesh = MeshClient::enroll(cluster, operator.grpc, GATEWAY_NS, GATEWAY_ACCOUNT).await?;
    let hello = ProxyIdentity {
        namespace: GATEWAY_NS.into(),
        pod_name: GATEWAY_POD.into(),
        role: Role::Gateway.into(),
        service_account: GATEWAY_ACCOUNT.into(),
        ..Default::default()
    };
    let n = args.proxies.iter().copied().max().unwrap_or(0);
    let speaker = Speaker { hello, from: None };
    Ok((mesh, vec![speaker; n], None))
}

/// Creates a pod per simulated sidecar (of the largest size) on a virtual
/// node, each in policy group `g<i % groups>` with its own loopback
/// address, and enrols their service account.
async fn sidecars(
    cluster: &Cluster,
    operator: &Operator,
    args: &Args,
) -> Result<(MeshClient, Vec<Speaker>, Option<VirtualNode>)> {
    let n = args.proxies.iter().copied().max().unwrap_or(0);
    let mesh = MeshClient::enroll(cluster, operator.grpc, NS, SIDECAR_ACCOUNT).await?;
    let node = VirtualNode::start(cluster, "bench-virtual").await?;
    let speakers: Vec<Speaker> = (0..n)
        .map(|i| {
            let labels = [
                ("app".to_owned(), "bench-client".to_owned()),
                ("group".to_owned(), format!("g{}", i % args.groups.max(1))),
            ]
            .into();
            Speaker {
                hello: ProxyIdentity {
                    namespace: NS.into(),
                    pod_name: format!("sc-{i}"),
                    role: Role::Sidecar.into(),
                    service_account: SIDECAR_ACCOUNT.into(),
                    labels,
                    ..Default::default()
                },
                from: Some(loopback_address(i).into()),
            }
        })
        .collect();
    let created = Instant::now();
    let pods = speakers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let labels = s.hello.labels.clone().into_iter().collect();
            (s.hello.pod_name.clone(), labels, loopback_address(i))
        })
        .collect();
    node.pods(cluster, NS, SIDECAR_ACCOUNT, pods, 32).await?;
    eprintln!("{n} sidecar pods created in {:?}", created.elapsed());
    Ok((mesh, speakers, Some(node)))
}

fn resources(role: BenchRole, groups: usize) -> String {
    match role {
        BenchRole::Gateway => gateway_resources(),
        BenchRole::Sidecar => sidecar_resources(groups),
    }
}

/// Services `blue` and `yellow` (no pod of the bench behind them).
fn services(names: &[&str]) -> String {
    let mut yaml = String::new();
    for name in names {
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
             spec: {{selector: {{app: {name}}}, ports: [{{port: 8080}}]}}\n---\n"
        );
    }
    yaml
}

/// A GAMMA route of Service `svc` split between `blue` and `yellow`, and an
/// ALLOW policy per group.
fn sidecar_resources(groups: usize) -> String {
    let mut yaml = services(&["blue", "yellow", "svc"]);
    yaml += &format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mesh-route, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: svc, port: 8080}}]
  rules:
  - backendRefs:
    - {{name: blue, port: 8080, weight: 50}}
    - {{name: yellow, port: 8080, weight: 50}}
"#
    );
    for g in 0..groups.max(1) {
        yaml += &format!(
            r#"---
apiVersion: sluice.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-g{g}, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{group: g{g}}}}}
  action: ALLOW
  rules: [{{to: [{{operation: {{methods: [GET], paths: ["/g{g}"]}}}}]}}]
"#
        );
    }
    yaml
}

/// A Gateway and its HTTPRoute split between `blue` and `yellow`.
fn gateway_resources() -> String {
    let mut yaml = services(&["blue", "yellow"]);
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
