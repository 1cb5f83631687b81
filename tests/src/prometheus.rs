//! A real Prometheus (Debian's build, from the test bed) on loopback,
//! scraping the pods annotated `prometheus.io/scrape: "true"` at their
//! `prometheus.io/port` and `prometheus.io/path` (which the injector and
//! the chart set on proxies). Debian builds Prometheus without Kubernetes
//! discovery, so the harness does the discovery: it lists the annotated
//! pods every second and writes them to a `file_sd` file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

use crate::control_plane::free_port;
use crate::operator::http;
use crate::process::ManagedProcess;
use crate::{Cluster, Error};

/// How often targets are scraped: short, so that a canary's errors show in
/// a `rate(...[10s])` within seconds.
pub const SCRAPE_INTERVAL: &str = "1s";

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    _process: ManagedProcess,
    discovery: tokio::task::JoinHandle<()>,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus against `cluster` and waits until it is ready.
    pub async fn start(cluster: &Cluster) -> Result<Prometheus, Error> {
        let dir = cluster.dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| Error::io(&dir, e))?;
        let config = dir.join("prometheus.yml");
        let targets = dir.join("targets.json");
        write_targets(&cluster.client(), &targets).await?;
        std::fs::write(&config, scrape_config(&targets.display().to_string()))
            .map_err(|e| Error::io(&config, e))?;
        let discovery = tokio::spawn(discover(cluster.client(), targets));
        let port = free_port(Ipv4Addr::LOCALHOST)?;
        let url = format!("http://127.0.0.1:{port}");
        let process = ManagedProcess::spawn(
            "prometheus",
            &cluster.toolchain().prometheus,
            &[
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--storage.tsdb.retention.time=1h".into(),
            ],
            &dir.join("prometheus.log"),
        )?;
        let ready = format!("{url}/-/ready");
        crate::wait::poll(
            "Prometheus ready",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                Ok(http()
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            },
        )
        .await
        .map_err(|e| process.failure(e.to_string()))?;
        Ok(Prometheus {
            _process: process,
            discovery,
            url,
        })
    }

    /// Waits until Prometheus has scraped at least one target successfully.
    pub async fn until_scraping(&self) -> Result<(), Error> {
        crate::wait::poll(
            "Prometheus scraping a proxy",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async { Ok(self.first_sample("sum(up)").await?.filter(|n| *n >= 1.0)) },
        )
        .await
        .map(|_| ())
    }

    /// The value of instant query `query`'s first sample, if it has one.
    pub async fn first_sample(&self, query: &str) -> Result<Option<f64>, Error> {
        let body: serde_json::Value = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

/// Rewrites `targets` every second for as long as it runs.
async fn discover(client: kube::Client, targets: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A failed listing keeps the last targets.
        let _ = write_targets(&client, &targets).await;
    }
}

/// Writes the annotated pods with an IP as `file_sd` targets, labelled with
/// namespace and pod; atomically, so that Prometheus never reads half.
async fn write_targets(client: &kube::Client, targets: &Path) -> Result<(), Error> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let groups: Vec<serde_json::Value> = pods
        .items
        .iter()
        .filter_map(|p| {
            let a = p.metadata.annotations.as_ref()?;
            if a.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
                return None;
            }
            let ip = p.status.as_ref()?.pod_ip.as_ref()?;
            let port = a.get("prometheus.io/port")?;
            let path = a
                .get("prometheus.io/path")
                .map_or("/metrics", String::as_str);
            Some(json!({
                "targets": [format!("{ip}:{port}")],
                "labels": {
                    "__metrics_path__": path,
                    "namespace": p.metadata.namespace.clone().unwrap_or_default(),
                    "pod": p.metadata.name.clone().unwrap_or_default(),
                },
            }))
        })
        .collect();
    let tmp = targets.with_extension("json.tmp");
    let text = serde_json::to_string(&groups).map_err(|e| Error::Check(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, targets).map_err(|e| Error::io(targets, e))
}

/// Scrapes what [`write_targets`] lists.
fn scrape_config(targets: &str) -> String {
    format!(
        r#"global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
scrape_configs:
- job_name: pods
  file_sd_configs:
  - files: [{targets}]
    refresh_interval: 1s
"#
    )
}
