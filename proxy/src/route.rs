//! Route matching: host (exact or `*.` wildcard), path (exact, prefix or
//! regular expression), method, headers and query parameters. Compiled
//! once per config; matching a request allocates nothing.

use http::{HeaderName, HeaderValue, Method, request::Parts};

use crate::config::{HeaderMatch, PathMatch, RouteMatch, match_regex, prefix_covers};

/// The hosts a route answers for. An entry with a port (`handson:8080`)
/// matches only requests for that port; one without matches any port.
#[derive(Debug, Clone, Default)]
pub struct HostMatcher {
    exact: Vec<(Box<str>, Option<u16>)>,
    /// Suffixes including the dot: `*.example.com` is `.example.com`.
    suffixes: Vec<(Box<str>, Option<u16>)>,
}

impl HostMatcher {
    /// From the route's `hosts`; empty matches every host.
    pub fn new(hosts: &[String]) -> HostMatcher {
        let mut m = HostMatcher::default();
        for h in hosts {
            let h = h.to_ascii_lowercase();
            let (name, port) = match h.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') => match p.parse::<u16>() {
                    Ok(p) => (n.to_owned(), Some(p)),
                    Err(_) => (h.clone(), None),
                },
                _ => (h.clone(), None),
            };
            match name.strip_prefix('*') {
                Some(suffix) => m.suffixes.push((suffix.into(), port)),
                None => m.exact.push((name.into(), port)),
            }
        }
        m
    }

    /// Whether `host` (any case) on `port` (the request's, if it named one)
    /// matches.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.exact.is_empty() && self.suffixes.is_empty() {
            return true;
        }
        let port_ok = |want: &Option<u16>| want.is_none() || *want == port;
        self.exact
            .iter()
            .any(|(e, p)| port_ok(p) && e.eq_ignore_ascii_case(host))
            || self.suffixes.iter().any(|(s, p)| {
                port_ok(p) && host.len() > s.len() && {
                    let (_, tail) = host.split_at(host.len() - s.len());
                    tail.eq_ignore_ascii_case(s)
                }
            })
    }
}

/// The request's host: the `:authority` of HTTP/2 or the `Host` header,
/// without the port.
pub fn request_host(parts: &Parts) -> Option<&str> {
    request_authority(parts).map(|(h, _)| h)
}

/// The request's host and, when it names one, its port.
pub fn request_authority(parts: &Parts) -> Option<(&str, Option<u16>)> {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    // Byte searches (`memchr`): `str`'s char searches were a third of
    // the route lookup's cost.
    let raw = memchr::memrchr(b'@', raw.as_bytes()).map_or(raw, |at| &raw[at + 1..]);
    if let Some(v6) = raw.strip_prefix('[') {
        // [v6]:port
        let (h, rest) = v6.split_once(']')?;
        return Some((h, rest.strip_prefix(':').and_then(|p| p.parse().ok())));
    }
    Some(match memchr::memchr(b':', raw.as_bytes()) {
        Some(at) => (&raw[..at], raw[at + 1..].parse().ok()),
        None => (raw, None),
    })
}

/// One compiled `match` entry.
#[derive(Debug, Clone)]
pub struct Matcher {
    path: Option<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
}

/// How the path is matched.
#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl PathMatcher {
    fn new(m: &PathMatch) -> Option<PathMatcher> {
        Some(match m {
            PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
            PathMatch::Prefix(p) => PathMatcher::Prefix(p.clone()),
            PathMatch::Regex(r) => PathMatcher::Regex(match_regex(r).ok()?),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(e) => path == e,
            PathMatcher::Prefix(p) => prefix_covers(p, path),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// How one header's value is matched.
#[derive(Debug, Clone)]
enum ValueMatch {
    Present,
    Exact(HeaderValue),
    Regex(regex::Regex),
}

impl ValueMatch {
    fn new(m: &HeaderMatch) -> Option<ValueMatch> {
        Some(match (&m.value, &m.regex) {
            (Some(v), _) => ValueMatch::Exact(HeaderValue::from_str(v).ok()?),
            (None, Some(r)) => ValueMatch::Regex(sluice_proto::config::match_regex(r).ok()?),
            (None, None) => ValueMatch::Present,
        })
    }

    /// Whether a query parameter's value (its first occurrence) fits.
    fn fits_param(&self, name: &str, query: Option<&str>) -> bool {
        let value = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            })
        });
        match (self, value) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(want), Some(v)) => want.as_bytes() == v.as_bytes(),
            (ValueMatch::Regex(re), Some(v)) => re.is_match(v),
        }
    }

    /// Whether one of the request's values of this header fits.
    fn fits(&self, name: &HeaderName, headers: &http::HeaderMap) -> bool {
        let mut values = headers.get_all(name).iter();
        match self {
            ValueMatch::Present => headers.contains_key(name),
            ValueMatch::Exact(v) => values.any(|have| have == v),
            // A value that is not UTF-8 matches no pattern.
            ValueMatch::Regex(re) => values.any(|have| have.to_str().is_ok_and(|s| re.is_match(s))),
        }
    }
}

impl Matcher {
    /// Compiles a validated match (invalid names were refused by validation
    /// and are skipped here).
    pub fn new(m: &RouteMatch) -> Matcher {
        Matcher {
            path: m.path.as_ref().and_then(PathMatcher::new),
            method: m
                .method
                .as_deref()
                .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
            headers: m
                .headers
                .iter()
                .filter_map(|h| {
                    let n = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                    Some((n, ValueMatch::new(h)?))
                })
                .collect(),
            query: m
                .query
                .iter()
                .filter_map(|q| Some((q.name.clone(), ValueMatch::new(q)?)))
                .collect(),
        }
    }

