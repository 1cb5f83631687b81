//! Decoding a chunked response body (RFC 9112 §7.1) off the connection's
//! read buffer, strictly: a size line that is not hex digits (with an
//! optional extension) ended by CRLF, a chunk not followed by CRLF, or a
//! size past `u64` ends the body with an error, never a guess about where
//! the next message starts.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::Frame;

/// A size line (with its extension) longer than this is refused.
const MAX_SIZE_LINE: usize = 1024;

/// A trailer section longer than this is refused.
const MAX_TRAILERS: usize = 16 * 1024;

/// Trailer fields kept, at most.
const MAX_TRAILER_FIELDS: usize = 32;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The size line is not a hex size and an optional extension.
    #[error("invalid chunk size line")]
    Size,
    /// A chunk's data is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    /// The trailer section is malformed or too long.
    #[error("invalid chunked trailers")]
    Trailers,
}

/// What the decoder made of the bytes buffered so far.
#[derive(Debug)]
pub enum Step {
    /// A frame: data, or the trailers at the end.
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    NeedMore,
    /// The body is over; bytes after it stay in the buffer.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// A chunked body's decoding state.
#[derive(Debug)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size }
    }
}

/// The position of the first CRLF in `buf`.
fn crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The size in a size line (without its CRLF).
fn size_of(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(ChunkError::Size);
    }
    let rest = &line[digits..];
    // An extension: `;` after optional whitespace, then visible bytes.
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[blank..];
    let ext_ok = rest.is_empty()
        || (rest[0] == b';'
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)));
    if !ext_ok {
        return Err(ChunkError::Size);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ChunkError::Size)?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError::Size)
}

impl Chunked {
    /// Decodes the next step from `buf`, consuming what it used.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(end) = crlf(buf) else {
                        return if buf.len() > MAX_SIZE_LINE {
                            Err(ChunkError::Size)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let size = size_of(&buf[..end])?;
                    let _ = buf.split_to(end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = left.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match left - take {
                        0 => State::DataEnd,
                        n => State::Data(n),
                    };
                    return Ok(Step::Frame(Frame::data(data)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::DataEnd);
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => return self.trailers(buf),
                State::Done => return Ok(Step::Done),
            }
        }
    }

    /// The trailer section, once whole: a trailers frame, or the end.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            self.state = State::Done;
            return Ok(Step::Done);
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if buf.len() > MAX_TRAILERS {
                Err(ChunkError::Trailers)
            } else {
                Ok(Step::NeedMore)
            };
        };
        let section = buf.split_to(end + 4);
        let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let parsed = match httparse::parse_headers(&section, &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(ChunkError::Trailers),
        };
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for h in parsed {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ChunkError::Trailers)?;
            let value = http::HeaderValue::from_bytes(h.value).map_err(|_| ChunkError::Trailers)?;
            trailers.append(name, value);
        }
        self.state = State::Done;
        Ok(Step::Frame(Frame::trailers(trailers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed `step` bytes at a time: the data, and the
    /// trailers if any.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match dec.next(&mut buf)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::NeedMore if fed < input.len() => {
                    let to = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..to]);
                    fed = to;
                }
                Step::NeedMore => return Err(ChunkError::Size),
                Step::Done => return Ok((data, trailers)),
            }
        }
    }

    #[test]
    fn chunks_decode_the_same_however_the_bytes_arrive() {
        let input = b"5\r\nhello\r\n7;name=v\r\n, world\r\n0\r\n\r\n";
        for step in 1..=input.len() {
            let (data, trailers) = decode(input, step).expect("valid");
            assert_eq!(data, b"hello, world", "fed {step} at a time");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_come_as_a_last_frame() {
        let input = b"2\r\nok\r\n0\r\nGrpc-Status: 0\r\nX-T: a\r\n\r\n";
        for step in 1..=input.len() {
            let (data, trailers) = decode(input, step).expect("valid");
            assert_eq!(data, b"ok");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["x-t"], "a");
        }
    }

    #[test]
    fn bytes_after_the_last_chunk_stay_for_the_next_message() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"0\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        assert!(matches!(dec.next(&mut buf), Ok(Step::Done)));
        assert!(matches!(dec.next(&mut buf), Ok(Step::Done)));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn malformed_sizes_and_chunk_ends_are_errors() {
        let cases: [(&[u8], ChunkError); 8] = [
            (b"x\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"5 5\r\nhello\r\n", ChunkError::Size),
            (b"10000000000000000\r\n", ChunkError::Size),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5\r\nhelloXY0\r\n\r\n", ChunkError::DataEnd),
            (b"0\r\nBad Name: x\r\n\r\n", ChunkError::Trailers),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(input, input.len()).map(|_| ()),
                Err(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_size_line_that_never_ends_is_refused() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&[b'a'; MAX_SIZE_LINE + 1][..]);
        assert_eq!(dec.next(&mut buf).map(|_| ()), Err(ChunkError::Size));
    }
}
