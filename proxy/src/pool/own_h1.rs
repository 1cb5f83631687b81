//! The proxy's own HTTP/1.1 client, for requests without a body: the
//! request's head is written and its response read by the request's own
//! task. hyper's client connection runs a task of its own per connection
//! and hands it each request over a channel, so every proxied request
//! woke two tasks and crossed a channel twice; here it wakes none.
//!
//! Requests with a body or an upgrade go through hyper's client as
//! before. A response is refused ([`OwnError`]) rather than passed on
//! when its framing is ambiguous ([`response_head`]).

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::chunked::{ChunkError, Chunked, Step};
use super::response_head::{self, BodyFraming, Malformed};
use super::{ByKey, Io, Key, MAX_IDLE_PER_ENDPOINT};
use crate::body::request::ReqBody;
use crate::head_fields::{PassedFields, write_field};
use crate::read_buffers::{self, READ_CHUNK};

/// Why an exchange on the own client failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnError {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The upstream closed the connection before any byte of a response.
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    /// The upstream closed the connection inside a response.
    #[error("connection closed inside the response")]
    Cut,
    /// The response head was refused.
    #[error(transparent)]
    Head(#[from] Malformed),
    /// The chunked body was malformed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

/// An upstream connection of the own client, with what was read from it
/// and not yet used. It lives boxed (one allocation per connection, not
/// per request), so that every response body that holds it, moved several
/// times per request, carries a pointer instead.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// The pool it goes back to.
    key: Key,
}

impl Conn {
    /// A fresh connection to `key`.
    pub fn new(io: Io, key: Key) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            key,
        })
    }

    /// Whether an idle connection is still open and silent: a read that
    /// would block. A closed one, or one that sent bytes nobody asked
    /// for, is not reused.
    fn is_quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

thread_local! {
    /// Boxed as they are in use: taking one out and putting it back moves
    /// a pointer, with no allocation per request.
    #[allow(clippy::vec_box, reason = "a connection is boxed for its whole life")]
    static IDLE: RefCell<ByKey<Vec<Box<Conn>>>> = RefCell::new(ByKey::default());
}

