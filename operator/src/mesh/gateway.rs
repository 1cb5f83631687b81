//! Gateway API `Gateway` + `HttpRoute` as the gateway proxies' configs: per
//! infrastructure (the shared proxies, or a dedicated Gateway's own), one
//! listener per port across the Gateways it serves, routes attached by
//! parentRefs, hostnames intersected, allowedRoutes honoured.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesKinds,
    GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersAllowedRoutesNamespacesSelector,
};
use gateway_api::httproutes::{HttpRoute, HttpRouteParentRefs, HttpRouteStatusParentsParentRef};
use kube::ResourceExt;
use sluice_proto::config::{
    Backend, Config, Listener, ListenerProtocol, ListenerTls, Route, ServerCertificate,
    WeightedBackend,
};
use sluice_proto::probes::ADMIN_PORT;

use super::certificates;
use super::grants::{GATEWAY_GROUP, Grants};
use super::rules::{self, Ranked};
use super::services::ServiceIndex;
use super::{
    CONTROLLER_NAME, Cond, ConfigKey, GatewayDraft, GatewayInfra, ListenerDraft, MeshInput,
    MeshOutput, reason,
};

/// Fills the gateway infrastructures' configs and the Gateway API statuses.
pub fn translate(input: &MeshInput, index: &ServiceIndex, out: &mut MeshOutput) {
    let ours: BTreeSet<String> = input
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .map(|c| c.name_any())
        .collect();
    out.classes = input
        .classes
        .iter()
        .filter(|c| ours.contains(&c.name_any()))
        .map(|c| (c.name_any(), c.metadata.generation))
        .collect();
    let mut gateways: Vec<&Gateway> = input
        .gateways
        .iter()
        .map(|g| &**g)
        .filter(|g| ours.contains(&g.spec.gateway_class_name))
        .collect();
    gateways.sort_by_key(|g| {
        (
            g.creation_timestamp().map(|t| t.0),
            g.namespace(),
            g.name_any(),
        )
    });

    let secrets = certificates::Secrets::of(&input.tls_secrets);
    let namespaces = namespace_labels(input);
    // The shared proxies serve every Gateway of a shared class, their
    // listeners merged by port (and get a config with none, to be ready);
    // a dedicated Gateway's proxies serve it alone.
    let mut infras: BTreeMap<GatewayInfra, Vec<&Gateway>> =
        BTreeMap::from([(GatewayInfra::Shared, Vec::new())]);
    for gw in &gateways {
        infras
            .entry(infra_of(gw, &input.mesh.dedicated_class))
            .or_default()
            .push(gw);
    }
    let ctx = Context {
        input,
        index,
        secrets: &secrets,
        namespaces: &namespaces,
    };
    for (infra, served) in infras {
        let config = serve(&ctx, &infra, &served, out);
        out.configs.insert(ConfigKey::Gateway(infra), config);
    }
    route_statuses(input, &gateways, index, &namespaces, out);
}

/// Which proxies serve `gw`: its own when its class is `dedicated_class`.
pub fn infra_of(gw: &Gateway, dedicated_class: &str) -> GatewayInfra {
    if !dedicated_class.is_empty() && gw.spec.gateway_class_name == dedicated_class {
        GatewayInfra::Dedicated {
            namespace: gw.namespace().unwrap_or_default(),
            name: gw.name_any(),
        }
    } else {
        GatewayInfra::Shared
    }
}

/// What every infrastructure's translation reads.
struct Context<'a> {
    input: &'a MeshInput,
    index: &'a ServiceIndex,
    secrets: &'a certificates::Secrets<'a>,
    namespaces: &'a NamespaceLabels<'a>,
}

