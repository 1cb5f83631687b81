//! Checks a parsed configuration beyond what its types enforce.

use std::collections::HashSet;

use super::ConfigError;
use sluice_proto::config::{
    Config, HeaderChanges, HeaderMatch, Listener, ListenerProtocol, PathChange, PathMatch, Route,
    RouteMatch, match_regex,
};

fn err(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path,
        line: None,
        message: message.into(),
    }
}

/// A hostname as a route may match it: exact, or `*.` followed by a suffix,
/// optionally with `:port`.
fn valid_host(h: &str) -> bool {
    let h = match h.rsplit_once(':') {
        Some((name, port)) => {
            if port.parse::<u16>().is_err() {
                return false;
            }
            name
        }
        None => h,
    };
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A header match gives an exact value or a regex, never both; a regex
/// must compile within the proxy's limits.
fn validate_header_value(h: &HeaderMatch, at: &str) -> Result<(), ConfigError> {
    match (&h.value, &h.regex) {
        (Some(v), _) if http::HeaderValue::from_str(v).is_err() => Err(err(
            format!("{at}.value"),
            format!("{v:?} is not a header value"),
        )),
        (Some(_), Some(_)) => Err(err(
            format!("{at}.regex"),
            "give either value or regex, not both",
        )),
        (None, Some(r)) => match_regex(r)
            .map(|_| ())
            .map_err(|e| err(format!("{at}.regex"), e.to_string())),
        _ => Ok(()),
    }
}

/// Validates `c`; the first problem found is returned.
/// One `match` entry: paths start with `/` (or compile, as a regex), the
/// method and header names parse, values are exact or regex.
fn check_match(m: &RouteMatch, mp: &str) -> Result<(), ConfigError> {
    match &m.path {
        Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) if !p.starts_with('/') => {
            return Err(err(
                format!("{mp}.path"),
                format!("{p:?} must start with /"),
            ));
        }
        Some(PathMatch::Regex(r)) => {
            match_regex(r).map_err(|e| err(format!("{mp}.path.regex"), e.to_string()))?;
        }
        _ => {}
    }
    if let Some(method) = &m.method
        && http::Method::from_bytes(method.as_bytes()).is_err()
    {
        return Err(err(
            format!("{mp}.method"),
            format!("{method:?} is not an HTTP method"),
        ));
    }
    for (hi, h) in m.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(err(
                format!("{mp}.headers[{hi}].name"),
                format!("{:?} is not a header name", h.name),
            ));
        }
        validate_header_value(h, &format!("{mp}.headers[{hi}]"))?;
    }
    for (qi, q) in m.query.iter().enumerate() {
        if q.name.is_empty() || q.name.contains(['&', '=', '#']) {
            return Err(err(
                format!("{mp}.query[{qi}].name"),
                format!("{:?} is not a query parameter name", q.name),
            ));
        }
        validate_header_value(q, &format!("{mp}.query[{qi}]"))?;
    }
    Ok(())
}

/// A route's filters: header names and values that parse, a redirect to
/// http or https with a redirect status, hostnames, and paths that start
/// with `/`; a prefix change only where every match is a prefix match.
fn check_filters(r: &Route, rp: &str) -> Result<(), ConfigError> {
    let f = &r.filters;
    let fp = format!("{rp}.filters");
    for (which, changes) in [
        ("request_headers", &f.request_headers),
        ("response_headers", &f.response_headers),
    ] {
        if let Some(c) = changes {
            check_header_changes(c, &format!("{fp}.{which}"))?;
        }
    }
    let prefix_ok = r
        .matches
        .iter()
        .all(|m| matches!(m.path, None | Some(PathMatch::Prefix(_))));
    let check_path = |change: &Option<PathChange>, at: String| match change {
        Some(PathChange::Full(p) | PathChange::Prefix(p))
            if !p.is_empty() && !p.starts_with('/') =>
        {
            Err(err(at, format!("{p:?} must start with /")))
        }
        Some(PathChange::Prefix(_)) if !prefix_ok => Err(err(
            at,
            "a prefix replacement needs every match of the route to be a prefix match",
        )),
        _ => Ok(()),
    };
    if let Some(rd) = &f.redirect {
        if let Some(scheme) = rd
            .scheme
            .as_deref()
            .filter(|s| !matches!(*s, "http" | "https"))
        {
            return Err(err(
                format!("{fp}.redirect.scheme"),
                format!("{scheme:?}: http or https"),
            ));
        }
        if !matches!(rd.status, 301 | 302 | 303 | 307 | 308) {
            return Err(err(
                format!("{fp}.redirect.status"),
                format!("{}: one of 301, 302, 303, 307, 308", rd.status),
            ));
        }
        check_hostname(rd.hostname.as_deref(), format!("{fp}.redirect.hostname"))?;
        check_path(&rd.path, format!("{fp}.redirect.path"))?;
    }
    if let Some(rw) = &f.rewrite {
        check_hostname(rw.hostname.as_deref(), format!("{fp}.rewrite.hostname"))?;
        check_path(&rw.path, format!("{fp}.rewrite.path"))?;
    }
    Ok(())
}

