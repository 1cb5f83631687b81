//! The dashboard: a read-only view of the mesh and the rollouts, served by
//! the operator from its own state (reflectors and the telemetry window; no
//! Prometheus). Three static files embedded in the binary and a JSON API
//! under `/api/`:
//!
//! - `GET /api/config`: namespaces, whether actions are enabled;
//! - `GET /api/graph?namespace=`: the workload graph with live req/s,
//!   shares and error rates;
//! - `GET /api/rollouts?namespace=`: steps, weights, analysis series,
//!   conditions and events;
//! - `GET /api/policies?namespace=`: the AuthorizationPolicies selecting
//!   each workload;
//! - `POST /api/rollouts/{namespace}/{name}/{promote|abort}` when actions
//!   are enabled.
//!
//! The API answers who Kubernetes authenticates ([`crate::access`]): a
//! bearer token checked by a TokenReview (a browser link may carry it as
//! `?token=`, which the page moves into the `Authorization` header), with
//! each read allowed by a SubjectAccessReview for `list` on Rollouts of
//! the namespace and each promote or abort for `patch` on that Rollout.
//! Loopback clients without a token are the local user. A POST must also
//! carry `X-Sluice-Action` (which a cross-site form cannot send) and, if
//! the browser sends an `Origin`, come from the dashboard's own.

pub mod model;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use sluice_crds::Rollout;
use sluice_crds::rollout::Request as UserRequest;

use crate::access::{Access, Action, Denied, User};
use crate::metrics::Metrics;
use crate::push::Registry;
use crate::traffic::TrafficWindow;
use crate::world::World;
use model::{Point, graph, rollout_view};

/// Seconds of traffic the graph sums.
const GRAPH_WINDOW: u64 = 30;
/// The analysis chart: this many buckets of this many seconds (5 min).
const SERIES_BUCKETS: u64 = 60;
const SERIES_STEP: u64 = 5;

/// What the dashboard offers.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// Whether promote/abort are offered (to users allowed to `patch`).
    pub actions: bool,
}

/// Reads proxies' admin endpoints; one pool for every request.
type ProxyClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

#[derive(Clone)]
struct AppState {
    proxies: ProxyClient,
    client: Client,
    world: World,
    registry: Arc<Registry>,
    traffic: Arc<TrafficWindow>,
    settings: Arc<DashboardSettings>,
    access: Arc<Access>,
    metrics: Arc<Metrics>,
}

#[derive(Deserialize)]
struct NsQuery {
    #[serde(default)]
    namespace: Option<String>,
}

