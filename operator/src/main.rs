//! `sluice-operator`: the mesh control plane.
//!
//! ```text
//! sluice-operator [--grpc-listen 0.0.0.0:15010] [--metrics-listen 0.0.0.0:15014]
//! sluice-operator --check
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use kube::Api;
use sluice_crds::Rollout;
use sluice_identity::{MeshIdentity, SpiffeId};
use sluice_operator::access::Access;
use sluice_operator::ca::publish::RootPublisher;
use sluice_operator::health::{Supervisor, beating};
use sluice_operator::mesh::{MeshOutput, MeshSettings};
use sluice_operator::metrics::{self, Metrics};
use sluice_operator::push::{ConfigServer, ConfigServerParts, Registry, Snapshots};
use sluice_operator::traffic::{Relay, TelemetryServer, TrafficWindow, relay};
use sluice_operator::trust::TrustSettings;
use sluice_operator::{ca, control_plane, dashboard, inject, leader};
use sluice_operator::{status, world};
use sluice_proto::config::MtlsMode;
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Sluice operator: rollouts and the mesh control plane"
)]
struct Args {
    /// Only check the connection to Kubernetes and exit.
    #[arg(long)]
    check: bool,
    /// Where proxies connect (config and telemetry streams).
    #[arg(long, env = "SLUICE_GRPC_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], sluice_proto::config::CONTROL_PLANE_PORT)))]
    grpc_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`, `/debug/traffic`.
    #[arg(long, env = "SLUICE_METRICS_LISTEN", default_value = "0.0.0.0:15014")]
    metrics_listen: SocketAddr,
    /// Keepalive sent on an idle config stream.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    keepalive_seconds: u64,
    /// Send a proxy only the config sections that changed since its last
    /// snapshot; `false` sends every snapshot whole (to compare, or to rule
    /// deltas out).
    #[arg(long, env = "SLUICE_PUSH_DELTAS", default_value_t = true, action = clap::ArgAction::Set)]
    push_deltas: bool,
    /// The operator's namespace: the CA Secret lives here, and
    /// AuthorizationPolicies here without a selector apply mesh-wide.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    namespace: String,
    /// The trust domain of workload identities (`spiffe://<it>/ns/..`).
    #[arg(long, env = "SLUICE_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates; proxies renew at half of it.
    #[arg(long, env = "SLUICE_CERT_TTL", default_value = "24h", value_parser = sluice_proto::config::parse_duration)]
    cert_ttl: Duration,
    /// Serve the sidecar injection webhook (HTTPS) here.
    #[arg(long, env = "SLUICE_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// More names (DNS or IP) in the operator's certificate, beside
    /// `sluice-operator.<namespace>.svc` (the webhook is called by one).
    #[arg(long, env = "SLUICE_WEBHOOK_NAMES", value_delimiter = ',')]
    webhook_names: Vec<String>,
    /// The operator's service account: its SPIFFE ID is what proxies and
    /// the other replicas verify.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = sluice_proto::bootstrap::OPERATOR_SERVICE_ACCOUNT)]
    service_account: String,
    /// Series the telemetry window holds at most; reports that would start
    /// more are refused (and counted) until old ones age out.
    #[arg(long, default_value_t = 20_000)]
    telemetry_max_series: usize,
    /// How much telemetry history the window keeps (the dashboard's chart
    /// and every analysis window must fit in it); series quiet for this
    /// long are dropped.
    #[arg(long, default_value = "5m", value_parser = sluice_proto::config::parse_duration)]
    telemetry_window: Duration,
    /// The proxy image injected sidecars run.
    #[arg(long, env = "SLUICE_PROXY_IMAGE", default_value = sluice_proto::images::PROXY)]
    proxy_image: String,
    /// The control plane's address as injected sidecars reach it; default
    /// `https://sluice-operator.<namespace>.svc:15010`.
    #[arg(long, env = "SLUICE_PROXY_CONTROL_PLANE")]
    proxy_control_plane: Option<String>,
    /// `RUST_LOG` of injected sidecars.
    #[arg(long, env = "SLUICE_PROXY_LOG", default_value = "info")]
    proxy_log: String,
    /// Add transparent interception (an iptables init step) to every
    /// injected pod but those annotated `sluice.dev/intercept: "false"`;
    /// with `--intercept=false`, only to pods annotated `"true"`.
    #[arg(long, env = "SLUICE_INTERCEPT", default_value_t = true, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true")]
    intercept: bool,
    /// The dashboard (empty: off). Clients outside loopback authenticate
    /// with a Kubernetes bearer token.
    #[arg(long, env = "SLUICE_DASHBOARD_LISTEN", default_value = "0.0.0.0:20001")]
    dashboard_listen: String,
    /// Offer promote/abort on the dashboard (to users allowed to patch the
    /// Rollout).
    #[arg(long, env = "SLUICE_DASHBOARD_ACTIONS")]
    dashboard_actions: bool,
    /// Elect a leader among replicas (a Lease named `sluice-operator`):
    /// only the leader runs the Rollout controller and writes status.
    #[arg(long, env = "SLUICE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This replica's name in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    leader_identity: Option<String>,
    /// A lease not renewed for this long is taken over by another replica.
    #[arg(long, default_value = "15s", value_parser = sluice_proto::config::parse_duration)]
    lease_duration: Duration,
    /// The leader exits when it could not renew for this long.
    #[arg(long, default_value = "10s", value_parser = sluice_proto::config::parse_duration)]
    renew_deadline: Duration,
    /// The Deployment that runs this operator: the CA Secret and the Lease
    /// it creates are owned by it, so `helm uninstall` removes them.
    #[arg(long, env = "SLUICE_OWNER_DEPLOYMENT")]
    owner_deployment: Option<String>,
    /// The Service in front of this operator's replicas: each passes the
    /// telemetry it gets from proxies on to the others (its ready
    /// endpoints but `--pod-ip`), so that the leader's analysis and every
    /// dashboard see all traffic. Unset: one replica, no relay.
    #[arg(long, env = "SLUICE_PEERS_SERVICE", requires = "pod_ip")]
    peers_service: Option<String>,
    /// This replica's address, left out of its peers.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// The GatewayClass whose Gateways each get their own proxies (a
    /// Deployment and Service `<gateway>-<class>` in the Gateway's
    /// namespace, as Istio deploys them); Gateways of Sluice's other
    /// classes share the installed gateway. Empty: none.
    #[arg(
        long,
        env = "SLUICE_DEDICATED_GATEWAY_CLASS",
        default_value = "sluice-dedicated"
    )]
    dedicated_gateway_class: String,
    /// mTLS mode of namespaces without a `sluice.dev/mtls-mode` label.
    #[arg(long, env = "SLUICE_MTLS_MODE", default_value = "PERMISSIVE", value_parser = parse_mode)]
    mtls_mode: MtlsMode,
    /// For end-to-end tests only: a Rollout annotated
    /// `sluice.dev/test-fault: panic` (or `stall`) makes the Rollout
    /// controller panic (or block its thread), to show that supervision
    /// notices.
    #[arg(long, hide = true)]
    test_faults: bool,
    /// Webhooks that receive every Rollout's decisions as JSON POSTs (the
    /// cluster's default; a Rollout names more in `spec.notifications`).
    #[arg(
        long = "notify-webhook",
        env = "SLUICE_NOTIFY_WEBHOOKS",
        value_delimiter = ','
    )]
    notify_webhooks: Vec<String>,
}

