//! `cargo xtask bench scale`: one operator under many Rollouts.
//!
//! A real test-bed control plane (API server, etcd) and the real operator.
//! It creates `--rollouts` Rollouts across `--namespaces` namespaces, each
//! with its stable and canary Services (headless: no ClusterIPs to
//! allocate) and its HTTPRoute, `replicas: 0` and a canary scaled to 0
//! (`setCanaryScale`) so that no pod runs: what is measured is the
//! operator, not the kubelet starting canary pods (the rollout end-to-end
//! tests measure that).
//! It measures:
//! - the time from the first write until every Rollout is Healthy;
//! - the operator's RSS and CPU at rest, once the controller manager has
//!   caught up with every ReplicaSet and Service (it writes ReplicaSet
//!   status and EndpointSlices at its own client rate, and each write
//!   wakes the operator);
//! - for `--changes` Rollouts picked at random, one after another, the
//!   time from the image change (the API write) to the HTTPRoute carrying
//!   the first step's canary weight, while the others sit there;
//! - a soak: a change every `--soak-every` for `--soak-minutes`, the
//!   operator's RSS sampled each minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use sluice_crds::{Rollout, RolloutPhase};
use sluice_tests::Cluster;
use sluice_tests::operator::{GATEWAY_NS, Operator};
use sluice_tests::procfs::{cpu_ticks, quantile, rss_kib, ticks_per_second};
use tokio::sync::{Mutex, mpsc};

#[derive(Parser)]
#[command(about = "One operator under many Rollouts: time to Healthy, RSS, change latency, soak")]
struct Args {
    /// Rollouts to create.
    #[arg(long, default_value_t = 10_000)]
    rollouts: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Image changes measured one after another.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Minutes of the soak (a change every `--soak-every`).
    #[arg(long, default_value_t = 30)]
    soak_minutes: u64,
    /// Seconds between two changes of the soak.
    #[arg(long, default_value_t = 5)]
    soak_every: u64,
    /// API writes in flight while creating.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// The canary weight of the first step.
const STEP_WEIGHT: i64 = 50;
/// A margin after the last ReplicaSet status before measuring at rest.
const SETTLE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args = Args::parse();
    sluice_tests::procfs::bench_runtime()?.block_on(run(args))
}

fn namespace(args: &Args, i: usize) -> String {
    format!("scale-{:03}", i % args.namespaces.max(1))
}

async fn run(args: Args) -> Result<()> {
    eprintln!("starting the test-bed control plane and the operator");
    let cluster = Cluster::start().await?;
    cluster.install_gateway_api().await?;
    cluster.install_crds().await?;
    cluster.create_namespace(GATEWAY_NS).await?;
    let operator = Operator::start(&cluster).await?;
    let client = cluster.client();
    let healthy = Flags::default();
    let settled = Flags::default();
    let (weights_tx, mut weights) = mpsc::unbounded_channel();
    let all = watcher::Config::default();
    tokio::spawn(watch_flags(
        Api::all(client.clone()),
        all.clone(),
        self::healthy,
        healthy.clone(),
    ));
    let ours = all.clone().labels(sluice_crds::rollout::ROLLOUT_LABEL);
    tokio::spawn(watch_flags(
        Api::all(client.clone()),
        ours,
        rs_settled,
        settled.clone(),
    ));
    // The controller manager writes an EndpointSlice per Service, at its
    // own rate too; each is a change the mesh translates.
    let slices = Flags::default();
    let sliced = all.labels("kubernetes.io/service-name");
    let any = |_: &EndpointSlice| true;
    tokio::spawn(watch_flags(
        Api::all(client.clone()),
        sliced,
        any,
        slices.clone(),
    ));
    tokio::spawn(watch_routes(client.clone(), weights_tx));

    let start = Instant::now();
    for n in 0..args.namespaces {
        cluster.create_namespace(&format!("scale-{n:03}")).await?;
    }
    create_all(&client, &args).await?;
    let created = start.elapsed();
    eprintln!(
        "{} Rollouts and their Services and routes written in {created:?}",
        args.rollouts
    );
    wait_count(&healthy, args.rollouts, "Healthy").await?;
    let to_healthy = start.elapsed();
    eprintln!(
        "all {} Healthy {to_healthy:?} after the first write",
        args.rollouts
    );

    wait_count(&settled, args.rollouts, "ReplicaSets with their status").await?;
    wait_count(&slices, 2 * args.rollouts, "EndpointSlices").await?;
    eprintln!(
        "controller manager caught up {:?} after the first write",
        start.elapsed()
    );
    tokio::time::sleep(SETTLE).await;
    let (rest_rss, rest_cpu) = at_rest(operator.pid()).await?;
    eprintln!("at rest: RSS {rest_rss:.1} MiB, CPU {rest_cpu:.1}%");

    let latencies = changes(&client, &args, &mut weights).await?;
    eprintln!("image change -> route weight: {}", summary(&latencies));
    let soak = soak(&client, &args, operator.pid()).await?;
    let results = Results {
        created,
        to_healthy,
        rest_rss,
        rest_cpu,
        latencies,
        soak,
        peak_rss: rss_kib(operator.pid(), "VmHWM:")? as f64 / 1024.0,
    };
    results.print(&args);
    Ok(())
}