/// The config of the proxies of `infra`, which serve `gateways` (oldest
/// first: an older listener keeps a port another one conflicts on); their
/// status drafts go to `out`.
fn serve(
    ctx: &Context<'_>,
    infra: &GatewayInfra,
    gateways: &[&Gateway],
    out: &mut MeshOutput,
) -> Config {
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for gw in gateways {
        let gw_ns = gw.namespace().unwrap_or_default();
        let gw_name = gw.name_any();
        let mut listeners = Vec::new();
        for l in &gw.spec.listeners {
            let checked = check_listener(l, &gw_ns, &ports, ctx.secrets, ctx.index.grants());
            // Routes count as attached to an accepted listener even while
            // it is not served (its certificates do not resolve).
            let attached = if checked.accepted {
                attachments(ctx.input, &gw_ns, &gw_name, l, ctx.namespaces)
            } else {
                Vec::new()
            };
            if let Some((port, certificates)) = checked.serve {
                // The port is opened even before a route attaches (404s).
                let entry = ports.entry(port).or_insert_with(|| Port {
                    tls: certificates.is_some(),
                    ..Port::default()
                });
                entry
                    .certificates
                    .extend(certificates.into_iter().flatten());
                let group = entry
                    .groups
                    .entry(Specificity::of(l.hostname.as_deref()))
                    .or_default();
                for (route, hosts) in &attached {
                    let scope = format!("{gw_ns}/{gw_name}/{}", l.name);
                    let r = rules::translate(route, hosts, &scope, ctx.index);
                    backends.extend(r.backends);
                    group.extend(r.routes);
                }
            }
            listeners.push(ListenerDraft {
                name: l.name.clone(),
                attached_routes: i32::try_from(attached.len()).unwrap_or(i32::MAX),
                conditions: checked.conditions,
                programmed: checked.programmed,
                route_kinds: checked.route_kinds,
            });
        }
        out.gateways.push(GatewayDraft {
            namespace: gw_ns,
            name: gw_name,
            infra: infra.clone(),
            generation: gw.metadata.generation,
            accepted: Cond::yes("Accepted", reason::ACCEPTED),
            listeners,
        });
    }
    let listeners = ports
        .into_iter()
        .map(|(port, p)| {
            let routes = isolated(p.groups, &mut backends);
            Listener {
                name: format!("gateway-{port}"),
                address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                protocol: ListenerProtocol::Http,
                routes,
                backends: vec![],
                tls: p.tls.then_some(ListenerTls {
                    certificates: p.certificates,
                }),
            }
        })
        .collect();
    Config {
        admin: None,
        backends: backends.into_values().collect(),
        listeners,
        inbound: None,
        // A gateway with a mesh certificate reaches meshed workloads
        // over mTLS (needed for STRICT ones).
        mesh_tls: ctx.input.mesh.mesh_tls(),
        // The gateway intercepts nothing.
        mesh_tcp: Default::default(),
    }
}

/// The routes attached to listener `l` of Gateway `gw_ns/gw_name`, with
/// the hostnames each answers there.
fn attachments<'a>(
    input: &'a MeshInput,
    gw_ns: &str,
    gw_name: &str,
    l: &GatewayListeners,
    namespaces: &NamespaceLabels<'_>,
) -> Vec<(&'a HttpRoute, Vec<String>)> {
    let mut out = Vec::new();
    for route in &input.routes {
        let route_ns = route.namespace().unwrap_or_default();
        for pr in route.spec.parent_refs.iter().flatten() {
            if !refers_to(pr, &route_ns, gw_ns, gw_name)
                || !selects_listener(pr, l)
                || !allows(l, gw_ns, &route_ns, namespaces)
            {
                continue;
            }
            let route_hosts = route.spec.hostnames.as_deref().unwrap_or(&[]);
            if let Some(hosts) = intersect(l.hostname.as_deref(), route_hosts) {
                out.push((&**route, hosts));
            }
        }
    }
    out
}

/// One port of the gateway proxies, shared by every listener on it.
#[derive(Default)]
struct Port {
    /// HTTPS (every listener on the port must agree).
    tls: bool,
    certificates: Vec<ServerCertificate>,
    /// The routes of the listeners on the port, by listener hostname.
    groups: BTreeMap<Specificity, Vec<Ranked>>,
}

/// A listener's hostname, ordered from the most specific: an exact name,
/// then wildcards, longer first, then none. A request belongs to the most
/// specific listener whose hostname it matches and sees only that
/// listener's routes (listener isolation), so those come first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    wildcard: bool,
    longer_first: std::cmp::Reverse<usize>,
    /// `None` for a listener without a hostname, which sorts last.
    hostname: Option<String>,
}

impl Specificity {
    fn of(hostname: Option<&str>) -> Specificity {
        match hostname {
            Some(h) => Specificity {
                wildcard: h.starts_with('*'),
                longer_first: std::cmp::Reverse(h.len()),
                hostname: Some(h.to_ascii_lowercase()),
            },
            None => Specificity {
                wildcard: true,
                longer_first: std::cmp::Reverse(0),
                hostname: None,
            },
        }
    }
}

/// The backend that answers 404 to requests for a listener's hostname that
/// none of its routes took.
const ISOLATION_BACKEND: &str = "gateway/listener-isolation";

/// Whether a request for `host` could match listener hostname `of`.
fn covers(of: &Specificity, host: &str) -> bool {
    of.hostname.as_deref().is_none_or(|w| within(host, w))
}