    /// The path prefix this match requires, if it is a prefix match (what
    /// a prefix rewrite or redirect replaces).
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathMatcher::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether the request matches every given condition.
    pub fn matches(&self, parts: &Parts) -> bool {
        if let Some(m) = &self.method
            && parts.method != *m
        {
            return false;
        }
        if let Some(p) = &self.path
            && !p.matches(parts.uri.path())
        {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| value.fits(name, &parts.headers))
            && self
                .query
                .iter()
                .all(|(name, value)| value.fits_param(name, parts.uri.query()))
    }
}

/// The first of `matchers` that fits: `Some(None)` for an empty list,
/// which fits every request, `None` when none fits. Which one fitted is
/// what a prefix rewrite or redirect replaces.
pub fn first_match<'a>(matchers: &'a [Matcher], parts: &Parts) -> Option<Option<&'a Matcher>> {
    if matchers.is_empty() {
        return Some(None);
    }
    matchers.iter().find(|m| m.matches(parts)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn host_exact_and_wildcard() {
        let m = HostMatcher::new(&["app.example.com".into(), "*.example.org".into()]);
        assert!(m.matches("app.example.com", None));
        assert!(m.matches("APP.Example.com", Some(18080)));
        assert!(!m.matches("other.example.com", None));
        assert!(m.matches("a.example.org", None));
        assert!(m.matches("a.b.example.org", None));
        assert!(!m.matches("example.org", None));
        assert!(!m.matches("badexample.org", None));
        assert!(HostMatcher::new(&[]).matches("anything", None));
    }

    #[test]
    fn host_with_port_matches_that_port_only() {
        let m = HostMatcher::new(&["handson:8080".into(), "*.svc:9090".into()]);
        assert!(m.matches("handson", Some(8080)));
        assert!(!m.matches("handson", Some(9090)));
        assert!(!m.matches("handson", None));
        assert!(m.matches("a.svc", Some(9090)));
        assert!(!m.matches("a.svc", Some(8080)));
    }

    #[test]
    fn host_from_header_or_authority() {
        assert_eq!(
            request_host(&parts("GET", "/", &[("host", "app.example.com:18080")])),
            Some("app.example.com")
        );
        assert_eq!(
            request_host(&parts("GET", "http://x.test/a", &[("host", "ignored")])),
            Some("x.test")
        );
        assert_eq!(
            request_host(&parts("GET", "/", &[("host", "[::1]:80")])),
            Some("::1")
        );
        assert_eq!(request_host(&parts("GET", "/", &[])), None);
        assert_eq!(
            request_authority(&parts("GET", "/", &[("host", "handson:8080")])),
            Some(("handson", Some(8080)))
        );
        assert_eq!(
            request_authority(&parts("GET", "/", &[("host", "[::1]:80")])),
            Some(("::1", Some(80)))
        );
    }

    #[test]
    fn path_prefix_respects_segments() {
        let m = Matcher::new(&RouteMatch {
            path: Some(PathMatch::Prefix("/api/".into())),
            ..Default::default()
        });
        assert!(m.matches(&parts("GET", "/api", &[])));
        assert!(m.matches(&parts("GET", "/api/v1", &[])));
        assert!(!m.matches(&parts("GET", "/apix", &[])));
        let exact = Matcher::new(&RouteMatch {
            path: Some(PathMatch::Exact("/a".into())),
            ..Default::default()
        });
        assert!(exact.matches(&parts("GET", "/a?q=1", &[])));
        assert!(!exact.matches(&parts("GET", "/a/", &[])));
    }

    #[test]
    fn method_and_headers() {
        let m = Matcher::new(&RouteMatch {
            method: Some("POST".into()),
            headers: vec![
                HeaderMatch {
                    name: "x-env".into(),
                    value: Some("canary".into()),
                    regex: None,
                },
                HeaderMatch {
                    name: "x-user".into(),
                    value: None,
                    regex: None,
                },
            ],
            ..Default::default()
        });
        assert!(m.matches(&parts("POST", "/", &[("x-env", "canary"), ("x-user", "1")])));
        assert!(!m.matches(&parts("GET", "/", &[("x-env", "canary"), ("x-user", "1")])));
        assert!(!m.matches(&parts("POST", "/", &[("x-env", "prod"), ("x-user", "1")])));
        assert!(!m.matches(&parts("POST", "/", &[("x-env", "canary")])));
        assert!(first_match(&[], &parts("DELETE", "/", &[])).is_some());
    }

    #[test]
    fn a_match_regex_matches_the_whole_value_of_any_of_its_values() {
        let m = Matcher::new(&RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-user".into(),
                value: None,
                regex: Some("tester-[0-9]+".into()),
            }],
            ..Default::default()
        });
        assert!(m.matches(&parts("GET", "/", &[("x-user", "tester-42")])));
        assert!(m.matches(&parts(
            "GET",
            "/",
            &[("x-user", "bob"), ("x-user", "tester-1")]
        )));
        assert!(!m.matches(&parts("GET", "/", &[("x-user", "tester-42x")])));
        assert!(!m.matches(&parts("GET", "/", &[("x-user", "a-tester-42")])));
        assert!(!m.matches(&parts("GET", "/", &[])));
    }
}