/// An owner reference to Deployment `name` in `namespace`.
async fn owner_of(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Resource;
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading the owner Deployment {namespace}/{name}"))?;
    d.controller_owner_ref(&())
        .map(|mut o| {
            o.controller = Some(false);
            o.block_owner_deletion = Some(false);
            o
        })
        .context("the owner Deployment has no uid")
}

/// The host name, for a replica outside a pod.
fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice-operator".into())
}

fn parse_mode(s: &str) -> Result<MtlsMode, String> {
    match s.to_ascii_uppercase().as_str() {
        "STRICT" => Ok(MtlsMode::Strict),
        "PERMISSIVE" => Ok(MtlsMode::Permissive),
        _ => Err(format!("{s:?}: expected STRICT or PERMISSIVE")),
    }
}

/// jemalloc instead of glibc's malloc: the operator's heap is many small
/// objects decoded from watch events and dropped on the next one, which glibc's
/// per-thread arenas hold on to as fragmented, unreturned pages (the RSS of a
/// 10,000-Rollout operator). jemalloc's decay gives freed pages back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them). One arena instead of four per core:
/// memory freed in one arena is not reused by another, and the operator's
/// threads allocate little at once (at 2,000 Rollouts, 77.0 MiB at rest
/// against 80.9 MiB).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only for a terminal: `kubectl logs` shows plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    // Without its background thread jemalloc purges freed pages only while
    // allocating, so an operator at rest would keep a burst's pages.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("could not start the allocator's purging thread: {e}");
    }
    if let Ok(arenas) = tikv_jemalloc_ctl::arenas::narenas::read() {
        info!(arenas, "allocator");
    }
    // Every connected proxy holds a descriptor: thousands of proxies need
    // more than the usual soft limit of 1,024.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let version = client.apiserver_version().await?;
    info!(kubernetes = %version.git_version, "connected");
    if args.check {
        let rollouts: Api<Rollout> = Api::all(client);
        let n = rollouts.list(&Default::default()).await?.items.len();
        info!(rollouts = n, "rollouts.sluice.dev is served");
        return Ok(());
    }
    run(args, client).await
}