/// What a run measured.
struct Results {
    created: Duration,
    to_healthy: Duration,
    /// MiB.
    rest_rss: f64,
    /// Percent of one core.
    rest_cpu: f64,
    /// Sorted.
    latencies: Vec<Duration>,
    /// MiB, at the start and after each minute.
    soak: Vec<f64>,
    /// MiB.
    peak_rss: f64,
}

/// Every Rollout's Services, route and itself, `--concurrency` at a time.
async fn create_all(client: &Client, args: &Args) -> Result<()> {
    let route_api = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    let service_api = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Service"));
    let ssa = PatchParams::apply("sluice-scale-bench").force();
    futures::stream::iter(0..args.rollouts)
        .map(|i| {
            let (client, route_api, service_api, ssa) = (
                client.clone(),
                route_api.clone(),
                service_api.clone(),
                ssa.clone(),
            );
            let ns = namespace(args, i);
            async move {
                let name = format!("r{i}");
                let services =
                    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &service_api);
                for role in ["stable", "canary"] {
                    let svc = format!("{name}-{role}");
                    services
                        .patch(&svc, &ssa, &Patch::Apply(service(&ns, &svc, &name)))
                        .await?;
                }
                let routes = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &route_api);
                routes
                    .patch(&name, &ssa, &Patch::Apply(route(&ns, &name)))
                    .await?;
                let rollouts = Api::<Rollout>::namespaced(client, &ns);
                rollouts
                    .patch(&name, &ssa, &Patch::Apply(rollout(&ns, &name)))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn service(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "selector": {"app": app}, "ports": [{"name": "http", "port": 8080}]}})
}

fn route(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": name, "namespace": ns},
    "spec": {"rules": [{"backendRefs": [
        {"name": format!("{name}-stable"), "port": 8080, "weight": 100},
        {"name": format!("{name}-canary"), "port": 8080, "weight": 0},
    ]}]}})
}

fn rollout(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "sluice/demo-app:blue"}]}},
            "strategy": {"canary": {
                "stableService": format!("{name}-stable"),
                "canaryService": format!("{name}-canary"),
                "trafficRouting": {"httpRoutes": [{"name": name}]},
                "steps": [{"setCanaryScale": {"replicas": 0}},
                    {"setWeight": STEP_WEIGHT}, {"pause": {}}]}}}})
}

/// Per object, whether it is what `is` says.
type Flags = Arc<Mutex<HashMap<String, bool>>>;

/// Keeps in `flags`, per object `api` watches, whether it is `is`.
async fn watch_flags<K>(api: Api<K>, config: watcher::Config, is: fn(&K) -> bool, flags: Flags)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    while let Some(ev) = events.next().await {
        let Ok(o) = ev else { continue };
        let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        flags.lock().await.insert(key, is(&o));
    }
}

fn healthy(ro: &Rollout) -> bool {
    ro.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Healthy)
}

/// The controller manager has written the status of this spec.
fn rs_settled(rs: &ReplicaSet) -> bool {
    rs.status.as_ref().and_then(|s| s.observed_generation) == rs.metadata.generation
}

