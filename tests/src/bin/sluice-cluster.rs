//! `sluice-cluster`: runs the test bed's cluster (control plane and a real
//! node) in the foreground until SIGTERM or Ctrl-C, for the local sandbox.
//!
//! ```text
//! sluice-cluster up --state-dir ~/.cache/sluice/demo
//! ```
//!
//! With the cluster it installs the Gateway API CRDs and Sluice with its
//! Helm chart (`helm install sluice charts/sluice`, one operator replica,
//! the dashboard on a NodePort behind a fresh token). Once
//! ready it writes `kubeconfig`, `node-address`, `dashboard-url` and `ready`
//! into the state directory; `cargo xtask demo` starts it in the background
//! and waits for `ready`. Pods are reached as on any cluster: `kubectl
//! exec`, `kubectl logs`, `kubectl port-forward`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_tests::Cluster;

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes cluster with a real node, for the sandbox"
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
        // A sandbox that was killed left its node's mounts under there.
        sluice_tests::node::host::clean_stale();
        let _ = std::fs::remove_dir_all(&cluster_dir);
        let cluster = Cluster::start_in(&cluster_dir).await?;
        std::fs::copy(cluster.kubeconfig(), state_dir.join("kubeconfig"))
            .context("writing kubeconfig")?;
        tracing::info!("helm install sluice charts/sluice -n sluice-system");
        sluice_tests::operator::helm_install_mesh(&cluster).await?;
        // The sandbox lives for a working day; so does its sign-in.
        let token =
            sluice_tests::operator::dashboard_token(&cluster, Duration::from_secs(12 * 3600))
                .await?;
        let node = cluster.node().address();
        std::fs::write(
            state_dir.join("dashboard-url"),
            format!(
                "http://{node}:{}/?namespace=handson&token={token}\n",
                sluice_tests::operator::DASHBOARD_NODE_PORT
            ),
        )
        .context("writing dashboard-url")?;
        std::fs::write(state_dir.join("node-address"), node.to_string())
            .context("writing node-address")?;
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
