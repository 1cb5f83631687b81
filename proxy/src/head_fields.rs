//! Header fields of an HTTP/1 head parsed by `httparse`, kept as ranges
//! of the head's bytes so that, once the head is split off its read
//! buffer, every value shares those bytes instead of being copied. Used
//! for request heads (the own HTTP/1 server path) and response heads (the
//! own HTTP/1 upstream client) alike; and written back as lines.
//!
//! A proxied request's two maps (its own and its answer's) are given back
//! once their heads are written, and the thread's next heads are parsed
//! into them: four allocations and frees per request fewer.

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
pub fn spans<'h, 'b: 'h, const N: usize>(
    buf: &[u8],
    parsed: impl IntoIterator<Item = &'h httparse::Header<'b>>,
    out: &mut Fields<N>,
) {
    out.extend(
        parsed
            .into_iter()
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
        spans(&head, parsed.headers.iter(), &mut fields);
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
    fn a_map_grown_past_the_kept_size_is_dropped() {
        let mut big = HeaderMap::with_capacity(KEPT_MAP_FIELDS + 1);
        big.insert("x", http::HeaderValue::from_static("1"));
        let before = SPARE_MAPS.with_borrow(Vec::len);
        recycle(big);
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), before);
    }
}
