//! The app probes the injector moved to the admin port (see
//! [`sluice_proto::probes`]): each `/app-health/<container>/<kind>` runs the
//! original probe against the app over loopback, which interception leaves
//! alone, and answers as the kubelet would judge it: `200` for an app
//! status from 200 to 399 or a gRPC `SERVING`, the app's own HTTP status
//! otherwise, `503` for any other gRPC answer or when the app does not
//! answer in time.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sluice_proto::probes::{APP_PROBES_ENV, AppProbe, AppProbes, Check, Grpc, HttpGet};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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
        let port = probe.port;
        Some(match tokio::time::timeout(timeout, run(probe)).await {
            Ok(Ok(answer)) => (answer.status(), format!("app port {port}: {answer}\n")),
            Ok(Err(e)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app port {port}: {e}\n"),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app port {port}: no answer within {timeout:?}\n"),
            ),
        })
    }
}

/// What the app answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A TCP probe connected.
    Connected,
    /// An HTTP probe's status.
    Http(StatusCode),
    /// A gRPC health check's serving status.
    Grpc(ServingStatus),
}

impl Answer {
    /// The admin endpoint's status: `200` when the kubelet would count the
    /// probe as passed; otherwise the app's HTTP status, or `503`.
    fn status(self) -> StatusCode {
        match self {
            Answer::Connected => StatusCode::OK,
            Answer::Http(s) if (200..400).contains(&s.as_u16()) => StatusCode::OK,
            Answer::Http(s) => s,
            Answer::Grpc(ServingStatus::Serving) => StatusCode::OK,
            Answer::Grpc(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Connected => f.write_str("connected"),
            Answer::Http(s) => write!(f, "{s}"),
            Answer::Grpc(s) => write!(f, "gRPC health {}", s.as_str_name()),
        }
    }
}

/// Connects to the app and asks what the probe asks.
async fn run(probe: &AppProbe) -> Result<Answer, String> {
    let connect = || async {
        TcpStream::connect(("127.0.0.1", probe.port))
            .await
            .map_err(|e| format!("connect: {e}"))
    };
    match &probe.check {
        Check::Grpc(grpc) => health_check(probe.port, grpc).await.map(Answer::Grpc),
        Check::HttpGet(http) => get(connect().await?, probe.port, http)
            .await
            .map(Answer::Http),
        Check::TcpSocket => connect().await.map(|_| Answer::Connected),
    }
}

/// `grpc.health.v1.Health/Check` over plaintext HTTP/2, as the kubelet
/// calls it.
async fn health_check(port: u16, probe: &Grpc) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| format!("gRPC endpoint: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: probe.service.clone(),
        })
        .await
        .map_err(|e| format!("gRPC health check: {} {}", e.code(), e.message()))?;
    Ok(reply.into_inner().status())
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

    /// A gRPC health server: the server and `sluice.Up` serving,
    /// `sluice.Down` not.
    async fn grpc_app() -> u16 {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("sluice.Up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("sluice.Down", tonic_health::ServingStatus::NotServing)
            .await;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let incoming = futures::stream::unfold(l, |l| async move {
            let accepted = l.accept().await.map(|(s, _)| s);
            Some((accepted, l))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        port
    }

    fn health(entries: &[(&str, u16, Check)]) -> AppHealth {
        let probes: AppProbes = entries
            .iter()
            .map(|(path, port, check)| {
                let probe = AppProbe {
                    port: *port,
                    check: check.clone(),
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
        let get = || {
            Check::HttpGet(HttpGet {
                path: "/healthz".into(),
                headers: vec![],
            })
        };
        let grpc = |service: &str| {
            Check::Grpc(Grpc {
                service: service.into(),
            })
        };
        let rpc = grpc_app().await;
        let h = health(&[
            ("/ok", ok, get()),
            ("/redirect", redirect, get()),
            ("/failing", failing, get()),
            ("/closed", closed, get()),
            ("/tcp", failing, Check::TcpSocket),
            ("/tcp-closed", closed, Check::TcpSocket),
            ("/grpc", rpc, grpc("")),
            ("/grpc-serving", rpc, grpc("sluice.Up")),
            ("/grpc-not-serving", rpc, grpc("sluice.Down")),
            ("/grpc-unknown-service", rpc, grpc("sluice.Missing")),
            ("/grpc-to-http", ok, grpc("")),
            ("/grpc-closed", closed, grpc("")),
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
        assert_eq!(status("/grpc").await, Some(200));
        assert_eq!(status("/grpc-serving").await, Some(200));
        assert_eq!(status("/grpc-not-serving").await, Some(503));
        assert_eq!(status("/grpc-unknown-service").await, Some(503));
        assert_eq!(status("/grpc-to-http").await, Some(503));
        assert_eq!(status("/grpc-closed").await, Some(503));
        assert_eq!(status("/unknown").await, None);
        let (_, said) = h.check("/grpc-not-serving").await.expect("registered");
        assert!(said.contains("NOT_SERVING"), "{said}");
    }

    #[test]
    fn malformed_probes_are_an_error() {
        assert!(AppHealth::parse("{not json").is_err());
    }
}
