//! Header fields of an HTTP/1 head parsed by `httparse`, kept as ranges
//! of the head's bytes so that, once the head is split off its read
//! buffer, every value shares those bytes instead of being copied: a
//! request head's (the own HTTP/1 server path), made into a header map,
//! and an upstream answer's (the own HTTP/1 upstream client), passed on
//! as lines.
//!
//! A request's map is given back once its head is written, and the
//! thread's next heads are parsed into it: two allocations and frees per
//! request fewer. An upstream answer's fields get no map unless something
//! reads them ([`PassedFields`]).

use std::cell::RefCell;
use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Where one header's name and value lie in the head.
pub type Field = (Range<usize>, Range<usize>);

/// A head's fields, on the stack up to `N`: left uninitialised until
/// filled, where an array of `N` was zeroed for every head (2-3 KiB each).
pub type Fields<const N: usize> = SmallVec<[Field; N]>;

/// Where `part` (a slice of `buf`, as `httparse` hands them out) lies in
/// `buf`.
pub fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// The fields of `parsed` as ranges of `buf`, appended to `out`.
pub fn spans<const N: usize>(buf: &[u8], parsed: &[httparse::Header<'_>], out: &mut Fields<N>) {
    out.extend(
        parsed
            .iter()
            .map(|h| (span(buf, h.name.as_bytes()), span(buf, h.value))),
    );
}

/// Empty maps a thread keeps: as many as the buffers it keeps
/// ([`crate::read_buffers`]); under 100 KiB for maps of a usual head's
/// size (about 650 bytes each).
const KEPT_MAPS: usize = 128;

/// A map with room for more fields than this is not kept: one odd head
/// does not leave its size to every later one.
const KEPT_MAP_FIELDS: usize = 48;

thread_local! {
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `map`'s memory for a head parsed later on this thread; its
/// fields are dropped now.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > KEPT_MAP_FIELDS {
        return;
    }
    map.clear();
    SPARE_MAPS.with_borrow_mut(|spare| {
        if spare.len() < KEPT_MAPS {
            spare.push(map);
        }
    });
}

/// The header map of `fields` in `head`, with room for `room` more; `None`
/// when `http` refuses a name or value that `httparse` took.
pub fn header_map(head: &Bytes, fields: &[Field], room: usize) -> Option<HeaderMap> {
    let mut headers = SPARE_MAPS.with_borrow_mut(Vec::pop).unwrap_or_default();
    headers.reserve(fields.len() + room);
    for (name, value) in fields {
        let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

/// Writes one field line.
pub fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An upstream answer's fields, kept as its head's bytes and passed on as
/// they came (names in the upstream's case, as nginx passes them), less
/// the hop-by-hop ones: parsing them into a header map only to write the
/// map out again cost about a tenth of the proxy's instructions per
/// request. They ride with the answer's body ([`crate::pool::UpBody`],
/// [`crate::body::RespBody`]), while its header map stays empty (carried
/// in the response's extensions instead, they cost three allocations and
/// a hash map); whatever reads or changes the fields (a response filter,
/// hyper's server) gets them as a map through
/// [`crate::body::headers_mut`]. Boxed, so that the bodies it rides in
/// stay small: each is moved several times.
#[derive(Debug, Clone)]
pub struct PassedFields(Box<Passed>);

#[derive(Debug, Clone)]
struct Passed {
    /// The whole head, status line included.
    head: Bytes,
    /// Where its first field line starts.
    fields_at: usize,
    /// Which of its fields pass, and what they are.
    marks: FieldMarks,
}

/// What [`FieldMarks::new`] is told of one field.
#[derive(Debug, Clone, Copy)]
pub struct FieldNote {
    /// It is passed on.
    pub passes: bool,
    /// It is a `Content-Length`.
    pub length: bool,
    /// It is a `Date`.
    pub date: bool,
}

/// Field lines [`FieldMarks`] can describe: an answer's head may have no
/// more than this.
pub const MAX_PASSED_FIELDS: usize = 128;

/// The `u64` words of a [`FieldMarks`] bit set.
const MARK_WORDS: usize = MAX_PASSED_FIELDS.div_ceil(64);

/// A head's fields as bits, by their order: which pass, which are a
/// `Content-Length`, and whether a `Date` passes. In `u64` words rather
/// than `u128`s, whose 16-byte alignment would widen every response that
/// carries them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FieldMarks {
    /// Bit `i`: field `i` is not passed on.
    dropped: [u64; MARK_WORDS],
    /// Bit `i`: field `i` is a `Content-Length`.
    lengths: [u64; MARK_WORDS],
    dated: bool,
}

/// Whether bit `i` of `bits` is set; `None` past them.
fn bit(bits: &[u64; MARK_WORDS], i: usize) -> Option<bool> {
    Some(bits.get(i / 64)? & (1 << (i % 64)) != 0)
}

impl FieldMarks {
    /// From one note per field, in order; a field past
    /// [`MAX_PASSED_FIELDS`] is dropped.
    pub fn new(notes: impl IntoIterator<Item = FieldNote>) -> FieldMarks {
        let mut marks = FieldMarks::default();
        for (i, note) in notes.into_iter().take(MAX_PASSED_FIELDS).enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if !note.passes {
                marks.dropped[word] |= bit;
                continue;
            }
            if note.length {
                marks.lengths[word] |= bit;
            }
            marks.dated |= note.date;
        }
        marks
    }
}

