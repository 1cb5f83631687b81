//! Writing a response on the proxy's own HTTP/1 path: its framing, chosen
//! from the status, the request's method and what the body says of its
//! length, and its head, written once into the buffer that carries it.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header;
use http::response::Parts;

use crate::head_fields::{PassedFields, write_field};

/// How a response's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, and no length either (`1xx`, `204`).
    NoBody,
    /// No body; the headers say what a `GET` would have had (a `HEAD`
    /// request, `304`), and pass as they are.
    AsDeclared,
    /// A body of this many bytes.
    Length(u64),
    /// A body of unknown length, sent in chunks.
    Chunked,
}

/// The framing of a response of `status` to a request (`head`: a `HEAD`)
/// whose body knows its length (`exact`) or not.
pub fn framing(status: StatusCode, head: bool, exact: Option<u64>) -> Framing {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return Framing::NoBody;
    }
    if head || status == StatusCode::NOT_MODIFIED {
        return Framing::AsDeclared;
    }
    exact.map_or(Framing::Chunked, Framing::Length)
}

/// Writes the status line and headers (an upstream answer's `passed`
/// fields first, then the map's); the framing headers are this path's own
/// (what the headers said of length gives way to what the body is), and
/// so is `connection`, which says `close` when the connection ends after
/// this response.
pub fn head(
    parts: &Parts,
    passed: Option<&PassedFields>,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let own_length = framing != Framing::AsDeclared;
    let mut dated = passed.is_some_and(|passed| passed.write(out, !own_length));
    for (name, value) in &parts.headers {
        let framing_header = *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING;
        if (own_length && framing_header) || *name == header::CONNECTION {
            continue;
        }
        dated |= *name == header::DATE;
        write_field(out, name, value.as_bytes());
    }
    match framing {
        Framing::Length(n) => {
            // Not `write!`: the formatting machinery cost more than the
            // rest of the head's encoding.
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::NoBody | Framing::AsDeclared => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the start of a chunk of `len` bytes (its data follows, then
/// [`chunk_end`]).
pub fn chunk_start(len: usize, out: &mut Vec<u8>) {
    let _ = write!(out, "{len:x}\r\n");
}

/// Ends a chunk.
pub fn chunk_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Ends a chunked body (no trailers: HTTP/1 clients of this path did not
/// ask for them, or hyper would serve them).
pub fn last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

thread_local! {
    /// The `date` value of the current second, formatted once per second
    /// per worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Writes the current `date` value (the proxy's own answers lack one).
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Response};

    fn written(resp: Response<()>, framing: Framing, close: bool) -> String {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        head(&parts, None, framing, close, &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
        for (k, v) in headers {
            resp.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        resp
    }

    #[test]
    fn no_body_for_1xx_204_and_as_declared_for_head_and_304() {
        assert_eq!(
            framing(StatusCode::NO_CONTENT, false, Some(0)),
            Framing::NoBody
        );
        assert_eq!(framing(StatusCode::CONTINUE, false, None), Framing::NoBody);
        assert_eq!(framing(StatusCode::OK, true, Some(0)), Framing::AsDeclared);
        assert_eq!(
            framing(StatusCode::NOT_MODIFIED, false, None),
            Framing::AsDeclared
        );
        assert_eq!(framing(StatusCode::OK, false, Some(5)), Framing::Length(5));
        assert_eq!(framing(StatusCode::OK, false, None), Framing::Chunked);
    }

    #[test]
    fn the_body_says_the_length_whatever_the_headers_said() {
        let text = written(
            response(
                200,
                &[("content-length", "99"), ("x-a", "1"), ("date", "d")],
            ),
            Framing::Length(5),
            false,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn a_head_answer_keeps_the_declared_length_and_a_closing_one_says_so() {
        let text = written(
            response(
                200,
                &[
                    ("content-length", "42"),
                    ("connection", "keep-alive"),
                    ("date", "d"),
                ],
            ),
            Framing::AsDeclared,
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\ndate: d\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn an_answers_passed_fields_come_first_and_their_date_is_kept() {
        let passed = PassedFields::parsed(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 99\r\nDate: d\r\n\r\n",
        );
        let (parts, ()) = response(200, &[("x-added", "1")]).into_parts();
        let mut out = Vec::new();
        head(&parts, Some(&passed), Framing::Length(5), false, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: d\r\nx-added: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        head(&parts, Some(&passed), Framing::AsDeclared, false, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 99\r\nDate: d\r\nx-added: 1\r\n\r\n"
        );
    }

    #[test]
    fn an_unknown_length_is_chunked_and_a_missing_date_is_added() {
        let text = written(
            response(503, &[("content-length", "7")]),
            Framing::Chunked,
            false,
        );
        assert!(
            text.starts_with(
                "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let mut out = Vec::new();
        chunk_start(300, &mut out);
        out.extend_from_slice(b"...");
        chunk_end(&mut out);
        last_chunk(&mut out);
        assert_eq!(out, b"12c\r\n...\r\n0\r\n\r\n");
    }
}