/// An idle connection to `key`, if one is still usable.
pub fn take_idle(key: Key) -> Option<Box<Conn>> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(&key)?;
        while let Some(mut conn) = list.pop() {
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to its endpoint; it holds no buffer
/// while idle (its buffer goes to the thread's spares).
fn put_idle(mut conn: Box<Conn>) {
    read_buffers::give(std::mem::take(&mut conn.buf));
    IDLE.with_borrow_mut(|pool| {
        let list = pool.entry(conn.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(conn);
        }
    });
}

/// Whether `req` is this client's: no body and no upgrade.
pub fn takes(req: &Request<ReqBody>) -> bool {
    req.body().is_end_stream() && !req.headers().contains_key(header::UPGRADE)
}

/// A request ready to be written.
pub struct Outgoing {
    head: Vec<u8>,
    head_request: bool,
    /// Whether sending it twice is harmless (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

impl Outgoing {
    /// Encodes `req` (which [`takes`] accepted); its body is read to its
    /// end first, so that a mirror's copies of it end too.
    pub fn new(req: Request<ReqBody>) -> Outgoing {
        let (parts, mut body) = req.into_parts();
        while let Some(Some(Ok(_))) = body.frame().now_or_never() {}
        let mut head = Vec::with_capacity(256);
        encode_head(&parts.method, &parts.uri, &parts.headers, &mut head);
        crate::head_fields::recycle(parts.headers);
        Outgoing {
            head,
            head_request: parts.method == Method::HEAD,
            idempotent: parts.method.is_idempotent(),
        }
    }
}

/// The request line and fields; a bodiless request sends no framing of
/// its own.
fn encode_head(method: &Method, uri: &http::Uri, headers: &HeaderMap, out: &mut Vec<u8>) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if *name != header::TRANSFER_ENCODING {
            write_field(out, name, value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `request` on `conn` and reads the response head; the body is
/// read as the returned response's body is polled.
pub async fn exchange(
    mut conn: Box<Conn>,
    request: &Outgoing,
) -> Result<Response<OwnBody>, OwnError> {
    // Flushed: over mTLS, a write may leave records in the session.
    let written = async {
        conn.io.write_all(&request.head).await?;
        conn.io.flush().await
    };
    if let Err(e) = written.await {
        return Err(match e.kind() {
            // A kept connection the upstream had closed: nothing was read.
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                OwnError::ClosedBeforeResponse
            }
            _ => OwnError::Io(e),
        });
    }
    if conn.buf.capacity() == 0 {
        conn.buf = read_buffers::take();
    }
    let head = loop {
        if let Some(head) = response_head::parse(&mut conn.buf, request.head_request)? {
            break head;
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if conn.buf.is_empty() => return Err(OwnError::ClosedBeforeResponse),
            Ok(0) => return Err(OwnError::Cut),
            Ok(_) => {}
            Err(e) if conn.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(OwnError::ClosedBeforeResponse);
            }
            Err(e) => return Err(OwnError::Io(e)),
        }
    };
    let progress = match head.framing {
        BodyFraming::Empty | BodyFraming::Length(0) => Progress::Done,
        BodyFraming::Length(n) => Progress::Length(n),
        BodyFraming::Chunked => Progress::Chunked(Chunked::default()),
        BodyFraming::UntilClose => Progress::UntilClose,
    };
    let mut body = OwnBody {
        conn: Some(conn),
        progress,
        keep_alive: head.keep_alive,
        fields: Some(head.fields),
    };
    if matches!(body.progress, Progress::Done) {
        body.finish();
    }
    Ok(head.response.map(|()| body))
}

/// How much of a body is left.
#[derive(Debug)]
enum Progress {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body read off its connection, which goes back to the pool
/// once the body is read to its end (and is closed if it is dropped
/// before).
#[derive(Debug)]
pub struct OwnBody {
    conn: Option<Box<Conn>>,
    progress: Progress,
    keep_alive: bool,
    /// The answer's fields, until written or made into its map.
    fields: Option<PassedFields>,
}

impl OwnBody {
    /// The answer's fields, if they were not taken yet.
    pub fn take_fields(&mut self) -> Option<PassedFields> {
        self.fields.take()
    }

    /// The answer's fields, if they were not taken yet.
    pub fn fields(&self) -> Option<&PassedFields> {
        self.fields.as_ref()
    }

    /// The body is over: its connection is kept if it may carry another
    /// request and nothing was sent after the body.
    fn finish(&mut self) {
        self.progress = Progress::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            put_idle(conn);
        }
    }

    /// The next frame from what is buffered, if any; `Ok(None)` when more
    /// bytes are needed.
    fn buffered_frame(&mut self) -> Result<Option<Frame<Bytes>>, OwnError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let frame = match &mut self.progress {
            Progress::Done => return Ok(None),
            Progress::Length(_) | Progress::UntilClose if conn.buf.is_empty() => return Ok(None),
            Progress::Length(left) => {
                let take = (*left).min(conn.buf.len() as u64);
                *left -= take;
                Frame::data(conn.buf.split_to(take as usize).freeze())
            }
            Progress::UntilClose => Frame::data(conn.buf.split().freeze()),
            Progress::Chunked(dec) => match dec.next(&mut conn.buf)? {
                Step::Frame(frame) => frame,
                Step::NeedMore => return Ok(None),
                Step::Done => {
                    self.finish();
                    return Ok(None);
                }
            },
        };
        if matches!(self.progress, Progress::Length(0)) {
            self.finish();
        }
        Ok(Some(frame))
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = OwnError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OwnError>>> {
        let this = self.get_mut();
        loop {
            match this.buffered_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(READ_CHUNK);
            match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
                Ok(0) => {
                    // The end of a body read to the close; anywhere else a
                    // body cut short.
                    let ended = matches!(this.progress, Progress::UntilClose);
                    this.conn = None;
                    this.progress = Progress::Done;
                    return Poll::Ready((!ended).then_some(Err(OwnError::Cut)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(OwnError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.progress, Progress::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.progress {
            Progress::Length(n) => SizeHint::with_exact(n),
            Progress::Done => SizeHint::with_exact(0),
            Progress::Chunked(_) | Progress::UntilClose => SizeHint::default(),
        }
    }
}
