//! Upstream connections, pooled per worker thread.
//!
//! Each worker runs on its own single-threaded runtime, so its pool is a
//! thread-local: taking or returning a connection touches no lock shared
//! with other workers. HTTP/1.1 connections are reused once idle; one
//! HTTP/2 connection per endpoint carries every request, multiplexed.
//! An endpoint behind a sidecar is reached over mTLS at the sidecar's
//! inbound port, with the workload port in the TLS server name and the
//! application protocol in ALPN.
//!
//! A bodiless HTTP/1.1 request goes through the proxy's own client
//! ([`own_h1`]), any other through hyper's; both answer with an
//! [`UpBody`].

pub mod chunked;
pub mod own_h1;
pub mod response_head;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::request::ReqBody;
use crate::config::{INBOUND_PORT, inbound_server_name};
use crate::head_fields::PassedFields;
use crate::identity::MeshIdentity;
use crate::identity::verify::{client_config, is_access_denied};
use crate::telemetry::Telemetry;

/// Idle HTTP/1.1 connections kept per endpoint and worker (by hyper's
/// client and by the own one, each).
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// The protocol of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge.
    H2,
}

/// What an upstream connection carries, which its mTLS handshake names
/// (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Carried {
    Http(Proto),
    /// Opaque TCP: the bytes as they come, no ALPN offered.
    Opaque,
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint refused or could not be reached.
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The connection did not open in time.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// The protocol handshake failed.
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
    /// The mTLS handshake with the endpoint's sidecar failed.
    #[error("mTLS to {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    /// The connection failed after the request was sent.
    #[error("request to {0}: {1}")]
    Request(SocketAddr, hyper::Error),
    /// The own client's exchange failed.
    #[error("request to {0}: {1}")]
    Exchange(SocketAddr, own_h1::OwnError),
}

impl UpstreamError {
    /// Whether nothing reached the endpoint (safe to retry elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(..)
                | UpstreamError::ConnectTimeout(..)
                | UpstreamError::Handshake(..)
                | UpstreamError::Tls(..)
        ) && !self.is_access_denied()
    }

    /// Whether the endpoint's sidecar refused this peer (L4 authorization):
    /// the client's connection is closed in turn, never retried.
    pub fn is_access_denied(&self) -> bool {
        match self {
            UpstreamError::Tls(_, e) => is_access_denied(e),
            UpstreamError::Handshake(_, e) | UpstreamError::Request(_, e) => is_access_denied(e),
            UpstreamError::Exchange(_, own_h1::OwnError::Io(e)) => is_access_denied(e),
            _ => false,
        }
    }
}

/// How to reach one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The endpoint (pod address and workload port).
    pub addr: SocketAddr,
    /// For an endpoint behind a sidecar, while this proxy holds a mesh
    /// certificate: the identity the endpoint must present.
    pub mesh: Option<(&'a Arc<MeshIdentity>, &'a Arc<str>)>,
}

impl Target<'_> {
    /// The pool its connections go to and come from.
    fn key(&self) -> Key {
        (self.addr, self.mesh.is_some())
    }
}

/// A plaintext or mTLS upstream connection.
#[derive(Debug)]
pub enum Io {
    /// Straight to the endpoint.
    Plain(TcpStream),
    /// Through the endpoint's sidecar.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a response body failed: hyper's error or the own client's.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream response's body, read by hyper's client or the own one.
#[derive(Debug)]
pub enum UpBody {
    /// Read by hyper.
    Hyper(Incoming),
    /// Read by [`own_h1`].
    Own(own_h1::OwnBody),
}

impl UpBody {
    /// The own client's answer's fields, which its header map lacks
    /// ([`PassedFields`]); hyper's answers have theirs in the map.
    pub fn take_fields(&mut self) -> Option<PassedFields> {
        match self {
            UpBody::Hyper(_) => None,
            UpBody::Own(b) => b.take_fields(),
        }
    }