/// What the operator's parts share.
struct Parts {
    client: kube::Client,
    metrics: Arc<Metrics>,
    traffic: Arc<TrafficWindow>,
    registry: Arc<Registry>,
    snapshots: Snapshots,
    world: world::World,
    supervisor: Supervisor,
    /// Asked to release the lease on SIGTERM or when a task fails.
    step_down: Option<leader::StepDown>,
    /// The operator's own certificate and the mesh roots.
    identity: Arc<MeshIdentity>,
    /// What gRPC callers are checked against.
    trust: Arc<TrustSettings>,
    /// Dashboard and debug users.
    access: Arc<Access>,
}

/// How long a supervised task may go without progress.
const STALL_AFTER: Duration = Duration::from_secs(30);

async fn run(args: Args, client: kube::Client) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let owner = match &args.owner_deployment {
        Some(name) => Some(owner_of(&client, &args.namespace, name).await?),
        None => None,
    };
    let ca = start_ca(&args, &client, owner.clone()).await?;
    let parts = Parts {
        registry: Arc::new(Registry::new(metrics.clone())),
        traffic: Arc::new(TrafficWindow::new(
            args.telemetry_window,
            args.telemetry_max_series,
        )),
        snapshots: Snapshots::default(),
        supervisor: Supervisor::default(),
        step_down: args.leader_elect.then(leader::StepDown::default),
        access: Arc::new(Access::new(client.clone())),
        trust: Arc::new(TrustSettings {
            trust_domain: args.trust_domain.clone(),
            root_namespace: args.namespace.clone(),
            operator: ca.own_id.clone(),
        }),
        identity: ca.identity.clone(),
        client,
        metrics,
        world: ca.world.clone(),
    };
    tokio::spawn(parts.supervisor.clone().watch_stalls());
    let m = parts.metrics.clone();
    tokio::spawn(parts.traffic.clone().keep_swept(move |n| {
        m.telemetry_series.set(i64::try_from(n).unwrap_or(i64::MAX));
    }));
    tokio::spawn(exit_when_unhealthy(
        parts.supervisor.clone(),
        parts.step_down.clone(),
    ));
    spawn_webhook(&args, &parts, &ca)?;
    let (output_tx, output_rx) = watch::channel(Arc::new(MeshOutput::default()));
    {
        let (w, r, s, m) = (
            parts.world.clone(),
            parts.registry.clone(),
            parts.snapshots.clone(),
            parts.metrics.clone(),
        );
        supervise(
            &parts.supervisor,
            "config push",
            world::run(w, r, s, m, output_tx),
        );
    }
    let proxy = proxy_settings(&args, &ca.own_id);
    spawn_leader_tasks(&args, &parts, owner, proxy, output_rx);
    spawn_http(&args, &parts)?;
    serve_grpc(&args, parts, ca.authority).await
}

