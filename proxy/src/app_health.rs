//! The app probes the injector moved to the admin port (see
//! [`sluice_proto::probes`]): each `/app-health/<container>/<kind>` runs the
//! original probe against the app over loopback, which interception leaves
//! alone, and answers as the kubelet would judge it: `200` for an app
//! status from 200 to 399, the app's own status otherwise, `503` when the
//! app does not answer in time.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sluice_proto::probes::{APP_PROBES_ENV, AppProbe, AppProbes, HttpGet};
use tokio::net::TcpStream;

/// Why the probes handed to the sidecar could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{APP_PROBES_ENV} is not valid probe JSON: {0}")]
pub struct AppHealthError(#[from] serde_json::Error);

/// The app probes this sidecar serves.
#[derive(Debug, Default)]
pub struct AppHealth {
    probes: AppProbes,
}

impl AppHealth {
    /// The probes in [`APP_PROBES_ENV`]; none when it is unset.
    pub fn from_env() -> Result<AppHealth, AppHealthError> {
        match std::env::var(APP_PROBES_ENV) {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(AppHealth::default()),
        }
    }

    /// The probes in `text` (JSON, as the injector writes them).
    pub fn parse(text: &str) -> Result<AppHealth, AppHealthError> {
        Ok(AppHealth {
            probes: serde_json::from_str(text)?,
        })
    }

    /// Runs the probe registered at `path`; `None` when there is none.
    pub async fn check(&self, path: &str) -> Option<(StatusCode, String)> {
        let probe = self.probes.get(path)?;
        let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
        Some(match tokio::time::timeout(timeout, run(probe)).await {
            Ok(Ok(status)) if probe.http.is_none() || (200..400).contains(&status.as_u16()) => (
                StatusCode::OK,
                format!("app port {}: {status}\n", probe.port),
            ),
            Ok(Ok(status)) => (status, format!("app port {}: {status}\n", probe.port)),
            Ok(Err(e)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app port {}: {e}\n", probe.port),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app port {}: no answer within {timeout:?}\n", probe.port),
            ),
        })
    }
}

/// Connects to the app (and for an HTTP probe, sends the GET); the app's
/// status, or `200` for a TCP probe that connected.
async fn run(probe: &AppProbe) -> Result<StatusCode, String> {
    let stream = TcpStream::connect(("127.0.0.1", probe.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(http) = &probe.http else {
        return Ok(StatusCode::OK);
    };
    get(stream, probe.port, http).await
}

async fn get(stream: TcpStream, port: u16, probe: &HttpGet) -> Result<StatusCode, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::get(probe.path.as_str())
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .header(header::USER_AGENT, "kube-probe/sluice-proxy");
    for (name, value) in &probe.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("probe request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {}: {e}", probe.path))?;
    Ok(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app answering every request on a fresh port with `status`.
    async fn app(status: u16) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        port
    }

    fn health(entries: &[(&str, u16, bool)]) -> AppHealth {
        let probes: AppProbes = entries
            .iter()
            .map(|(path, port, http)| {
                let probe = AppProbe {
                    port: *port,
                    http: http.then(|| HttpGet {
                        path: "/healthz".into(),
                        headers: vec![],
                    }),
                    timeout_seconds: 1,
                };
                ((*path).to_owned(), probe)
            })
            .collect();
        AppHealth::parse(&serde_json::to_string(&probes).expect("json")).expect("parses")
    }

    #[tokio::test]
    async fn answers_as_the_kubelet_would_judge_the_app() {
        let (ok, redirect, failing) = (app(204).await, app(302).await, app(500).await);
        // A port nothing listens on: bind, read the port, close.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").port()
        };
        let h = health(&[
            ("/ok", ok, true),
            ("/redirect", redirect, true),
            ("/failing", failing, true),
            ("/closed", closed, true),
            ("/tcp", failing, false),
            ("/tcp-closed", closed, false),
        ]);
        let status = |path: &'static str| {
            let h = &h;
            async move { h.check(path).await.map(|(s, _)| s.as_u16()) }
        };
        assert_eq!(status("/ok").await, Some(200));
        assert_eq!(status("/redirect").await, Some(200));
        assert_eq!(status("/failing").await, Some(500));
        assert_eq!(status("/closed").await, Some(503));
        assert_eq!(status("/tcp").await, Some(200));
        assert_eq!(status("/tcp-closed").await, Some(503));
        assert_eq!(status("/unknown").await, None);
    }

    #[test]
    fn malformed_probes_are_an_error() {
        assert!(AppHealth::parse("{not json").is_err());
    }
}