    /// The own client's answer's fields, as [`UpBody::take_fields`].
    pub fn fields(&self) -> Option<&PassedFields> {
        match self {
            UpBody::Hyper(_) => None,
            UpBody::Own(b) => b.fields(),
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpBody::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Hyper(b) => b.is_end_stream(),
            UpBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Hyper(b) => b.size_hint(),
            UpBody::Own(b) => b.size_hint(),
        }
    }
}

/// Pools are keyed by endpoint and whether the connection is mTLS.
type Key = (SocketAddr, bool);

/// A pool by [`Key`]. Its keys are the control plane's endpoint addresses,
/// never what a client sends, so a fast hash without resistance to chosen
/// keys serves (SipHash cost two hashes per proxied request).
type ByKey<V> = rustc_hash::FxHashMap<Key, V>;

/// Client TLS configs by (expected identity, protocol).
type TlsConfigs = HashMap<(Arc<str>, Carried), Arc<rustls::ClientConfig>>;

thread_local! {
    static H1_IDLE: RefCell<ByKey<Vec<http1::SendRequest<ReqBody>>>> = RefCell::new(ByKey::default());
    static H2_CONN: RefCell<ByKey<http2::SendRequest<ReqBody>>> = RefCell::new(ByKey::default());
    /// Client TLS configs per (expected identity, protocol); they read the
    /// current certificate and roots on each handshake, so they never go stale.
    static TLS_CONFIGS: RefCell<TlsConfigs> = RefCell::new(HashMap::new());
}

/// Connects with the interception mark set, so that a pod's iptables rules
/// let the proxy's own connections pass.
pub async fn marked_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    crate::intercept::mark(&socket);
    socket.connect(addr).await
}

/// Opens an opaque TCP connection to `target`: over mTLS to its sidecar
/// when it has one, plaintext otherwise.
pub async fn connect_opaque(
    target: Target<'_>,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<Io, UpstreamError> {
    connect(target, Carried::Opaque, timeout, telemetry).await
}

async fn connect(
    target: Target<'_>,
    carried: Carried,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<Io, UpstreamError> {
    let addr = target.addr;
    let dial = match target.mesh {
        Some(_) => SocketAddr::new(addr.ip(), INBOUND_PORT),
        None => addr,
    };
    let stream = match tokio::time::timeout(timeout, marked_connect(dial)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return Err(UpstreamError::Connect(addr, e));
        }
        Err(_) => {
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return Err(UpstreamError::ConnectTimeout(addr));
        }
    };
    telemetry.upstream_connects.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let Some((identity, expected)) = target.mesh else {
        return Ok(Io::Plain(stream));
    };
    let config = TLS_CONFIGS.with_borrow_mut(|m| {
        if let Some(c) = m.get(&(expected.clone(), carried)) {
            return Ok(c.clone());
        }
        let alpn: &[u8] = match carried {
            Carried::Http(Proto::H1) => b"http/1.1",
            Carried::Http(Proto::H2) => b"h2",
            Carried::Opaque => b"",
        };
        let c = client_config(identity, expected, alpn)
            .map_err(|e| UpstreamError::Tls(addr, std::io::Error::other(e)))?;
        m.insert((expected.clone(), carried), c.clone());
        Ok(c)
    })?;
    let name = ServerName::try_from(inbound_server_name(addr.port()))
        .map_err(|e| UpstreamError::Tls(addr, std::io::Error::other(e)))?;
    let tls = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, stream))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(addr))?
        .map_err(|e| {
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            UpstreamError::Tls(addr, e)
        })?;
    Ok(Io::Tls(Box::new(tls)))
}