/// A port's routes: each listener's in precedence order, most specific
/// listener first; after those of a listener whose hostname a less
/// specific listener also covers, a route that ends the search for that
/// hostname with 404, so that a request never falls through to the less
/// specific listener's routes (its backend joins `backends`).
fn isolated(
    groups: BTreeMap<Specificity, Vec<Ranked>>,
    backends: &mut BTreeMap<String, Backend>,
) -> Vec<Route> {
    let keys: Vec<Specificity> = groups.keys().cloned().collect();
    let mut out = Vec::new();
    for (i, (listener, mut routes)) in groups.into_iter().enumerate() {
        rules::sort(&mut routes);
        out.extend(routes.into_iter().map(|r| r.route));
        let shadowed = |h: &str| keys[i + 1..].iter().any(|later| covers(later, h));
        if let Some(host) = listener.hostname.filter(|h| shadowed(h)) {
            backends
                .entry(ISOLATION_BACKEND.to_owned())
                .or_insert_with(|| rules::responding(ISOLATION_BACKEND, 404));
            out.push(Route {
                name: format!("listener-isolation/{host}"),
                hosts: vec![host],
                matches: Vec::new(),
                backends: vec![WeightedBackend {
                    name: ISOLATION_BACKEND.to_owned(),
                    weight: 1,
                }],
                timeout: None,
                attempt_timeout: None,
                retries: None,
                mirrors: Vec::new(),
                filters: Default::default(),
            });
        }
    }
    out
}

/// What [`check_listener`] found.
struct Checked {
    /// Its `Accepted`.
    accepted: bool,
    /// The route kinds it admits (`HTTPRoute`, or none).
    route_kinds: Vec<&'static str>,
    conditions: Vec<Cond>,
    /// Whether the proxies serve it (for `Programmed`).
    programmed: Result<(), String>,
    /// Its port, and for HTTPS its usable certificates.
    serve: Option<(u16, Option<Vec<ServerCertificate>>)>,
}

impl Checked {
    fn refused(conditions: Vec<Cond>) -> Checked {
        Checked {
            accepted: false,
            route_kinds: vec!["HTTPRoute"],
            conditions,
            programmed: Err("the listener is not accepted".into()),
            serve: None,
        }
    }
}

/// The route kinds listener `l` admits, and the problem with the kinds
/// it names that Sluice does not serve (`ResolvedRefs=False`).
fn route_kinds(l: &GatewayListeners) -> (Vec<&'static str>, Option<Cond>) {
    let Some(kinds) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) else {
        return (vec!["HTTPRoute"], None);
    };
    let http = |k: &&GatewayListenersAllowedRoutesKinds| {
        k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
    };
    let served = if kinds.iter().any(|k| http(&k)) {
        vec!["HTTPRoute"]
    } else {
        vec![]
    };
    let other: Vec<&str> = kinds
        .iter()
        .filter(|k| !http(k))
        .map(|k| k.kind.as_str())
        .collect();
    let problem = (!other.is_empty()).then(|| {
        Cond::no(
            "ResolvedRefs",
            reason::INVALID_ROUTE_KINDS,
            format!("route kinds Sluice does not serve: {}", other.join(", ")),
        )
    });
    (served, problem)
}

/// A listener's conditions and whether (and with what) it is served: HTTP,
/// or HTTPS terminated with its certificateRefs, on a port that no older
/// listener holds with the other protocol.
fn check_listener(
    l: &GatewayListeners,
    gw_ns: &str,
    ports: &BTreeMap<u16, Port>,
    secrets: &certificates::Secrets,
    grants: &Grants,
) -> Checked {
    let Ok(port) = u16::try_from(l.port) else {
        return Checked::refused(vec![Cond::no(
            "Accepted",
            reason::PORT_UNAVAILABLE,
            format!("port {} is out of range", l.port),
        )]);
    };
    // The gateway proxy serves its admin endpoint there: a listener on it
    // would make the proxy refuse the whole config.
    if port == ADMIN_PORT {
        return Checked::refused(vec![Cond::no(
            "Accepted",
            reason::PORT_UNAVAILABLE,
            format!("port {ADMIN_PORT} is the Sluice proxy's admin port; use another"),
        )]);
    }
    let tls = match l.protocol.as_str() {
        "HTTP" => false,
        "HTTPS" => true,
        other => {
            return Checked::refused(vec![Cond::no(
                "Accepted",
                reason::UNSUPPORTED_PROTOCOL,
                format!("protocol {other} is not supported yet; use HTTP or HTTPS"),
            )]);
        }
    };
    if let Some(held) = ports.get(&port).filter(|p| p.tls != tls) {
        let held = if held.tls { "HTTPS" } else { "HTTP" };
        return Checked::refused(vec![
            Cond::no(
                "Accepted",
                reason::PORT_UNAVAILABLE,
                format!("port {port} already serves {held} for an older listener"),
            ),
            Cond::yes("Conflicted", reason::PROTOCOL_CONFLICT),
        ]);
    }
    let mut conditions = vec![Cond::yes("Accepted", reason::ACCEPTED)];
    let mut programmed = Ok(());
    let (route_kinds, kinds_problem) = route_kinds(l);
    let certificates = if tls {
        let found = match certificates::of_listener(l, gw_ns, secrets, grants) {
            Ok(found) => found,
            Err(refused) => return Checked::refused(vec![refused]),
        };
        conditions.push(
            found
                .problem
                .unwrap_or_else(|| Cond::yes("ResolvedRefs", reason::RESOLVED_REFS)),
        );
        if found.usable.is_empty() {
            programmed = Err("no certificateRef of the listener is usable".into());
        }
        Some(found.usable)
    } else {
        conditions.push(Cond::yes("ResolvedRefs", reason::RESOLVED_REFS));
        None
    };
    if let Some(problem) = kinds_problem {
        conditions.retain(|c| c.kind != "ResolvedRefs");
        conditions.push(problem);
    }
    conditions.push(Cond::no("Conflicted", "NoConflicts", ""));
    let serve = programmed.is_ok().then_some((port, certificates));
    Checked {
        accepted: true,
        route_kinds,
        conditions,
        programmed,
        serve,
    }
}