fn check_hostname(h: Option<&str>, at: String) -> Result<(), ConfigError> {
    match h {
        Some(h) if h.starts_with('*') || !valid_host(h) => {
            Err(err(at, format!("{h:?} is not a hostname")))
        }
        _ => Ok(()),
    }
}

fn check_header_changes(c: &HeaderChanges, at: &str) -> Result<(), ConfigError> {
    for (list, pairs) in [("set", &c.set), ("add", &c.add)] {
        for (i, (name, value)) in pairs.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(
                    format!("{at}.{list}[{i}]"),
                    format!("{name:?} is not a header name"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(err(
                    format!("{at}.{list}[{i}]"),
                    format!("{value:?} is not a header value"),
                ));
            }
        }
    }
    for (i, name) in c.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(err(
                format!("{at}.remove[{i}]"),
                format!("{name:?} is not a header name"),
            ));
        }
    }
    Ok(())
}

/// A listener's TLS: HTTP only, with certificates that parse and match
/// their keys (what the listener will serve).
fn check_tls(l: &Listener, lp: &str) -> Result<(), ConfigError> {
    let Some(tls) = &l.tls else {
        return Ok(());
    };
    if l.protocol != ListenerProtocol::Http {
        return Err(err(
            format!("{lp}.tls"),
            "TLS is terminated on http listeners only",
        ));
    }
    if tls.certificates.is_empty() {
        return Err(err(
            format!("{lp}.tls.certificates"),
            "a listener that terminates TLS needs a certificate",
        ));
    }
    for (ci, c) in tls.certificates.iter().enumerate() {
        for (hi, h) in c.hostnames.iter().enumerate() {
            if !valid_host(h) {
                return Err(err(
                    format!("{lp}.tls.certificates[{ci}].hostnames[{hi}]"),
                    format!("{h:?} is not a hostname (exact, or `*.` and a suffix)"),
                ));
            }
        }
    }
    sluice_identity::serving::listener_config(&tls.certificates)
        .map(|_| ())
        .map_err(|(ci, e)| err(format!("{lp}.tls.certificates[{ci}]"), e.to_string()))
}

