//! The proxy's configuration document: the schema of the proxy's static
//! YAML file and of the snapshots the control plane pushes inside
//! [`crate::mesh::Snapshot::config_json`] (see `proxy/README.md`). It lives
//! in the contract crate so that the operator writes exactly what the proxy
//! reads.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration of one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin endpoint (`/ready`, `/metrics`, `/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Upstream services, referenced by name from routes.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Where the proxy accepts traffic.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Sidecars: traffic for the local workload, with its mTLS mode and the
    /// authorization policies that select it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    /// Sidecars: the mesh's trust domain and roots, for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
    /// Sidecars: intercepted TCP that no route takes but that the mesh
    /// still carries over mTLS.
    #[serde(default, skip_serializing_if = "MeshTcp::is_empty")]
    pub mesh_tcp: MeshTcp,
}

/// Where a sidecar sends intercepted outbound TCP that no HTTP route takes
/// (an opaque Service port, a pod's address) over mTLS to the destination's
/// sidecar, as Istio does, instead of in plaintext, which a `STRICT`
/// destination refuses. Anything else passes through to its original
/// destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MeshTcp {
    /// Opaque Service ports by `clusterIP:port`: the backend (in
    /// [`Config::backends`]) whose endpoints the sidecar balances across.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<SocketAddr, String>,
    /// Pods behind a sidecar: each identity they present, with the
    /// addresses of the pods that present it. A connection to one of these
    /// addresses goes to its sidecar's [`INBOUND_PORT`] over mTLS, the port
    /// in the server name. Keyed by identity because a workload's replicas
    /// share one: every sidecar gets this table, so each identity is
    /// written once, not once per pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workloads: BTreeMap<String, Vec<IpAddr>>,
}

impl MeshTcp {
    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.workloads.is_empty()
    }
}

/// The port where a sidecar takes inbound traffic: mTLS from other sidecars
/// (the target port in the TLS server name, see [`inbound_server_name`]) and,
/// with interception, redirected plaintext.
pub const INBOUND_PORT: u16 = 15006;

/// The port where a sidecar takes its app's outbound traffic (redirected
/// there by the interception rules, or dialled on loopback).
pub const OUTBOUND_PORT: u16 = 15001;

/// The operator's gRPC port (config, telemetry, certificates).
pub const CONTROL_PLANE_PORT: u16 = 15010;

/// The user id sidecars run as: the interception rules let this user's
/// connections pass, and the images name it in `/etc/passwd`.
pub const PROXY_UID: u32 = 1337;

/// The TLS server name a client sidecar sends to reach `port` of the
/// workload behind an inbound sidecar (Istio carries it the same way).
pub fn inbound_server_name(port: u16) -> String {
    format!("port-{port}.inbound.sluice")
}

/// The target port from a server name made by [`inbound_server_name`].
pub fn inbound_port_of(server_name: &str) -> Option<u16> {
    server_name
        .strip_prefix("port-")?
        .strip_suffix(".inbound.sluice")?
        .parse()
        .ok()
}

/// The SPIFFE ID of a service account: what a workload certificate
/// names, what the CA signs and what a client expects of a server.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Traffic for the workload beside a sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Whether plaintext is accepted besides mTLS.
    #[serde(default)]
    pub mode: MtlsMode,
    /// The workload's ports the sidecar accepts traffic for (it forwards
    /// to `127.0.0.1:<port>`); a connection for any other port is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<InboundPort>,
    /// The authorization policies selecting this workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::authz::Policy>,
    /// The JWT issuers this workload trusts (from the RequestAuthentications
    /// that select it), keys inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<crate::authn::JwtRule>,
}

/// One port of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPort {
    /// The port the workload listens on.
    pub port: u16,
    /// `http` (authorized per request) or `tcp` (per connection).
    #[serde(default)]
    pub protocol: ListenerProtocol,
}

/// Mutual TLS on a sidecar's inbound side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// mTLS and plaintext both accepted, so that a mesh is adopted gradually.
    #[default]
    Permissive,
    /// Only mTLS from a certificate of the mesh.
    Strict,
}

/// The mesh's identity settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshTls {
    /// `cluster.local` in `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub trust_domain: String,
    /// Trusted roots, PEM; during a root rotation both old and new.
    pub roots_pem: Vec<String>,
}

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to serve on, e.g. `127.0.0.1:15000`.
    pub address: SocketAddr,
}

/// An upstream service and its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Unique name, used by routes and in metrics.
    pub name: String,
    /// The endpoints' addresses; requests are balanced across them.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// Protocol towards the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The revision these endpoints run (e.g. a pod-template hash), kept as a
    /// telemetry dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Time allowed to open a connection to an endpoint.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// The Kubernetes Service these endpoints belong to
    /// (`namespace/name`), reported as the destination in telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Answer every request sent to this backend with this status instead
    /// of forwarding it (e.g. `500` for a Gateway API backendRef that cannot
    /// be resolved, as the specification asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<u16>,
    /// Endpoints that run a sidecar, with the identity each must present:
    /// they are reached over mTLS at their sidecar's [`INBOUND_PORT`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mesh: std::collections::BTreeMap<SocketAddr, String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How the proxy talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// The same HTTP version as the downstream request (h2 for gRPC).
    #[default]
    Auto,
    /// HTTP/1.1 with pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge, multiplexed.
    Http2,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in metrics.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// `http` (HTTP/1.1 and HTTP/2 prior knowledge, detected) or `tcp`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// HTTP routes, tried in order; the first whose host and match fit wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// For `tcp` listeners: where connections go, by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// For `http` listeners: terminate TLS (HTTPS) with these certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// TLS termination on a listener: the certificate is chosen per handshake
