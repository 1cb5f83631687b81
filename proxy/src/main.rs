//! `sluice-proxy`: the Sluice data plane (sidecar and ingress gateway).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Sluice proxy: sidecar and ingress gateway")]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _ = Args::parse();
    anyhow::bail!("sluice-proxy is not built yet")
}
