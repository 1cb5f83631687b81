//! The admin endpoint: `/ready`, `/metrics` (Prometheus text), `/config`
//! (the running configuration as JSON) and the app probes of an
//! intercepted pod (`/app-health/...`, see [`crate::app_health`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app_health::AppHealth;
use crate::server::bind;
use crate::state::Proxy;
use crate::telemetry::TelemetryCollector;

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Answers one admin request.
pub fn answer(proxy: &Proxy, registry: &Registry, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/ready" => {
            let t = &proxy.telemetry;
            if proxy.configured() && proxy.identity.waiting() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "configured; waiting for the workload certificate\n",
                )
            } else if proxy.identity.expired(std::time::SystemTime::now()) {
                // Peers refuse an expired certificate: take no traffic
                // until a renewal (retried all along) succeeds.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the workload certificate has expired; renewing\n",
                )
            } else if proxy.configured()
                && t.managed.load(Relaxed)
                && !t.control_plane_connected.load(Relaxed)
            {
                // Fail static: keep taking traffic with the last good config.
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "ready; control plane disconnected: serving the last good config (version {})\n",
                        proxy.current().version
                    ),
                )
            } else if proxy.configured() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration yet\n",
                )
            }
        }
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/config" => {
            let current = proxy.current();
            let doc = serde_json::json!({ "version": current.version, "config": current.config });
            match serde_json::to_vec_pretty(&doc) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /ready /metrics /config\n",
        ),
    }
}

/// Serves the admin endpoint on `addr` until `shutdown` turns true.
pub async fn serve(
    proxy: Arc<Proxy>,
    health: Arc<AppHealth>,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = bind(addr)?;
    info!(address = %addr, "admin endpoint listening");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TelemetryCollector(proxy.telemetry.clone())));
    let registry = Arc::new(registry);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!("admin accept: {e}");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        let proxy = proxy.clone();
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (proxy, registry, health) = (proxy.clone(), registry.clone(), health.clone());
                async move {
                    let path = req.uri().path();
                    let resp = match health.check(path).await {
                        Some((status, text)) => reply(status, "text/plain", text),
                        None => answer(&proxy, &registry, path),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ready(proxy: &Proxy) -> StatusCode {
        answer(proxy, &Registry::default(), "/ready").status()
    }

    #[test]
    fn ready_once_configured_and_holding_a_wanted_certificate() {
        let proxy = Proxy::new();
        assert_eq!(ready(&proxy), StatusCode::SERVICE_UNAVAILABLE);
        proxy.apply(Config::default(), Some("1".into()));
        assert_eq!(ready(&proxy), StatusCode::OK);
        // A proxy with a token waits for its certificate.
        proxy.identity.want();
        assert_eq!(ready(&proxy), StatusCode::SERVICE_UNAVAILABLE);
    }
}
