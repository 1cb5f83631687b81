//! Authorization policy evaluation with Istio's semantics, as pure code
//! shared by the proxy (which enforces it) and the operator (which compiles
//! every policy before pushing it, so that a proxy never refuses one):
//!
//! 1. any matching DENY policy denies;
//! 2. with no ALLOW policy on the workload, allow;
//! 3. any matching ALLOW policy allows;
//! 4. otherwise deny (an ALLOW policy without rules allows nothing).
//!
//! HTTP-only fields (`hosts`, `methods`, `paths`, `requestPrincipals`,
//! `request.headers[...]`, `request.auth.*`) applied to opaque TCP: an ALLOW rule with them never matches, a DENY
//! rule ignores them. Before a connection's first request is read only the
//! connection's attributes are known: [`Traffic::Connection`] denies when the
//! outcome is already certain and defers otherwise.

use std::net::IpAddr;
use std::sync::Arc;

use sluice_proto::authz::{
    Action, CLAIM_KEY_PREFIX, CONDITION_KEYS, Condition, HEADER_KEY_PREFIX, Policy,
};

mod by_principal;
pub mod jwt;

use by_principal::RuleIndex;

/// A policy or JWT rule that does not compile: the field (a path such as
/// `inbound.policies[0].rules[1].to[0].operation.ports`) and what is wrong
/// with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// The field.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl CompileError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> CompileError {
        CompileError {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub use jwt::RequestAuth;

/// A compiled string matcher.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl Pattern {
    fn new(s: &str, lowercase: bool) -> Pattern {
        let s = if lowercase {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        };
        if s == "*" {
            Pattern::Present
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_owned())
        } else {
            Pattern::Exact(s)
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(p) => v.ends_with(p.as_str()),
            Pattern::Present => true,
        }
    }
}

/// A list and its negation: the value must match one of `yes` (when
/// given) and none of `no`.
#[derive(Debug, Clone)]
struct Field<T> {
    yes: Vec<T>,
    no: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            yes: Vec::new(),
            no: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    fn is_empty(&self) -> bool {
        self.yes.is_empty() && self.no.is_empty()
    }

    /// `None` as the value (e.g. no principal on plaintext): a positive
    /// list fails, a negative one holds.
    fn check(&self, value: Option<&dyn Fn(&T) -> bool>) -> bool {
        match value {
            None => self.yes.is_empty(),
            Some(m) => (self.yes.is_empty() || self.yes.iter().any(m)) && !self.no.iter().any(m),
        }
    }
}

fn strings(yes: &[String], no: &[String], lowercase: bool) -> Field<Pattern> {
    Field {
        yes: yes.iter().map(|s| Pattern::new(s, lowercase)).collect(),
        no: no.iter().map(|s| Pattern::new(s, lowercase)).collect(),
    }
}

fn ports(field: &str, yes: &[String], no: &[String]) -> Result<Field<u16>, CompileError> {
    let parse = |v: &[String]| {
        v.iter()
            .map(|p| {
                p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    CompileError::new(field, format!("{p:?} is not a port number (1-65535)"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Field {
        yes: parse(yes)?,
        no: parse(no)?,
    })
}

/// An address block: `10.0.0.0/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, b)) => (ip, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let to_bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, nw), (addr, aw)) = (to_bits(self.net), to_bits(ip.to_canonical()));
        if nw != aw {
            return false;
        }
        let mask = if self.bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.bits))
        };
        net & mask == addr & mask
    }
}

