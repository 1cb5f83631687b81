//! Readiness, liveness and startup probes: `httpGet`, `tcpSocket` and `exec`,
//! run from the node against the pod's address as the kubelet does.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves a probe port (a number or a named container port).
fn port(container: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// The probe's timing, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Delay before the first probe.
    pub initial_delay: Duration,
    /// Time between probes.
    pub period: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive successes to count as passing.
    pub success_threshold: u32,
    /// Consecutive failures to count as failing.
    pub failure_threshold: u32,
}

impl Timing {
    /// The timing of `probe`.
    pub fn of(probe: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_millis(200)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_millis(200)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Runs one probe; `Ok(())` on success, `Err(reason)` otherwise. `exec`
/// probes run through `exec` (the pod's namespaces).
pub async fn run<E, F>(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    exec: E,
) -> Result<(), String>
where
    E: FnOnce(Vec<String>) -> F,
    F: std::future::Future<Output = Result<i32, String>>,
{
    let timing = Timing::of(probe);
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = port(container, &h.port).ok_or("httpGet: unknown port")?;
            let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
            let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let path = h.path.as_deref().unwrap_or("/");
            let url = format!("{scheme}://{host}:{port}{path}");
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            let mut req = client.get(&url).header("User-Agent", "kube-probe/sluice");
            for hdr in h.http_headers.iter().flatten() {
                req = req.header(&hdr.name, &hdr.value);
            }
            let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {url}: status {code}"))
            }
        } else if let Some(t) = &probe.tcp_socket {
            let port = port(container, &t.port).ok_or("tcpSocket: unknown port")?;
            let host: IpAddr = t
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            tokio::net::TcpStream::connect((host, port))
                .await
                .map(|_| ())
                .map_err(|e| format!("connect {host}:{port}: {e}"))
        } else if let Some(e) = &probe.exec {
            let code = exec(e.command.clone().unwrap_or_default()).await?;
            if code == 0 {
                Ok(())
            } else {
                Err(format!("exec probe exited with {code}"))
            }
        } else {
            Err("probe has no handler".to_owned())
        }
    };
    match tokio::time::timeout(timing.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {:?}", timing.timeout)),
    }
}
