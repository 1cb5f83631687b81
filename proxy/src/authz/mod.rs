//! Authentication and authorization on a sidecar's inbound side: the pure
//! evaluators (the `sluice-authz` crate, which the operator also runs
//! before it pushes a policy or a JWT rule) and the tower layer that
//! applies them to every HTTP request before the forwarding service sees
//! it: a request's JWT is verified first, then the policies judge it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use futures::future::Either;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::debug;

use crate::body::{Received, RespBody};
use crate::h1::Handler;
use crate::http_proxy::ProxyService;
use crate::route::request_authority;
use crate::state::Proxy;
pub use sluice_authz::jwt::{Authenticator, JwtError};
pub use sluice_authz::{Decision, HttpAttributes, Peer, Policies, Traffic, Verdict};

/// Where JWT rules sit in a config, for validation errors.
pub const JWT_RULES_PATH: &str = "inbound.jwtRules";

pub use sluice_proto::authz::DENIED_BODY;

/// Who is on the other end of one inbound connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its address.
    pub ip: IpAddr,
    /// Its mTLS principal, none on plaintext.
    pub principal: Option<Arc<str>>,
    /// The workload port it targets.
    pub port: u16,
}

impl PeerInfo {
    /// As the evaluator reads it.
    pub fn peer(&self) -> Peer<'_> {
        Peer {
            ip: self.ip,
            principal: self.principal.as_deref(),
            port: self.port,
        }
    }
}

/// Checks every request against the workload's current policies (a
/// policy change applies to open connections too); a denied request gets
/// `403 RBAC: access denied` and never reaches `inner`.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    proxy: Arc<Proxy>,
    peer: Arc<PeerInfo>,
}

impl<S> Authorize<S> {
    /// Wraps `inner` for one connection.
    pub fn new(inner: S, proxy: Arc<Proxy>, peer: Arc<PeerInfo>) -> Authorize<S> {
        Authorize { inner, proxy, peer }
    }

    /// The request as it goes on (a verified JWT's claims passed on as
    /// the rules say), or the answer that refuses it; counts refusals and
    /// audits.
    fn admit<B>(&self, req: Request<B>) -> Result<Request<B>, Refused> {
        let compiled = self.proxy.current();
        let Some(inbound) = &compiled.inbound else {
            return Ok(req);
        };
        if inbound.policies.is_empty() && inbound.authn.is_empty() {
            return Ok(req);
        }
        let telemetry = &self.proxy.telemetry;
        let (mut parts, body) = req.into_parts();
        let verified = match inbound.authn.verify(&parts.headers, parts.uri.query()) {
            Ok(v) => v,
            Err(e) => {
                debug!(reason = %e, method = %parts.method, path = parts.uri.path(), "JWT refused");
                telemetry.jwt_refused_requests.fetch_add(1, Relaxed);
                return Err(Refused::Unauthenticated(e));
            }
        };
        let host = request_authority(&parts).map_or("", |(h, _)| h);
        let decision = inbound.policies.decide(
            &self.peer.peer(),
            &Traffic::Http(HttpAttributes {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                host,
                headers: &parts.headers,
                auth: verified.as_ref().map(|v| &v.auth),
            }),
        );
        if decision.audited {
            telemetry.authz_audited.fetch_add(1, Relaxed);
        }
        if let Verdict::Deny(policy) = &decision.verdict {
            debug!(%policy, method = %parts.method, path = parts.uri.path(), principal = ?self.peer.principal, "request denied");
            telemetry.authz_denied_requests.fetch_add(1, Relaxed);
            return Err(Refused::Denied);
        }
        if let Some(v) = &verified {
            inbound.authn.pass_on(v, &mut parts.headers);
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// The inbound side's own HTTP/1 path: the same checks before the
/// forwarding service.
impl Handler for Authorize<ProxyService> {
    type Hyper = Self;

    /// Not an `async fn`, which would hold the request beside the inner
    /// service's future.
    fn handle(&self, req: Request<Received>) -> impl Future<Output = Response<RespBody>> + Send {
        match self.admit(req) {
            Ok(req) => Either::Left(self.inner.handle(req)),
            Err(refused) => Either::Right(std::future::ready(refused.answer())),
        }
    }

    fn hyper(self) -> Self {
        self
    }
}

fn refusal(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why a request is answered here instead of forwarded.
#[derive(Debug)]
enum Refused {
    /// Its JWT did not verify.
    Unauthenticated(JwtError),
    /// A policy denies it.
    Denied,
}

impl Refused {
    fn answer(&self) -> Response<RespBody> {
        match self {
            Refused::Unauthenticated(e) => unauthenticated(e),
            Refused::Denied => denied(),
        }
    }
}

fn denied() -> Response<RespBody> {
    refusal(StatusCode::FORBIDDEN, DENIED_BODY)
}

/// `401` with Istio's reason, and the challenge RFC 6750 asks for.
fn unauthenticated(e: &JwtError) -> Response<RespBody> {
    let mut resp = refusal(StatusCode::UNAUTHORIZED, e.reason());
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    resp
}

impl<S> tower::Service<Request<Incoming>> for Authorize<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<RespBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<RespBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self.admit(req) {
            Ok(req) => Box::pin(self.inner.call(req)),
            Err(refused) => {
                let answer = refused.answer();
                Box::pin(async { Ok(answer) })
            }
        }
    }
}
