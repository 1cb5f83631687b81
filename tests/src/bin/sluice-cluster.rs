//! `sluice-cluster`: runs the test bed's cluster (control plane + node
//! agent) in the foreground until SIGTERM or Ctrl-C, for the local sandbox.
//!
//! ```text
//! sluice-cluster up --state-dir ~/.cache/sluice/demo
//! ```
//!
//! With the cluster it runs the mesh (Sluice and Gateway API CRDs, the
//! operator as a host process, the gateway proxy) until the Helm chart
//! installs it. Once ready it writes `kubeconfig`, `gateway-ip` and `ready`
//! into the state directory; `cargo xtask demo` starts it in the background
//! and waits for `ready`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_tests::Cluster;

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes cluster whose pods run as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the cluster and serve until SIGTERM/SIGINT.
    Up {
        /// Where the cluster keeps its state, logs and kubeconfig.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cmd::Up { state_dir } = Cli::parse().command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let ready = state_dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let cluster_dir = state_dir.join("cluster");
        let _ = std::fs::remove_dir_all(&cluster_dir);
        let cluster = Cluster::start_in(&cluster_dir).await?;
        std::fs::copy(cluster.kubeconfig(), state_dir.join("kubeconfig"))
            .context("writing kubeconfig")?;
        let (_operator, gateway_ip) = sluice_tests::operator::start_mesh(&cluster).await?;
        std::fs::write(state_dir.join("gateway-ip"), &gateway_ip).context("writing gateway-ip")?;
        std::fs::write(&ready, format!("{}\n", std::process::id())).context("writing ready")?;
        tracing::info!(kubeconfig = %state_dir.join("kubeconfig").display(), "cluster ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping the cluster");
        let _ = std::fs::remove_file(&ready);
        drop(cluster);
        Ok(())
    })
}
