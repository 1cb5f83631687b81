//! The HTTP service of a listener: route a request, apply its route's
//! filters, send copies to its mirrors and hand it to [`Forwarding`].
//!
//! It is a `tower::Service`, so that later concerns (authorization, mTLS
//! peer identity) wrap it as layers without touching it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::HeaderValue;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use crate::body::{Downstream, Received, ReqBody, RespBody, headers_mut};
use crate::compiled::{Compiled, CompiledRoute};
use crate::config::OUTBOUND_PORT;
use crate::filters::{self, CompiledFilters};
use crate::forward::{ConnectionRefused, Forwarding, Pending, Prepared, upstream_proto};
use crate::hops::{append_forwarded, forwarded_for, is_upgrade, strip_hop_by_hop};
use crate::local_reply::LocalReply;
use crate::mirror;
use crate::route::{Matcher, first_match, request_authority};
use crate::state::Proxy;

/// The per-connection service.
#[derive(Clone, Debug)]
pub struct ProxyService {
    proxy: Arc<Proxy>,
    listener: Arc<str>,
    peer: SocketAddr,
    /// `peer` as an `x-forwarded-for` entry.
    forwarded_for: HeaderValue,
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
            forwarded_for: forwarded_for(peer),
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
            let mut resp = this.handle(req.map(Received::Hyper)).await;
            // hyper closes the connection when the service fails.
            if let Some(e) = resp.extensions().get::<ConnectionRefused>() {
                return Err(*e);
            }
            // hyper writes the map alone.
            headers_mut(&mut resp);
            Ok(resp)
        })
    }
}

/// What routing made of a request.
enum Routed<'s> {
    /// It goes upstream.
    Forward(Forwarding<'s>, Pending),
    /// The proxy answers it itself: no listener, host or route; a redirect.
    Answered(Response<RespBody>),
}

impl ProxyService {
    /// Routes and forwards one request; a response carrying
    /// [`ConnectionRefused`] in its extensions is not to be sent: the
    /// connection is to be closed instead.
    ///
    /// Routing is done here, before any wait, and the future holds only
    /// what forwarding needs: it is boxed and moved once per request, and
    /// an `async fn` would also hold the request it was given and every
    /// value routing borrowed.
    pub(crate) fn handle(
        &self,
        req: Request<Received>,
    ) -> impl Future<Output = Response<RespBody>> + Send + '_ {
        let (forwarding, mut pending) = match self.route(req) {
            Routed::Forward(forwarding, pending) => (forwarding, pending),
            Routed::Answered(reply) => return Either::Right(std::future::ready(reply)),
        };
        Either::Left(async move {
            let mut resp = forwarding.forward(&mut pending).await;
            if let Some(changes) = &forwarding.route().filters.response_headers {
                changes.apply(headers_mut(&mut resp));
            }
            resp
        })
    }

    /// Routes a request and prepares what its upstream is sent; the
    /// proxy's own answer when it goes no further (no listener, no host or
    /// route, a redirect).
    fn route(&self, mut req: Request<Received>) -> Routed<'_> {
        let start = crate::clock::now();
        let compiled = self.proxy.current();
        let Some(listener) = compiled.listener(&self.listener).cloned() else {
            return Routed::Answered(LocalReply::ListenerGone.response());
        };
        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let Some((host, port)) = request_authority(&parts) else {
            return Routed::Answered(LocalReply::MissingHost.counted(&listener.unrouted, start));
        };
        let Some((index, matched)) = listener.routes.iter().enumerate().find_map(|(i, r)| {
            let fits = r.hosts.matches(host, port);
            fits.then(|| first_match(&r.matchers, &parts))
                .flatten()
                .map(|m| (i, m))
        }) else {
            return Routed::Answered(LocalReply::NoRoute.counted(&listener.unrouted, start));
        };
        let route = &listener.routes[index];
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
            return Routed::Answered(redirect_reply(route, redirect, &requested, start));
        }
        let upgrading = upgrade.is_some();
        let mut prepared = self.prepare(parts, filters, path_and_query, matched_prefix, upgrading);
        let tee = if !route.mirrors.is_empty() && !upgrading {
            self.mirror(&compiled, route, &mut prepared, &body)
        } else {
            None
        };
        let forwarding = Forwarding {
            proxy: &self.proxy,
            route: index,
            peer: &self.peer,
            start,
            listener,
            compiled,
        };
        let pending = Pending {
            prepared,
            body: Some(Downstream { body, tee }),
            upgrade,
        };
        Routed::Forward(forwarding, pending)
    }

    /// What the upstream is sent: the request as the route's filters
    /// change it, without hop-by-hop headers, with `x-forwarded-*`.
    fn prepare(
        &self,
        parts: Parts,
        filters: &CompiledFilters,
        mut path_and_query: http::uri::PathAndQuery,
        matched_prefix: Option<&str>,
        upgrading: bool,
    ) -> Prepared {
        // From the `Host` header only when an attempt needs it (HTTP/2).
        let mut authority = parts.uri.authority().cloned();
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
        strip_hop_by_hop(&mut headers, upgrading);
        append_forwarded(&mut headers, &self.forwarded_for, self.tls);
        filters.change_request_headers(&mut headers);
        Prepared {
            path_and_query,
            method: parts.method,
            authority,
            version: parts.version,
            headers,
        }
    }

    /// Sends the copies of a request to the route's mirrors; a body is
    /// teed to them as the original's upstream reads it.
    fn mirror(
        &self,
        compiled: &Arc<Compiled>,
        route: &CompiledRoute,
        prepared: &mut Prepared,
        body: &Received,
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
        .record(status.as_u16(), crate::clock::since(start), false);
    let mut resp = Response::new(RespBody::text(""));
    *resp.status_mut() = status;
    *resp.headers_mut() = filters::redirect_headers(&location);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest allocation glibc serves from its per-thread cache;
    /// larger ones take its general path, several times dearer.
    const THREAD_CACHED: usize = 1032;

    /// Every request's future is boxed and moved whole: as an `async fn`
    /// it was 4,128 bytes.
    #[test]
    fn a_requests_future_fits_the_allocators_thread_cache() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let svc = ProxyService::new(crate::state::Proxy::new(), "none".into(), peer);
        let handled = svc.handle(Request::new(Received::Empty));
        let size = std::mem::size_of_val(&handled);
        assert!(size <= THREAD_CACHED, "a request's future is {size} bytes");
    }
}
