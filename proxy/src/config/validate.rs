//! Checks a parsed configuration beyond what its types enforce.

use std::collections::HashSet;

use super::ConfigError;
use sluice_proto::config::{
    Config, HeaderMatch, Listener, ListenerProtocol, PathMatch, header_regex,
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
        (None, Some(r)) => header_regex(r)
            .map(|_| ())
            .map_err(|e| err(format!("{at}.regex"), e.to_string())),
        _ => Ok(()),
    }
}

/// Validates `c`; the first problem found is returned.
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
        crate::authz::Policies::compile(&inb.policies).map_err(|e| {
            let (path, message) = e.split_once(": ").unwrap_or(("inbound.policies", &e));
            err(path.to_owned(), message.to_owned())
        })?;
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
                let mp = format!("{rp}.match[{mi}]");
                if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &m.path
                    && !p.starts_with('/')
                {
                    return Err(err(
                        format!("{mp}.path"),
                        format!("{p:?} must start with /"),
                    ));
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
            }
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
