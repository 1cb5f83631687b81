//! Test support: the real `sluice-proxy` binary on free loopback ports, and
//! small upstream servers that say who they are.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A loopback port no other caller in this test binary has been given.
///
/// Ports come from below the kernel's ephemeral range (32768 and up), so a
/// listener bound to port 0 elsewhere in the run never takes one between this
/// call and the proxy binding it; a process-wide counter keeps two parallel
/// tests from being handed the same one. Ports something already holds are
/// skipped.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start each binary at its own offset so two test binaries run side by side
    // rarely walk the same ports.
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// A running proxy process; killed on drop.
pub struct ProxyProcess {
    pub child: Child,
    pub config: tempfile::NamedTempFile,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl ProxyProcess {
    /// Starts `sluice-proxy run` on `yaml` and waits for `/ready`.
    pub async fn start(yaml: &str, admin: SocketAddr) -> ProxyProcess {
        let p = Self::spawn(yaml, admin, &["--workers", "1"]);
        p.wait_ready().await;
        p
    }

    /// Starts it without waiting.
    pub fn spawn(yaml: &str, admin: SocketAddr, extra: &[&str]) -> ProxyProcess {
        let mut config = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        config.write_all(yaml.as_bytes()).unwrap();
        config.flush().unwrap();
        let log = config.path().with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
            .args(["run", "--config"])
            .arg(config.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        ProxyProcess {
            child,
            config,
            admin,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy not ready; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the config file (the proxy picks it up by itself).
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.config.path().with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config.path()).unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the unlabelled-or-fully-labelled series `series`
    /// (as the text format writes it), 0 when absent.
    pub async fn counter(&self, series: &str) -> u64 {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits until the metrics show `line`: what the client saw first may be
    /// counted just after (a handshake's alert leaves before its failure is
    /// counted).
    pub async fn wait_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self.metrics().await;
            if metrics.contains(line) {
                return;
            }
            assert!(Instant::now() < deadline, "no {line:?} in\n{metrics}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` reloads have been refused (and counted).
    pub async fn wait_refusals(&self, n: u32) {
        self.wait_metric(&format!(
            r#"sluice_config_reloads_total{{result="refused"}} {n}"#
        ))
        .await;
    }

    pub async fn config_version(&self) -> String {
        let v: serde_json::Value = reqwest::get(format!("http://{}/config", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["version"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits for `/config` to report a version other than `old`.
    pub async fn wait_version_change(&self, old: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.config_version().await;
            if v != old {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "config never reloaded; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An upstream HTTP server (HTTP/1.1 and HTTP/2) answering `name` to
/// every request, with per-request counting; `/slow` waits 500 ms,
/// `/status/N` answers N.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// Request body bytes received, all requests together.
    pub body_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream(name: &'static str) -> Upstream {
    answering(name, 200).await
}

/// An upstream like [`upstream`] that answers `status` where that answers
/// 200.
pub async fn answering(name: &'static str, status: u16) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serving(listener, name, status, std::future::ready(()))
}

/// An upstream like [`answering`] on `listener`, which it starts accepting
/// from once `opens` is ready: until then, connections wait in the
/// listener's backlog, or find it full.
pub fn serving(
    listener: TcpListener,
    name: &'static str,
    status: u16,
    opens: impl Future<Output = ()> + Send + 'static,
) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let bytes = body_bytes.clone();
    let task = tokio::spawn(async move {
        opens.await;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (counter, bytes) = (counter.clone(), bytes.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (counter, bytes) = (counter.clone(), bytes.clone());
                    async move {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let path = req.uri().path().to_owned();
                        let echo_headers = format!("{:?}", req.headers());
                        if let Ok(body) = req.into_body().collect().await {
                            bytes.fetch_add(body.to_bytes().len() as u64, Ordering::Relaxed);
                        }
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        if let Some(code) =
                            path.strip_prefix("/status/").and_then(|c| c.parse().ok())
                        {
                            *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        }
                        if path == "/headers" {
                            *resp.body_mut() = Full::new(Bytes::from(echo_headers));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        body_bytes,
        task,
    }
}

/// Upstream `blue` behind a proxy that routes host `app.test` to it: the
/// upstream, the proxy and its listening port.
pub async fn proxied_blue() -> (Upstream, ProxyProcess, u16) {
    let up = upstream("blue").await;
    let (port, admin) = (free_port(), free_port());
    let p = ProxyProcess::start(
        &http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], ""),
        addr(admin),
    )
    .await;
    (up, p, port)
}

/// A proxy config: one HTTP listener for host `app.test`, split across
/// `backends` (name, endpoint, weight).
pub fn http_config(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[(&str, SocketAddr, u32)],
    route_extra: &str,
) -> String {
    let mut s = format!("admin:\n  address: {admin}\nbackends:\n");
    for (name, addr, _) in backends {
        s.push_str(&format!("  - name: {name}\n    endpoints: [\"{addr}\"]\n"));
    }
    s.push_str(&format!(
        "listeners:\n  - name: web\n    address: {listen}\n    routes:\n      - name: app\n        hosts: [app.test]\n{route_extra}        backends:\n"
    ));
    for (name, _, w) in backends {
        s.push_str(&format!("          - {{name: {name}, weight: {w}}}\n"));
    }
    s
}

/// A proxy with one route (any host) to one backend of two endpoints,
/// with `retries` (a YAML flow map): the proxy and its listening port.
pub async fn pair_behind_proxy(
    first: SocketAddr,
    second: SocketAddr,
    retries: &str,
) -> (ProxyProcess, u16) {
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "admin: {{address: \"{}\"}}\nbackends:\n  - name: pair\n    endpoints: [\"{first}\", \"{second}\"]\nlisteners:\n  - name: web\n    address: 127.0.0.1:{port}\n    routes:\n      - name: app\n        backends: [{{name: pair}}]\n        retries: {retries}\n",
        addr(admin)
    );
    (ProxyProcess::start(&cfg, addr(admin)).await, port)
}

/// Sends `bytes` on a new connection to `port` and reads until the proxy
/// closes it (within 5 s, or the test fails): everything it answered.
pub async fn exchange_until_closed(port: u16, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
