//! `sluice-operator`: the rollout controller and mesh control plane.
//!
//! The controllers arrive with the control-plane and rollout work; today the
//! binary checks that it can reach the cluster and that Sluice's CRDs are
//! served, which is what the test bed's pods need of it.

use clap::Parser;
use kube::Api;
use sluice_crds::Rollout;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Sluice operator: rollouts and the mesh control plane"
)]
struct Args {
    /// Only check the connection to Kubernetes and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(kubernetes = %version.git_version, "connected");
    let rollouts: Api<Rollout> = Api::all(client);
    let n = rollouts.list(&Default::default()).await?.items.len();
    tracing::info!(rollouts = n, "rollouts.sluice.dev is served");
    if !args.check {
        anyhow::bail!("the controllers are not built yet: run with --check");
    }
    Ok(())
}
