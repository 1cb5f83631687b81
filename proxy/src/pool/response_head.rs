//! An upstream's HTTP/1 response head on the own client: its status and
//! fields, how its body is framed (RFC 9112 §6.3), and whether the
//! connection may carry another request after it. Anything ambiguous is
//! an error, so that a response is never passed on with a guessed length.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Response, StatusCode, Version};

use crate::head_fields::{FieldMarks, FieldNote, PassedFields, span};
use crate::hops::{NextHop, has_token};

/// Header lines a response head may have (as hyper's client).
const MAX_HEADERS: usize = 100;
const _: () = assert!(MAX_HEADERS <= crate::head_fields::MAX_PASSED_FIELDS);

/// A response head not complete within this many bytes is refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// None (a `HEAD` request's answer, `204`, `304`).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunks, to the last one.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status and version; its header map is empty (the body comes
    /// separately).
    pub response: Response<()>,
    /// Its fields, to be passed on.
    pub fields: PassedFields,
    /// How its body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once the body is
    /// read.
    pub keep_alive: bool,
}

/// Why a response head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not an HTTP/1 response head.
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    /// Longer than [`MAX_HEAD`].
    #[error("response head too large")]
    TooLarge,
    /// `Content-Length` values that are not one number.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A `101` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    SwitchingProtocols,
}

/// Parses the response head at the start of `buf`, consuming it; interim
/// (`1xx`) heads before it are consumed and skipped. `None` while the head
/// is incomplete.
pub fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, Malformed> {
    loop {
        // Left uninitialised: httparse writes the slots it fills.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Malformed::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Malformed::Head(e)),
        };
        let code = parsed.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| Malformed::Head(httparse::Error::Status))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Malformed::SwitchingProtocols);
        }
        if status.is_informational() {
            let _ = buf.split_to(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let (framing, close) = framing_of(parsed.headers, status, head_request)?;
        // Passed on without the hop-by-hop fields (`forward::answer`
        // strips only hyper's).
        let marks = {
            let hop = NextHop::of(parsed.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
            FieldMarks::new(parsed.headers.iter().map(|h| FieldNote {
                passes: hop.passes(h.name.as_bytes()),
                length: h.name.eq_ignore_ascii_case("content-length"),
                date: h.name.eq_ignore_ascii_case("date"),
            }))
        };
        let fields_at =
            (parsed.headers.first()).map_or(len, |h| span(buf, h.name.as_bytes()).start);
        let head = buf.split_to(len).freeze();
        let fields = PassedFields::new(head, fields_at, marks);
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        let keep_alive =
            version == Version::HTTP_11 && !close && framing != BodyFraming::UntilClose;
        return Ok(Some(ResponseHead {
            response,
            fields,
            framing,
            keep_alive,
        }));
    }
}

/// The body's framing from the head's fields, and whether the connection
/// must end after it (`Connection: close`, or both a length and chunks).
fn framing_of(
    fields: &[httparse::Header<'_>],
    status: StatusCode,
    head_request: bool,
) -> Result<(BodyFraming, bool), Malformed> {
    let mut close = false;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in fields {
        if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding counts: chunked must be it.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for item in h.value.split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return Err(Malformed::ContentLength);
                }
                length = Some(n);
            }
        }
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => BodyFraming::Empty,
        (false, Some(true), _) => BodyFraming::Chunked,
        (false, Some(false), _) => BodyFraming::UntilClose,
        (false, None, Some(n)) => BodyFraming::Length(n),
        (false, None, None) => BodyFraming::UntilClose,
    };
    // A length beside chunks is a smuggling shape: this message is read by
    // its chunks, and nothing after it on this connection is trusted.
    close |= chunked.is_some() && length.is_some();
    Ok((framing, close))
}

/// A `Content-Length` value: decimal digits only.
fn parse_length(digits: &[u8]) -> Result<u64, Malformed> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::ContentLength);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed::ContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        bytes: &[u8],
        head_request: bool,
    ) -> (Result<Option<ResponseHead>, Malformed>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf, head_request), buf)
    }

    fn framing(bytes: &[u8]) -> (BodyFraming, bool) {
        let (parsed, _) = head(bytes, false);
        let h = parsed.expect("valid").expect("complete");
        (h.framing, h.keep_alive)
    }

    #[test]
    fn a_length_frames_the_body_and_what_follows_stays() {
        let (parsed, left) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nok\n",
            false,
        );
        let h = parsed.expect("valid").expect("complete");
        assert_eq!(h.response.status(), StatusCode::OK);
        assert!(h.response.headers().is_empty(), "passed as bytes");
        assert_eq!(h.fields.clone().into_map()["x-a"], "b");
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&left[..], b"ok\n");
    }

    #[test]
    fn hop_by_hop_fields_are_read_for_framing_and_not_passed_on() {
        let (parsed, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nServer: up\r\n\r\n",
            false,
        );
        let h = parsed.expect("valid").expect("complete");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(
            !h.keep_alive,
            "the upstream's `close` still ends the connection"
        );
        let mut written = Vec::new();
        h.fields.write(&mut written, true);
        assert_eq!(written, b"Server: up\r\n");
        let map = h.fields.into_map();
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["server"]);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], (BodyFraming, bool)); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                (BodyFraming::Chunked, true),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                (BodyFraming::Chunked, true),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                (BodyFraming::UntilClose, false),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                (BodyFraming::Chunked, false),
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", (BodyFraming::UntilClose, false)),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                (BodyFraming::Empty, true),
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                (BodyFraming::Length(0), false),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(framing(bytes), want, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn connection_close_ends_the_connection_after_the_body() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n"),
            (BodyFraming::Length(0), false)
        );
    }

    #[test]
    fn a_head_requests_answer_has_no_body_whatever_its_length() {
        let (parsed, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(
            parsed.expect("valid").expect("complete").framing,
            BodyFraming::Empty
        );
    }

    #[test]
    fn interim_answers_are_skipped() {
        let (parsed, left) = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        let h = parsed.expect("valid").expect("complete");
        assert_eq!(h.response.status(), StatusCode::CREATED);
        assert!(left.is_empty());
    }

    #[test]
    fn an_incomplete_head_waits_and_a_huge_one_is_refused() {
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nX-A: b", false).0,
            Ok(None)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert_eq!(head(&huge, false).0.map(|_| ()), Err(Malformed::TooLarge));
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        let cases: [(&[u8], Malformed); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Malformed::ContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
                Malformed::ContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                Malformed::ContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                Malformed::ContentLength,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                Malformed::SwitchingProtocols,
            ),
            (
                b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
                Malformed::Head(httparse::Error::HeaderName),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                head(bytes, false).0.map(|_| ()),
                Err(want),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn repeated_equal_lengths_are_one_length() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n").0,
            BodyFraming::Length(3)
        );
    }
}