/// Sends (namespace/name, canary weight, when seen) for each HTTPRoute
/// event.
async fn watch_routes(client: Client, tx: mpsc::UnboundedSender<(String, i64, Instant)>) {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(ev) = events.next().await {
        let Ok(route) = ev else { continue };
        let canary = route.data["spec"]["rules"][0]["backendRefs"][1]["weight"]
            .as_i64()
            .unwrap_or(-1);
        let key = format!(
            "{}/{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        );
        if tx.send((key, canary, Instant::now())).is_err() {
            return;
        }
    }
}

/// Waits until at least `n` of `flags` are set.
async fn wait_count(flags: &Mutex<HashMap<String, bool>>, n: usize, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut last = 0;
    loop {
        let count = flags.lock().await.values().filter(|h| **h).count();
        if count >= n {
            return Ok(());
        }
        if count != last {
            eprintln!("  {count}/{n} {what}");
            last = count;
        }
        if Instant::now() > deadline {
            bail!("only {count} of {n} {what} after an hour");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// RSS (MiB) now and CPU (% of one core) over 30 s.
async fn at_rest(pid: u32) -> Result<(f64, f64)> {
    let before = cpu_ticks(pid)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu = (cpu_ticks(pid)? - before) as f64 / ticks_per_second() / t.elapsed().as_secs_f64();
    Ok((rss_kib(pid, "VmRSS:")? as f64 / 1024.0, 100.0 * cpu))
}

/// Changes the image of Rollout `i` to `colour`.
async fn set_image(client: &Client, args: &Args, i: usize, colour: &str) -> Result<()> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), &namespace(args, i));
    api.patch(
        &format!("r{i}"),
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/template/spec/containers/0/image",
             "value": format!("sluice/demo-app:{colour}")},
        ]))?),
    )
    .await?;
    Ok(())
}

/// `--changes` Rollouts at random, one after another: image change to
/// the route carrying the step's weight.
async fn changes(
    client: &Client,
    args: &Args,
    weights: &mut mpsc::UnboundedReceiver<(String, i64, Instant)>,
) -> Result<Vec<Duration>> {
    let mut picked: Vec<usize> = (0..args.rollouts).collect();
    rand::seq::SliceRandom::shuffle(picked.as_mut_slice(), &mut rand::rng());
    picked.truncate(args.changes);
    let mut out = Vec::new();
    for i in picked {
        let key = format!("{}/r{i}", namespace(args, i));
        // Events from before this change are not its answer.
        while weights.try_recv().is_ok() {}
        let start = Instant::now();
        set_image(client, args, i, "yellow").await?;
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some((k, w, at)) = weights.recv().await {
                if k == key && w == STEP_WEIGHT {
                    return Some(at);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .with_context(|| format!("{key}: no weight {STEP_WEIGHT} within 60 s"))?;
        out.push(seen.saturating_duration_since(start));
    }
    out.sort();
    Ok(out)
}

/// A change every `--soak-every` (alternating colours), the operator's RSS
/// (MiB) sampled each minute.
async fn soak(client: &Client, args: &Args, pid: u32) -> Result<Vec<f64>> {
    let mut samples = vec![rss_kib(pid, "VmRSS:")? as f64 / 1024.0];
    let colours = ["green", "orange", "purple", "blue"];
    let every = Duration::from_secs(args.soak_every.max(1));
    let mut n = 0usize;
    for minute in 1..=args.soak_minutes {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let i = rand::random_range(0..args.rollouts);
            set_image(client, args, i, colours[n % colours.len()]).await?;
            n += 1;
            tokio::time::sleep(every).await;
        }
        let rss = rss_kib(pid, "VmRSS:")? as f64 / 1024.0;
        eprintln!("  soak minute {minute}: RSS {rss:.1} MiB after {n} changes");
        samples.push(rss);
    }
    Ok(samples)
}

/// p50, p99 and max of sorted latencies.
fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        quantile(sorted, 0.50),
        quantile(sorted, 0.99),
        sorted.last().copied().unwrap_or_default()
    )
}

impl Results {
    fn print(&self, args: &Args) {
        println!(
            "\n{} Rollouts in {} namespaces (each with 2 Services and an HTTPRoute)",
            args.rollouts, args.namespaces
        );
        println!("  written in            {:.1?}", self.created);
        println!("  all Healthy after     {:.1?}", self.to_healthy);
        println!(
            "  operator at rest      RSS {:.1} MiB, CPU {:.1}% of a core",
            self.rest_rss, self.rest_cpu
        );
        println!(
            "  image change -> route weight, {} changes: {}",
            self.latencies.len(),
            summary(&self.latencies)
        );
        let soak: Vec<String> = self.soak.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            "  soak ({} min, a change every {} s), RSS by minute (MiB): {}",
            args.soak_minutes,
            args.soak_every,
            soak.join(" ")
        );
        println!("  operator peak RSS     {:.1} MiB", self.peak_rss);
    }
}
