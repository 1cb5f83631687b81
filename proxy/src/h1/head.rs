//! Reading a request head on the proxy's own HTTP/1 path: which requests
//! the path takes, and which it leaves to hyper.
//!
//! It takes an HTTP/1.1 request in origin form with no body (no
//! `Transfer-Encoding`, no length but `0`), no upgrade, no `Expect` and no
//! `TE`. Everything else, malformed heads included, is handed to hyper
//! before any byte is consumed, so that hyper's framing rules (and its
//! `400`s) hold for it exactly as before.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Method, Request, Uri, Version};

use crate::head_fields::{Fields, header_map, span, spans};
use crate::hops::{FORWARDED_FIELDS, has_token};

/// Header lines a head may have on this path; a head with more goes to
/// hyper, which takes up to 100.
const MAX_HEADERS: usize = 64;

/// What the bytes read so far hold.
// Returned once per request and matched at once: boxing the request would
// cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet.
    Partial,
    /// A request this path serves (the head is consumed from the buffer).
    Request {
        /// The request.
        req: Request<()>,
        /// The client asked for the connection to end after it.
        close: bool,
    },
    /// A request this path does not serve, or bytes that are not one:
    /// nothing was consumed, hyper is to read them.
    HandOff,
    /// A head httparse took whose target or fields `http` refuses (the
    /// head is consumed): answered `400`, the connection closed, as hyper
    /// would.
    Invalid,
}

/// Why a well-formed head is not this path's.
fn hand_off_for(name: &[u8], value: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("transfer-encoding") || is("expect") || is("upgrade") || is("te") {
        return true;
    }
    if is("content-length") {
        return value.trim_ascii() != b"0";
    }
    is("connection") && has_token(value, "upgrade")
}

/// Parses the head at the start of `buf`; a request this path serves is
/// split off `buf`, and its header values share those bytes.
pub fn parse(buf: &mut BytesMut) -> Head {
    // Left uninitialised: httparse writes the slots it fills, and zeroing
    // all of them was a memset per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::HandOff,
    };
    let (Some(1), Some(method), Some(path)) = (parsed.version, parsed.method, parsed.path) else {
        return Head::HandOff;
    };
    if !path.starts_with('/') {
        return Head::HandOff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::HandOff;
    };
    // Where each piece lies in `buf`, so that it can be shared once the
    // head is split off (the parsed slices borrow `buf`).
    let target = span(buf, path.as_bytes());
    let mut fields = Fields::<MAX_HEADERS>::new();
    let mut close = false;
    for h in parsed.headers.iter() {
        if hand_off_for(h.name.as_bytes(), h.value) {
            return Head::HandOff;
        }
        close |= h.name.eq_ignore_ascii_case("connection") && has_token(h.value, "close");
    }
    spans(buf, parsed.headers, &mut fields);
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        return Head::Invalid;
    };
    let Some(headers) = header_map(&head, &fields, FORWARDED_FIELDS) else {
        return Head::Invalid;
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Head::Request { req, close }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf), buf)
    }

    fn handed_off(bytes: &[u8]) -> bool {
        let (head, left) = parsed(bytes);
        matches!(head, Head::HandOff) && &left[..] == bytes
    }

    fn assert_all_handed_off(cases: &[&[u8]]) {
        for bytes in cases {
            assert!(handed_off(bytes), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_bodiless_request_is_split_off_and_what_follows_stays() {
        let (head, left) = parsed(
            b"GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let Head::Request { req, close } = head else {
            panic!("not taken: {head:?}");
        };
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "app.test");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(&left[..], b"GET /next");
    }

    #[test]
    fn a_head_cut_short_waits_for_more() {
        let (head, left) = parsed(b"GET / HTTP/1.1\r\nHost: a");
        assert!(matches!(head, Head::Partial));
        assert_eq!(left.len(), 23);
    }

    #[test]
    fn connection_close_in_any_case_among_tokens_is_kept() {
        let (head, _) = parsed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n");
        assert!(matches!(head, Head::Request { close: true, .. }));
    }

    #[test]
    fn a_zero_length_is_no_body_and_taken() {
        let (head, _) = parsed(b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(head, Head::Request { .. }));
    }

    #[test]
    fn bodies_upgrades_expectations_and_other_versions_go_to_hyper_untouched() {
        let cases: [&[u8]; 10] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        assert_all_handed_off(&cases);
    }

    #[test]
    fn malformed_heads_go_to_hyper_which_answers_them() {
        let cases: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ];
        assert_all_handed_off(&cases);
    }

    #[test]
    fn more_headers_than_this_path_holds_go_to_hyper() {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            bytes.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert!(handed_off(&bytes));
    }

    #[test]
    fn a_target_http_refuses_is_invalid_and_consumed() {
        let (head, left) = parsed(b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(head, Head::Invalid), "{head:?}");
        assert!(left.is_empty());
    }
}