/// The metrics endpoint and the dashboard.
fn spawn_http(args: &Args, parts: &Parts) -> anyhow::Result<()> {
    let (m, t, h, a, addr) = (
        parts.metrics.clone(),
        parts.traffic.clone(),
        parts.supervisor.clone(),
        parts.access.clone(),
        args.metrics_listen,
    );
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(addr, m, t, h, a).await {
            error!("metrics endpoint on {addr}: {e}");
        }
    });
    spawn_dashboard(args, parts)
}

/// The mesh CA and what hangs off it.
struct CaParts {
    authority: Arc<ArcSwap<ca::Authority>>,
    world: world::World,
    /// Fires when the CA (and maybe its roots) changed.
    changed: watch::Receiver<()>,
    /// The operator's own certificate, kept current.
    identity: Arc<MeshIdentity>,
    /// Its SPIFFE ID.
    own_id: SpiffeId,
    /// Publishes the roots in every namespace.
    roots: Arc<RootPublisher>,
}

/// Loads (or creates) the mesh CA, issues the operator's own certificate,
/// and starts the reflectors with its roots; keeps all of it current.
async fn start_ca(
    args: &Args,
    client: &kube::Client,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> anyhow::Result<CaParts> {
    let ca_settings = ca::secret::CaSettings {
        namespace: args.namespace.clone(),
        trust_domain: args.trust_domain.clone(),
        ttl: args.cert_ttl,
        owner,
    };
    let authority = Arc::new(ArcSwap::from_pointee(
        ca::secret::load_or_create(client, &ca_settings)
            .await
            .context("loading the mesh CA")?,
    ));
    let mesh_settings = {
        let (ns, mode) = (args.namespace.clone(), args.mtls_mode);
        let dedicated_class = args.dedicated_gateway_class.clone();
        move |a: &ca::Authority| MeshSettings {
            trust_domain: a.trust_domain.clone(),
            roots_pem: a.roots_pem.clone(),
            mode,
            root_namespace: ns.clone(),
            dedicated_class: dedicated_class.clone(),
        }
    };
    let world = world::World::start(client, mesh_settings(&authority.load())).await;
    let (changed_tx, changed) = watch::channel(());
    let (w, a) = (world.clone(), authority.clone());
    tokio::spawn(ca::secret::watch(
        client.clone(),
        ca_settings,
        authority.clone(),
        Duration::from_secs(10),
        move || {
            w.set_mesh(mesh_settings(&a.load()));
            changed_tx.send_replace(());
        },
    ));
    let own_id = SpiffeId {
        trust_domain: args.trust_domain.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
    };
    let own = ca::own::OwnSettings {
        spiffe_id: own_id.to_string(),
        names: serving_names(args),
    };
    let identity = Arc::new(MeshIdentity::default());
    ca::own::renew(&authority.load(), &identity, &own)
        .context("issuing the operator's own certificate")?;
    tokio::spawn(ca::own::keep_current(
        authority.clone(),
        identity.clone(),
        own,
        changed.clone(),
    ));
    let roots = RootPublisher::new(client.clone(), authority.clone());
    tokio::spawn(roots.clone().run(world.clone(), changed.clone()));
    Ok(CaParts {
        authority,
        world,
        changed,
        identity,
        own_id,
        roots,
    })
}

/// The DNS names (and IPs) in the operator's certificate.
fn serving_names(args: &Args) -> Vec<String> {
    let service = format!("sluice-operator.{}.svc", args.namespace);
    let mut names = vec![service.clone(), format!("{service}.cluster.local")];
    for n in &args.webhook_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// The admission webhooks and their caBundles, when `--webhook-listen` is
/// set.
fn spawn_webhook(args: &Args, parts: &Parts, ca: &CaParts) -> anyhow::Result<()> {
    tokio::spawn(inject::webhook::keep_ca_bundle_current(
        parts.client.clone(),
        ca.authority.clone(),
        ca.changed.clone(),
    ));
    let Some(addr) = args.webhook_listen else {
        return Ok(());
    };
    let settings = proxy_settings(args, &ca.own_id);
    let (identity, roots) = (parts.identity.clone(), ca.roots.clone());
    let metrics = parts.metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = inject::webhook::serve(addr, identity, settings, roots, metrics).await {
            error!("injection webhook: {e}");
        }
    });
    Ok(())
}

