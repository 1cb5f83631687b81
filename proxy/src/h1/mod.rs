//! The proxy's own HTTP/1.1 path for plaintext listeners, HTTPS listeners
//! where ALPN did not settle on HTTP/2, and a sidecar's inbound side
//! (plaintext or mTLS).
//!
//! One task per connection reads request heads with `httparse` straight
//! off the connection, hands them to its [`Handler`] (the forwarding
//! service, behind authorization on the inbound side) like any other
//! request, and writes the answer itself. Compared with hyper's server
//! connection it saves, per request, the dispatch between the connection
//! and its service and hyper's general encoder; per idle keep-alive
//! connection, the ~24 KB of read and write buffers hyper keeps (this
//! path holds none between requests).
//!
//! It serves only what it fully understands ([`head`]): at the first
//! request that is anything else (a body, an upgrade, HTTP/1.0, an HTTP/2
//! preface, a malformed head) hyper is handed the connection with every
//! byte not yet consumed and serves the rest of it, so that hyper's
//! framing rules and answers hold as before.

pub mod encode;
pub mod head;
mod rewind;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::{Received, RespBody};
use crate::forward::ConnectionRefused;
use crate::http_proxy::ProxyService;
use crate::idle::Idle;
use crate::read_buffers::{self, READ_CHUNK};
use crate::server::http_builder;
use crate::state::Proxy;
use encode::Framing;
use head::Head;
use rewind::Rewind;

/// A head not complete within this many bytes goes to hyper, which reads
/// up to [`crate::server::MAX_HEADER_BYTES`] and answers `431` past it.
const HAND_OFF_AT: usize = 16 * 1024;

/// Body bytes gathered before a write; a larger data frame is written on
/// its own instead of copied.
const GATHER: usize = 16 * 1024;

/// The answer to a head `http` refuses, as hyper gives it.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What the connection does after a response.
enum Next {
    KeepAlive,
    Close,
}

/// What a connection on this path serves its requests with.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The same service as hyper calls it, for a connection handed off.
    type Hyper: tower::Service<
            Request<Incoming>,
            Response = Response<RespBody>,
            Error = ConnectionRefused,
            Future: Send,
        > + Clone
        + Send
        + 'static;

    /// Answers one request; a response carrying [`ConnectionRefused`]
    /// closes the connection instead of being sent.
    fn handle(&self, req: Request<Received>) -> impl Future<Output = Response<RespBody>> + Send;

    /// The service for hyper.
    fn hyper(self) -> Self::Hyper;
}

impl Handler for ProxyService {
    type Hyper = ProxyService;

    fn handle(&self, req: Request<Received>) -> impl Future<Output = Response<RespBody>> + Send {
        ProxyService::handle(self, req)
    }

    fn hyper(self) -> ProxyService {
        self
    }
}

/// The listener's stop as one connection waits for it: done once the
/// listener stops (or is gone). It is made once per connection, so that its
/// waiter is registered once: a wait made afresh for each request
/// registered and removed a waiter under the watch's lock every time.
/// Never polled again once done: the connection then ends.
pub type Stopped<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

/// A connection this path serves: how it waits for the next request and
/// how it ends.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Waits for the first bytes of the next request and reads them into
    /// `buf`; `false` when the connection is to end instead (closed by the
    /// peer, idle too long, the listener stopping). Bytes that came before
    /// the stop are served.
    fn wait_for_request(
        io: &mut Idle<Self>,
        buf: &mut BytesMut,
        stopped: Stopped<'_>,
    ) -> impl Future<Output = bool> + Send;

    /// Ends the connection once this path is done with it.
    fn close(io: Idle<Self>) -> impl Future<Output = ()> + Send;
}