/// by the client's SNI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// At least one; the first for a hostname wins.
    pub certificates: Vec<ServerCertificate>,
}

/// A certificate a listener serves.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificate {
    /// SNI names it serves, exact or `*.`-wildcard; empty: clients without
    /// SNI or with a name no other certificate serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key; never shown (see [`Config::redacted`]).
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("hostnames", &self.hostnames)
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .finish_non_exhaustive()
    }
}

/// What stands for a private key in a config that is shown.
pub const REDACTED: &str = "[redacted]";

impl Config {
    /// This config without its private keys: what is shown (the admin
    /// port's `/config`, logs) rather than applied.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for cert in c
            .listeners
            .iter_mut()
            .filter_map(|l| l.tls.as_mut())
            .flat_map(|t| t.certificates.iter_mut())
        {
            cert.key_pem = REDACTED.to_owned();
        }
        c
    }
}

/// The protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on the same port.
    #[default]
    Http,
    /// Opaque TCP, spliced to a backend.
    Tcp,
}

/// An HTTP route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name within the listener, used in metrics.
    pub name: String,
    /// Hostnames: exact (`app.example.com`) or wildcard (`*.example.com`).
    /// Empty matches every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Request matches, any of which selects the route. Empty matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, by relative weight.
    pub backends: Vec<WeightedBackend>,
    /// Time allowed for the upstream response headers (all attempts).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
    /// Time allowed for each attempt's response headers (Gateway API's
    /// `backendRequest`), within `timeout`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub attempt_timeout: Option<Duration>,
    /// Retries of idempotent requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Backends that get a copy of matching requests, their answers
    /// discarded (Gateway API's `RequestMirror`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Changes to matching requests and their responses, or a redirect.
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
}

/// What a route does to a request besides choosing its backend (Gateway
/// API's HTTPRoute filters other than `RequestMirror`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Headers of the request as it goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderChanges>,
    /// Headers of the response as it goes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderChanges>,
    /// Answer with a redirect instead of forwarding (`backends` unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Host and path as they go upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
}

impl Filters {
    /// Whether no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

/// Header changes, applied in the order remove, set, add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderChanges {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A redirect answered by the proxy; what is not given keeps the request's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host of the `Location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port of the `Location` (the scheme's own is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path of the `Location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathChange>,
    /// 301 or 302 (the default); 303, 307 and 308 too.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// How a redirect or rewrite changes the path (the query is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathChange {
    /// The whole path becomes this.
    Full(String),
    /// The part the route's `Prefix` path match matched becomes this.
    Prefix(String),
}

/// Host and path changes on the way upstream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// The `Host` (`:authority`) upstream sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path upstream sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathChange>,
}

/// A copy of a route's requests to another backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// A name from `backends`.
    pub backend: String,
    /// Percentage (0-100) of the route's requests copied. Defaults to 100.
    #[serde(default = "default_mirror_percent")]
    pub percent: u32,
}

fn default_mirror_percent() -> u32 {
    100
}

/// One way a request can match a route; all given fields must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header matches, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter matches, all of which must hold (the name exactly,
    /// the value of its first occurrence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<HeaderMatch>,
}

/// A path match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this, at a `/` boundary (Gateway API semantics).
    Prefix(String),
    /// The whole path matches this regular expression ([`match_regex`]).
    Regex(String),
}

/// Whether Gateway API path prefix `prefix` covers `path`: whole segments
/// only (`/api` and `/api/` cover `/api` and `/api/v1`, not `/apix`).
pub fn prefix_covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// A header (or query parameter) match: an exact value, a regular
/// expression over the whole value, or presence when neither is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive), or query parameter name (exact).
    pub name: String,
    /// Exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A regular expression ([`match_regex`]) the whole value must match;
    /// never together with `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The compiled-size cap of a match regex: matching stays linear in the
/// value, and this bounds the memory a pushed pattern may take.
const MATCH_REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Compiles a regular expression of a route match (a header's or query
/// parameter's value, a path) as the proxy runs it: anchored at both ends
/// (as Istio's RE2 matchers are) and size-capped. The operator calls it
/// before pushing, so that it never sends a pattern the proxy refuses.
pub fn match_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MATCH_REGEX_SIZE_LIMIT)
        .build()
}

/// A reference to a backend with a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    /// A name from `backends`.
    pub name: String,
    /// Relative weight; 0 sends nothing. Defaults to 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first (on connect failure or 503).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Retries allowed as a fraction of requests, so that retries never
    /// multiply an outage's load.
    #[serde(default = "default_budget")]
    pub budget: f64,
}

fn default_attempts() -> u32 {
    2
}
fn default_budget() -> f64 {
    0.2
}

/// Parses `500ms`, `2s`, `1m`, `1h30m` (a sum of number-unit terms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected a number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unit must be ms, s, m or h"
                ));
            }
        };
        let part = Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("invalid duration {s:?}: out of range"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("invalid duration {s:?}: out of range"))?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

mod duration {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        // Out of range is an error, never a panic.
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&"9".repeat(400)).is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
    }
}