/// The parent status of every route that names one of Sluice's Gateways.
fn route_statuses(
    input: &MeshInput,
    gateways: &[&Gateway],
    index: &ServiceIndex,
    namespaces: &NamespaceLabels<'_>,
    out: &mut MeshOutput,
) {
    for route in &input.routes {
        let route_ns = route.namespace().unwrap_or_default();
        for pr in route.spec.parent_refs.iter().flatten() {
            let Some(gw) = gateways.iter().find(|g| {
                refers_to(
                    pr,
                    &route_ns,
                    &g.namespace().unwrap_or_default(),
                    &g.name_any(),
                )
            }) else {
                continue;
            };
            let gw_ns = gw.namespace().unwrap_or_default();
            let candidates: Vec<&GatewayListeners> = gw
                .spec
                .listeners
                .iter()
                .filter(|l| {
                    selects_listener(pr, l)
                        && matches!(l.protocol.as_str(), "HTTP" | "HTTPS")
                        && l.port != i32::from(ADMIN_PORT)
                })
                .collect();
            let allowed: Vec<&&GatewayListeners> = candidates
                .iter()
                .filter(|l| allows(l, &gw_ns, &route_ns, namespaces))
                .collect();
            let route_hosts = route.spec.hostnames.as_deref().unwrap_or(&[]);
            let accepted = if candidates.is_empty() {
                Cond::no(
                    "Accepted",
                    reason::NO_MATCHING_PARENT,
                    format!(
                        "Gateway {gw_ns}/{} has no HTTP or HTTPS listener that the parentRef's sectionName and port select",
                        gw.name_any()
                    ),
                )
            } else if allowed.is_empty() {
                Cond::no(
                    "Accepted",
                    reason::NOT_ALLOWED_BY_LISTENERS,
                    format!(
                        "no listener of Gateway {gw_ns}/{} admits routes from namespace {route_ns}",
                        gw.name_any()
                    ),
                )
            } else if allowed
                .iter()
                .all(|l| intersect(l.hostname.as_deref(), route_hosts).is_none())
            {
                Cond::no(
                    "Accepted",
                    reason::NO_MATCHING_LISTENER_HOSTNAME,
                    "no listener hostname intersects the route's hostnames",
                )
            } else {
                Cond::yes("Accepted", reason::ACCEPTED)
            };
            let conds = rules::parent_conditions(route, index, accepted);
            push_parent(out, route, status_ref(pr), conds);
        }
    }
}

/// Records one parent's conditions on a route's draft.
pub(super) fn push_parent(
    out: &mut MeshOutput,
    route: &HttpRoute,
    parent: HttpRouteStatusParentsParentRef,
    conds: Vec<Cond>,
) {
    let draft = out
        .routes
        .entry((route.namespace().unwrap_or_default(), route.name_any()))
        .or_default();
    draft.generation = route.metadata.generation;
    draft.parents.push((parent, conds));
}

/// A parentRef as status repeats it.
pub(super) fn status_ref(pr: &HttpRouteParentRefs) -> HttpRouteStatusParentsParentRef {
    HttpRouteStatusParentsParentRef {
        group: pr.group.clone(),
        kind: pr.kind.clone(),
        name: pr.name.clone(),
        namespace: pr.namespace.clone(),
        port: pr.port,
        section_name: pr.section_name.clone(),
    }
}

/// Whether `pr` (on a route in `route_ns`) names the Gateway `ns/name`.
fn refers_to(pr: &HttpRouteParentRefs, route_ns: &str, ns: &str, name: &str) -> bool {
    pr.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && pr.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && pr.name == name
        && pr.namespace.as_deref().unwrap_or(route_ns) == ns
}

fn selects_listener(pr: &HttpRouteParentRefs, l: &GatewayListeners) -> bool {
    pr.section_name.as_ref().is_none_or(|s| *s == l.name) && pr.port.is_none_or(|p| p == l.port)
}

/// Namespace labels by name, for allowedRoutes selectors.
pub(super) type NamespaceLabels<'a> = BTreeMap<String, &'a BTreeMap<String, String>>;