fn cidrs(field: &str, yes: &[String], no: &[String]) -> Result<Field<Cidr>, CompileError> {
    let parse = |v: &[String]| {
        v.iter()
            .map(|s| Cidr::parse(s).map_err(|e| CompileError::new(field, e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Field {
        yes: parse(yes)?,
        no: parse(no)?,
    })
}

/// The attribute a `when` condition reads.
#[derive(Debug, Clone)]
enum Key {
    Header(http::HeaderName),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    RequestPrincipal,
    RequestAudiences,
    RequestClaim(String),
}

#[derive(Debug, Clone)]
enum When {
    Strings(Key, Field<Pattern>),
    Ip(Field<Cidr>),
    Port(Field<u16>),
}

fn when(c: &Condition, path: &str) -> Result<When, CompileError> {
    let at_key = |message: String| CompileError::new(format!("{path}.key"), message);
    let key = if let Some(rest) = c.key.strip_prefix(CLAIM_KEY_PREFIX) {
        let name = rest
            .strip_suffix(']')
            .filter(|n| !n.is_empty())
            .ok_or_else(|| at_key(format!("{:?} is not {CLAIM_KEY_PREFIX}<name>]", c.key)))?;
        Key::RequestClaim(name.to_owned())
    } else if let Some(rest) = c.key.strip_prefix(HEADER_KEY_PREFIX) {
        let name = rest
            .strip_suffix(']')
            .ok_or_else(|| at_key(format!("{:?} lacks the closing ]", c.key)))?;
        Key::Header(
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at_key(format!("{name:?} is not a header name")))?,
        )
    } else {
        match c.key.as_str() {
            "source.ip" => Key::SourceIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "destination.port" => Key::DestinationPort,
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.audiences" => Key::RequestAudiences,
            other => {
                return Err(at_key(format!(
                    "{other:?} is not supported (use {}, {HEADER_KEY_PREFIX}<name>] or {CLAIM_KEY_PREFIX}<name>])",
                    CONDITION_KEYS.join(", ")
                )));
            }
        }
    };
    Ok(match key {
        Key::SourceIp => When::Ip(cidrs(path, &c.values, &c.not_values)?),
        Key::DestinationPort => When::Port(ports(path, &c.values, &c.not_values)?),
        k => When::Strings(k, strings(&c.values, &c.not_values, false)),
    })
}

#[derive(Debug, Clone, Default)]
struct Source {
    principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    ip_blocks: Field<Cidr>,
    request_principals: Field<Pattern>,
}

#[derive(Debug, Clone, Default)]
struct Operation {
    hosts: Field<Pattern>,
    ports: Field<u16>,
    methods: Field<Pattern>,
    paths: Field<Pattern>,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<When>,
}

#[derive(Debug, Clone)]
struct Compiled {
    name: Arc<str>,
    rules: Vec<Rule>,
    /// Which rules a peer may match, by its principal.
    index: RuleIndex,
}

impl Compiled {
    fn new(name: Arc<str>, rules: Vec<Rule>) -> Compiled {
        let index = RuleIndex::new(&rules);
        Compiled { name, rules, index }
    }
}

/// The policies selecting one workload, compiled once per config.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    deny: Vec<Compiled>,
    allow: Vec<Compiled>,
    audit: Vec<Compiled>,
}

/// The request's HTTP attributes.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Host (or `:authority`).
    pub host: &'a str,
    /// Headers.
    pub headers: &'a http::HeaderMap,
    /// What a verified JWT says; none without a token.
    pub auth: Option<&'a RequestAuth>,
}

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub enum Traffic<'a> {
    /// A new connection to an HTTP port, before any request.
    Connection,
    /// A connection to an opaque TCP port.
    Tcp,
    /// One HTTP request.
    Http(HttpAttributes<'a>),
}

/// The peer and destination.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The peer's address.
    pub ip: IpAddr,
    /// Its mTLS principal (`td/ns/x/sa/y`), none on plaintext.
    pub principal: Option<&'a str>,
    /// The workload port it targets.
    pub port: u16,
}

impl Peer<'_> {
    fn namespace(&self) -> Option<&str> {
        let p = self.principal?;
        let rest = &p[p.find("/ns/")? + 4..];
        Some(rest.split('/').next().unwrap_or(rest))
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Allow,
    /// Refused; the policy that decided (`(no ALLOW policy matched)` when
    /// an ALLOW set matched nothing).
    Deny(Arc<str>),
    /// Connection phase: only the requests can decide.
    Defer,
}

/// A verdict and whether an AUDIT policy matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// An AUDIT policy matched.
    pub audited: bool,
}

/// Three-valued match: `Unknown` when HTTP fields decide but no request has
/// been read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Unknown,
}

impl Tri {
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::Yes,
        }
    }

    fn or(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::Yes, _) | (_, Tri::Yes) => Tri::Yes,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::No,
        }
    }

    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
}

/// How a field that only HTTP has counts, by action and traffic.
fn http_field(
    present: bool,
    action: Action,
    traffic: &Traffic<'_>,
    f: impl FnOnce() -> bool,
) -> Tri {
    if !present {
        return Tri::Yes;
    }
    match traffic {
        Traffic::Http(_) => Tri::of(f()),
        Traffic::Connection => Tri::Unknown,
        Traffic::Tcp if action == Action::Allow => Tri::No,
        Traffic::Tcp => Tri::Yes,
    }
}

