//! The admission webhooks: HTTPS with the operator's own
//! certificate from the mesh CA (renewed before it expires and whenever
//! the CA changes, see [`crate::ca::own`]), `POST /inject` answering
//! AdmissionReviews with the injection patch, `POST /validate` checking
//! analysis templates ([`super::validate`]), and the webhook
//! configurations' `caBundle` kept equal to the mesh roots. Before it
//! admits an injected pod it makes sure the pod's namespace has the roots'
//! ConfigMap, which the pod mounts.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::FromRef;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use sluice_identity::MeshIdentity;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{InjectSettings, patch, validate};
use crate::ca::publish::RootPublisher;
use crate::metrics::Metrics;

/// The MutatingWebhookConfiguration whose `caBundle` the operator keeps.
pub const CONFIGURATION_NAME: &str = "sluice-injector";
/// The ValidatingWebhookConfiguration (analysis templates) whose
/// `caBundle` the operator keeps.
pub const VALIDATOR_NAME: &str = "sluice-validator";

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The serving certificate is unusable.
    #[error("serving certificate: {0}")]
    Certificate(String),
    /// The address is taken.
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

#[derive(Clone)]
struct WebhookState {
    settings: Arc<InjectSettings>,
    roots: Arc<RootPublisher>,
    metrics: Arc<Metrics>,
}

impl FromRef<WebhookState> for Arc<Metrics> {
    fn from_ref(state: &WebhookState) -> Arc<Metrics> {
        state.metrics.clone()
    }
}

async fn inject(
    State(state): State<WebhookState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(ops) = req
        .object
        .as_ref()
        .and_then(|pod| patch(pod, &state.settings))
    else {
        return Json(resp.into_review());
    };
    debug!(namespace = ?req.namespace, "injecting the sidecar");
    // The pod mounts the roots' ConfigMap: a namespace created a moment
    // ago may not have it yet. A dry run changes nothing.
    if let (Some(ns), false) = (&req.namespace, req.dry_run)
        && let Err(e) = state.roots.ensure(ns).await
    {
        warn!(namespace = %ns, "publishing the mesh roots before admitting a pod: {e}");
    }
    let resp = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
        .map_err(|e| e.to_string())
        .and_then(|p| resp.clone().with_patch(p).map_err(|e| e.to_string()));
    match resp {
        Ok(r) => Json(r.into_review()),
        Err(e) => Json(AdmissionResponse::invalid(e).into_review()),
    }
}

/// Serves the webhooks (`/inject`, `/validate`) on `addr` with the
/// operator's `identity` until the process ends; a renewed certificate
/// applies to the next handshake.
pub async fn serve(
    addr: SocketAddr,
    identity: Arc<MeshIdentity>,
    settings: InjectSettings,
    roots: Arc<RootPublisher>,
    metrics: Arc<Metrics>,
) -> Result<(), WebhookError> {
    let tls = sluice_identity::verify::serving_config(&identity)
        .map_err(|e| WebhookError::Certificate(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate::review))
        .with_state(WebhookState {
            settings: Arc::new(settings),
            roots,
            metrics,
        });
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| WebhookError::Listen(addr, e))?;
    info!(address = %addr, "injection webhook listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    debug!("webhook TLS: {e}");
                    return;
                }
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
        });
    }
}

/// Keeps the `caBundle` of [`CONFIGURATION_NAME`] and [`VALIDATOR_NAME`]
/// equal to the mesh roots: whenever a configuration is created or changed
/// (e.g. by `helm upgrade`), and when the roots change (`roots_changed`).
pub async fn keep_ca_bundle_current(
    client: Client,
    authority: Arc<arc_swap::ArcSwap<crate::ca::Authority>>,
    mut roots_changed: watch::Receiver<()>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let named = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let injector = watcher(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        named(CONFIGURATION_NAME),
    )
    .default_backoff()
    .applied_objects()
    .map(|r| r.map(|_| ()));
    let validator = watcher(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        named(VALIDATOR_NAME),
    )
    .default_backoff()
    .applied_objects()
    .map(|r| r.map(|_| ()));
    let mut events = std::pin::pin!(futures::stream::select(injector, validator));
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    debug!("watching the webhook configurations: {e}");
                    continue;
                }
                None => return,
            },
            changed = roots_changed.changed() => if changed.is_err() {
                return;
            },
        }
        keep_ca_bundle(&client, &authority.load().roots_pem).await;
    }
}

/// Sets every webhook's `caBundle` in [`CONFIGURATION_NAME`] and
/// [`VALIDATOR_NAME`] to `roots` (those that exist: the chart creates
/// them).
pub async fn keep_ca_bundle(client: &Client, roots: &[String]) {
    let bundle = match serde_json::to_value(k8s_openapi::ByteString(roots.concat().into_bytes())) {
        Ok(b) => b,
        Err(e) => {
            warn!("encoding the mesh roots: {e}");
            return;
        }
    };
    let configurations = [
        (
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            CONFIGURATION_NAME,
        ),
        (
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
            VALIDATOR_NAME,
        ),
    ];
    for (resource, name) in configurations {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let current = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                warn!("reading {name}: {e}");
                continue;
            }
        };
        let mut wanted = current.clone();
        for w in wanted.data["webhooks"].as_array_mut().into_iter().flatten() {
            w["clientConfig"]["caBundle"] = bundle.clone();
        }
        if wanted == current {
            continue;
        }
        match api.replace(name, &Default::default(), &wanted).await {
            Ok(_) => info!("{name}: caBundle set to the mesh roots"),
            Err(e) => warn!("updating {name}: {e}"),
        }
    }
}