fn namespace_labels(input: &MeshInput) -> NamespaceLabels<'_> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    input
        .namespaces
        .iter()
        .map(|n| (n.name_any(), n.metadata.labels.as_ref().unwrap_or(&NONE)))
        .collect()
}

/// Whether a label selector admits `labels`: every `matchLabels` pair and
/// every expression (`In`, `NotIn`, `Exists`, `DoesNotExist`; another
/// operator admits nothing).
fn selector_admits(
    sel: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let pairs = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or(&[]);
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// allowedRoutes: `Same` (the default), `All`, or the namespaces a label
/// `Selector` picks.
fn allows(
    l: &GatewayListeners,
    gw_ns: &str,
    route_ns: &str,
    namespaces: &NamespaceLabels<'_>,
) -> bool {
    let ar = l.allowed_routes.as_ref();
    let kinds_ok = ar.and_then(|a| a.kinds.as_ref()).is_none_or(|ks| {
        ks.iter().any(|k| {
            k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        })
    });
    let from = ar
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.clone())
        .unwrap_or(GatewayListenersAllowedRoutesNamespacesFrom::Same);
    kinds_ok
        && match from {
            GatewayListenersAllowedRoutesNamespacesFrom::All => true,
            GatewayListenersAllowedRoutesNamespacesFrom::Same => gw_ns == route_ns,
            GatewayListenersAllowedRoutesNamespacesFrom::Selector => {
                let selector = ar
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.selector.as_ref());
                match (selector, namespaces.get(route_ns)) {
                    (Some(sel), Some(labels)) => selector_admits(sel, labels),
                    _ => false,
                }
            }
        }
}

