//! Forwarding a routed request upstream, one concern per piece: attempts
//! to an endpoint of a backend drawn from the route's split, each under
//! the route's and its own deadline ([`Forwarding::forward`]); what an
//! attempt's result means, counted ([`Forwarding::settle`]); whether and
//! where to try again ([`retry`]); the upstream's answer passed on
//! ([`answer`]); the proxy's own answer when none came ([`LocalReply`]).

mod answer;
mod request;
mod retry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::Either;
use http::{Response, StatusCode};
use hyper::body::Body;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{EJECT_AFTER_ERRORS, Ejection, Endpoint, pick};
use crate::body::{Downstream, ReqBody, RespBody};
use crate::compiled::{Compiled, CompiledListener, CompiledRoute};
use crate::framing;
use crate::local_reply::LocalReply;
use crate::pool::{self, Sent, UpstreamError};
use crate::state::Proxy;
use crate::telemetry::Cell;

pub use request::{Prepared, upstream_proto};
use retry::Retries;

/// The destination's sidecar refused this client's connection (L4
/// authorization): the client's own connection is closed in turn, without
/// a response, as a direct connection would have been.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the destination refused the connection (authorization)")]
pub struct ConnectionRefused;

/// One routed request's forwarding: what all its attempts share.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The proxy (its identity, pools and telemetry).
    pub proxy: &'a Arc<Proxy>,
    /// The config the request was routed by.
    pub compiled: Arc<Compiled>,
    /// The listener it came in on.
    pub listener: Arc<CompiledListener>,
    /// The route it matched, by position in the listener's.
    pub route: usize,
    /// The downstream peer, for logs.
    pub peer: &'a SocketAddr,
    /// When the request arrived: deadlines and the route's latencies count
    /// from then (an endpoint's, from its attempt's dispatch).
    pub start: Instant,
}

/// What is left of a routed request to send upstream: what every attempt
/// is built from, and what only one attempt can take (the body as it
/// streams, the client's side of an upgrade).
#[derive(Debug)]
pub struct Pending {
    /// The request's head, as its route's filters changed it.
    pub prepared: Prepared,
    /// Its body, until an attempt takes it.
    pub body: Option<Downstream>,
    /// The client's side of an upgrade, until an attempt takes it.
    pub upgrade: Option<OnUpgrade>,
}

/// One attempt: its number (from 1), its backend, and the endpoint that
/// failed the one before, to be avoided.
struct Attempt<'r> {
    n: u32,
    backend: usize,
    avoid: Option<Arc<Endpoint>>,
    retries: &'r Retries<'r>,
}

/// What one attempt came to.
// Returned once per attempt and matched at once: boxing the response would
// cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Tried {
    /// The request's answer: the upstream's, or the proxy's own.
    Answer(Response<RespBody>),
    /// It failed on this endpoint in a way another attempt may get past.
    Failed(Arc<Endpoint>),
}