/// Whether a POST comes from the dashboard's own page: it carries the
/// `X-Sluice-Action` header, and its `Origin`, when the browser sends one,
/// is the host it was sent to.
pub fn same_site(headers: &HeaderMap) -> bool {
    if !headers.contains_key("x-sluice-action") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

/// Authenticates every API request; the handlers authorize.
async fn guard(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.method() == axum::http::Method::POST && !same_site(req.headers()) {
        return s.refuse(&Denied::Forbidden {
            user: "a cross-site request".into(),
            verb: "post".into(),
            what: "to the dashboard (X-Sluice-Action and a same-site Origin are required)".into(),
        });
    }
    match s.access.authenticate(peer, req.headers()).await {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(d) => s.refuse(&d),
    }
}

impl AppState {
    fn refuse(&self, d: &Denied) -> Response {
        self.metrics.refuse_http("dashboard", d)
    }

    /// Whether `user` may do `action`; the counted refusal otherwise.
    async fn may(&self, user: &User, action: Action) -> Result<(), Response> {
        self.access
            .allow(user, action)
            .await
            .map_err(|d| self.refuse(&d))
    }

    /// Whether `user` may read Rollouts in `ns`.
    async fn may_read(&self, user: &User, ns: &str) -> Result<(), Response> {
        let action = Action {
            verb: "list",
            namespace: Some(ns.to_owned()),
            name: None,
        };
        self.may(user, action).await
    }
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn config(State(s): State<AppState>) -> impl IntoResponse {
    let input = s.world.input(&s.registry);
    let mut namespaces: Vec<String> = input.namespaces.iter().map(|n| n.name_any()).collect();
    namespaces.sort();
    axum::Json(json!({"actions": s.settings.actions, "namespaces": namespaces}))
}

fn namespace(q: &NsQuery) -> String {
    q.namespace.clone().unwrap_or_else(|| "default".into())
}

async fn graph_api(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<NsQuery>,
) -> Response {
    let ns = namespace(&q);
    if let Err(r) = s.may_read(&user, &ns).await {
        return r;
    }
    let totals = s.traffic.sum(
        Duration::from_secs(GRAPH_WINDOW),
        |k| k.namespace == ns || k.source_namespace == ns,
        Clone::clone,
    );
    let pods = s.world.input(&s.registry).pods;
    axum::Json(graph(&ns, GRAPH_WINDOW, &totals, &pods)).into_response()
}

async fn rollouts_api(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<NsQuery>,
) -> Response {
    let ns = namespace(&q);
    if let Err(r) = s.may_read(&user, &ns).await {
        return r;
    }
    let Ok(list) = Api::<Rollout>::namespaced(s.client.clone(), &ns)
        .list(&ListParams::default())
        .await
    else {
        return axum::Json(json!([])).into_response();
    };
    let events_api: Api<Event> = Api::namespaced(s.client.clone(), &ns);
    let now = TrafficWindow::now();
    let mut views = Vec::new();
    for ro in list.items {
        let canary = &ro.spec.strategy.canary;
        let services: Vec<String> = [&canary.stable_service, &canary.canary_service]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut series: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for i in (0..SERIES_BUCKETS).rev() {
            let end = now.saturating_sub(i * SERIES_STEP);
            let by_rev = s.traffic.sum_at(
                end,
                Duration::from_secs(SERIES_STEP),
                |k| k.namespace == ns && services.contains(&k.service),
                |k| k.revision.clone(),
            );
            for (rev, t) in by_rev {
                series.entry(rev).or_default().push(Point {
                    t: end,
                    requests: t.requests,
                    error_rate: t.error_rate(),
                });
            }
        }
        let fields = format!(
            "involvedObject.kind=Rollout,involvedObject.name={}",
            ro.name_any()
        );
        let mut events: Vec<Event> = events_api
            .list(&ListParams::default().fields(&fields))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
        let events = events
            .iter()
            .rev()
            .take(10)
            .map(|e| {
                json!({
                    "type": e.type_,
                    "reason": e.reason,
                    "message": e.message,
                    "time": e.last_timestamp.as_ref().map(|t| t.0.to_string()),
                })
            })
            .collect();
        views.push(rollout_view(&ro, series, events));
    }
    axum::Json(json!(views)).into_response()
}

/// The proxy's admin port, where its `/metrics` are.
const PROXY_ADMIN_PORT: u16 = sluice_proto::probes::ADMIN_PORT;

/// Denied requests and connections counted by the sidecar at `ip` (read
/// from its admin endpoint; none when it does not answer within 500 ms).
async fn denied_at(client: &ProxyClient, ip: &str) -> Option<u64> {
    use http_body_util::BodyExt;
    let uri: axum::http::Uri = format!("http://{ip}:{PROXY_ADMIN_PORT}/metrics")
        .parse()
        .ok()?;
    let fetch = async {
        let resp = client.get(uri).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_millis(500), fetch)
        .await
        .ok()??;
    Some(
        text.lines()
            .filter(|l| {
                l.starts_with("sluice_authz_denied_requests_total ")
                    || l.starts_with("sluice_authz_denied_connections_total ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

async fn policies_api(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<NsQuery>,
) -> Response {
    let ns = namespace(&q);
    if let Err(r) = s.may_read(&user, &ns).await {
        return r;
    }
    let input = s.world.input(&s.registry);
    // Denials as the workload's sidecars count them, read concurrently.
    let meshed: Vec<(String, String)> = input
        .pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .filter(|p| crate::mesh::services::has_sidecar(p))
        .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
        .collect();
    let counts =
        futures::future::join_all(meshed.iter().map(|(_, ip)| denied_at(&s.proxies, ip))).await;
    let denied: BTreeMap<String, u64> = meshed
        .into_iter()
        .zip(counts)
        .filter_map(|((pod, _), n)| Some((pod, n?)))
        .collect();
    // One row per workload (pods with the same app/version labels).
    let checked = crate::mesh::policies::Checked::of(&input.policies);
    let resolved = crate::mesh::authn::Resolved::of(&input.authentications, &input.jwks);
    let mut rows: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for pod in input
        .pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
    {
        let labels = pod.labels();
        let workload = match (labels.get("app"), labels.get("version")) {
            (Some(a), Some(v)) => format!("{a} ({v})"),
            (Some(a), None) => a.clone(),
            _ => pod.name_any(),
        };
        let row = rows.entry(workload.clone()).or_insert_with(|| {
            let inbound = crate::mesh::inbound::for_pod(&input, &checked, &resolved, &ns, Some(pod));
            json!({
                "workload": workload,
                "sidecar": crate::mesh::services::has_sidecar(pod),
                "mtlsMode": inbound.mode,
                "policies": inbound.policies.iter().map(|p| json!({"name": p.name, "action": p.action, "rules": p.rules.len()})).collect::<Vec<_>>(),
                "jwtIssuers": inbound.jwt_rules.iter().map(|r| r.issuer.clone()).collect::<Vec<_>>(),
                "denied": 0,
            })
        });
        if let Some(n) = denied.get(&pod.name_any()) {
            row["denied"] = json!(row["denied"].as_u64().unwrap_or(0) + n);
        }
    }
    axum::Json(json!(rows.into_values().collect::<Vec<_>>())).into_response()
}

async fn action(
    State(s): State<AppState>,
    Extension(user): Extension<User>,
    Path((ns, name, what)): Path<(String, String, String)>,
) -> Response {
    if !s.settings.actions {
        return (
            StatusCode::FORBIDDEN,
            "actions are disabled (dashboard.actions in the chart)\n",
        )
            .into_response();
    }
    let request = match UserRequest::parse(&what) {
        Some(r @ (UserRequest::Promote | UserRequest::Abort)) => r,
        _ => return (StatusCode::NOT_FOUND, "actions: promote, abort\n").into_response(),
    };
    let patch_it = Action {
        verb: "patch",
        namespace: Some(ns.clone()),
        name: Some(name.clone()),
    };
    if let Err(r) = s.may(&user, patch_it).await {
        return r;
    }
    let api: Api<Rollout> = Api::namespaced(s.client.clone(), &ns);
    let patch = json!({"metadata": {"annotations": {UserRequest::ANNOTATION: request.as_str()}}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => (StatusCode::ACCEPTED, format!("{what} requested\n")).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

/// What the dashboard reads.
pub struct DashboardParts {
    /// The API.
    pub client: Client,
    /// The reflectors.
    pub world: World,
    /// Connected proxies.
    pub registry: Arc<Registry>,
    /// Telemetry.
    pub traffic: Arc<TrafficWindow>,
    /// Who may do what.
    pub access: Arc<Access>,
    /// Refusals are counted here.
    pub metrics: Arc<Metrics>,
}

/// Serves the dashboard on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    parts: DashboardParts,
    settings: DashboardSettings,
) -> std::io::Result<()> {
    let state = AppState {
        proxies: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        client: parts.client,
        world: parts.world,
        registry: parts.registry,
        traffic: parts.traffic,
        settings: Arc::new(settings),
        access: parts.access,
        metrics: parts.metrics,
    };
    let api = Router::new()
        .route("/api/config", get(config))
        .route("/api/graph", get(graph_api))
        .route("/api/rollouts", get(rollouts_api))
        .route("/api/policies", get(policies_api))
        .route("/api/rollouts/{ns}/{name}/{action}", post(action))
        .layer(middleware::from_fn_with_state(state.clone(), guard));
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                asset(
                    "text/html; charset=utf-8",
                    include_str!("assets/index.html"),
                )
            }),
        )
        .route(
            "/app.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("assets/app.js"),
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("assets/style.css")) }),
        )
        .merge(api)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "dashboard listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn posts_must_come_from_the_dashboards_own_page() {
        assert!(!same_site(&headers(&[])));
        assert!(same_site(&headers(&[("x-sluice-action", "promote")])));
        assert!(same_site(&headers(&[
            ("x-sluice-action", "promote"),
            ("origin", "http://127.0.0.1:20001"),
            ("host", "127.0.0.1:20001"),
        ])));
        assert!(!same_site(&headers(&[
            ("x-sluice-action", "promote"),
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:20001"),
        ])));
        assert!(!same_site(&headers(&[
            ("x-sluice-action", "promote"),
            ("origin", "null"),
            ("host", "127.0.0.1:20001"),
        ])));
    }
}
