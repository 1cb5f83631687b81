//! Response bodies sent downstream: streamed from upstream and counted,
//! or written by the proxy itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::head_fields::PassedFields;
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
    /// A short body written by the proxy.
    Local(Option<Bytes>),
    /// A small upstream body that had fully arrived with its head, and,
    /// from the own client, the head's fields ([`PassedFields`]).
    Arrived {
        /// The body.
        data: Option<Bytes>,
        /// The answer's fields, until written or made into its map.
        fields: Option<PassedFields>,
    },
    /// An upstream body whose first data frame was already read.
    Prefixed {
        /// The bytes read ahead (not a `Frame`: its trailers variant would
        /// double this body's size, and every response's, moved many times
        /// per request).
        first: Option<Bytes>,
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

    /// The fields of the own client's answer, which its header map lacks
    /// ([`PassedFields`]), taken out.
    pub fn take_fields(&mut self) -> Option<PassedFields> {
        match self {
            RespBody::Stream { body, .. } | RespBody::Prefixed { body, .. } => body.take_fields(),
            RespBody::Arrived { fields, .. } => fields.take(),
            RespBody::Local(_) => None,
        }
    }

    /// The fields of the own client's answer, as [`Self::take_fields`].
    pub fn fields(&self) -> Option<&PassedFields> {
        match self {
            RespBody::Stream { body, .. } | RespBody::Prefixed { body, .. } => body.fields(),
            RespBody::Arrived { fields, .. } => fields.as_ref(),
            RespBody::Local(_) => None,
        }
    }

    /// Reads the whole body (tests and small admin answers).
    pub async fn collect_bytes(self) -> Result<Bytes, BodyError> {
        Ok(self.collect().await?.to_bytes())
    }
}

/// `resp`'s header map, made first from the [`PassedFields`] its body
/// carries if it still does; fields already in the map follow them.
pub fn headers_mut(resp: &mut Response<RespBody>) -> &mut HeaderMap {
    if let Some(passed) = resp.body_mut().take_fields() {
        let added = std::mem::replace(resp.headers_mut(), passed.into_map());
        resp.headers_mut().extend(added);
    }
    resp.headers_mut()
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (polled, cell) = match self.get_mut() {
            RespBody::Local(data) | RespBody::Arrived { data, .. } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            RespBody::Stream { body, cell } => (Pin::new(body).poll_frame(cx), cell),
            RespBody::Prefixed { first, body, cell } => match first.take() {
                Some(data) => (Poll::Ready(Some(Ok(Frame::data(data)))), cell),
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
            RespBody::Local(data) | RespBody::Arrived { data, .. } => data.is_none(),
            RespBody::Prefixed { first, body, .. } => first.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Stream { body, .. } => body.size_hint(),
            RespBody::Local(data) | RespBody::Arrived { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RespBody::Prefixed { first, body, .. } => {
                let rest = body.size_hint();
                let n = first.as_ref().map_or(0, |d| d.len() as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A response is moved a dozen times or more per request (through the
    /// layers of futures that forward it, into the writer); with a
    /// trailers frame read ahead and the own client's connection inline it
    /// was 344 bytes.
    #[test]
    fn a_response_is_small_to_move() {
        let size = std::mem::size_of::<Response<RespBody>>();
        assert!(size <= 224, "a response is {size} bytes");
    }

    #[test]
    fn the_map_of_an_answer_is_made_once_from_its_passed_fields_then_its_own() {
        let fields = PassedFields::parsed(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
        let body = RespBody::Arrived {
            data: None,
            fields: Some(fields),
        };
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("x-added", HeaderValue::from_static("2"));
        let names: Vec<_> = headers_mut(&mut resp).keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a", "x-added"]);
        assert!(resp.body().fields().is_none(), "taken");
        assert_eq!(headers_mut(&mut resp).len(), 2, "made once");
    }
}
