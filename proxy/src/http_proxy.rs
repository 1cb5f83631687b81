//! The HTTP forwarding service: route, pick a backend and an endpoint,
//! forward, retry what is safe to retry, and answer with a clear local
//! reply when nothing upstream can.
//!
//! It is a `tower::Service`, so that later concerns (authorization, mTLS
//! peer identity) wrap it as layers without touching it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::balance::{Endpoint, pick, usable_besides};
use crate::body::{Downstream, ReqBody, RespBody};
use crate::compiled::{Compiled, CompiledListener, CompiledRoute};
use crate::config::{OUTBOUND_PORT, UpstreamProtocol};
use crate::filters;
use crate::framing;
use crate::mirror;
use crate::pool::{self, Proto, UpstreamError};
use crate::route::{Matcher, first_match, request_authority};
use crate::state::Proxy;

/// Response header naming why the proxy answered itself, as Envoy's
/// response flags do: `NR` no route, `NB` no backend with weight, `UH` no
/// endpoint, `UF` connect failure, `UC` upstream connection reset, `UT`
/// upstream timeout.
pub const FLAGS_HEADER: &str = "x-sluice-flags";

/// The per-connection service.
#[derive(Clone, Debug)]
pub struct ProxyService {
    proxy: Arc<Proxy>,
    listener: Arc<str>,
    peer: SocketAddr,
    /// The proxy terminated TLS for this connection.
    tls: bool,
}

impl ProxyService {
    /// A service for one downstream connection on `listener`.
    pub fn new(proxy: Arc<Proxy>, listener: Arc<str>, peer: SocketAddr) -> ProxyService {
        ProxyService {
            proxy,
            listener,
            peer,
            tls: false,
        }
    }

    /// For a connection whose TLS this proxy terminated: upstream sees
    /// `x-forwarded-proto: https`, whatever the client claimed.
    pub fn over_tls(mut self) -> ProxyService {
        self.tls = true;
        self
    }
}

/// The destination's sidecar refused this client's connection (L4
/// authorization): the client's own connection is closed in turn, without
/// a response, as a direct connection would have been.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the destination refused the connection (authorization)")]
pub struct ConnectionRefused;

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = Response<RespBody>;
    type Error = ConnectionRefused;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<RespBody>, ConnectionRefused>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectionRefused>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let resp = this.handle(req).await;
            // hyper closes the connection when the service fails.
            match resp.extensions().get::<ConnectionRefused>() {
                Some(e) => Err(*e),
                None => Ok(resp),
            }
        })
    }
}

fn local_reply(status: StatusCode, flags: &'static str, body: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::text(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static(FLAGS_HEADER),
        HeaderValue::from_static(flags),
    );
    resp
}

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        headers.remove(n);
    }
    // `te` may only say `trailers` (gRPC needs it end to end).
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Everything needed to build one upstream attempt.
struct Prepared {
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    authority: Option<http::uri::Authority>,
    version: Version,
    headers: HeaderMap,
}

impl Prepared {
    /// Builds an attempt; `last` moves the headers instead of copying them.
    fn request(&mut self, proto: Proto, body: ReqBody, last: bool) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        match proto {
            Proto::H1 => {
                *req.uri_mut() = Uri::from(self.path_and_query.clone());
                *req.version_mut() = Version::HTTP_11;
                if !req.headers().contains_key(header::HOST)
                    && let Some(a) = &self.authority
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            Proto::H2 => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = self.authority.clone();
                parts.path_and_query = Some(self.path_and_query.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                *req.version_mut() = Version::HTTP_2;
                // The authority travels as :authority in HTTP/2.
                req.headers_mut().remove(header::HOST);
            }
        }
        req
    }
}

