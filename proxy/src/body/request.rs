//! Request bodies: as received downstream, and as forwarded upstream
//! (streamed and counted, a mirror's copy, or empty for a retry).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::mirror::{CopyFrames, Tee};
use crate::telemetry::Cell;

/// A downstream request's body as it was received.
#[derive(Debug)]
pub enum Received {
    /// Read by hyper.
    Hyper(Incoming),
    /// None: the proxy's own HTTP/1 path ([`crate::h1`]) takes only
    /// requests without a body.
    Empty,
}

impl Body for Received {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Received::Hyper(body) => Pin::new(body).poll_frame(cx),
            Received::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(body) => body.is_end_stream(),
            Received::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(body) => body.size_hint(),
            Received::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A body sent upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// The downstream request's body, streamed.
    Stream {
        /// The body.
        body: Received,
        /// Where its bytes are counted.
        cell: Arc<Cell>,
        /// Its mirrors' copies, fed as it is read.
        tee: Option<Box<Tee>>,
    },
    /// A mirror's copy of a downstream body, frame by frame.
    Copy {
        /// The frames, in order; ended when the original ends.
        frames: CopyFrames,
        /// The original's size hint (its length, when it has one).
        hint: SizeHint,
    },
    /// No body (a retry of a bodiless request).
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream { body, cell, tee } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            cell.add_bytes(data.len() as u64, 0);
                            if let Some(t) = tee {
                                t.data(data);
                            }
                        }
                        // With a length, the last frame may be the last
                        // poll: the copies end with it.
                        if body.is_end_stream()
                            && let Some(t) = tee
                        {
                            t.end();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(t) = tee {
                            t.end();
                        }
                    }
                    // A failed original gives its copies up (on drop).
                    Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                }
                polled
            }
            ReqBody::Copy { frames, .. } => {
                frames.poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
            }
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream { body, .. } => body.is_end_stream(),
            // A hint only: the queue may still get frames.
            ReqBody::Copy { .. } => false,
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream { body, .. } => body.size_hint(),
            ReqBody::Copy { hint, .. } => *hint,
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A downstream request's body and the mirrors' copies it feeds.
#[derive(Debug)]
pub struct Downstream {
    /// The body.
    pub body: Received,
    /// The copies, if the request is mirrored.
    pub tee: Option<Box<Tee>>,
}