/// What the proxies the operator starts (injected sidecars, dedicated
/// gateways) run and where they connect.
fn proxy_settings(args: &Args, own_id: &SpiffeId) -> inject::InjectSettings {
    inject::InjectSettings {
        image: args.proxy_image.clone(),
        control_plane: args.proxy_control_plane.clone().unwrap_or_else(|| {
            format!(
                "https://sluice-operator.{}.svc:{}",
                args.namespace,
                sluice_proto::config::CONTROL_PLANE_PORT
            )
        }),
        control_plane_identity: own_id.to_string(),
        trust_domain: args.trust_domain.clone(),
        log_level: args.proxy_log.clone(),
        intercept: args.intercept,
    }
}

/// The writers, which run on the leader only: the Rollout controller and
/// the status writer, supervised.
fn spawn_leader_tasks(
    args: &Args,
    parts: &Parts,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    proxy: inject::InjectSettings,
    output_rx: watch::Receiver<Arc<MeshOutput>>,
) {
    let election = args.leader_elect.then(|| leader::LeaderSettings {
        namespace: args.namespace.clone(),
        name: "sluice-operator".into(),
        identity: args
            .leader_identity
            .clone()
            .unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        owner,
    });
    let (c, t, w, r, s) = (
        parts.client.clone(),
        parts.traffic.clone(),
        parts.world.clone(),
        parts.registry.clone(),
        parts.snapshots.clone(),
    );
    let (step_down, supervisor) = (parts.step_down.clone(), parts.supervisor.clone());
    let faults = args.test_faults;
    let metrics = parts.metrics.clone();
    let notifier = sluice_operator::rollout::notify::Notifier::start(
        args.notify_webhooks.clone(),
        metrics.clone(),
    );
    tokio::spawn(async move {
        if let (Some(settings), Some(step_down)) = (election, step_down)
            && !leader::lead(c.clone(), settings, step_down).await
        {
            return;
        }
        let deployer =
            sluice_operator::gateway_infra::run(c.clone(), w.clone(), proxy, output_rx.clone());
        supervise(&supervisor, "gateway deployer", deployer);
        let controller = sluice_operator::rollout::run(
            c.clone(),
            w.clone(),
            t,
            supervisor.clone(),
            notifier,
            metrics,
            faults,
        );
        supervise(&supervisor, "rollout controller", controller);
        supervise(
            &supervisor,
            "status writer",
            status::run(c, w, r, s, output_rx),
        );
    });
}

/// Runs `task` under `supervisor`, beating every second from the task's own
/// thread: a task that stops making progress for [`STALL_AFTER`] (a blocked
/// thread) fails the health check.
fn supervise(
    supervisor: &Supervisor,
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) {
    supervisor.spawn(name, Some(STALL_AFTER), move |heart| async move {
        beating(&heart, Duration::from_secs(1), task).await
    });
}