impl ProxyService {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<RespBody> {
        let start = Instant::now();
        let compiled = self.proxy.current();
        let Some(listener) = compiled.listener(&self.listener).cloned() else {
            return local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "NR",
                "listener is being removed\n",
            );
        };
        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let Some((host, port)) = request_authority(&parts) else {
            listener.unrouted.record(400, start.elapsed(), false);
            return local_reply(StatusCode::BAD_REQUEST, "NR", "missing Host header\n");
        };
        let Some((route, matched)) = listener.routes.iter().find_map(|r| {
            let fits = r.hosts.matches(host, port);
            fits.then(|| first_match(&r.matchers, &parts))
                .flatten()
                .map(|m| (r, m))
        }) else {
            listener.unrouted.record(404, start.elapsed(), false);
            return local_reply(StatusCode::NOT_FOUND, "NR", "no route matched\n");
        };
        let filters = &route.filters;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // What a prefix rewrite or redirect replaces.
        let matched_prefix = matched.map_or(Some("/"), Matcher::prefix);
        if let Some(redirect) = &filters.redirect {
            // Without a port in the Host, the one the client reached: the
            // listener's (a sidecar's outbound port says nothing of it).
            let listener_port = listener.address.port();
            let requested = filters::Requested {
                scheme: if self.tls { "https" } else { "http" },
                host,
                port: port.or((listener_port != OUTBOUND_PORT).then_some(listener_port)),
                path_and_query: &path_and_query,
                matched_prefix,
            };
            return redirect_reply(route, redirect, &requested, start);
        }
        let mut authority = parts.uri.authority().cloned().or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
        });
        let mut path_and_query = path_and_query;
        if let Some(rw) = &filters.rewrite {
            if let Some(path) = &rw.path {
                let new = filters::changed_path(path, path_and_query.path(), matched_prefix);
                path_and_query =
                    filters::with_path(&path_and_query, &new).unwrap_or(path_and_query);
            }
            if let Some(h) = rw.hostname.as_deref().and_then(|h| h.parse().ok()) {
                authority = Some(h);
            }
        }
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade.is_some());
        append_forwarded(&mut headers, self.peer, self.tls);
        filters.change_request_headers(&mut headers);
        let mut prepared = Prepared {
            path_and_query,
            method: parts.method,
            authority,
            version: parts.version,
            headers,
        };
        let tee = if !route.mirrors.is_empty() && upgrade.is_none() {
            self.mirror(&compiled, route, &mut prepared, &body)
        } else {
            None
        };
        let body = Downstream { body, tee };
        let mut resp = self
            .forward(&compiled, &listener, route, prepared, body, upgrade, start)
            .await;
        if let Some(changes) = &filters.response_headers {
            changes.apply(resp.headers_mut());
        }
        resp
    }

    /// Sends the copies of a request to the route's mirrors; a body is
    /// teed to them as the original's upstream reads it.
    fn mirror(
        &self,
        compiled: &Arc<Compiled>,
        route: &CompiledRoute,
        prepared: &mut Prepared,
        body: &Incoming,
    ) -> Option<Box<mirror::Tee>> {
        let mut tee = mirror::Tee::default();
        for m in &route.mirrors {
            if !mirror::sampled(m.percent) {
                continue;
            }
            let Some(backend) = compiled.backends.get(m.backend) else {
                continue;
            };
            let proto = upstream_proto(backend.protocol, prepared.version);
            let (copy, abort) = if body.is_end_stream() {
                (ReqBody::Empty, None)
            } else {
                let (frames, abort) = tee.add();
                let hint = body.size_hint();
                (ReqBody::Copy { frames, hint }, Some(abort))
            };
            let req = prepared.request(proto, copy, false);
            tokio::spawn(mirror::send(
                self.proxy.clone(),
                compiled.clone(),
                m.backend,
                m.cell.clone(),
                proto,
                req,
                abort,
            ));
        }
        (!tee.is_empty()).then(|| Box::new(tee))
    }

    /// Answers a request whose body broke its framing with a 400 that
    /// closes the connection, and counts it.
    fn refuse_framing(&self, listener: &CompiledListener, start: Instant) -> Response<RespBody> {
        self.proxy
            .telemetry
            .framing_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        listener.unrouted.record(400, start.elapsed(), false);
        framing::refusal()
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        compiled: &Compiled,
        listener: &CompiledListener,
        route: &CompiledRoute,
        mut prepared: Prepared,
        body: Downstream,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        start: Instant,
    ) -> Response<RespBody> {
        let Some(first) = route.split.choose() else {
            route.no_backend.record(500, start.elapsed(), false);
            return local_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "NB",
                "no backend has weight for this route\n",
            );
        };
        let retry = route.retry.as_ref();
        if let Some(r) = retry {
            r.budget.deposit();
        }
        let retryable = retry.is_some()
            && idempotent(&prepared.method)
            && body.body.is_end_stream()
            && upgrade.is_none();
        let attempts = if retryable {
            retry.map_or(0, |r| r.attempts) + 1
        } else {
            1
        };
        let deadline = route.timeout.map(|t| start + t);
        let mut body = Some(body);
        let mut backend_idx = first;
        let mut failed: Option<Arc<Endpoint>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= attempts;
            let backend = &compiled.backends[backend_idx];
            let cell = route.cell(backend_idx).clone();
            if let Some(status) = backend.respond {
                cell.record(status.as_u16(), start.elapsed(), false);
                return local_reply(status, "DR", "this backend cannot be resolved\n");
            }
            let Some(endpoint) = pick(&backend.endpoints, failed.as_ref()).cloned() else {
                cell.record(503, start.elapsed(), true);
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UH",
                    "no healthy endpoint for this backend\n",
                );
            };
            let proto = upstream_proto(backend.protocol, prepared.version);
            let req_body = match body.take() {
                Some(Downstream { body, tee }) => ReqBody::Stream {
                    body,
                    cell: cell.clone(),
                    tee,
                },
                None => ReqBody::Empty,
            };
            let req = prepared.request(proto, req_body, last);
            let in_flight = endpoint.begin();
            let target = backend.target(endpoint.addr, &self.proxy.identity);
            let sent = pool::send(
                target,
                proto,
                backend.connect_timeout,
                req,
                &self.proxy.telemetry,
            );
            // The route's deadline, or this attempt's if that comes first.
            let attempt_deadline = match (deadline, route.attempt_timeout) {
                (d, Some(t)) => Some(d.map_or(Instant::now() + t, |d| d.min(Instant::now() + t))),
                (d, None) => d,
            };
            let result = match attempt_deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        cell.record(504, start.elapsed(), true);
                        return local_reply(
                            StatusCode::GATEWAY_TIMEOUT,
                            "UT",
                            "upstream request timeout\n",
                        );
                    }
                },
                None => sent.await,
            };
            drop(in_flight);
            let can_retry = !last && retry.is_some_and(|r| r.budget.withdraw());
            match result {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && can_retry => {
                    cell.record(503, start.elapsed(), false);
                    failed = Some(endpoint.clone());
                    debug!(backend = %backend.name, "503 from upstream; retrying");
                }
                Ok(mut resp) => {
                    endpoint.observe(start.elapsed());
                    cell.record(resp.status().as_u16(), start.elapsed(), false);
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(downstream) = upgrade
                    {
                        let upstream = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(self.proxy.clone(), downstream, upstream));
                        let (parts, _) = resp.into_parts();
                        return Response::from_parts(parts, RespBody::empty());
                    }
                    strip_hop_by_hop(resp.headers_mut(), false);
                    let (parts, body) = resp.into_parts();
                    return Response::from_parts(parts, small_body_now(body, cell));
                }
                Err(e) if e.is_access_denied() => {
                    debug!(backend = %backend.name, "{e}: the destination's policy refused this workload");
                    cell.record(403, start.elapsed(), false);
                    let mut resp = Response::new(RespBody::empty());
                    resp.extensions_mut().insert(ConnectionRefused);
                    return resp;
                }
                Err(e) if e.is_connect() => {
                    // Refused, unreachable or silent: out of rotation for a
                    // while, and not this request's next try.
                    if !matches!(e, UpstreamError::Handshake(..)) {
                        endpoint.eject();
                    }
                    failed = Some(endpoint.clone());
                    cell.record(503, start.elapsed(), true);
                    debug!(backend = %backend.name, attempt, retry = can_retry, "{e}");
                    if !can_retry {
                        return local_reply(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "UF",
                            "upstream connect error\n",
                        );
                    }
                }
                // The downstream's own body broke (bad chunk, cut short):
                // its fault, not the upstream's, and never retried.
                Err(UpstreamError::Request(_, e)) if framing::downstream_body_failed(&e) => {
                    debug!(peer = %self.peer, backend = %backend.name, "request body: {e}");
                    return self.refuse_framing(listener, start);
                }
                Err(e) => {
                    debug!(backend = %backend.name, "{e}");
                    cell.record(502, start.elapsed(), true);
                    return local_reply(
                        StatusCode::BAD_GATEWAY,
                        "UC",
                        "upstream connection reset before a response\n",
                    );
                }
            }
            // Retry on another backend draw (it may be the same one), but
            // not on a backend left with nothing but the endpoint that just
            // failed: during a rollout that is a canary whose pod went away.
            let failed_backend = backend_idx;
            backend_idx = route.split.choose().unwrap_or(first);
            if backend_idx == failed_backend
                && failed
                    .as_ref()
                    .is_some_and(|f| !usable_besides(&compiled.backends[backend_idx].endpoints, f))
            {
                backend_idx = route
                    .split
                    .choose_except(failed_backend)
                    .unwrap_or(backend_idx);
            }
        }
    }
}