impl Transport for TcpStream {
    async fn wait_for_request(
        io: &mut Idle<TcpStream>,
        buf: &mut BytesMut,
        mut stopped: Stopped<'_>,
    ) -> bool {
        loop {
            tokio::select! {
                biased;
                ready = poll_fn(|cx| io.poll_read_ready(cx)) => {
                    if !matches!(ready, Ok(true)) {
                        return false;
                    }
                }
                () = stopped.as_mut() => return false,
            }
            if buf.capacity() == 0 {
                *buf = read_buffers::take();
            }
            // Through `poll_read`, which marks the socket drained when a
            // read comes back short: the next wait then goes straight to
            // epoll instead of a read that finds nothing (nginx's one read
            // per request). `try_read` would leave the readiness set.
            match io.read_buf(buf).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => return false,
                Some(Ok(_)) => return true,
                // Readiness that was stale: give the buffer back and wait.
                None => read_buffers::give(std::mem::take(buf)),
            }
        }
    }

    async fn close(_io: Idle<TcpStream>) {}
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    /// TLS may hold decrypted bytes the socket no longer signals, so the
    /// wait is a read, with a buffer held meanwhile.
    async fn wait_for_request(
        io: &mut Idle<Self>,
        buf: &mut BytesMut,
        stopped: Stopped<'_>,
    ) -> bool {
        if buf.capacity() == 0 {
            *buf = read_buffers::take();
        }
        tokio::select! {
            biased;
            read = io.read_buf(buf) => matches!(read, Ok(n) if n > 0),
            () = stopped => false,
        }
    }

    /// With a `close_notify`, as hyper ends a TLS connection, so that the
    /// client reads an end rather than a cut.
    async fn close(mut io: Idle<Self>) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
    }
}

/// Time given to a TLS connection's `close_notify` on the way out.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How [`requests`] ended.
enum End {
    /// The connection is over.
    Closed,
    /// hyper is to serve the rest, starting with these bytes.
    HandOff(BytesMut),
}

/// Serves one HTTP connection until it ends, the listener stops (`stop`
/// turns true: an idle connection closes at once, a busy one after its
/// response), or it is handed to hyper.
///
/// The connection gets `proxy`'s idle timeout and header read timeout,
/// read here once.
pub fn serve<H: Handler, T: Transport>(
    svc: H,
    proxy: &Proxy,
    io: T,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) -> impl Future<Output = ()> + use<H, T> {
    serve_idle(
        svc,
        proxy.idle(io),
        proxy.header_read_timeout(),
        stop,
        watcher,
    )
}

async fn serve_idle<H: Handler, T: Transport>(
    svc: H,
    mut io: Idle<T>,
    header_read: Duration,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) {
    match requests(&svc, &mut io, header_read, stop).await {
        End::Closed => T::close(io).await,
        End::HandOff(buf) => hand_off(svc, io, buf, header_read, watcher).await,
    }
}

/// The connection's requests, one after another.
async fn requests<H: Handler, T: Transport>(
    svc: &H,
    io: &mut Idle<T>,
    header_read: Duration,
    stop: watch::Receiver<bool>,
) -> End {
    // The value is read once; after it, whether it changed, which is an
    // atomic load where reading the value takes the watch's lock. It only
    // ever changes to true.
    let mut stopping = *stop.borrow();
    let mut watch = stop.clone();
    let mut stopped = std::pin::pin!(async move {
        let _ = watch.wait_for(|s| *s).await;
    });
    let mut buf = BytesMut::new();
    loop {
        if buf.is_empty() && !T::wait_for_request(io, &mut buf, stopped.as_mut()).await {
            return End::Closed;
        }
        let (req, close) = match read_head(io, &mut buf, header_read).await {
            Some(Head::Request { req, close }) => (req, close),
            Some(Head::HandOff) => return End::HandOff(buf),
            Some(Head::Invalid) => {
                let _ = io.write_all(BAD_REQUEST).await;
                let _ = io.flush().await;
                return End::Closed;
            }
            Some(Head::Partial) | None => return End::Closed,
        };
        let head_request = req.method() == Method::HEAD;
        // Boxed: the connection's task stays small while it is idle.
        let resp = Box::pin(svc.handle(req.map(|()| Received::Empty))).await;
        if resp.extensions().get::<ConnectionRefused>().is_some() {
            return End::Closed;
        }
        stopping = stopping || stop.has_changed().unwrap_or(true);
        let close = close || stopping;
        match respond(io, resp, head_request, close).await {
            Next::KeepAlive => {}
            Next::Close => return End::Closed,
        }
        if buf.is_empty() {
            // No buffer held while idle: it goes back to the thread's spares.
            read_buffers::give(std::mem::take(&mut buf));
        }
    }
}