fn spawn_dashboard(args: &Args, parts: &Parts) -> anyhow::Result<()> {
    if args.dashboard_listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = args
        .dashboard_listen
        .parse()
        .with_context(|| format!("--dashboard-listen {:?}", args.dashboard_listen))?;
    let settings = dashboard::DashboardSettings {
        actions: args.dashboard_actions,
    };
    let dashboard_parts = dashboard::DashboardParts {
        client: parts.client.clone(),
        world: parts.world.clone(),
        registry: parts.registry.clone(),
        traffic: parts.traffic.clone(),
        access: parts.access.clone(),
        metrics: parts.metrics.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = dashboard::serve(addr, dashboard_parts, settings).await {
            error!("dashboard on {addr}: {e}");
        }
    });
    Ok(())
}

/// Serves the proxies (config, telemetry, certificates) over TLS until
/// SIGTERM.
async fn serve_grpc(
    args: &Args,
    parts: Parts,
    authority: Arc<ArcSwap<ca::Authority>>,
) -> anyhow::Result<()> {
    let config = ConfigServer::new(
        parts.snapshots,
        ConfigServerParts {
            registry: parts.registry.clone(),
            keepalive: Duration::from_secs(args.keepalive_seconds.max(1)),
            deltas: args.push_deltas,
            world: parts.world.clone(),
            trust: parts.trust.clone(),
            metrics: parts.metrics.clone(),
        },
    );
    let certificates =
        ca::CertificateServer::new(parts.client.clone(), authority, parts.metrics.clone());
    let relay = match (&args.peers_service, args.pod_ip) {
        (Some(service), Some(own_ip)) => {
            let tls = sluice_identity::verify::control_plane_client_config(
                &parts.identity,
                &parts.trust.operator.to_string(),
            )
            .context("the relay's TLS config")?;
            let relay = Relay::new(args.grpc_listen.port(), parts.metrics.clone(), tls);
            tokio::spawn(relay::watch_peers(
                parts.client.clone(),
                relay.clone(),
                args.namespace.clone(),
                service.clone(),
                own_ip,
            ));
            Some(relay)
        }
        _ => None,
    };
    let telemetry = TelemetryServer::new(
        parts.traffic,
        parts.metrics.clone(),
        relay,
        parts.world,
        parts.trust,
    );
    info!(address = %args.grpc_listen, "control plane listening (TLS)");
    control_plane::serve(
        args.grpc_listen,
        &parts.identity,
        parts.metrics,
        control_plane::Services {
            config,
            telemetry,
            certificates,
        },
        shutdown(parts.step_down),
    )
    .await
    .with_context(|| format!("serving gRPC on {}", args.grpc_listen))?;
    info!("stopped");
    Ok(())
}

/// Once a supervised task fails: give the lease up (the other replica
/// takes over at once), keep answering `/healthz` with the failure for a
/// few seconds, then exit so that Kubernetes restarts the operator.
async fn exit_when_unhealthy(supervisor: Supervisor, step_down: Option<leader::StepDown>) {
    let mut failed = supervisor.failed();
    let Ok(why) = failed.wait_for(Option::is_some).await.map(|w| w.clone()) else {
        return;
    };
    error!(
        "a task failed ({}); stepping down and exiting",
        why.unwrap_or_default()
    );
    if let Some(s) = step_down {
        s.now(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    std::process::exit(1);
}

/// Resolves on SIGTERM or SIGINT, once the lease (if held) is released.
async fn shutdown(step_down: Option<leader::StepDown>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("stopping");
    if let Some(s) = step_down {
        s.now(Duration::from_secs(2)).await;
    }
    // Proxies hold their streams open for good: give them a moment to
    // move to another replica, then exit rather than wait for the kubelet's
    // SIGKILL at the end of the grace period.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        info!("stopped (streams still open)");
        std::process::exit(0);
    });
}
