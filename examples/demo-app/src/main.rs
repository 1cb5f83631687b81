//! `demo-app`: the workload of the Sluice hands-on.
//!
//! A small HTTP server whose colour, error rate and latency are set by flags
//! or environment variables, so that tests and the demo can deploy a "good"
//! and a "bad" version of the same app:
//!
//! ```text
//! demo-app --color blue --listen 127.0.0.1:9001 [--error-rate 0.5] [--latency-ms 20]
//! ```
//!
//! `GET /` answers 200 with a body naming the colour (or 500 for the
//! configured fraction of requests), `/color` returns the colour alone,
//! `/burn?ms=N` spends N ms (at most 1,000) of CPU before answering, for
//! autoscaling demos, and `/healthz` always answers 200 for probes.
//! With `--grpc-health-port`, it also serves the gRPC health service
//! (`grpc.health.v1.Health`) there, for gRPC probes, answering with
//! `--grpc-health`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Command-line and environment settings.
#[derive(Parser, Debug, Clone)]
#[command(version, about = "The Sluice hands-on demo app")]
struct Settings {
    /// The colour this version answers with.
    #[arg(long, env = "COLOR", default_value = "blue")]
    color: String,
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Fraction of `GET /` requests answered with 500, from 0 to 1.
    #[arg(long, env = "ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,
    /// Extra latency added to every `/` and `/color` response, in milliseconds.
    #[arg(long, env = "LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Sent back in the `x-served-by` header, so clients can tell replicas
    /// apart (a pod's `HOSTNAME` is its name).
    #[arg(long, env = "HOSTNAME", default_value = "")]
    served_by: String,
    /// Port of the gRPC health service; none when unset.
    #[arg(long, env = "GRPC_HEALTH_PORT")]
    grpc_health_port: Option<u16>,
    /// What the gRPC health service answers, for the server and every
    /// service name.
    #[arg(long, env = "GRPC_HEALTH", value_enum, default_value_t = Health::Serving)]
    grpc_health: Health,
}

/// The gRPC health answer `demo-app` gives.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// `SERVING`: gRPC probes pass.
    Serving,
    /// `NOT_SERVING`: gRPC probes fail.
    NotServing,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(
    settings: Arc<Settings>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    // Drain the request body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n".into()));
    }
    if settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
    }
    let mut resp = match path.as_str() {
        "/color" => text(StatusCode::OK, format!("{}\n", settings.color)),
        "/burn" => {
            let ms = burn_ms(&query);
            // On the blocking pool: the server keeps accepting meanwhile.
            let _ = tokio::task::spawn_blocking(move || burn(ms)).await;
            text(
                StatusCode::OK,
                format!("{} burned {ms} ms\n", settings.color),
            )
        }
        _ if settings.error_rate > 0.0 && rand::random::<f64>() < settings.error_rate => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{} failed this request on purpose (error rate {})\n",
                settings.color, settings.error_rate
            ),
        ),
        _ if method == Method::GET || method == Method::HEAD => {
            text(StatusCode::OK, format!("{}\n", settings.color))
        }
        _ => text(
            StatusCode::OK,
            format!("{} {} {}\n", settings.color, method, path),
        ),
    };
    if let Ok(v) = header::HeaderValue::from_str(&settings.served_by)
        && !settings.served_by.is_empty()
    {
        resp.headers_mut().insert("x-served-by", v);
    }
    Ok(resp)
}

/// `ms=N` of a query, at most 1,000 (10 when absent or unreadable).
fn burn_ms(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .min(1000)
}

/// Keeps one core busy for `ms` milliseconds.
fn burn(ms: u64) {
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    let mut x: u64 = 1;
    while std::time::Instant::now() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Serves `grpc.health.v1.Health` on `port`, answering `health` for the
/// server (the empty name) and `sluice.Demo`.
async fn serve_grpc_health(port: u16, health: Health) -> anyhow::Result<()> {
    let status = match health {
        Health::Serving => tonic_health::ServingStatus::Serving,
        Health::NotServing => tonic_health::ServingStatus::NotServing,
    };
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", status).await;
    reporter.set_service_status("sluice.Demo", status).await;
    info!(port, ?health, "gRPC health service listening");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve(SocketAddr::from(([0, 0, 0, 0], port)))
        .await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only for a terminal: `kubectl logs` shows plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let settings = Arc::new(Settings::parse());
    let listener = TcpListener::bind(settings.listen).await?;
    info!(
        color = %settings.color,
        listen = %listener.local_addr()?,
        error_rate = settings.error_rate,
        latency_ms = settings.latency_ms,
        "demo-app listening"
    );
    if let Some(port) = settings.grpc_health_port {
        let health = settings.grpc_health;
        tokio::spawn(async move {
            if let Err(e) = serve_grpc_health(port, health).await {
                warn!("gRPC health service: {e}");
            }
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = sigterm.recv() => {
                info!("SIGTERM: exiting");
                return Ok(());
            }
        };
        let settings = settings.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(settings.clone(), req));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                warn!("connection error: {e}");
            }
        });
    }
}
