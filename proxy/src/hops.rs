//! What changes in a request's or response's headers from one hop to the
//! next: hop-by-hop headers dropped, `x-forwarded-*` appended.

use std::net::SocketAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use smallvec::SmallVec;

/// Headers that describe one hop and are never forwarded, by name: the
/// bytes [`NextHop`] compares a head's names with.
const HOP_BY_HOP_NAMES: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// The same headers, as a header map's names.
const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static(HOP_BY_HOP_NAMES[0]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[1]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[2]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[3]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[4]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[5]),
];

/// Drops the hop-by-hop headers, and those `Connection` names; an upgrade
/// keeps `Connection` and `Upgrade`, which the next hop needs to agree.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names first, so that only the names present are
    // removed: each removal costs a hash and a probe, and most heads carry
    // none of these or only `Connection`. Bit `i`: `HOP_BY_HOP[i]`.
    let mut present = 0u8;
    let (mut connection, mut te) = (false, false);
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
        connection |= name == header::CONNECTION;
        te |= name == header::TE;
    }
    if connection {
        drop_connection_names(headers);
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        headers.remove(n);
    }
    // `te` may only say `trailers` (gRPC needs it end to end).
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// The same rule as [`strip_hop_by_hop`] (without an upgrade), for a head
/// read field by field: its hop-by-hop fields are left out as its header
/// map is built, instead of hashed in and then removed. The own HTTP/1
/// client reads every upstream response head this way.
pub struct NextHop<'a> {
    /// Names `Connection` lists beyond the fixed list (usually none).
    listed: SmallVec<[&'a [u8]; 2]>,
    /// Whether `te` goes on: as in [`strip_hop_by_hop`], its first field
    /// decides for all of them.
    te_passes: bool,
}

impl<'a> NextHop<'a> {
    /// The rule for a head with these fields (name, value).
    pub fn of(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> NextHop<'a> {
        let mut listed = SmallVec::new();
        let mut first_te = None;
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"te") {
                first_te.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"connection") {
                listed.extend(
                    value
                        .split(|&b| b == b',')
                        .map(<[u8]>::trim_ascii)
                        .filter(|n| !n.is_empty() && !is_fixed_hop(n)),
                );
            }
        }
        NextHop {
            listed,
            // `te` may only say `trailers` (gRPC needs it end to end).
            te_passes: first_te.is_none_or(|v| v == b"trailers"),
        }
    }

    /// Whether a field named `name` goes on to the next hop.
    pub fn passes(&self, name: &[u8]) -> bool {
        if is_fixed_hop(name) {
            return false;
        }
        if name.eq_ignore_ascii_case(b"te") {
            return self.te_passes;
        }
        !self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
    }
}

/// Whether `name` is on the fixed hop-by-hop list, in any case.
fn is_fixed_hop(name: &[u8]) -> bool {
    // Their lengths first: most fields of a head have none of them.
    matches!(name.len(), 7 | 10 | 16 | 17 | 19)
        && HOP_BY_HOP_NAMES
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Drops the headers `Connection` names beyond the fixed list.
fn drop_connection_names(headers: &mut HeaderMap) {
    // Only names beyond the fixed list are collected: the usual
    // `Connection: keep-alive` costs no allocation per request.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(n))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
}

/// An HTTP/1.1 request asking to switch protocols (a WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| has_token(v.as_bytes(), "upgrade"))
}

/// Whether comma-separated header `value` holds `token` (any case), as
/// `Connection` lists its options.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The peer's address as an `x-forwarded-for` entry: made once per
/// connection, shared by its requests (a clone costs no allocation).
pub fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Fields [`append_forwarded`] may add to a request, so that a request's
/// header map is made with room for them instead of growing.
pub const FORWARDED_FIELDS: usize = 2;

