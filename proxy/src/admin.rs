//! The admin endpoint: `/ready`, `/metrics` (Prometheus text), `/config`
//! (the running configuration as JSON) and the app probes of an
//! intercepted pod (`/app-health/...`, see [`crate::app_health`]).
//!
//! The port is open on the pod's address for the kubelet's probes and
//! Prometheus, but `/config` (routes, endpoints and authorization policies)
//! answers only on loopback, as Envoy's admin port does: `kubectl
//! port-forward` reaches it, another pod does not.

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

/// Who sent an admin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// From inside the pod (loopback), e.g. through `kubectl port-forward`.
    Local,
    /// From another address: the kubelet, Prometheus, or any pod.
    Remote,
}

impl Caller {
    /// Where a connection from `peer` comes from.
    pub fn of(peer: SocketAddr) -> Caller {
        if peer.ip().is_loopback() {
            Caller::Local
        } else {
            Caller::Remote
        }
    }
}

/// Answers one admin request.
pub fn answer(
    proxy: &Proxy,
    registry: &Registry,
    path: &str,
    caller: Caller,
) -> Response<Full<Bytes>> {
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
            } else if proxy.configured() && !proxy.listening.bound() {
                // Ready only once the ports take connections.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "configured; the workers are binding its listeners\n",
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
        "/config" if caller == Caller::Remote => {
            proxy.telemetry.admin_config_refused.fetch_add(1, Relaxed);
            reply(
                StatusCode::FORBIDDEN,
                "text/plain",
                "the running config is served on loopback only: kubectl port-forward to this port, then ask 127.0.0.1\n",
            )
        }
        "/config" => {
            let current = proxy.current();
            let doc = serde_json::json!({ "version": current.version, "config": current.config.redacted() });
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
        let (stream, peer) = tokio::select! {
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
                        None => answer(&proxy, &registry, path, Caller::of(peer)),
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
        answer(proxy, &Registry::default(), "/ready", Caller::Remote).status()
    }

    #[test]
    fn the_running_config_is_served_on_loopback_only() {
        let proxy = Proxy::new();
        proxy.apply(Config::default(), Some("7".into()));
        let registry = Registry::default();
        let from = |addr: &str| Caller::of(addr.parse().expect("address"));
        let remote = answer(&proxy, &registry, "/config", from("10.1.2.3:40000"));
        assert_eq!(remote.status(), StatusCode::FORBIDDEN);
        assert_eq!(proxy.telemetry.admin_config_refused.load(Relaxed), 1);
        for local in ["127.0.0.1:40000", "[::1]:40000"] {
            assert_eq!(
                answer(&proxy, &registry, "/config", from(local)).status(),
                StatusCode::OK
            );
        }
        // Probes and metrics stay open on the pod's address.
        assert_eq!(
            answer(&proxy, &registry, "/metrics", from("10.1.2.3:40000")).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn ready_once_configured_listening_and_holding_a_wanted_certificate() {
        let proxy = Proxy::new();
        let worker = proxy.listening.register();
        assert_eq!(ready(&proxy), StatusCode::SERVICE_UNAVAILABLE);
        proxy.apply(Config::default(), Some("1".into()));
        assert_eq!(ready(&proxy), StatusCode::SERVICE_UNAVAILABLE);
        // Its listeners bound (as the worker does on the change).
        proxy
            .listening
            .reconciled(&worker, *proxy.subscribe().borrow());
        assert_eq!(ready(&proxy), StatusCode::OK);
        // A proxy with a token waits for its certificate.
        proxy.identity.want();
        assert_eq!(ready(&proxy), StatusCode::SERVICE_UNAVAILABLE);
    }
}
