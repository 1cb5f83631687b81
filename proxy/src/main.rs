//! `sluice-proxy`: the Sluice data plane.
//!
//! ```text
//! sluice-proxy run --config proxy.yaml [--workers N] [--drain-timeout 10s]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_proxy::config::parse_duration;
use sluice_proxy::state::Proxy;
use sluice_proxy::{admin, server, static_source};
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
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.command {
        Command::Run { config, runtime } => run_static(config, runtime),
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

fn run_static(path: PathBuf, rt: RuntimeArgs) -> anyhow::Result<()> {
    let (config, bytes) = static_source::load(&path)?;
    let proxy = Proxy::new();
    let admin_addr = config.admin.as_ref().map(|a| a.address);
    proxy.apply(config, None);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let workers = start_workers(&proxy, rt.workers, &shutdown_rx, rt.drain_timeout)?;
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    main_rt.block_on(async {
        if let Some(addr) = admin_addr {
            let (p, s) = (proxy.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = admin::serve(p, addr, s).await {
                    error!("admin endpoint on {addr}: {e}");
                }
            });
        }
        tokio::spawn(static_source::watch(proxy.clone(), path, bytes));
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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || runtime.block_on(server::worker(proxy, shutdown, drain)))?)
        })
        .collect()
}

/// A proxy holds two descriptors per proxied connection: lift the soft
/// limit to the hard one, as Envoy and nginx (`worker_rlimit_nofile`) do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
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