/// Appends the peer (from [`forwarded_for`]) to `x-forwarded-for`, and says
/// the scheme in `x-forwarded-proto`: `https` whenever this proxy
/// terminated TLS, whatever the client claimed.
pub fn append_forwarded(headers: &mut HeaderMap, peer: &HeaderValue, tls: bool) {
    // Through entries: one hash and probe per name, where a lookup and
    // then an insert took two.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut prev) => {
            let first = prev.get();
            let mut v = Vec::with_capacity(first.len() + 2 + peer.len());
            v.extend_from_slice(first.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                prev.insert(v);
            }
        }
        Entry::Vacant(none) => {
            none.insert(peer.clone());
        }
    }
    if tls {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    } else {
        headers
            .entry(X_FORWARDED_PROTO)
            .or_insert(HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, headers(&[("x-kept", "1")]));
    }

    #[test]
    fn an_upgrade_keeps_connection_and_upgrade_and_te_trailers_stays() {
        let mut h = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        let want = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, want);
    }

    #[test]
    fn forwarded_for_is_appended_and_tls_overrides_the_claimed_scheme() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let peer = forwarded_for("10.0.0.1:5000".parse().unwrap());
        append_forwarded(&mut h, &peer, true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn of_two_forwarded_for_fields_the_first_is_extended_and_both_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.4"),
        ]);
        let peer = forwarded_for("10.0.0.1:5000".parse().unwrap());
        append_forwarded(&mut h, &peer, false);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["203.0.113.9, 10.0.0.1"]);
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_first_hop_starts_forwarded_for_and_keeps_the_claimed_scheme_without_tls() {
        let mut h = headers(&[("x-forwarded-proto", "https")]);
        append_forwarded(
            &mut h,
            &forwarded_for("[2001:db8::7]:443".parse().unwrap()),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn connection_names_in_any_case_are_dropped_with_the_fixed_list() {
        let mut h = headers(&[
            ("connection", "Keep-Alive, Upgrade, X-Trace-Hop"),
            ("x-trace-hop", "1"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, headers(&[("x-kept", "1")]));
    }

    /// What [`NextHop`] passes of `pairs`, for comparing with what
    /// [`strip_hop_by_hop`] leaves of the same head.
    fn passed(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let hop = NextHop::of(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let kept: Vec<_> = pairs
            .iter()
            .copied()
            .filter(|(k, _)| hop.passes(k.as_bytes()))
            .collect();
        any_case(&kept)
    }

    /// A map of `pairs` whose names may be in any case, as a head has them.
    fn any_case(pairs: &[(&str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).expect("a valid name");
                (name, HeaderValue::from_static(v))
            })
            .collect()
    }

    #[test]
    fn a_head_read_field_by_field_passes_what_stripping_its_map_leaves() {
        let heads: [&[(&'static str, &'static str)]; 7] = [
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "gzip"),
                ("x-kept", "1"),
            ],
            &[
                ("Connection", "Keep-Alive, Upgrade, X-Trace-Hop"),
                ("X-Trace-Hop", "1"),
                ("upgrade", "h2c"),
                ("x-kept", "1"),
            ],
            &[("te", "trailers"), ("content-length", "3")],
            &[
                ("proxy-connection", "keep-alive"),
                ("Transfer-Encoding", "chunked"),
                ("proxy-authorization", "Basic eA=="),
                ("server", "nginx"),
            ],
            &[("connection", " , close ,"), ("date", "x")],
            &[("te", "trailers"), ("TE", "gzip")],
            &[("te", "gzip"), ("te", "trailers")],
        ];
        for pairs in heads {
            let mut stripped = any_case(pairs);
            strip_hop_by_hop(&mut stripped, false);
            assert_eq!(passed(pairs), stripped, "{pairs:?}");
        }
    }

    #[test]
    fn the_length_gate_lets_every_fixed_name_through() {
        for h in &HOP_BY_HOP {
            assert!(is_fixed_hop(h.as_str().to_uppercase().as_bytes()), "{h}");
        }
        assert!(!is_fixed_hop(b"content-length"));
        assert!(!is_fixed_hop(b"upgraded"));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_dropped() {
        let alone = [
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "gzip"),
        ];
        for pair in alone {
            let mut h = headers(&[("x-kept", "1"), pair]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h, headers(&[("x-kept", "1")]), "{}", pair.0);
        }
    }
}