/// Reads until `buf` starts with a whole head (or one for hyper), within
/// the header read timeout; `None` when the connection ends or the time
/// runs out first.
async fn read_head<T: Transport>(
    io: &mut Idle<T>,
    buf: &mut BytesMut,
    header_read: Duration,
) -> Option<Head> {
    // Set at the first read this head needs; a head that came whole with
    // the request's first bytes (most do) needs none.
    let mut deadline = None;
    loop {
        match head::parse(buf) {
            Head::Partial if buf.len() >= HAND_OFF_AT => return Some(Head::HandOff),
            Head::Partial => {}
            done => return Some(done),
        }
        buf.reserve(READ_CHUNK);
        let deadline = *deadline.get_or_insert_with(|| crate::clock::now() + header_read);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) => {
                io.telemetry().header_read_timeouts.fetch_add(1, Relaxed);
                return None;
            }
        }
    }
}

/// Gives the connection to hyper, with what was read of it and not
/// consumed; it serves the rest (and drains on shutdown) as any other.
/// The builder is made here, not held by every connection for the
/// hand-off that most never need.
async fn hand_off<H: Handler, T: Transport>(
    svc: H,
    io: Idle<T>,
    read: BytesMut,
    header_read: Duration,
    watcher: Watcher,
) {
    let io = TokioIo::new(Rewind::new(read.freeze(), io));
    let conn = http_builder(header_read)
        .serve_connection_with_upgrades(io, TowerToHyperService::new(svc.hyper()))
        .into_owned();
    let _ = Box::pin(watcher.watch(conn)).await;
}

/// Writes `resp`: the head and a small body in one write, a longer body
/// as its frames come.
///
/// The head is encoded here, before any wait; the future holds only the
/// body and the bytes to write (an `async fn` would hold the response
/// twice, once as given and once in parts).
fn respond<T: Transport>(
    io: &mut Idle<T>,
    resp: Response<RespBody>,
    head_request: bool,
    close: bool,
) -> impl Future<Output = Next> + Send + '_ {
    let (parts, mut body) = resp.into_parts();
    // The proxy's own answer may end the connection (refused framing).
    let close = close
        || parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| crate::hops::has_token(v.as_bytes(), "close"));
    let framing = encode::framing(parts.status, head_request, body.size_hint().exact());
    let small = match framing {
        Framing::Length(n) if n as usize <= GATHER => n as usize,
        _ => 0,
    };
    let mut out = Vec::with_capacity(256 + small);
    encode::head(&parts, body.fields(), framing, close, &mut out);
    crate::head_fields::recycle(parts.headers);
    async move {
        let sent = match framing {
            Framing::NoBody | Framing::AsDeclared => io.write_all(&out).await.is_ok(),
            Framing::Length(_) | Framing::Chunked => send_body(io, &mut body, framing, out).await,
        };
        // A no-op on TCP; TLS may hold the last records until flushed.
        let sent = sent && io.flush().await.is_ok();
        if sent && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// Sends `body` after the head already in `out`; `false` when the body
/// failed (the connection then ends without the last chunk, so that the
/// client sees the answer cut short) or the write did.
async fn send_body<T: Transport>(
    io: &mut Idle<T>,
    body: &mut RespBody,
    framing: Framing,
    mut out: Vec<u8>,
) -> bool {
    let chunked = framing == Framing::Chunked;
    let mut sent = 0u64;
    loop {
        let polled = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).now_or_never();
        let frame = match polled {
            Some(frame) => frame,
            None => {
                // Nothing more yet: what is gathered goes out meanwhile.
                if !out.is_empty()
                    && (io.write_all(&out).await.is_err() || io.flush().await.is_err())
                {
                    return false;
                }
                out.clear();
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => {
                let _ = io.write_all(&out).await;
                return false;
            }
            // Trailers are not sent on this path.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        if chunked {
            encode::chunk_start(data.len(), &mut out);
        }
        if data.len() > GATHER {
            if io.write_all(&out).await.is_err() || io.write_all(&data).await.is_err() {
                return false;
            }
            out.clear();
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            encode::chunk_end(&mut out);
        }
        if out.len() >= GATHER {
            if io.write_all(&out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
    if chunked {
        encode::last_chunk(&mut out);
    }
    let written = out.is_empty() || io.write_all(&out).await.is_ok();
    // A body other than its length leaves the client unsure where the
    // next response starts: the connection ends.
    written && (chunked || framing == Framing::Length(sent))
}