impl Policies {
    /// Compiles `policies`; a malformed value is an error naming its field.
    pub fn compile(policies: &[Policy]) -> Result<Policies, CompileError> {
        let mut out = Policies::default();
        for (pi, p) in policies.iter().enumerate() {
            let mut rules = Vec::new();
            for (ri, r) in p.rules.iter().enumerate() {
                let base = format!("inbound.policies[{pi}].rules[{ri}]");
                let mut rule = Rule::default();
                for (fi, f) in r.from.iter().enumerate() {
                    let s = &f.source;
                    rule.from.push(Source {
                        principals: strings(&s.principals, &s.not_principals, false),
                        namespaces: strings(&s.namespaces, &s.not_namespaces, false),
                        ip_blocks: cidrs(
                            &format!("{base}.from[{fi}].source.ipBlocks"),
                            &s.ip_blocks,
                            &s.not_ip_blocks,
                        )?,
                        request_principals: strings(
                            &s.request_principals,
                            &s.not_request_principals,
                            false,
                        ),
                    });
                }
                for (ti, t) in r.to.iter().enumerate() {
                    let o = &t.operation;
                    rule.to.push(Operation {
                        hosts: strings(&o.hosts, &o.not_hosts, true),
                        ports: ports(
                            &format!("{base}.to[{ti}].operation.ports"),
                            &o.ports,
                            &o.not_ports,
                        )?,
                        methods: strings(&o.methods, &o.not_methods, false),
                        paths: strings(&o.paths, &o.not_paths, false),
                    });
                }
                for (wi, w) in r.when.iter().enumerate() {
                    rule.when.push(when(w, &format!("{base}.when[{wi}]"))?);
                }
                rules.push(rule);
            }
            let c = Compiled::new(p.name.as_str().into(), rules);
            match p.action {
                Action::Allow => out.allow.push(c),
                Action::Deny => out.deny.push(c),
                Action::Audit => out.audit.push(c),
            }
        }
        Ok(out)
    }

    /// Allows nothing: what a workload gets if its policies could not be
    /// compiled.
    pub fn deny_all() -> Policies {
        Policies {
            allow: vec![Compiled::new("(invalid policies)".into(), vec![])],
            ..Policies::default()
        }
    }

    /// Whether no policy selects the workload (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }

