//! Request framing the proxy refuses, so that it never forwards a request
//! whose body boundaries an upstream might read another way (request
//! smuggling). hyper answers 400 to two different `Content-Length`s, a
//! `Transfer-Encoding` that does not end in `chunked`, and obs-fold, before
//! the proxy sees the request; it handles `Content-Length` with
//! `Transfer-Encoding` as RFC 9112 section 6.3 allows (the length dropped,
//! the body read as chunked, the connection closed after the answer). What
//! is left to the proxy is a body that breaks its own framing, which only
//! shows once the body is read.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::RespBody;

/// What a refused request is told: its body broke its own framing (an
/// invalid chunk size, a body shorter than its length).
pub const REFUSED: &str = "the request body does not match its framing\n";

/// Whether an upstream send failed because the downstream request's own
/// body failed (a bad chunk, a body cut short): hyper reports that as a
/// user error caused by the body's own `hyper::Error`. Other user errors
/// (a connection whose dispatch task is gone) are the upstream's.
pub fn downstream_body_failed(e: &hyper::Error) -> bool {
    e.is_user()
        && std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some())
}

/// The answer to refused framing: 400, and the connection closed, since
/// where the next request would start is unknown.
pub fn refusal() -> Response<RespBody> {
    let mut resp = Response::new(RespBody::text(REFUSED));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_400_that_closes_the_connection() {
        let refused = refusal();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.headers()[header::CONNECTION], "close");
    }
}
