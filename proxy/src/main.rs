//! `sluice-proxy`: the Sluice data plane.
//!
//! ```text
//! sluice-proxy run --config proxy.yaml [--workers N] [--drain-timeout 10s]
//! sluice-proxy gateway --control-plane https://HOST:15010 [--admin 0.0.0.0:15021]
//! sluice-proxy sidecar --control-plane https://HOST:15010 [--admin 0.0.0.0:15021]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_identity::channel::ControlPlaneAddress;
use sluice_proto::mesh::ProxyIdentity;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proxy::config::parse_duration;
use sluice_proxy::state::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, Proxy};
use sluice_proxy::{admin, control, server, static_source};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(version, about = "Sluice proxy: sidecar and ingress gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Static mode: serve the configuration in a YAML file, reloaded on
    /// SIGHUP and when the file changes.
    Run {
        /// The configuration file (schema: proxy/README.md).
        #[arg(long, short)]
        config: PathBuf,
        /// A workload certificate chain (PEM) for mesh mTLS, with `--key`;
        /// the roots that verify peers come from the config's `mesh_tls`.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The certificate's private key (PKCS#8 PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Ingress gateway: listeners and routes from Gateway API resources,
    /// pushed by the control plane.
    Gateway {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Install the pod's interception rules (iptables, nat table) and exit:
    /// the init step the injector adds before the sidecar.
    Intercept {
        /// Where inbound TCP is redirected.
        #[arg(long, default_value_t = sluice_proxy::config::INBOUND_PORT)]
        inbound_port: u16,
        /// Where outbound TCP is redirected.
        #[arg(long, default_value_t = sluice_proto::config::OUTBOUND_PORT)]
        outbound_port: u16,
        /// Inbound ports left alone (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [sluice_proto::probes::ADMIN_PORT])]
        exclude_inbound_ports: Vec<u16>,
        /// Outbound destination ports left alone (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [sluice_proto::config::CONTROL_PLANE_PORT])]
        exclude_outbound_ports: Vec<u16>,
        /// The sidecar's user id: its connections pass untouched (as the
        /// socket mark does where the sidecar may set one).
        #[arg(long, default_value_t = sluice_proxy::intercept::PROXY_UID)]
        proxy_uid: u32,
    },
    /// Sidecar: outbound routing to the mesh's Services, pushed by the
    /// control plane.
    Sidecar {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

/// Where the control plane is and who this proxy is; the chart and the
/// injector set these through the environment.
#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The control plane's gRPC address, `https://host:port`.
    #[arg(long, env = "SLUICE_CONTROL_PLANE")]
    control_plane: String,
    /// The SPIFFE ID the control plane must present (default: the chart's
    /// operator, `spiffe://<trust domain>/ns/sluice-system/sa/sluice-operator`).
    #[arg(long, env = "SLUICE_CONTROL_PLANE_IDENTITY")]
    control_plane_identity: Option<String>,
    /// The mesh's trust domain.
    #[arg(long, env = "SLUICE_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The mesh roots (PEM) that verify the control plane until the first
    /// snapshot brings them; the injector mounts them from the
    /// `sluice-ca-root-cert` ConfigMap.
    #[arg(long, env = "SLUICE_CA_ROOT_FILE", default_value_t = sluice_proto::bootstrap::secret_file(sluice_proto::bootstrap::ROOT_CERT_PATH))]
    ca_root_file: String,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// This pod's service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Admin endpoint (`/ready`, `/metrics`, `/config`).
    #[arg(long, env = "SLUICE_ADMIN", default_value_t = SocketAddr::from(([0, 0, 0, 0], sluice_proto::probes::ADMIN_PORT)))]
    admin: SocketAddr,
    /// A config stream silent for this long is reopened.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// How often traffic deltas are reported.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    report_interval: Duration,
    /// The pod's projected service-account token (audience `sluice`),
    /// exchanged for the workload certificate that every stream to the
    /// control plane needs.
    #[arg(long, env = "SLUICE_TOKEN_FILE", default_value_t = sluice_proto::bootstrap::secret_file(sluice_proto::bootstrap::TOKEN_PATH))]
    token_file: String,
}

#[derive(clap::Args, Debug)]
struct RuntimeArgs {
    /// Worker threads, each with its own sockets and upstream pools
    /// (default: one per CPU).
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// How long in-flight requests may take to finish on SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Downstream connections open at once, across workers; beyond it a
    /// new connection is closed at once and counted
    /// (`sluice_connections_over_limit_total`), so that a flood of idle
    /// clients cannot exhaust memory or file descriptors.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: u64,
    /// A downstream connection (HTTP/1 keep-alive, HTTP/2, TCP) on which
    /// no byte moves either way for this long is closed and counted
    /// (`sluice_idle_timeouts_total`), as Envoy's idle timeout; 0: never.
    #[arg(long, env = "SLUICE_CONNECTION_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    connection_idle_timeout: Duration,
    /// An HTTP/1 request head that has started must arrive whole within
    /// this, or the connection is closed and counted
    /// (`sluice_header_read_timeouts_total`): a client trickling its head
    /// cannot hold a connection (nginx's `client_header_timeout`).
    /// Default: 30s.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    header_read_timeout: Option<Duration>,
    /// A downstream TLS handshake (gateway HTTPS listeners, inbound mTLS)
    /// must finish within this, or the connection is closed and counted
    /// (`sluice_tls_handshake_failures_total`). Default: 10s.
    #[arg(long, env = "SLUICE_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: `kubectl logs` shows plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.command {
        Command::Run {
            config,
            cert,
            key,
            runtime,
        } => run_static(config, cert.zip(key), runtime),
        Command::Gateway { control, runtime } => run_managed(Role::Gateway, control, runtime),
        Command::Intercept {
            inbound_port,
            outbound_port,
            exclude_inbound_ports,
            exclude_outbound_ports,
            proxy_uid,
        } => sluice_proxy::intercept::install(&sluice_proxy::intercept::InterceptSettings {
            inbound_port,
            outbound_port,
            exclude_inbound: exclude_inbound_ports,
            exclude_outbound: exclude_outbound_ports,
            proxy_uid,
        })
        .map(|()| info!("interception rules installed"))
        .map_err(Into::into),
        Command::Sidecar { control, runtime } => run_managed(Role::Sidecar, control, runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("sluice-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_static(
    path: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    rt: RuntimeArgs,
) -> anyhow::Result<()> {
    let (config, bytes) = static_source::load(&path)?;
    let proxy = Proxy::new();
    if let Some((cert, key)) = identity {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        proxy.identity.set_leaf_pem(&read(&cert)?, &read(&key)?)?;
    }
    let admin_addr = config.admin.as_ref().map(|a| a.address);
    proxy.apply(config, None);
    serve(proxy.clone(), admin_addr, rt, move || {
        tokio::spawn(static_source::watch(proxy, path, bytes));
    })
}

fn run_managed(role: Role, args: ControlArgs, rt: RuntimeArgs) -> anyhow::Result<()> {
    let address = ControlPlaneAddress::parse(&args.control_plane)?;
    let expected = args.control_plane_identity.clone().unwrap_or_else(|| {
        sluice_proto::config::spiffe_id(
            &args.trust_domain,
            sluice_proto::bootstrap::OPERATOR_NAMESPACE,
            sluice_proto::bootstrap::OPERATOR_SERVICE_ACCOUNT,
        )
    });
    let proxy = Proxy::new();
    let tls = sluice_identity::verify::control_plane_client_config(&proxy.identity, &expected)
        .context("the control plane's TLS config")?;
    let settings = control::Settings {
        address,
        tls,
        identity: ProxyIdentity {
            namespace: args.namespace.clone(),
            pod_name: args.pod_name.clone(),
            role: role as i32,
            service_account: args.service_account.clone(),
            labels: Default::default(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        idle_timeout: args.idle_timeout,
        report_interval: args.report_interval,
    };
    info!(
        role = ?role,
        control_plane = %args.control_plane,
        control_plane_identity = %expected,
        pod = %format!("{}/{}", args.namespace, args.pod_name),
        "starting; no listeners until the first snapshot"
    );
    let certificates = control::CertificateSettings {
        token_file: args.token_file.clone().into(),
        roots_file: args.ca_root_file.clone().into(),
        trust_domain: args.trust_domain.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
    };
    let admin = args.admin;
    serve(proxy.clone(), Some(admin), rt, move || {
        tokio::spawn(control::run_certificates(
            proxy.clone(),
            settings.clone(),
            certificates,
        ));
        tokio::spawn(control::run_config_stream(
            proxy.clone(),
            settings.clone(),
            Some(admin),
        ));
        tokio::spawn(control::run_reporter(proxy, settings));
    })
}

/// Runs the workers and the admin endpoint until SIGTERM or SIGINT; `start`
/// spawns the config source on the main runtime.
fn serve(
    proxy: Arc<Proxy>,
    admin_addr: Option<SocketAddr>,
    rt: RuntimeArgs,
    start: impl FnOnce(),
) -> anyhow::Result<()> {
    let health = Arc::new(sluice_proxy::app_health::AppHealth::from_env()?);
    proxy.telemetry.set_max_connections(rt.max_connections);
    proxy.set_connection_idle_timeout(rt.connection_idle_timeout);
    proxy.set_slow_client_timeouts(
        rt.header_read_timeout
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        rt.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let workers = start_workers(&proxy, rt.workers, &shutdown_rx, rt.drain_timeout)?;
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    main_rt.block_on(async {
        if let Some(addr) = admin_addr {
            let (p, s) = (proxy.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = admin::serve(p, health, addr, s).await {
                    error!("admin endpoint on {addr}: {e}");
                }
            });
        }
        start();
        wait_for_stop().await
    })?;
    info!(
        "shutting down: no new connections; draining for up to {:?}",
        rt.drain_timeout
    );
    let _ = shutdown_tx.send(true);
    for w in workers {
        let _ = w.join();
    }
    info!("stopped");
    Ok(())
}

fn start_workers(
    proxy: &Arc<Proxy>,
    workers: Option<usize>,
    shutdown: &watch::Receiver<bool>,
    drain: Duration,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let n = workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    (0..n)
        .map(|i| {
            let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
            // Registered here, before the thread runs, so `/ready` counts it.
            let slot = proxy.listening.register();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || runtime.block_on(server::worker(proxy, slot, shutdown, drain)))?)
        })
        .collect()
}

/// A proxy holds two descriptors per proxied connection: lift the soft
/// limit to the hard one, as Envoy and nginx (`worker_rlimit_nofile`) do.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
}

async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
