//! End-to-end: the dashboard in a real browser (headless Chromium) against
//! the real operator: during a weighted split the graph shows both versions
//! with the measured shares, and a rolled-back Rollout shows `Degraded` and
//! its failed analysis. Screenshots land in `target/e2e-artifacts/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use sluice_tests::Cluster;
use sluice_tests::operator::http;
use sluice_tests::wait::poll;

use super::{Mesh, mesh, tally, two_versions};

const NS: &str = "dash";
const HOST: &str = "dash.example.com";

pub(crate) fn artifacts() -> anyhow::Result<PathBuf> {
    let dir = sluice_tests::toolchain::workspace_root().join("target/e2e-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Headless Chromium on `url`: its DOM after the page's scripts ran, and a
/// screenshot at `shot`.
pub(crate) async fn browse(url: &str, shot: &std::path::Path) -> anyhow::Result<String> {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1400",
        "--virtual-time-budget=6000",
    ];
    let run = |extra: Vec<String>| async move {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("chromium")
                .args(base)
                .args(&extra)
                .arg(url)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("chromium did not finish within 60 s")?
        .context("running chromium (installed by scripts/test-bed.sh)")?;
        ensure!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(vec![format!("--screenshot={}", shot.display())]).await?;
    run(vec!["--dump-dom".into()]).await
}

/// `data-*` attributes of the edge rows: (from, to, share).
fn edge_rows(dom: &str) -> Vec<(String, String, f64)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].to_owned())
    };
    dom.split("<tr ")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            Some((
                attr(tag, "data-from")?,
                attr(tag, "data-to")?,
                attr(tag, "data-share")?.parse().ok()?,
            ))
        })
        .collect()
}

async fn graph_requests(mesh: &Mesh, url: &str) -> anyhow::Result<u64> {
    let _ = mesh;
    let g: serde_json::Value = http().get(url).send().await?.json().await?;
    Ok(g["edges"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["requests"].as_u64()).sum())
        .unwrap_or(0))
}

pub async fn shows_the_split_and_a_rollback(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let base = format!("http://{}", mesh.operator.lock().await.dashboard);
    two_versions(&cluster, &mesh, NS, HOST, 50, 50).await?;
    let counts = tally(&mesh, HOST, 1000).await?;
    let blue = counts.get("blue").copied().unwrap_or(0) as f64 / 1000.0;
    // Wait until the gateway's reports of those requests reached the operator.
    let api = format!("{base}/api/graph?namespace={NS}");
    poll(
        "the operator's window to hold the 1,000 requests",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async { Ok((graph_requests(&mesh, &api).await? >= 1000).then_some(())) },
    )
    .await?;
    let dir = artifacts()?;
    let dom = browse(
        &format!("{base}/?namespace={NS}"),
        &dir.join("dashboard-split.png"),
    )
    .await?;
    let rows = edge_rows(&dom);
    let share = |version: &str| {
        rows.iter()
            .find(|(from, to, _)| {
                from.ends_with("/sluice-gateway") && to.contains(&format!("({version})"))
            })
            .map(|(_, _, s)| *s)
    };
    let (b, y) = (share("blue"), share("yellow"));
    println!("measured split blue {blue:.3}; dashboard shows blue {b:?}, yellow {y:?}");
    let (b, y) = (
        b.context(format!("no blue edge in {rows:?}"))?,
        y.context(format!("no yellow edge in {rows:?}"))?,
    );
    ensure!(
        (b - blue).abs() <= 0.05 && (y - (1.0 - blue)).abs() <= 0.05,
        "dashboard shares blue {b:.3} yellow {y:.3}, measured blue {blue:.3}"
    );

    // A rolled-back Rollout (the rollout scenario's, made here when this
    // scenario runs alone).
    let rollouts: kube::Api<sluice_crds::Rollout> =
        kube::Api::namespaced(cluster.client(), "ro-bad");
    if rollouts.get_opt("handson").await?.is_none() {
        super::rollouts::failing_canary_is_rolled_back(cluster.clone()).await?;
    }
    let dom = browse(
        &format!("{base}/?namespace=ro-bad"),
        &dir.join("dashboard-rollback.png"),
    )
    .await?;
    ensure!(
        dom.contains("data-phase=\"Degraded\""),
        "the rolled-back rollout is not shown Degraded"
    );
    ensure!(
        dom.contains("data-reason=\"AnalysisFailed\"")
            && dom.contains("data-type=\"RolledBack\" data-status=\"True\""),
        "the failed analysis is not shown"
    );
    println!("screenshots: {}", dir.display());
    Ok(())
}
