//! Response bodies sent downstream: streamed from upstream and counted,
//! or written by the proxy itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::pool::{BodyError, UpBody};
use crate::telemetry::Cell;

/// A body sent downstream.
#[derive(Debug)]
pub enum RespBody {
    /// The upstream response's body, streamed (trailers included).
    Stream {
        /// The body.
        body: UpBody,
        /// Where its bytes are counted.
        cell: Arc<Cell>,
    },
    /// A short body written by the proxy, or a small upstream body that
    /// had fully arrived with its headers.
    Local(Option<Bytes>),
    /// An upstream body whose first frame was already read.
    Prefixed {
        /// The frame read ahead.
        first: Option<Frame<Bytes>>,
        /// The rest.
        body: UpBody,
        /// Where its bytes are counted.
        cell: Arc<Cell>,
    },
}

impl RespBody {
    /// A body of `text`.
    pub fn text(text: &'static str) -> RespBody {
        RespBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    /// No body.
    pub fn empty() -> RespBody {
        RespBody::Local(None)
    }

    /// Reads the whole body (tests and small admin answers).
    pub async fn collect_bytes(self) -> Result<Bytes, BodyError> {
        Ok(self.collect().await?.to_bytes())
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (polled, cell) = match self.get_mut() {
            RespBody::Local(data) => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            RespBody::Stream { body, cell } => (Pin::new(body).poll_frame(cx), cell),
            RespBody::Prefixed { first, body, cell } => match first.take() {
                Some(frame) => (Poll::Ready(Some(Ok(frame))), cell),
                None => (Pin::new(body).poll_frame(cx), cell),
            },
        };
        // An upstream body's bytes are counted as they pass.
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            cell.add_bytes(0, data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Stream { body, .. } => body.is_end_stream(),
            RespBody::Local(data) => data.is_none(),
            RespBody::Prefixed { first, body, .. } => first.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Stream { body, .. } => body.size_hint(),
            RespBody::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RespBody::Local(None) => SizeHint::with_exact(0),
            RespBody::Prefixed { first, body, .. } => {
                let rest = body.size_hint();
                let n = first
                    .as_ref()
                    .and_then(|f| f.data_ref())
                    .map_or(0, |d| d.len() as u64);
                // Built afresh: raising the lower bound of the rest's hint
                // past its upper one first would panic.
                let mut hint = SizeHint::new();
                if let Some(u) = rest.upper() {
                    hint.set_upper(u + n);
                }
                hint.set_lower(rest.lower() + n);
                hint
            }
        }
    }
}