impl PassedFields {
    /// The fields of `head` from `fields_at` on, as `marks` says.
    pub fn new(head: Bytes, fields_at: usize, marks: FieldMarks) -> PassedFields {
        PassedFields(Box::new(Passed {
            head,
            fields_at,
            marks,
        }))
    }

    /// The passed field lines as ranges of the head, without their line
    /// ends; with each, whether it is a `Content-Length`. The lines were
    /// checked when the head was parsed (`httparse`: a name, a colon, a
    /// value, no folding).
    fn lines(&self) -> impl Iterator<Item = (Range<usize>, bool)> + '_ {
        let mut at = self.0.fields_at;
        let mut i = 0;
        std::iter::from_fn(move || {
            loop {
                let rest = self.0.head.get(at..)?;
                let end = at + memchr::memchr(b'\n', rest)?;
                let line = at..end - usize::from(end > at && self.0.head[end - 1] == b'\r');
                at = end + 1;
                if line.is_empty() {
                    return None;
                }
                let dropped = bit(&self.0.marks.dropped, i)?;
                let length = bit(&self.0.marks.lengths, i)?;
                i += 1;
                if !dropped {
                    return Some((line, length));
                }
            }
        })
    }

    /// Writes the passed field lines, a `Content-Length` only
    /// `with_length` (the own path writes its own framing); whether one
    /// was a `Date`.
    pub fn write(&self, out: &mut Vec<u8>, with_length: bool) -> bool {
        for (line, length) in self.lines() {
            if with_length || !length {
                out.extend_from_slice(&self.0.head[line]);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.0.marks.dated
    }

    /// The passed fields as a header map. `http` takes every name and
    /// value that `httparse` does; one it refused would be left out.
    pub fn into_map(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (line, _) in self.lines() {
            let text = &self.0.head[line.clone()];
            let Some(colon) = text.iter().position(|&b| b == b':') else {
                continue;
            };
            let after = &text[colon + 1..];
            let value = after.trim_ascii();
            let start = line.start + colon + 1 + (after.len() - after.trim_ascii_start().len());
            let name = HeaderName::from_bytes(&text[..colon]);
            let value =
                HeaderValue::from_maybe_shared(self.0.head.slice(start..start + value.len()));
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// The fields of `head` (a response head), every one passing but
    /// `Connection` (tests).
    #[cfg(test)]
    pub(crate) fn parsed(head: &'static [u8]) -> PassedFields {
        let head = Bytes::from_static(head);
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(parsed.parse(&head).expect("parses").is_complete());
        let notes = parsed.headers.iter().map(|h| FieldNote {
            passes: !h.name.eq_ignore_ascii_case("connection"),
            length: h.name.eq_ignore_ascii_case("content-length"),
            date: h.name.eq_ignore_ascii_case("date"),
        });
        let marks = FieldMarks::new(notes);
        let at = parsed
            .headers
            .first()
            .map_or(head.len(), |h| span(&head, h.name.as_bytes()).start);
        PassedFields::new(head.clone(), at, marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_the_heads_bytes() {
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(parsed.parse(&head).expect("parses").is_complete());
        let mut fields = Fields::<4>::new();
        spans(&head, parsed.headers, &mut fields);
        let map = header_map(&head, &fields, 0).expect("valid");
        let values: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(values[0].as_bytes().as_ptr(), head[22..].as_ptr());
    }

    #[test]
    fn a_recycled_map_comes_back_empty_and_is_parsed_into_again() {
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n");
        let fields = [(17..18, 20..21), (23..24, 26..27)];
        let first = header_map(&head, &fields, 0).expect("valid");
        let capacity = first.capacity();
        recycle(first);
        let spare = SPARE_MAPS.with_borrow(|s| s.last().map(HeaderMap::len));
        assert_eq!(spare, Some(0), "kept, and its fields dropped");
        let second = header_map(&head, &fields[..1], 0).expect("valid");
        assert_eq!(second.capacity(), capacity, "the same map again");
        assert_eq!(second.len(), 1);
        assert_eq!(second["a"], "1");
        assert!(second.get("b").is_none());
    }

    #[test]
    fn passed_fields_are_written_as_they_came_less_the_dropped_ones() {
        let fields = PassedFields::parsed(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: close\r\nContent-Length: 2\r\nDate: d\r\nX-Bare: lf\n\r\n",
        );
        let mut out = Vec::new();
        assert!(fields.write(&mut out, false), "a date passed");
        assert_eq!(out, b"Server: up\r\nDate: d\r\nX-Bare: lf\r\n");
        out.clear();
        fields.write(&mut out, true);
        assert_eq!(
            out,
            b"Server: up\r\nContent-Length: 2\r\nDate: d\r\nX-Bare: lf\r\n"
        );
        let undated = PassedFields::parsed(b"HTTP/1.1 204 No Content\r\nDate: d\r\n\r\n");
        assert!(undated.write(&mut Vec::new(), false));
        let none = PassedFields::parsed(b"HTTP/1.1 204 No Content\r\n\r\n");
        out.clear();
        assert!(!none.write(&mut out, true));
        assert!(out.is_empty());
    }

    #[test]
    fn passed_fields_become_a_map_whose_values_share_the_head() {
        let fields = PassedFields::parsed(
            b"HTTP/1.1 200 OK\r\nX-A:  1 \r\nConnection: x-a\r\nx-a: 2\r\nB:\r\n\r\n",
        );
        let head = fields.0.head.clone();
        let map = fields.into_map();
        let values: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(values[0].as_bytes().as_ptr(), head[23..].as_ptr());
        assert_eq!(map["b"], "");
        assert!(map.get("connection").is_none());
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn a_field_past_the_marks_is_dropped() {
        let notes = (0..MAX_PASSED_FIELDS + 2).map(|_| FieldNote {
            passes: true,
            length: false,
            date: false,
        });
        let marks = FieldMarks::new(notes);
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_PASSED_FIELDS + 2 {
            head.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let fields = PassedFields::new(Bytes::from(head), 17, marks);
        assert_eq!(fields.into_map().len(), MAX_PASSED_FIELDS);
    }

    #[test]
    fn a_map_grown_past_the_kept_size_is_dropped() {
        let mut big = HeaderMap::with_capacity(KEPT_MAP_FIELDS + 1);
        big.insert("x", http::HeaderValue::from_static("1"));
        let before = SPARE_MAPS.with_borrow(Vec::len);
        recycle(big);
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), before);
    }
}