pub fn check(c: &Config) -> Result<(), ConfigError> {
    if let Some(m) = &c.mesh_tls {
        if m.trust_domain.is_empty() {
            return Err(err("mesh_tls.trust_domain".into(), "must not be empty"));
        }
        crate::identity::parse_roots(&m.roots_pem)
            .map_err(|e| err("mesh_tls.roots_pem".into(), e.to_string()))?;
    }
    if let Some(inb) = &c.inbound {
        let mut seen = HashSet::new();
        for (i, p) in inb.ports.iter().enumerate() {
            if p.port == 0 || !seen.insert(p.port) {
                return Err(err(
                    format!("inbound.ports[{i}].port"),
                    format!("{} is zero or listed twice", p.port),
                ));
            }
        }
        crate::authz::Policies::compile(&inb.policies).map_err(|e| err(e.path, e.message))?;
        crate::authz::Authenticator::compile(&inb.jwt_rules, crate::authz::JWT_RULES_PATH)
            .map_err(|e| err(e.path, e.message))?;
    }
    let mut backends = HashSet::new();
    for (i, b) in c.backends.iter().enumerate() {
        if b.name.is_empty() {
            return Err(err(format!("backends[{i}].name"), "must not be empty"));
        }
        if let Some(status) = b.respond
            && !(200..=599).contains(&status)
        {
            return Err(err(
                format!("backends[{i}].respond"),
                format!("{status} is not an HTTP status between 200 and 599"),
            ));
        }
        if !backends.insert(b.name.as_str()) {
            return Err(err(
                format!("backends[{i}].name"),
                format!("duplicate backend name {:?}", b.name),
            ));
        }
    }
    for (addr, name) in &c.mesh_tcp.services {
        if !backends.contains(name.as_str()) {
            return Err(err(
                format!("mesh_tcp.services[{addr}]"),
                format!("unknown backend {name:?}"),
            ));
        }
    }
    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    for (li, l) in c.listeners.iter().enumerate() {
        let lp = format!("listeners[{li}]");
        if !listener_names.insert(l.name.as_str()) {
            return Err(err(
                format!("{lp}.name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        if !addresses.insert(l.address) {
            return Err(err(
                format!("{lp}.address"),
                format!("{} is used by another listener", l.address),
            ));
        }
        if let Some(a) = &c.admin
            && a.address == l.address
        {
            return Err(err(
                format!("{lp}.address"),
                format!("{} is the admin address", l.address),
            ));
        }
        match l.protocol {
            ListenerProtocol::Http if !l.backends.is_empty() => {
                return Err(err(
                    format!("{lp}.backends"),
                    "http listeners route with `routes`, not `backends`",
                ));
            }
            ListenerProtocol::Tcp if !l.routes.is_empty() => {
                return Err(err(
                    format!("{lp}.routes"),
                    "tcp listeners take `backends`, not `routes`",
                ));
            }
            ListenerProtocol::Tcp if l.backends.is_empty() => {
                return Err(err(
                    format!("{lp}.backends"),
                    "a tcp listener needs at least one backend",
                ));
            }
            _ => {}
        }
        check_tls(l, &lp)?;
        for (bi, wb) in l.backends.iter().enumerate() {
            if !backends.contains(wb.name.as_str()) {
                return Err(err(
                    format!("{lp}.backends[{bi}].name"),
                    format!("unknown backend {:?}", wb.name),
                ));
            }
        }
        let mut route_names = HashSet::new();
        for (ri, r) in l.routes.iter().enumerate() {
            let rp = format!("{lp}.routes[{ri}]");
            if !route_names.insert(r.name.as_str()) {
                return Err(err(
                    format!("{rp}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            for (hi, h) in r.hosts.iter().enumerate() {
                if !valid_host(h) {
                    return Err(err(
                        format!("{rp}.hosts[{hi}]"),
                        format!("{h:?} is not a hostname (exact, or `*.` and a suffix)"),
                    ));
                }
            }
            for (mi, m) in r.matches.iter().enumerate() {
                check_match(m, &format!("{rp}.match[{mi}]"))?;
            }
            check_filters(r, &rp)?;
            if r.backends.is_empty() {
                return Err(err(
                    format!("{rp}.backends"),
                    "a route needs at least one backend",
                ));
            }
            for (bi, wb) in r.backends.iter().enumerate() {
                if !backends.contains(wb.name.as_str()) {
                    return Err(err(
                        format!("{rp}.backends[{bi}].name"),
                        format!("unknown backend {:?}", wb.name),
                    ));
                }
            }
            for (mi, m) in r.mirrors.iter().enumerate() {
                if !backends.contains(m.backend.as_str()) {
                    return Err(err(
                        format!("{rp}.mirrors[{mi}].backend"),
                        format!("unknown backend {:?}", m.backend),
                    ));
                }
                if m.percent > 100 {
                    return Err(err(
                        format!("{rp}.mirrors[{mi}].percent"),
                        "must be between 0 and 100",
                    ));
                }
            }
            if let Some(retries) = &r.retries {
                if retries.attempts > 10 {
                    return Err(err(format!("{rp}.retries.attempts"), "at most 10"));
                }
                if !(0.0..=1.0).contains(&retries.budget) {
                    return Err(err(
                        format!("{rp}.retries.budget"),
                        "must be between 0 and 1",
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(valid_host("app.example.com"));
        assert!(valid_host("*.example.com"));
        assert!(valid_host("handson"));
        assert!(valid_host("handson.handson:8080"));
        assert!(!valid_host("handson:http"));
        assert!(!valid_host("*"));
        assert!(!valid_host("a.*.com"));
        assert!(!valid_host("-a.com"));
        assert!(!valid_host("a..com"));
    }

    #[test]
    fn a_header_match_takes_one_valid_value_or_regex() {
        let m = |value: Option<&str>, regex: Option<&str>| HeaderMatch {
            name: "x-user".into(),
            value: value.map(Into::into),
            regex: regex.map(Into::into),
        };
        assert!(validate_header_value(&m(Some("a"), None), "h").is_ok());
        assert!(validate_header_value(&m(None, Some("a.*")), "h").is_ok());
        assert!(validate_header_value(&m(None, None), "h").is_ok());
        let both = validate_header_value(&m(Some("a"), Some("a")), "h").unwrap_err();
        assert_eq!(both.path, "h.regex");
        let bad = validate_header_value(&m(None, Some("(unclosed")), "h").unwrap_err();
        assert_eq!(bad.path, "h.regex");
        let huge = validate_header_value(&m(None, Some("[a-z]{1000}{1000}")), "h").unwrap_err();
        assert_eq!(huge.path, "h.regex", "{huge:?}");
    }
}