async fn connect_h1(
    target: Target<'_>,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
    let addr = target.addr;
    let stream = connect(target, Carried::Http(Proto::H1), timeout, telemetry).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(addr, e))?;
    tokio::spawn(async move {
        // Upgrades enabled: a 101 hands the socket to the tunnel.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

async fn connect_h2(
    target: Target<'_>,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
    let addr = target.addr;
    let stream = connect(target, Carried::Http(Proto::H2), timeout, telemetry).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(addr, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn take_idle_h1(addr: Key) -> Option<http1::SendRequest<ReqBody>> {
    H1_IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let pos = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(pos))
    })
}

fn put_h1(addr: Key, sender: http1::SendRequest<ReqBody>) {
    if sender.is_closed() {
        return;
    }
    H1_IDLE.with_borrow_mut(|pool| {
        let list = pool.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    });
}

/// An upstream's answer to one request, and when the request went out.
#[derive(Debug)]
pub struct Sent {
    /// The response head; its body streams.
    pub response: Response<UpBody>,
    /// When the request went out on a ready connection. An endpoint's
    /// latency counts from here: a new connection's TCP and TLS handshakes
    /// (or a SYN retransmitted to a pod still being wired) would otherwise
    /// be held against the endpoint that took it, long after.
    pub dispatched: Instant,
}

/// Sends `req` to `target`, on a pooled connection when one is free.
///
/// Not an `async fn`: the path is chosen here, and only the own client's
/// exchange (a bodiless HTTP/1.1 request, most of them) is held inline,
/// with the request already encoded. hyper's paths are boxed: their
/// futures are ~1.4 KB, and inline they would make every request's future
/// (itself boxed and moved per request) that much larger. So is what is
/// rare on any path: a new connection's handshakes and a resend.
pub fn send<'a>(
    target: Target<'a>,
    proto: Proto,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &'a Telemetry,
) -> impl Future<Output = Result<Sent, UpstreamError>> + Send + 'a {
    let hyper = |(resp, dispatched): (Response<Incoming>, Instant)| Sent {
        response: resp.map(UpBody::Hyper),
        dispatched,
    };
    match proto {
        Proto::H1 if own_h1::takes(&req) => {
            let out = own_h1::Outgoing::new(req);
            Either::Left(send_own(target, connect_timeout, out, telemetry))
        }
        Proto::H1 => Either::Right(Box::pin(
            send_h1(target, connect_timeout, req, telemetry).map(move |r| r.map(hyper)),
        ) as HyperSend<'a>),
        Proto::H2 => Either::Right(Box::pin(
            send_h2(target, connect_timeout, req, telemetry).map(move |r| r.map(hyper)),
        ) as HyperSend<'a>),
    }
}

/// A send through hyper's client, boxed ([`send`]).
type HyperSend<'a> = Pin<Box<dyn Future<Output = Result<Sent, UpstreamError>> + Send + 'a>>;

/// Sends an encoded bodiless request through the own client, on an idle
/// connection when there is one. Its arguments are used in place (an
/// `async fn` would hold a second copy of each).
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` holds its arguments twice"
)]
fn send_own<'a>(
    target: Target<'a>,
    connect_timeout: Duration,
    out: own_h1::Outgoing,
    telemetry: &'a Telemetry,
) -> impl Future<Output = Result<Sent, UpstreamError>> + Send + 'a {
    async move {
        let key = target.key();
        if let Some(conn) = own_h1::take_idle(key) {
            let dispatched = crate::clock::now();
            match own_h1::exchange(conn, &out).await {
                Ok(resp) => {
                    return Ok(Sent {
                        response: resp.map(UpBody::Own),
                        dispatched,
                    });
                }
                // The kept connection was closed under the request before
                // any answer: a fresh one is safe for a request that may
                // be sent twice.
                Err(own_h1::OwnError::ClosedBeforeResponse) if out.idempotent => {}
                Err(e) => return Err(UpstreamError::Exchange(target.addr, e)),
            }
        }
        Box::pin(send_own_fresh(target, connect_timeout, &out, telemetry)).await
    }
}

async fn send_own_fresh(
    target: Target<'_>,
    connect_timeout: Duration,
    out: &own_h1::Outgoing,
    telemetry: &Telemetry,
) -> Result<Sent, UpstreamError> {
    let key = target.key();
    let io = connect(target, Carried::Http(Proto::H1), connect_timeout, telemetry).await?;
    let dispatched = crate::clock::now();
    let resp = own_h1::exchange(own_h1::Conn::new(io, key), out)
        .await
        .map_err(|e| UpstreamError::Exchange(target.addr, e))?;
    Ok(Sent {
        response: resp.map(UpBody::Own),
        dispatched,
    })
}

async fn send_h1(
    target: Target<'_>,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &Telemetry,
) -> Result<(Response<Incoming>, Instant), UpstreamError> {
    let key = target.key();
    let mut sender = match take_idle_h1(key) {
        Some(s) => s,
        None => Box::pin(connect_h1(target, connect_timeout, telemetry)).await?,
    };
    let dispatched = crate::clock::now();
    match sender.try_send_request(req).await {
        Ok(resp) => {
            // Busy until the body is read; `is_ready` tells when it is free.
            put_h1(key, sender);
            Ok((resp, dispatched))
        }
        Err(mut e) => match e.take_message() {
            // The pooled connection had closed before the request went
            // out: nothing was sent, so a fresh one is safe.
            Some(req) => Box::pin(resend_h1(target, connect_timeout, req, telemetry)).await,
            None => Err(UpstreamError::Request(target.addr, e.into_error())),
        },
    }
}

async fn resend_h1(
    target: Target<'_>,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &Telemetry,
) -> Result<(Response<Incoming>, Instant), UpstreamError> {
    let mut fresh = connect_h1(target, connect_timeout, telemetry).await?;
    let dispatched = crate::clock::now();
    let resp = fresh
        .send_request(req)
        .await
        .map_err(|e| UpstreamError::Request(target.addr, e))?;
    put_h1(target.key(), fresh);
    Ok((resp, dispatched))
}

async fn send_h2(
    target: Target<'_>,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &Telemetry,
) -> Result<(Response<Incoming>, Instant), UpstreamError> {
    let key = target.key();
    let cached = H2_CONN.with_borrow_mut(|m| {
        let s = m.get(&key)?;
        if s.is_closed() {
            m.remove(&key);
            None
        } else {
            Some(s.clone())
        }
    });
    let mut sender = match cached {
        Some(s) => s,
        None => {
            let s = Box::pin(connect_h2(target, connect_timeout, telemetry)).await?;
            H2_CONN.with_borrow_mut(|m| m.insert(key, s.clone()));
            s
        }
    };
    let dispatched = crate::clock::now();
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, dispatched)),
        Err(mut e) => match e.take_message() {
            Some(req) => Box::pin(resend_h2(target, connect_timeout, req, telemetry)).await,
            None => Err(UpstreamError::Request(target.addr, e.into_error())),
        },
    }
}

async fn resend_h2(
    target: Target<'_>,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &Telemetry,
) -> Result<(Response<Incoming>, Instant), UpstreamError> {
    let key = target.key();
    let mut fresh = connect_h2(target, connect_timeout, telemetry).await?;
    H2_CONN.with_borrow_mut(|m| m.insert(key, fresh.clone()));
    let dispatched = crate::clock::now();
    let resp = fresh
        .send_request(req)
        .await
        .map_err(|e| UpstreamError::Request(target.addr, e))?;
    Ok((resp, dispatched))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future holds a send's. A connect's handshakes inline
    /// made it 4.4 KB; boxed, 1.7 KB, most of it hyper's paths and the
    /// request held twice; with those boxed too, the request encoded
    /// before the future and the connection boxed, about 210 bytes.
    #[test]
    fn a_send_keeps_hyper_and_the_rare_connect_out_of_its_future() {
        let telemetry = Telemetry::default();
        let target = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            mesh: None,
        };
        let req = Request::new(ReqBody::Empty);
        let sent = send(target, Proto::H1, Duration::from_secs(1), req, &telemetry);
        let size = std::mem::size_of_val(&sent);
        assert!(size <= 512, "a send's future is {size} bytes");
    }
}