    /// Decides for `peer` and `traffic`.
    pub fn decide(&self, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Decision {
        let audited = self
            .audit
            .iter()
            .any(|p| matches(p, Action::Audit, peer, traffic) == Tri::Yes);
        let mut verdict = Verdict::Allow;
        let mut deny_unknown = false;
        for p in &self.deny {
            match matches(p, Action::Deny, peer, traffic) {
                Tri::Yes => {
                    return Decision {
                        verdict: Verdict::Deny(p.name.clone()),
                        audited,
                    };
                }
                Tri::Unknown => deny_unknown = true,
                Tri::No => {}
            }
        }
        if !self.allow.is_empty() {
            let any = or_all(
                self.allow
                    .iter()
                    .map(|p| matches(p, Action::Allow, peer, traffic)),
            );
            verdict = match any {
                Tri::Yes => Verdict::Allow,
                Tri::No => Verdict::Deny("(no ALLOW policy matched)".into()),
                Tri::Unknown => Verdict::Defer,
            };
        }
        if verdict == Verdict::Allow && deny_unknown {
            verdict = Verdict::Defer;
        }
        Decision { verdict, audited }
    }
}

/// Whether any rule of `p` matches, trying only those the peer's
/// principal leaves possible.
fn matches(p: &Compiled, action: Action, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Tri {
    or_all(
        p.index
            .candidates(peer.principal)
            .map(|i| rule(&p.rules[i], action, peer, traffic)),
    )
}

/// Any of `tris`, stopping at the first `Yes` (the evaluation is pure, so
/// what follows cannot change it); `No` for none.
fn or_all(tris: impl Iterator<Item = Tri>) -> Tri {
    let mut acc = Tri::No;
    for t in tris {
        acc = acc.or(t);
        if acc == Tri::Yes {
            break;
        }
    }
    acc
}

/// A rule's list of alternatives: an empty one matches, else any item.
fn any_of<T>(items: &[T], f: impl Fn(&T) -> Tri) -> Tri {
    if items.is_empty() {
        Tri::Yes
    } else {
        or_all(items.iter().map(f))
    }
}

/// `from`, `to` and `when` all hold; a part that fails skips the rest.
fn rule(r: &Rule, action: Action, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Tri {
    let from = any_of(&r.from, |s| source(s, action, peer, traffic));
    if from == Tri::No {
        return Tri::No;
    }
    let to = from.and(any_of(&r.to, |o| operation(o, action, peer, traffic)));
    if to == Tri::No {
        return Tri::No;
    }
    r.when
        .iter()
        .map(|w| condition(w, action, peer, traffic))
        .fold(to, Tri::and)
}

/// One `to` entry: its ports, hosts, methods and paths all hold.
fn operation(o: &Operation, action: Action, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Tri {
    let http = match traffic {
        Traffic::Http(h) => Some(*h),
        _ => None,
    };
    let port = Tri::of(o.ports.check(Some(&|p: &u16| *p == peer.port)));
    let hosts = http_field(!o.hosts.is_empty(), action, traffic, || {
        let host = http
            .map(|h| h.host.to_ascii_lowercase())
            .unwrap_or_default();
        let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        o.hosts
            .check(Some(&|m: &Pattern| m.matches(&host) || m.matches(bare)))
    });
    let methods = http_field(!o.methods.is_empty(), action, traffic, || {
        let m = http.map_or("", |h| h.method);
        o.methods.check(Some(&|p: &Pattern| p.matches(m)))
    });
    let paths = http_field(!o.paths.is_empty(), action, traffic, || {
        let path = http.map_or("", |h| h.path);
        o.paths.check(Some(&|p: &Pattern| p.matches(path)))
    });
    port.and(hosts).and(methods).and(paths)
}

/// A single-valued attribute against its patterns; `None` is absent.
fn one_value(f: &Field<Pattern>, v: Option<&str>) -> bool {
    match v {
        Some(v) => f.check(Some(&|p: &Pattern| p.matches(v))),
        None => f.check(None),
    }
}

fn source(s: &Source, action: Action, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Tri {
    let connection = Tri::of(
        one_value(&s.principals, peer.principal)
            && one_value(&s.namespaces, peer.namespace())
            && s.ip_blocks.check(Some(&|c: &Cidr| c.contains(peer.ip))),
    );
    let request = http_field(!s.request_principals.is_empty(), action, traffic, || {
        one_value(
            &s.request_principals,
            request_auth(traffic).map(|a| a.principal.as_str()),
        )
    });
    connection.and(request)
}

/// The verified JWT of an HTTP request, if any.
fn request_auth<'a>(traffic: &Traffic<'a>) -> Option<&'a RequestAuth> {
    match traffic {
        Traffic::Http(h) => h.auth,
        _ => None,
    }
}

fn condition(w: &When, action: Action, peer: &Peer<'_>, traffic: &Traffic<'_>) -> Tri {
    match w {
        When::Ip(f) => Tri::of(f.check(Some(&|c: &Cidr| c.contains(peer.ip)))),
        When::Port(f) => Tri::of(f.check(Some(&|p: &u16| *p == peer.port))),
        When::Strings(Key::Header(name), f) => http_field(true, action, traffic, || {
            let Traffic::Http(h) = traffic else {
                return false;
            };
            let values: Vec<&str> = h
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            any_value(f, Some(values))
        }),
        When::Strings(Key::RequestAudiences, f) => http_field(true, action, traffic, || {
            any_value(f, request_auth(traffic).map(RequestAuth::audiences))
        }),
        When::Strings(Key::RequestClaim(name), f) => http_field(true, action, traffic, || {
            any_value(f, request_auth(traffic).map(|a| a.claim_strings(name)))
        }),
        When::Strings(Key::RequestPrincipal, f) => http_field(true, action, traffic, || {
            one_value(f, request_auth(traffic).map(|a| a.principal.as_str()))
        }),
        When::Strings(key, f) => {
            let v = match key {
                Key::SourceNamespace => peer.namespace(),
                Key::SourcePrincipal => peer.principal,
                _ => None,
            };
            Tri::of(one_value(f, v))
        }
    }
}

/// A multi-valued attribute: one value matching is enough; no values is
/// absent.
fn any_value(f: &Field<Pattern>, values: Option<Vec<&str>>) -> bool {
    match values.filter(|v| !v.is_empty()) {
        Some(values) => values
            .iter()
            .any(|v| f.check(Some(&|p: &Pattern| p.matches(v)))),
        None => f.check(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policies(v: serde_json::Value) -> Policies {
        let list: Vec<Policy> = serde_json::from_value(v).expect("policies");
        Policies::compile(&list).expect("compiles")
    }

    const CURL: &str = "cluster.local/ns/handson/sa/curl";
    const DENY_SA: &str = "cluster.local/ns/handson/sa/curl-deny";

    fn peer(principal: Option<&str>) -> Peer<'_> {
        Peer {
            ip: "10.0.0.7".parse().expect("ip"),
            principal,
            port: 8080,
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> Traffic<'a> {
        Traffic::Http(HttpAttributes {
            method,
            path,
            host: "handson:8080",
            headers,
            auth: None,
        })
    }

    fn deny(name: &str) -> Verdict {
        Verdict::Deny(name.into())
    }

    fn no_allow() -> Verdict {
        deny("(no ALLOW policy matched)")
    }

    #[test]
    fn the_evaluation_table() {
        let h = http::HeaderMap::new();
        let mut with_user = http::HeaderMap::new();
        with_user.insert("x-user", http::HeaderValue::from_static("admin-1"));
        let get = req("GET", "/", &h);
        let post = req("POST", "/", &h);
        let delete = req("DELETE", "/id/123", &h);
        let deny_curl_deny = json!([{"name": "h/deny", "action": "DENY",
            "rules": [{"from": [{"source": {"principals": [DENY_SA]}}], "to": [{"operation": {"ports": ["8080"]}}]}]}]);
        let allow_get = json!([{"name": "h/get", "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [CURL]}}], "to": [{"operation": {"methods": ["GET"]}}]}]}]);
        let rows: Vec<(&str, Policies, Peer<'_>, Traffic<'_>, Verdict)> = vec![
            (
                "no policy allows",
                policies(json!([])),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "a matching DENY denies",
                policies(deny_curl_deny.clone()),
                peer(Some(DENY_SA)),
                get,
                deny("h/deny"),
            ),
            (
                "a DENY that does not match allows",
                policies(deny_curl_deny.clone()),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "L4 DENY decides at the connection",
                policies(deny_curl_deny.clone()),
                peer(Some(DENY_SA)),
                Traffic::Connection,
                deny("h/deny"),
            ),
            (
                "L4 DENY denies TCP",
                policies(deny_curl_deny.clone()),
                peer(Some(DENY_SA)),
                Traffic::Tcp,
                deny("h/deny"),
            ),
            (
                "principals need mTLS",
                policies(deny_curl_deny),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "a matching ALLOW allows",
                policies(allow_get.clone()),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "ALLOW set, POST matches none",
                policies(allow_get.clone()),
                peer(Some(CURL)),
                post,
                no_allow(),
            ),
            (
                "ALLOW set, DELETE matches none",
                policies(allow_get.clone()),
                peer(Some(CURL)),
                delete,
                no_allow(),
            ),
            (
                "ALLOW set, other principal",
                policies(allow_get.clone()),
                peer(Some(DENY_SA)),
                get,
                no_allow(),
            ),
            (
                "ALLOW set, connection deferred to requests",
                policies(allow_get.clone()),
                peer(Some(CURL)),
                Traffic::Connection,
                Verdict::Defer,
            ),
            (
                "ALLOW set, connection from a stranger denied early",
                policies(allow_get.clone()),
                peer(Some(DENY_SA)),
                Traffic::Connection,
                no_allow(),
            ),
            (
                "HTTP fields in ALLOW never match TCP",
                policies(allow_get),
                peer(Some(CURL)),
                Traffic::Tcp,
                no_allow(),
            ),
            (
                "HTTP fields in DENY are ignored for TCP",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]}]}]),
                ),
                peer(None),
                Traffic::Tcp,
                deny("h/d"),
            ),
            (
                "DENY with HTTP fields defers a connection",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}]),
                ),
                peer(None),
                Traffic::Connection,
                Verdict::Defer,
            ),
            (
                "DENY before ALLOW",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{}]}, {"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}]),
                ),
                peer(None),
                req("GET", "/admin/x", &h),
                deny("h/d"),
            ),
            (
                "an empty rule matches everything",
                policies(json!([{"name": "h/a", "action": "ALLOW", "rules": [{}]}])),
                peer(None),
                post,
                Verdict::Allow,
            ),
            (
                "ALLOW without rules allows nothing",
                policies(json!([{"name": "h/none", "action": "ALLOW"}])),
                peer(Some(CURL)),
                get,
                no_allow(),
            ),
            (
                "DENY without rules denies nothing",
                policies(json!([{"name": "h/none", "action": "DENY"}])),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "AUDIT never blocks",
                policies(json!([{"name": "h/au", "action": "AUDIT", "rules": [{}]}])),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "notPrincipals matches plaintext",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}]),
                ),
                peer(None),
                get,
                deny("h/d"),
            ),
            (
                "notPrincipals spares mTLS peers",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}]),
                ),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "principal prefix",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/handson/*"]}}]}]}]),
                ),
                peer(Some(DENY_SA)),
                get,
                Verdict::Allow,
            ),
            (
                "namespaces from the principal",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["handson"]}}]}]}]),
                ),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "notNamespaces",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["handson"]}}]}]}]),
                ),
                peer(Some("cluster.local/ns/other/sa/x")),
                get,
                deny("h/d"),
            ),
            (
                "ipBlocks CIDR",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}]}]}]),
                ),
                peer(None),
                Traffic::Tcp,
                deny("h/d"),
            ),
            (
                "notIpBlocks",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"from": [{"source": {"notIpBlocks": ["10.0.0.7"]}}]}]}]),
                ),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "ports that do not match",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}]),
                ),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "notPorts",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"notPorts": ["9090"]}}]}]}]),
                ),
                peer(None),
                get,
                deny("h/d"),
            ),
            (
                "path suffix",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["*.php"]}}]}]}]),
                ),
                peer(None),
                req("GET", "/x/index.php", &h),
                deny("h/d"),
            ),
            (
                "notPaths",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"notPaths": ["/private*"]}}]}]}]),
                ),
                peer(None),
                req("GET", "/private/1", &h),
                no_allow(),
            ),
            (
                "notMethods",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"notMethods": ["DELETE"]}}]}]}]),
                ),
                peer(None),
                delete,
                no_allow(),
            ),
            (
                "hosts ignore case and port",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"hosts": ["HANDSON"]}}]}]}]),
                ),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "notHosts",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"notHosts": ["handson*"]}}]}]}]),
                ),
                peer(None),
                get,
                no_allow(),
            ),
            (
                "header condition prefix",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"when": [{"key": "request.headers[x-user]", "values": ["admin-*"]}]}]}]),
                ),
                peer(None),
                req("GET", "/", &with_user),
                Verdict::Allow,
            ),
            (
                "header condition, header absent",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"when": [{"key": "request.headers[x-user]", "values": ["*"]}]}]}]),
                ),
                peer(None),
                get,
                no_allow(),
            ),
            (
                "header notValues",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"when": [{"key": "request.headers[x-user]", "notValues": ["admin-*"]}]}]}]),
                ),
                peer(None),
                req("GET", "/", &with_user),
                Verdict::Allow,
            ),
            (
                "source.namespace condition",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"when": [{"key": "source.namespace", "values": ["handson"]}]}]}]),
                ),
                peer(Some(CURL)),
                Traffic::Tcp,
                deny("h/d"),
            ),
            (
                "source.ip and destination.port conditions",
                policies(
                    json!([{"name": "h/d", "action": "DENY", "rules": [{"when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}, {"key": "destination.port", "values": ["8080"]}]}]}]),
                ),
                peer(None),
                get,
                deny("h/d"),
            ),
            (
                "from entries are alternatives",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["x"]}}, {"source": {"namespaces": ["handson"]}}]}]}]),
                ),
                peer(Some(CURL)),
                get,
                Verdict::Allow,
            ),
            (
                "rules are alternatives",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}, {"to": [{"operation": {"methods": ["GET"]}}]}]}]),
                ),
                peer(None),
                get,
                Verdict::Allow,
            ),
            (
                "one of several ALLOW policies is enough",
                policies(
                    json!([{"name": "h/a", "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}]}, {"name": "h/b", "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/"]}}]}]}]),
                ),
                peer(None),
                get,
                Verdict::Allow,
            ),
        ];
        let mut failures = Vec::new();
        for (name, p, peer, traffic, want) in &rows {
            let got = p.decide(peer, traffic).verdict;
            if got != *want {
                failures.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn the_last_of_many_rules_matches_and_a_failing_source_outweighs_an_unknown_operation() {
        let h = http::HeaderMap::new();
        let mut rules: Vec<serde_json::Value> = (0..99)
            .map(|i| json!({"from": [{"source": {"principals": [format!("cluster.local/ns/other/sa/c-{i}")]}}],
                "to": [{"operation": {"methods": ["GET"]}}]}))
            .collect();
        rules.push(json!({"from": [{"source": {"principals": [CURL]}}], "to": [{"operation": {"methods": ["GET"]}}]}));
        let allow = policies(json!([{"name": "h/many", "action": "ALLOW", "rules": rules}]));
        assert_eq!(
            allow
                .decide(&peer(Some(CURL)), &req("GET", "/", &h))
                .verdict,
            Verdict::Allow
        );
        assert_eq!(
            allow
                .decide(&peer(Some(DENY_SA)), &req("GET", "/", &h))
                .verdict,
            no_allow()
        );
        // Before the request is read, the methods are unknown: only the
        // rule whose source matches can defer; the others fail outright.
        assert_eq!(
            allow
                .decide(&peer(Some(CURL)), &Traffic::Connection)
                .verdict,
            Verdict::Defer
        );
        assert_eq!(
            allow
                .decide(&peer(Some(DENY_SA)), &Traffic::Connection)
                .verdict,
            no_allow()
        );
    }

    #[test]
    fn audit_is_reported() {
        let p = policies(
            json!([{"name": "h/au", "action": "AUDIT", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}]),
        );
        assert!(p.decide(&peer(None), &Traffic::Tcp).audited);
    }

    #[test]
    fn malformed_values_name_their_field() {
        let bad = |v: serde_json::Value| {
            let list: Vec<Policy> = serde_json::from_value(v).expect("shape");
            Policies::compile(&list).expect_err("refused")
        };
        let e =
            bad(json!([{"name": "a", "rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}]));
        assert_eq!(e.path, "inbound.policies[0].rules[0].to[0].operation.ports");
        assert!(e.message.contains("\"http\""), "{e}");
        let e = bad(
            json!([{"name": "a", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]}]}]),
        );
        assert_eq!(
            e.path,
            "inbound.policies[0].rules[0].from[0].source.ipBlocks"
        );
        let e = bad(json!([{"name": "a", "rules": [{"when": [{"key": "connection.sni"}]}]}]));
        assert_eq!(e.path, "inbound.policies[0].rules[0].when[0].key");
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains("1.2.3.4".parse().expect("ip"))
        );
        assert!(
            Cidr::parse("::1")
                .expect("v6")
                .contains("::1".parse().expect("ip"))
        );
    }

    #[test]
    fn request_principals_and_jwt_claims_decide_only_http_requests() {
        let h = http::HeaderMap::new();
        let alice = RequestAuth {
            principal: "https://issuer.test/alice".into(),
            claims: json!({"aud": "shop", "groups": ["admin", "dev"], "tier": "gold"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let with = |auth: Option<&'static RequestAuth>| -> Traffic<'_> {
            Traffic::Http(HttpAttributes {
                method: "GET",
                path: "/",
                host: "shop",
                headers: &h,
                auth,
            })
        };
        let alice: &'static RequestAuth = Box::leak(Box::new(alice));
        let require_jwt = policies(json!([{"name": "h/jwt", "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]));
        let verdict = |p: &Policies, t: Traffic<'_>| p.decide(&peer(None), &t).verdict;
        assert_eq!(verdict(&require_jwt, with(Some(alice))), Verdict::Allow);
        assert_eq!(verdict(&require_jwt, with(None)), no_allow());
        assert_eq!(verdict(&require_jwt, Traffic::Connection), Verdict::Defer);
        assert_eq!(verdict(&require_jwt, Traffic::Tcp), no_allow());

        let admins = policies(json!([{"name": "h/admins", "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["https://issuer.test/*"]}}],
                "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
                         {"key": "request.auth.audiences", "values": ["shop"]},
                         {"key": "request.auth.principal", "notValues": ["*/mallory"]}]}]}]));
        assert_eq!(verdict(&admins, with(Some(alice))), Verdict::Allow);
        let no_gold = policies(json!([{"name": "h/no-gold", "action": "DENY",
            "rules": [{"when": [{"key": "request.auth.claims[tier]", "values": ["gold"]}]}]}]));
        assert_eq!(verdict(&no_gold, with(Some(alice))), deny("h/no-gold"));
        assert_eq!(verdict(&no_gold, with(None)), Verdict::Allow);
        let not_alice = policies(json!([{"name": "h/not-alice", "action": "DENY",
            "rules": [{"from": [{"source": {"notRequestPrincipals": ["*/alice"]}}]}]}]));
        assert_eq!(verdict(&not_alice, with(Some(alice))), Verdict::Allow);
        assert_eq!(verdict(&not_alice, with(None)), deny("h/not-alice"));
    }

    #[test]
    fn a_claim_key_without_a_name_is_an_error() {
        let list: Vec<Policy> = serde_json::from_value(json!([{"name": "h/x",
            "rules": [{"when": [{"key": "request.auth.claims[]", "values": ["a"]}]}]}]))
        .expect("policies");
        let e = Policies::compile(&list).expect_err("refused");
        assert_eq!(e.path, "inbound.policies[0].rules[0].when[0].key");
    }

    /// The principal index leaves out only rules that cannot match: over
    /// policies built from a small vocabulary (exact principals, wildcards,
    /// negations, namespaces, no `from` at all), every peer and traffic gets
    /// the same result as trying every rule.
    #[test]
    fn the_principal_index_changes_no_result() {
        const A: &str = "cluster.local/ns/a/sa/one";
        const B: &str = "cluster.local/ns/b/sa/two";
        let sources = [
            json!({"principals": [A]}),
            json!({"principals": [B]}),
            json!({"principals": [A, B]}),
            json!({"principals": [A, A]}),
            json!({"principals": ["*"]}),
            json!({"principals": ["cluster.local/ns/a/*"]}),
            json!({"principals": [A], "notPrincipals": [B]}),
            json!({"notPrincipals": [A]}),
            json!({"namespaces": ["b"]}),
            json!({"principals": [B], "namespaces": ["a"]}),
        ];
        let operations = [
            None,
            Some(json!({"methods": ["GET"]})),
            Some(json!({"paths": ["/admin*"]})),
        ];
        let h = http::HeaderMap::new();
        let traffics = [
            Traffic::Connection,
            Traffic::Tcp,
            req("GET", "/", &h),
            req("POST", "/admin/x", &h),
        ];
        let peers = [None, Some(A), Some(B), Some("cluster.local/ns/c/sa/three")];
        // A small linear congruential sequence picks the combinations.
        let mut seed: u64 = 7;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut indexed_rules = 0;
        for _ in 0..400 {
            let rules: Vec<serde_json::Value> = (0..1 + next(4))
                .map(|_| {
                    let from: Vec<_> = (0..next(3))
                        .map(|_| json!({"source": sources[next(sources.len())].clone()}))
                        .collect();
                    let mut rule = json!({"from": from});
                    if let Some(o) = &operations[next(operations.len())] {
                        rule["to"] = json!([{"operation": o}]);
                    }
                    rule
                })
                .collect();
            for action in ["ALLOW", "DENY", "AUDIT"] {
                let compiled = policies(json!([{"name": "p", "action": action, "rules": rules}]));
                let (p, action) = match action {
                    "ALLOW" => (&compiled.allow[0], Action::Allow),
                    "DENY" => (&compiled.deny[0], Action::Deny),
                    _ => (&compiled.audit[0], Action::Audit),
                };
                indexed_rules += p.rules.len() - p.index.candidates(None).count();
                for principal in peers {
                    for traffic in &traffics {
                        let peer = peer(principal);
                        let every = or_all(p.rules.iter().map(|r| rule(r, action, &peer, traffic)));
                        assert_eq!(
                            matches(p, action, &peer, traffic),
                            every,
                            "rules {rules:?}, {action:?}, peer {principal:?}, {traffic:?}"
                        );
                    }
                }
            }
        }
        // The sequence did exercise the index.
        assert!(indexed_rules > 100, "{indexed_rules} rules indexed");
    }
}