/// The protocol to speak to a backend for a request of `version`.
fn upstream_proto(protocol: UpstreamProtocol, version: Version) -> Proto {
    match protocol {
        UpstreamProtocol::Http1 => Proto::H1,
        UpstreamProtocol::Http2 => Proto::H2,
        UpstreamProtocol::Auto if version == Version::HTTP_2 => Proto::H2,
        UpstreamProtocol::Auto => Proto::H1,
    }
}

/// A small body whose bytes already arrived with the headers is sent as one
/// piece, so that the response head and body leave in one write (one
/// segment, one wake-up of the client) instead of two. Anything else
/// streams.
fn small_body_now(mut body: Incoming, cell: Arc<crate::telemetry::Cell>) -> RespBody {
    use futures::FutureExt;
    use http_body_util::BodyExt;
    const SMALL: u64 = 16 * 1024;
    if body.size_hint().exact().is_none_or(|n| n > SMALL) {
        return RespBody::Stream { body, cell };
    }
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) if body.is_end_stream() => match frame.into_data() {
            Ok(data) => {
                cell.add_bytes(0, data.len() as u64);
                RespBody::Local(Some(data))
            }
            // A trailers frame: nothing else can follow.
            Err(_) => RespBody::Local(None),
        },
        Some(None) => RespBody::Local(None),
        Some(Some(Ok(frame))) => RespBody::Prefixed {
            first: Some(frame),
            body,
            cell,
        },
        // Not here yet, or an error that the stream will report.
        _ => RespBody::Stream { body, cell },
    }
}

/// The proxy's own answer for a route that redirects.
fn redirect_reply(
    route: &CompiledRoute,
    redirect: &sluice_proto::config::Redirect,
    requested: &filters::Requested<'_>,
    start: Instant,
) -> Response<RespBody> {
    let location = filters::location(redirect, requested);
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    route
        .no_backend
        .record(status.as_u16(), start.elapsed(), false);
    let mut resp = Response::new(RespBody::text(""));
    *resp.status_mut() = status;
    *resp.headers_mut() = filters::redirect_headers(&location);
    resp
}

fn append_forwarded(headers: &mut HeaderMap, peer: SocketAddr, tls: bool) {
    let ip = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if tls {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
    } else if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
}

/// Splices an upgraded (e.g. WebSocket) connection to its upstream, both
/// sides under the idle timeout (the downstream one already is, through
/// the connection it came from).
async fn tunnel(
    proxy: Arc<Proxy>,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
        return;
    };
    let mut down = TokioIo::new(down);
    let mut up = proxy.idle(TokioIo::new(up));
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}