impl Forwarding<'_> {
    /// The route the request matched.
    pub fn route(&self) -> &CompiledRoute {
        &self.listener.routes[self.route]
    }

    /// Forwards the request, retrying what is safe to retry, and answers
    /// with the upstream's response or the proxy's own.
    ///
    /// Not an `async fn`: what is decided before the first attempt is
    /// decided here, and the future holds each value once, used in place
    /// (an `async fn` keeps its arguments beside their working copies, and
    /// every request's future is boxed and moved whole).
    pub fn forward<'f>(
        &'f self,
        pending: &'f mut Pending,
    ) -> impl Future<Output = Response<RespBody>> + Send + 'f {
        let route = self.route();
        let Some(first) = route.split.choose() else {
            let reply = LocalReply::NoBackend.counted(&route.no_backend, self.start);
            return Either::Left(std::future::ready(reply));
        };
        let replayable = pending.upgrade.is_none()
            && pending.body.as_ref().is_none_or(|b| b.body.is_end_stream());
        let retries = Retries::plan(route.retry.as_ref(), &pending.prepared.method, replayable);
        Either::Right(async move {
            let mut attempt = Attempt {
                n: 1,
                backend: first,
                avoid: None,
                retries: &retries,
            };
            loop {
                let tried = self.attempt(&attempt, pending).await;
                let failed = match tried {
                    Tried::Answer(resp) => return resp,
                    Tried::Failed(endpoint) => endpoint,
                };
                attempt.backend = retry::next_backend(
                    &route.split,
                    &self.compiled.backends,
                    attempt.backend,
                    &failed,
                    first,
                );
                attempt.avoid = Some(failed);
                attempt.n += 1;
            }
        })
    }

    /// Sends one attempt to an endpoint of its backend, within its deadline.
    ///
    /// Everything up to the send is done here; the future is the send
    /// (under the deadline, if any) and what its result means, with no
    /// second copy of what it holds (see [`Forwarding::forward`]).
    fn attempt<'f>(
        &'f self,
        attempt: &'f Attempt<'_>,
        pending: &mut Pending,
    ) -> impl Future<Output = Tried> + Send + 'f {
        let backend = &self.compiled.backends[attempt.backend];
        let cell = self.route().cell(attempt.backend);
        if let Some(status) = backend.respond {
            let reply = LocalReply::Unresolved(status).counted(cell, self.start);
            return Either::Left(std::future::ready(Tried::Answer(reply)));
        }
        let Some(endpoint) = pick(&backend.endpoints, attempt.avoid.as_ref()).cloned() else {
            let reply = LocalReply::NoEndpoint.counted(cell, self.start);
            return Either::Left(std::future::ready(Tried::Answer(reply)));
        };
        let prepared = &mut pending.prepared;
        let upgrade = pending.upgrade.take();
        let proto = upstream_proto(backend.protocol, prepared.version);
        let req_body = match pending.body.take() {
            Some(Downstream { body, tee }) => ReqBody::Stream {
                body,
                cell: cell.clone(),
                tee,
            },
            None => ReqBody::Empty,
        };
        let req = prepared.request(proto, req_body, attempt.retries.is_last(attempt.n));
        let in_flight = endpoint.begin();
        let target = backend.target(endpoint.addr, &self.proxy.identity);
        let telemetry = &self.proxy.telemetry;
        let sent = pool::send(target, proto, backend.connect_timeout, req, telemetry);
        let timed = match self.attempt_deadline() {
            Some(d) => Either::Left(tokio::time::timeout_at(d, sent).map(Result::ok)),
            None => Either::Right(sent.map(Some)),
        };
        Either::Right(timed.map(move |result| {
            drop(in_flight);
            match result {
                Some(result) => self.settle(attempt, result, cell, endpoint, upgrade),
                None => Tried::Answer(LocalReply::Timeout.counted(cell, self.start)),
            }
        }))
    }

    /// The route's deadline, or the attempt's if that comes first.
    fn attempt_deadline(&self) -> Option<Instant> {
        let route = self.route();
        let whole = route.timeout.map(|t| self.start + t);
        let own = route.attempt_timeout.map(|t| crate::clock::now() + t);
        match (whole, own) {
            (Some(w), Some(o)) => Some(w.min(o)),
            (w, o) => w.or(o),
        }
    }

    /// A 5xx answer from `endpoint`: one more in its run, which may eject it.
    fn observe_error(&self, backend: &str, endpoint: &Endpoint) {
        if let Some(out) = endpoint.observe_error() {
            let cause = format_args!("{EJECT_AFTER_ERRORS} 5xx answers in a row");
            self.proxy
                .telemetry
                .ejected(backend, endpoint.addr, Ejection::Failing, out, &cause);
        }
    }

    /// What an attempt's result means for the request, counted: the answer
    /// to pass on, or a failure that may be retried (a retry token is
    /// taken only then); an endpoint that could not be reached is ejected.
    fn settle(
        &self,
        attempt: &Attempt<'_>,
        result: Result<Sent, UpstreamError>,
        cell: &Arc<Cell>,
        endpoint: Arc<Endpoint>,
        upgrade: Option<OnUpgrade>,
    ) -> Tried {
        let start = self.start;
        let backend = &self.compiled.backends[attempt.backend].name;
        match result {
            Ok(Sent { response, .. })
                if response.status() == StatusCode::SERVICE_UNAVAILABLE
                    && attempt.retries.after_failure(attempt.n) =>
            {
                self.observe_error(backend, &endpoint);
                cell.record(503, crate::clock::since(start), false);
                debug!(%backend, "503 from upstream; retrying");
                Tried::Failed(endpoint)
            }
            Ok(Sent {
                response,
                dispatched,
            }) => {
                // The endpoint is judged on its own answer's time; the
                // request's (connects and earlier attempts included) is
                // the route's.
                if response.status().is_server_error() {
                    self.observe_error(backend, &endpoint);
                } else {
                    endpoint.observe(crate::clock::since(dispatched));
                }
                cell.record(
                    response.status().as_u16(),
                    crate::clock::since(start),
                    false,
                );
                Tried::Answer(answer::pass_on(self.proxy, response, cell, upgrade))
            }
            Err(e) if e.is_access_denied() => {
                debug!(%backend, "{e}: the destination's policy refused this workload");
                cell.record(403, crate::clock::since(start), false);
                let mut resp = Response::new(RespBody::empty());
                resp.extensions_mut().insert(ConnectionRefused);
                Tried::Answer(resp)
            }
            Err(e) if e.is_connect() => {
                // Refused, unreachable or silent: out of rotation for a
                // while, and not this request's next try.
                if !matches!(e, UpstreamError::Handshake(..))
                    && let Some(out) = endpoint.eject()
                {
                    let t = &self.proxy.telemetry;
                    t.ejected(backend, endpoint.addr, Ejection::Unreachable, out, &e);
                }
                let retry = attempt.retries.after_failure(attempt.n);
                debug!(%backend, attempt = attempt.n, retry, "{e}");
                if !retry {
                    return Tried::Answer(LocalReply::ConnectFailed.counted(cell, start));
                }
                // Counted as the failure it was, though a retry may answer.
                LocalReply::ConnectFailed.count(cell, start);
                Tried::Failed(endpoint)
            }
            // The downstream's own body broke (bad chunk, cut short): its
            // fault, not the upstream's, and never retried.
            Err(UpstreamError::Request(_, e)) if framing::downstream_body_failed(&e) => {
                debug!(peer = %self.peer, %backend, "request body: {e}");
                Tried::Answer(self.refuse_framing())
            }
            Err(e) => {
                debug!(%backend, "{e}");
                Tried::Answer(LocalReply::Reset.counted(cell, start))
            }
        }
    }

    /// Answers a request whose body broke its framing with a 400 that
    /// closes the connection, and counts it.
    fn refuse_framing(&self) -> Response<RespBody> {
        self.proxy
            .telemetry
            .framing_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.listener
            .unrouted
            .record(400, crate::clock::since(self.start), false);
        framing::refusal()
    }
}
