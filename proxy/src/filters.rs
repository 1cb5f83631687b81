//! A route's filters (Gateway API HTTPRoute filters): header changes on the
//! request and the response, a redirect the proxy answers itself, and host
//! and path rewrites. Header names and values are parsed once, when the
//! config is compiled; validation refused what does not parse.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use sluice_proto::config::{Filters, HeaderChanges, PathChange, Redirect, Rewrite};

/// Compiled header changes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn pairs(list: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

impl Changes {
    fn new(c: &HeaderChanges) -> Changes {
        Changes {
            set: pairs(&c.set),
            add: pairs(&c.add),
            remove: c
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Removes, then sets, then adds.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// A route's compiled filters.
#[derive(Debug, Clone, Default)]
pub struct CompiledFilters {
    /// On the request, before it goes upstream.
    pub request_headers: Option<Changes>,
    /// On the response, before it goes back.
    pub response_headers: Option<Changes>,
    /// Answer with this redirect.
    pub redirect: Option<Redirect>,
    /// Host and path upstream.
    pub rewrite: Option<Rewrite>,
}

impl CompiledFilters {
    /// Compiles validated filters.
    pub fn new(f: &Filters) -> CompiledFilters {
        CompiledFilters {
            request_headers: f.request_headers.as_ref().map(Changes::new),
            response_headers: f.response_headers.as_ref().map(Changes::new),
            redirect: f.redirect.clone(),
            rewrite: f.rewrite.clone(),
        }
    }
}

impl CompiledFilters {
    /// The request's headers as they go upstream: the rewritten `Host`,
    /// then the header changes.
    pub fn change_request_headers(&self, headers: &mut HeaderMap) {
        if let Some(host) = self.rewrite.as_ref().and_then(|rw| rw.hostname.as_deref())
            && let Ok(v) = HeaderValue::from_str(host)
        {
            headers.insert(header::HOST, v);
        }
        if let Some(changes) = &self.request_headers {
            changes.apply(headers);
        }
    }
}

/// `path` with `change` applied; `matched` is the path prefix the route
/// matched, which [`PathChange::Prefix`] replaces (whole segments, as the
/// Gateway API specifies: `/foo` → `/xyz` turns `/foo/bar` into
/// `/xyz/bar`, and an empty or `/` replacement leaves `/bar`).
pub fn changed_path(change: &PathChange, path: &str, matched: Option<&str>) -> String {
    let replaced = match change {
        PathChange::Full(p) => p.clone(),
        PathChange::Prefix(with) => {
            let prefix = matched.unwrap_or("/").trim_end_matches('/');
            let rest = path.get(prefix.len()..).unwrap_or("");
            format!("{}{rest}", with.trim_end_matches('/'))
        }
    };
    if replaced.starts_with('/') {
        replaced
    } else {
        format!("/{replaced}")
    }
}

/// A path and query with the path changed and the query kept.
pub fn with_path(pq: &PathAndQuery, path: &str) -> Option<PathAndQuery> {
    let s = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    s.parse().ok()
}

/// What the request looked like, for a redirect's `Location`.
pub struct Requested<'a> {
    /// `http` or `https`: how the client reached this proxy.
    pub scheme: &'static str,
    /// Host, without port.
    pub host: &'a str,
    /// The port in its Host, if any.
    pub port: Option<u16>,
    /// Path and query.
    pub path_and_query: &'a PathAndQuery,
    /// The path prefix the route matched.
    pub matched_prefix: Option<&'a str>,
}

/// The `Location` of redirect `r`: what it does not set keeps the
/// request's; a port is written unless it is the scheme's own, and a new
/// scheme without a port takes the scheme's own.
pub fn location(r: &Redirect, req: &Requested<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let host = r.hostname.as_deref().unwrap_or(req.host);
    let port = r.port.or(if r.scheme.is_some() { None } else { req.port });
    let default_port = match scheme {
        "https" => 443,
        _ => 80,
    };
    let port = port
        .filter(|p| *p != default_port)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = match &r.path {
        Some(change) => changed_path(change, req.path_and_query.path(), req.matched_prefix),
        None => req.path_and_query.path().to_owned(),
    };
    let query = req
        .path_and_query
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{query}")
}

/// The headers of a redirect answer.
pub fn redirect_headers(location: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
        ];
        for (path, prefix, with, want) in cases {
            let got = changed_path(&PathChange::Prefix(with.into()), path, Some(prefix));
            assert_eq!(got, want, "{path} with {prefix} -> {with:?}");
        }
        assert_eq!(
            changed_path(&PathChange::Full("/one".into()), "/a/b", Some("/a")),
            "/one"
        );
    }

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: 302,
        }
    }

    #[test]
    fn a_location_keeps_what_the_redirect_does_not_set() {
        let pq: PathAndQuery = "/shop/cart?x=1".parse().expect("pq");
        let req = Requested {
            scheme: "http",
            host: "example.org",
            port: Some(18080),
            path_and_query: &pq,
            matched_prefix: Some("/shop"),
        };
        let host = Redirect {
            hostname: Some("example.net".into()),
            ..redirect()
        };
        assert_eq!(
            location(&host, &req),
            "http://example.net:18080/shop/cart?x=1"
        );
        // A new scheme without a port takes the scheme's own (left out).
        let https = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(location(&https, &req), "https://example.org/shop/cart?x=1");
        let port = Redirect {
            scheme: Some("https".into()),
            port: Some(8443),
            path: Some(PathChange::Prefix("/store".into())),
            ..redirect()
        };
        assert_eq!(
            location(&port, &req),
            "https://example.org:8443/store/cart?x=1"
        );
        let plain80 = Requested {
            port: Some(80),
            ..req
        };
        assert_eq!(
            location(&redirect(), &plain80),
            "http://example.org/shop/cart?x=1"
        );
    }

    #[test]
    fn header_changes_remove_then_set_then_add() {
        let c = Changes::new(&HeaderChanges {
            set: vec![("x-env".into(), "prod".into())],
            add: vec![("x-tag".into(), "b".into())],
            remove: vec!["x-secret".into()],
        });
        let mut h = HeaderMap::new();
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.append("x-tag", HeaderValue::from_static("a"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        c.apply(&mut h);
        assert_eq!(h["x-env"], "prod");
        let tags: Vec<_> = h.get_all("x-tag").iter().collect();
        assert_eq!(tags, vec!["a", "b"]);
        assert!(!h.contains_key("x-secret"));
    }
}