/// Whether `host` falls under `wildcard` (`*.example.com`): a false for a
/// name that is not a wildcard.
fn within(host: &str, wildcard: &str) -> bool {
    wildcard
        .strip_prefix('*')
        .is_some_and(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
}

/// The hostnames a route answers on a listener: `None` when they do not
/// intersect, an empty list for any host.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(l) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![l.to_owned()]);
    }
    let mut hosts: Vec<String> = Vec::new();
    for h in route {
        let pick = if h.eq_ignore_ascii_case(l) || within(h, l) {
            Some(h.as_str())
        } else if within(l, h) {
            Some(l)
        } else {
            None
        };
        if let Some(p) = pick
            && !hosts.iter().any(|x| x == p)
        {
            hosts.push(p.to_owned());
        }
    }
    (!hosts.is_empty()).then_some(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::{
        certificate, class, gateway, grant, pod, route, service, slice, tls_secret,
    };
    use crate::mesh::translate;
    use k8s_openapi::api::core::v1::Namespace;
    use serde_json::Value;
    use serde_json::json;
    use std::sync::Arc;

    fn input() -> MeshInput {
        MeshInput {
            classes: vec![
                class("sluice", CONTROLLER_NAME),
                class("other", "example.com/x"),
            ],
            gateways: vec![
                gateway(
                    "h",
                    "gw",
                    "sluice",
                    json!([{"name": "http", "port": 18080, "protocol": "HTTP", "hostname": "app.example.com"}, {"name": "tls", "port": 443, "protocol": "HTTPS", "hostname": "secure.example.com"}]),
                ),
                gateway(
                    "h",
                    "foreign",
                    "other",
                    json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
                ),
            ],
            routes: vec![
                route(
                    "h",
                    "app",
                    json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "blue", "port": 8080}]}]}),
                ),
                route(
                    "h",
                    "missing",
                    json!({"parentRefs": [{"name": "gw", "sectionName": "http"}], "hostnames": ["app.example.com"], "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/m"}}], "backendRefs": [{"name": "nope", "port": 8080}]}]}),
                ),
                route(
                    "other",
                    "far",
                    json!({"parentRefs": [{"name": "gw", "namespace": "h"}], "rules": [{"backendRefs": [{"name": "x", "port": 80}]}]}),
                ),
                route(
                    "h",
                    "elsewhere",
                    json!({"parentRefs": [{"name": "gw"}], "hostnames": ["api.example.org"], "rules": [{"backendRefs": [{"name": "blue", "port": 8080}]}]}),
                ),
            ],
            services: vec![service("h", "blue", &[("http", 8080, 9001)])],
            slices: vec![slice(
                "h",
                "blue",
                ("http", 9001),
                &[("198.18.1.5", true, "b")],
            )],
            pods: vec![pod("h", "b", "abc")],
            ..Default::default()
        }
    }

    #[test]
    fn a_dedicated_gateway_gets_a_config_of_its_own_and_its_ports_to_itself() {
        let mut input = input();
        input.mesh.dedicated_class = "sluice-dedicated".into();
        input
            .classes
            .push(class("sluice-dedicated", CONTROLLER_NAME));
        // The same port as the shared Gateway's listener: no conflict, since
        // other proxies serve it.
        input.gateways.push(gateway(
            "h",
            "edge",
            "sluice-dedicated",
            json!([{"name": "http", "port": 18080, "protocol": "HTTP", "hostname": "edge.example.com"}]),
        ));
        input.routes.push(route(
            "h",
            "edge-app",
            json!({"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "blue", "port": 8080}]}]}),
        ));
        let out = translate(&input);
        let own = GatewayInfra::Dedicated {
            namespace: "h".into(),
            name: "edge".into(),
        };
        let cfg = &out.configs[&ConfigKey::Gateway(own.clone())];
        assert_eq!(cfg.listeners.len(), 1);
        let hosts: Vec<&str> = cfg.listeners[0]
            .routes
            .iter()
            .flat_map(|r| r.hosts.iter().map(String::as_str))
            .collect();
        assert_eq!(hosts, vec!["edge.example.com"], "its own routes only");
        let shared = &out.configs[&ConfigKey::Gateway(GatewayInfra::Shared)];
        assert!(
            shared.listeners[0]
                .routes
                .iter()
                .all(|r| !r.hosts.contains(&"edge.example.com".to_owned())),
            "the shared proxies do not serve it"
        );
        let edge = out
            .gateways
            .iter()
            .find(|g| g.name == "edge")
            .expect("edge status");
        assert_eq!(edge.infra, own);
        let conflicted = edge.listeners[0]
            .conditions
            .iter()
            .find(|c| c.kind == "Conflicted")
            .expect("Conflicted");
        assert!(!conflicted.ok, "{conflicted:?}");
        assert!(edge.listeners[0].programmed.is_ok());
        assert_eq!(edge.listeners[0].attached_routes, 1);
    }

    #[test]
    fn without_gateways_the_shared_proxies_still_get_a_config() {
        let out = translate(&MeshInput::default());
        assert!(
            out.configs
                .contains_key(&ConfigKey::Gateway(GatewayInfra::Shared))
        );
    }

    #[test]
    fn gateway_config_and_statuses() {
        let out = translate(&input());
        let cfg = &out.configs[&ConfigKey::Gateway(GatewayInfra::Shared)];
        assert_eq!(
            cfg.listeners.len(),
            1,
            "only the HTTP listener of our class"
        );
        let l = &cfg.listeners[0];
        assert_eq!(l.address, "0.0.0.0:18080".parse().expect("addr"));
        assert_eq!(l.routes.len(), 2);
        // The longer prefix of `missing` comes first.
        assert_eq!(l.routes[0].backends[0].name, rules::UNRESOLVED_BACKEND);
        assert_eq!(l.routes[1].hosts, vec!["app.example.com".to_owned()]);
        assert_eq!(l.routes[1].backends[0].name, "h/blue:8080");
        let blue = cfg
            .backends
            .iter()
            .find(|b| b.name == "h/blue:8080")
            .expect("blue");
        assert_eq!(
            blue.endpoints,
            vec!["198.18.1.5:9001".parse().expect("addr")]
        );

        assert_eq!(out.classes, vec![("sluice".to_owned(), Some(1))]);
        assert_eq!(out.gateways.len(), 1);
        let gw = &out.gateways[0];
        assert_eq!(gw.listeners[0].attached_routes, 2);
        // HTTPS without a certificate: accepted, not resolved, not served.
        assert!(gw.listeners[1].conditions[0].ok);
        assert_eq!(
            gw.listeners[1].conditions[1].reason,
            reason::INVALID_CERTIFICATE_REF
        );
        assert!(gw.listeners[1].programmed.is_err());

        let cond = |route: &str, kind: &str| {
            out.routes[&(
                if route == "far" { "other" } else { "h" }.to_owned(),
                route.to_owned(),
            )]
                .parents[0]
                .1
                .iter()
                .find(|c| c.kind == kind)
                .cloned()
                .expect("condition")
        };
        assert!(cond("app", "Accepted").ok);
        assert!(cond("app", "ResolvedRefs").ok);
        assert_eq!(
            cond("missing", "ResolvedRefs").reason,
            reason::BACKEND_NOT_FOUND
        );
        assert_eq!(
            cond("far", "Accepted").reason,
            reason::NOT_ALLOWED_BY_LISTENERS
        );
        assert_eq!(
            cond("elsewhere", "Accepted").reason,
            reason::NO_MATCHING_LISTENER_HOSTNAME
        );
    }

    #[test]
    fn https_listeners_serve_usable_certificates_and_report_the_others() {
        let site = certificate(&["a.example.com"]);
        let shared = certificate(&["b.example.com"]);
        let other = certificate(&["c.example.com"]);
        let https = |name: &str, host: &str, cert: Value| {
            json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
                   "tls": {"certificateRefs": [cert]}})
        };
        let mut input = MeshInput {
            classes: vec![class("sluice", CONTROLLER_NAME)],
            gateways: vec![gateway(
                "h",
                "gw",
                "sluice",
                json!([
                    https("a", "a.example.com", json!({"name": "site"})),
                    https("b", "b.example.com", json!({"name": "shared", "namespace": "certs"})),
                    https("c", "c.example.com", json!({"name": "broken"})),
                    https("d", "d.example.com", json!({"name": "absent"})),
                    {"name": "plain", "port": 443, "protocol": "HTTP"},
                ]),
            )],
            routes: vec![route(
                "h",
                "to-b",
                json!({"parentRefs": [{"name": "gw", "sectionName": "b"}]}),
            )],
            tls_secrets: vec![
                tls_secret("h", "site", &site.0, &site.1),
                tls_secret("certs", "shared", &shared.0, &shared.1),
                // A key that is not its certificate's.
                tls_secret("h", "broken", &site.0, &other.1),
            ],
            ..MeshInput::default()
        };
        let listener = |out: &MeshOutput, name: &str| {
            out.gateways[0]
                .listeners
                .iter()
                .find(|l| l.name == name)
                .cloned()
                .expect("listener")
        };
        let resolved = |out: &MeshOutput, name: &str| {
            let l = listener(out, name);
            let c = l.conditions.iter().find(|c| c.kind == "ResolvedRefs");
            c.map(|c| (c.ok, c.reason)).expect("ResolvedRefs")
        };
        let served = |out: &MeshOutput| -> Vec<Vec<String>> {
            let cfg = &out.configs[&ConfigKey::Gateway(GatewayInfra::Shared)];
            let tls = cfg.listeners[0].tls.as_ref().expect("HTTPS");
            tls.certificates
                .iter()
                .map(|c| c.hostnames.clone())
                .collect()
        };

        let out = translate(&input);
        assert_eq!(served(&out), vec![vec!["a.example.com".to_owned()]]);
        assert_eq!(resolved(&out, "a"), (true, reason::RESOLVED_REFS));
        assert_eq!(resolved(&out, "b"), (false, reason::REF_NOT_PERMITTED));
        assert_eq!(
            resolved(&out, "c"),
            (false, reason::INVALID_CERTIFICATE_REF)
        );
        assert_eq!(
            resolved(&out, "d"),
            (false, reason::INVALID_CERTIFICATE_REF)
        );
        assert!(listener(&out, "b").programmed.is_err());
        assert_eq!(
            listener(&out, "b").attached_routes,
            1,
            "attached, though not served"
        );
        let plain = listener(&out, "plain");
        assert!(
            plain
                .conditions
                .iter()
                .any(|c| c.kind == "Conflicted" && c.ok && c.reason == reason::PROTOCOL_CONFLICT)
        );

        // A grant in the Secret's namespace lets the Gateway use it.
        input.grants = vec![grant("certs", "Gateway", "h", "Secret")];
        let out = translate(&input);
        assert_eq!(
            served(&out),
            vec![
                vec!["a.example.com".to_owned()],
                vec!["b.example.com".to_owned()]
            ]
        );
        assert_eq!(resolved(&out, "b"), (true, reason::RESOLVED_REFS));
        assert!(listener(&out, "b").programmed.is_ok());
        // A grant for routes is not one for Gateways.
        input.grants = vec![grant("certs", "HTTPRoute", "h", "Secret")];
        assert_eq!(
            resolved(&translate(&input), "b").1,
            reason::REF_NOT_PERMITTED
        );
    }

    #[test]
    fn a_namespace_selector_admits_routes_of_the_namespaces_it_picks() {
        let ns = |name: &str, labels: serde_json::Value| -> Arc<Namespace> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .expect("a namespace"),
            )
        };
        let input = MeshInput {
            classes: vec![class("sluice", CONTROLLER_NAME)],
            gateways: vec![gateway(
                "infra",
                "gw",
                "sluice",
                json!([{"name": "http", "port": 18080, "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {
                            "matchLabels": {"team": "shop"},
                            "matchExpressions": [{"key": "stage", "operator": "NotIn", "values": ["dev"]}]}}}}]),
            )],
            namespaces: vec![
                ns("shop", json!({"team": "shop"})),
                ns("shop-dev", json!({"team": "shop", "stage": "dev"})),
                ns("blog", json!({"team": "blog"})),
            ],
            routes: ["shop", "shop-dev", "blog"]
                .iter()
                .map(|n| {
                    route(
                        n,
                        "r",
                        json!({"parentRefs": [{"name": "gw", "namespace": "infra"}]}),
                    )
                })
                .collect(),
            ..MeshInput::default()
        };
        let out = translate(&input);
        let accepted = |ns: &str| out.routes[&(ns.to_owned(), "r".to_owned())].parents[0].1[0].ok;
        assert!(accepted("shop"));
        assert!(!accepted("shop-dev"));
        assert!(!accepted("blog"));
        assert_eq!(out.gateways[0].listeners[0].attached_routes, 1);
    }

    #[test]
    fn unknown_route_kinds_and_unmatched_section_names_are_reported() {
        let input = MeshInput {
            classes: vec![class("sluice", CONTROLLER_NAME)],
            gateways: vec![gateway(
                "h",
                "gw",
                "sluice",
                json!([
                    {"name": "mixed", "port": 18080, "protocol": "HTTP",
                     "allowedRoutes": {"kinds": [{"kind": "InvalidRoute"}, {"kind": "HTTPRoute"}]}},
                    {"name": "none", "port": 18081, "protocol": "HTTP",
                     "allowedRoutes": {"kinds": [{"kind": "InvalidRoute"}]}},
                ]),
            )],
            routes: vec![
                route("h", "all", json!({"parentRefs": [{"name": "gw"}]})),
                route(
                    "h",
                    "lost",
                    json!({"parentRefs": [{"name": "gw", "sectionName": "nope"}]}),
                ),
            ],
            ..MeshInput::default()
        };
        let out = translate(&input);
        let gw = &out.gateways[0];
        for l in &gw.listeners {
            let resolved = l.conditions.iter().find(|c| c.kind == "ResolvedRefs");
            assert_eq!(
                resolved.map(|c| (c.ok, c.reason)),
                Some((false, reason::INVALID_ROUTE_KINDS)),
                "{}",
                l.name
            );
        }
        assert_eq!(gw.listeners[0].route_kinds, vec!["HTTPRoute"]);
        assert!(gw.listeners[1].route_kinds.is_empty());
        assert_eq!(gw.listeners[0].attached_routes, 1);
        assert_eq!(gw.listeners[1].attached_routes, 0);
        let accepted =
            |name: &str| out.routes[&("h".to_owned(), name.to_owned())].parents[0].1[0].clone();
        assert!(accepted("all").ok);
        assert_eq!(accepted("lost").reason, reason::NO_MATCHING_PARENT);
    }

    #[test]
    fn hostname_intersection() {
        let s = |v: &[&str]| v.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), Some(vec![]));
        assert_eq!(
            intersect(Some("a.example.com"), &[]),
            Some(s(&["a.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["a.example.com", "b.other.org"])),
            Some(s(&["a.example.com"]))
        );
        assert_eq!(
            intersect(Some("a.example.com"), &s(&["*.example.com"])),
            Some(s(&["a.example.com"]))
        );
        assert_eq!(
            intersect(Some("a.example.com"), &s(&["b.example.com"])),
            None
        );
        assert_eq!(intersect(Some("*.example.com"), &s(&["example.com"])), None);
    }

    #[test]
    fn a_request_sees_only_the_routes_of_its_most_specific_listener() {
        let mut input = input();
        input.gateways = vec![gateway(
            "h",
            "gw",
            "sluice",
            json!([
                {"name": "empty", "port": 18080, "protocol": "HTTP"},
                {"name": "wildcard", "port": 18080, "protocol": "HTTP", "hostname": "*.example.com"},
                {"name": "foo", "port": 18080, "protocol": "HTTP", "hostname": "foo.example.com"},
                {"name": "lone", "port": 18081, "protocol": "HTTP", "hostname": "lone.example.com"}
            ]),
        )];
        let to = |name: &str, section: &str, path: &str| {
            route(
                "h",
                name,
                json!({"parentRefs": [{"name": "gw", "sectionName": section}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                        "backendRefs": [{"name": "blue", "port": 8080}]}]}),
            )
        };
        input.routes = vec![
            to("any", "empty", "/any"),
            to("wild", "wildcard", "/wildcard"),
            to("foo", "foo", "/foo"),
            to("lone", "lone", "/lone"),
        ];
        let out = translate(&input);
        let cfg = &out.configs[&ConfigKey::Gateway(GatewayInfra::Shared)];
        let names = |port: u16| -> Vec<String> {
            cfg.listeners
                .iter()
                .find(|l| l.address.port() == port)
                .map(|l| l.routes.iter().map(|r| r.name.clone()).collect())
                .unwrap_or_default()
        };
        let shared = names(18080);
        let at = |prefix: &str| {
            shared
                .iter()
                .position(|n| n.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {shared:?}"))
        };
        // foo's routes, then its 404, then the wildcard's, then its 404,
        // then the listener without a hostname.
        assert!(at("h/foo") < at("listener-isolation/foo.example.com"));
        assert!(at("listener-isolation/foo.example.com") < at("h/wild"));
        assert!(at("h/wild") < at("listener-isolation/*.example.com"));
        assert!(at("listener-isolation/*.example.com") < at("h/any"));
        assert!(
            cfg.backends
                .iter()
                .any(|b| b.name == ISOLATION_BACKEND && b.respond == Some(404))
        );
        // A listener alone on its port needs no 404 route.
        assert!(
            names(18081)
                .iter()
                .all(|n| !n.starts_with("listener-isolation")),
            "{:?}",
            names(18081)
        );
    }
}
