//! HttpRoute rules as proxy routes, for the gateway and the sidecars alike:
//! matches, weighted backendRefs, timeouts, and Gateway API precedence.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use kube::ResourceExt;
use sluice_proto::config::{
    Backend, Filters, HeaderMatch, Mirror, PathMatch, Retries, Route, RouteMatch, WeightedBackend,
    match_regex,
};

use super::filters;
use super::services::ServiceIndex;
use super::{CANARY_ROUTES_LABEL, Cond, reason};

/// The backend that answers `500` for backendRefs that cannot be resolved,
/// as the Gateway API asks.
pub const UNRESOLVED_BACKEND: &str = "sluice/unresolved";

/// A proxy route with the key that orders it among the others.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// Gateway API precedence, smaller first.
    pub key: RankKey,
    /// The route.
    pub route: Route,
}

/// Precedence of a match (Gateway API: exact hosts before wildcards, exact
/// paths before prefixes and regular expressions, longer ones first, then
/// method, then more header matches, then more query parameter matches,
/// then a Rollout's managed routes ([`CANARY_ROUTES_LABEL`]),
/// then the oldest route, then by name, then rule order).
pub type RankKey = (
    u8,
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    u8,
    String,
    String,
    usize,
    usize,
);

/// What the rules of one route produced for one parent.
#[derive(Debug, Default)]
pub struct RuleOutput {
    /// Proxy routes, unsorted.
    pub routes: Vec<Ranked>,
    /// Backends referenced, by name.
    pub backends: BTreeMap<String, Backend>,
    /// `ResolvedRefs`: the first problem found with a backendRef, if any.
    pub unresolved: Option<Cond>,
    /// `Accepted=False`: a rule whose filters cannot be served (it answers
    /// 500), if any.
    pub unsupported: Option<Cond>,
}

/// A parent's `Accepted` and `ResolvedRefs` for `route`: `accepted` as
/// the parent decided, unless a rule's filters cannot be served.
pub fn parent_conditions(route: &HttpRoute, index: &ServiceIndex, accepted: Cond) -> Vec<Cond> {
    let r = translate(route, &[], "status", index);
    let accepted = match r.unsupported {
        Some(c) if accepted.ok => c,
        _ => accepted,
    };
    let resolved = r
        .unresolved
        .unwrap_or_else(|| Cond::yes("ResolvedRefs", reason::RESOLVED_REFS));
    vec![accepted, resolved]
}

/// Translates `route`'s rules for a parent answering `hosts` (empty: any
/// host); `scope` keeps route names unique within a listener.
pub fn translate(
    route: &HttpRoute,
    hosts: &[String],
    scope: &str,
    index: &ServiceIndex,
) -> RuleOutput {
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let created = route
        .creation_timestamp()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let managed = route.labels().contains_key(CANARY_ROUTES_LABEL);
    let referrer = Referrer::of(route);
    let mut out = RuleOutput::default();
    let (exact, wildcard): (Vec<String>, Vec<String>) =
        hosts.iter().cloned().partition(|h| !h.starts_with("*."));
    let host_groups: Vec<(u8, Vec<String>)> = if hosts.is_empty() {
        vec![(2, vec![])]
    } else {
        [(0, exact), (1, wildcard)]
            .into_iter()
            .filter(|(_, h)| !h.is_empty())
            .collect()
    };
    for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
        let mut backends = rule_backends(&referrer, rule, index, &mut out);
        let mirrors = rule_mirrors(&referrer, rule, index, &mut out);
        let filters = match filters::of_rule(rule) {
            Ok(f) => f,
            Err(cond) => {
                out.unsupported.get_or_insert(cond);
                out.backends
                    .insert(UNRESOLVED_BACKEND.into(), unresolved_backend());
                backends = vec![WeightedBackend {
                    name: UNRESOLVED_BACKEND.into(),
                    weight: 1,
                }];
                Filters::default()
            }
        };
        let timeouts = rule.timeouts.as_ref();
        let timeout = duration(timeouts.and_then(|t| t.request.as_deref()));
        let attempt_timeout = duration(timeouts.and_then(|t| t.backend_request.as_deref()));
        let default_match = [HttpRouteRulesMatches::default()];
        let matches = match rule.matches.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => &default_match[..],
        };
        for (mi, m) in matches.iter().enumerate() {
            let Some((route_match, path_rank, path_len)) = convert_match(m) else {
                continue;
            };
            for (host_rank, group) in &host_groups {
                let key = (
                    *host_rank,
                    path_rank,
                    Reverse(path_len),
                    u8::from(route_match.method.is_none()),
                    Reverse(route_match.headers.len()),
                    Reverse(route_match.query.len()),
                    u8::from(!managed),
                    created.clone(),
                    format!("{ns}/{name}"),
                    ri,
                    mi,
                );
                out.routes.push(Ranked {
                    key,
                    route: Route {
                        name: format!("{ns}/{name}/{ri}/{mi}/{host_rank}@{scope}"),
                        hosts: group.clone(),
                        matches: vec![route_match.clone()],
                        backends: backends.clone(),
                        timeout,
                        attempt_timeout,
                        // As Istio does by default: two retries for connect
                        // failures and 503s of idempotent requests.
                        retries: Some(Retries {
                            attempts: 2,
                            budget: 0.2,
                        }),
                        mirrors: mirrors.clone(),
                        filters: filters.clone(),
                    },
                });
            }
        }
    }
    out
}

/// Who refers to a backend: a route's namespace, and the Services it is
/// attached to as a GAMMA route.
struct Referrer {
    ns: String,
    /// `(namespace, name)` of each parent Service.
    parents: Vec<(String, String)>,
}

impl Referrer {
    fn of(route: &HttpRoute) -> Referrer {
        let ns = route.namespace().unwrap_or_default();
        let parents = route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .filter(|pr| is_service_ref(pr))
            .map(|pr| {
                (
                    pr.namespace.clone().unwrap_or_else(|| ns.clone()),
                    pr.name.clone(),
                )
            })
            .collect();
        Referrer { ns, parents }
    }

    /// Whether the route may send to Service `namespace/name`: in its own
    /// namespace, through a ReferenceGrant, or (a consumer route) to the
    /// Service it is attached to, whose traffic it already governs.
    fn may_use(&self, index: &ServiceIndex, namespace: &str, name: &str) -> bool {
        index.route_may_use(&self.ns, namespace, name)
            || self
                .parents
                .iter()
                .any(|(n, s)| n == namespace && s == name)
    }
}

/// Whether a parentRef names a Service (a GAMMA route) rather than a Gateway.
pub fn is_service_ref(pr: &HttpRouteParentRefs) -> bool {
    pr.group.as_deref().is_none_or(str::is_empty) && pr.kind.as_deref() == Some("Service")
}

/// The weighted backends of a rule; unresolvable refs keep their weight
/// and point at [`UNRESOLVED_BACKEND`].
fn rule_backends(
    referrer: &Referrer,
    rule: &HttpRouteRules,
    index: &ServiceIndex,
    out: &mut RuleOutput,
) -> Vec<WeightedBackend> {
    let refs = rule.backend_refs.as_deref().unwrap_or(&[]);
    if refs.is_empty() {
        out.backends
            .insert(UNRESOLVED_BACKEND.into(), unresolved_backend());
        return vec![WeightedBackend {
            name: UNRESOLVED_BACKEND.into(),
            weight: 1,
        }];
    }
    refs.iter()
        .map(|r| {
            let weight = r.weight.map_or(1, |w| w.max(0) as u32);
            let name = match resolve(referrer, r, index) {
                Ok(b) => {
                    let name = b.name.clone();
                    out.backends.insert(name.clone(), b);
                    name
                }
                Err(cond) => {
                    out.unresolved.get_or_insert(cond);
                    out.backends
                        .insert(UNRESOLVED_BACKEND.into(), unresolved_backend());
                    UNRESOLVED_BACKEND.into()
                }
            };
            WeightedBackend { name, weight }
        })
        .collect()
}

/// The rule's `RequestMirror` filters as mirrors; one that cannot be
/// resolved is dropped (and reported), as the Gateway API asks.
fn rule_mirrors(
    referrer: &Referrer,
    rule: &HttpRouteRules,
    index: &ServiceIndex,
    out: &mut RuleOutput,
) -> Vec<Mirror> {
    rule.filters
        .iter()
        .flatten()
        .filter_map(|f| f.request_mirror.as_ref())
        .filter_map(|m| {
            let r: HttpRouteRulesBackendRefs =
                serde_json::from_value(serde_json::to_value(&m.backend_ref).ok()?).ok()?;
            let percent = match (&m.percent, &m.fraction) {
                (Some(p), _) => *p,
                (None, Some(f)) if f.denominator.unwrap_or(100) > 0 => {
                    let d = i64::from(f.denominator.unwrap_or(100));
                    i32::try_from(i64::from(f.numerator) * 100 / d).unwrap_or(100)
                }
                _ => 100,
            };
            match resolve(referrer, &r, index) {
                Ok(b) => {
                    let name = b.name.clone();
                    out.backends.insert(name.clone(), b);
                    Some(Mirror {
                        backend: name,
                        percent: percent.clamp(0, 100) as u32,
                    })
                }
                Err(cond) => {
                    out.unresolved.get_or_insert(cond);
                    None
                }
            }
        })
        .collect()
}

fn unresolved_backend() -> Backend {
    responding(UNRESOLVED_BACKEND, 500)
}

/// A backend without endpoints that the proxy answers itself with `status`.
pub fn responding(name: &str, status: u16) -> Backend {
    Backend {
        name: name.to_owned(),
        endpoints: vec![],
        protocol: Default::default(),
        revision: None,
        connect_timeout: Duration::from_secs(2),
        service: None,
        respond: Some(status),
        mesh: Default::default(),
    }
}

/// Resolves one backendRef to a Service port's backend.
fn resolve(
    referrer: &Referrer,
    r: &HttpRouteRulesBackendRefs,
    index: &ServiceIndex,
) -> Result<Backend, Cond> {
    let ns = referrer.ns.as_str();
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(Cond::no(
            "ResolvedRefs",
            reason::INVALID_KIND,
            format!(
                "backendRef {}: only core Services are supported, not {group}/{kind}",
                r.name
            ),
        ));
    }
    let target_ns = r.namespace.as_deref().unwrap_or(ns);
    if !referrer.may_use(index, target_ns, &r.name) {
        return Err(Cond::no(
            "ResolvedRefs",
            reason::REF_NOT_PERMITTED,
            format!(
                "backendRef {target_ns}/{}: no ReferenceGrant in {target_ns} lets HTTPRoutes of {ns} use it",
                r.name
            ),
        ));
    }
    let Some(svc) = index.get(target_ns, &r.name) else {
        return Err(Cond::no(
            "ResolvedRefs",
            reason::BACKEND_NOT_FOUND,
            format!("Service {target_ns}/{} does not exist", r.name),
        ));
    };
    let want = r.port.and_then(|p| u16::try_from(p).ok());
    let port = match want {
        Some(p) => svc.ports.iter().find(|sp| sp.port == p),
        None => None,
    };
    match port {
        Some(p) => Ok(svc.backend(p)),
        None => Err(Cond::no(
            "ResolvedRefs",
            reason::BACKEND_NOT_FOUND,
            match want {
                Some(p) => format!("Service {target_ns}/{} has no port {p}", r.name),
                None => format!("backendRef {target_ns}/{} needs a port", r.name),
            },
        )),
    }
}

/// A Gateway API match as a proxy match, with its path rank and length;
/// `None` for a regular expression the proxy would refuse, which is left
/// out rather than widened. A path regular expression ranks with the
/// prefixes by its length (precedence among them is the implementation's
/// to choose), so that a catch-all `/` still comes after it.
fn convert_match(m: &HttpRouteRulesMatches) -> Option<(RouteMatch, u8, usize)> {
    let (path, rank, len) = match &m.path {
        None => (PathMatch::Prefix("/".into()), 1, 1),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let len = value.len();
            match p
                .r#type
                .clone()
                .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => (PathMatch::Exact(value), 0, len),
                HttpRouteRulesMatchesPathType::PathPrefix => (PathMatch::Prefix(value), 1, len),
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    match_regex(&value).ok()?;
                    (PathMatch::Regex(value), 1, len)
                }
            }
        }
    };
    let mut query: Vec<HeaderMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        let regex = matches!(
            q.r#type,
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
        );
        let q = value_match(q.name.clone(), &q.value, regex)?;
        // Only the first entry of a name counts, as the Gateway API says.
        if !query.iter().any(|x| x.name == q.name) {
            query.push(q);
        }
    }
    let mut headers = Vec::new();
    for h in m.headers.iter().flatten() {
        let regex = matches!(
            h.r#type,
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
        );
        headers.push(value_match(h.name.to_ascii_lowercase(), &h.value, regex)?);
    }
    let method = m.method.as_ref().and_then(|m| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    });
    Some((
        RouteMatch {
            path: Some(path),
            method,
            headers,
            query,
        },
        rank,
        len,
    ))
}

/// A Gateway API duration; zero (which disables a timeout) and what does
/// not parse give none.
pub(super) fn duration(d: Option<&str>) -> Option<Duration> {
    d.and_then(|d| d.parse::<gateway_api::Duration>().ok())
        .and_then(timeout_of)
}

/// The timeout a parsed Gateway API duration sets: none for zero.
pub(super) fn timeout_of(d: gateway_api::Duration) -> Option<Duration> {
    Some(Duration::from_millis(d.as_millis() as u64)).filter(|d| !d.is_zero())
}

/// A header or query parameter match; `None` for a pattern the proxy
/// would refuse, which leaves the whole match out (pushing it would have
/// the whole snapshot refused).
fn value_match(name: String, value: &str, regex: bool) -> Option<HeaderMatch> {
    if regex && match_regex(value).is_err() {
        return None;
    }
    Some(HeaderMatch {
        name,
        value: (!regex).then(|| value.to_owned()),
        regex: regex.then(|| value.to_owned()),
    })
}

/// Sorts routes by precedence.
pub fn sort(routes: &mut [Ranked]) {
    routes.sort_by(|a, b| a.key.cmp(&b.key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::{grant, pod, route, service, slice};
    use crate::mesh::grants::Grants;
    use serde_json::json;

    fn index() -> ServiceIndex {
        ServiceIndex::build(
            &[
                service("h", "blue", &[("http", 8080, 8080)]),
                service("h", "yellow", &[("http", 8080, 8080)]),
            ],
            &[
                slice("h", "blue", ("http", 8080), &[("10.0.0.2", true, "b")]),
                slice("h", "yellow", ("http", 8080), &[("10.0.0.3", true, "y")]),
            ],
            &[pod("h", "b", "rb"), pod("h", "y", "ry")],
            "",
        )
    }

    #[test]
    fn weighted_refs_and_missing_service() {
        let r = route(
            "h",
            "split",
            json!({"rules": [{"backendRefs": [
                {"name": "blue", "port": 8080, "weight": 90},
                {"name": "yellow", "port": 8080, "weight": 10},
                {"name": "green", "port": 8080, "weight": 5}
            ]}]}),
        );
        let out = translate(&r, &["app.example.com".into()], "gw", &index());
        assert_eq!(out.routes.len(), 1);
        let weights: Vec<(&str, u32)> = out.routes[0]
            .route
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("h/blue:8080", 90),
                ("h/yellow:8080", 10),
                (UNRESOLVED_BACKEND, 5)
            ]
        );
        let cond = out.unresolved.expect("green is missing");
        assert_eq!(cond.reason, reason::BACKEND_NOT_FOUND);
        assert_eq!(out.backends[UNRESOLVED_BACKEND].respond, Some(500));
        assert_eq!(
            out.backends["h/yellow:8080"].revision.as_deref(),
            Some("ry")
        );
    }

    #[test]
    fn precedence_exact_host_exact_path_then_longer_prefix() {
        let r = route(
            "h",
            "r",
            json!({"rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "blue", "port": 8080}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "blue", "port": 8080}]},
                {"matches": [{"path": {"type": "Exact", "value": "/api/x"}}], "backendRefs": [{"name": "yellow", "port": 8080}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": ".*"}}], "backendRefs": [{"name": "yellow", "port": 8080}]}
            ]}),
        );
        let mut out = translate(
            &r,
            &["a.example.com".into(), "*.example.com".into()],
            "gw",
            &index(),
        );
        sort(&mut out.routes);
        let order: Vec<(String, String)> = out
            .routes
            .iter()
            .map(|r| {
                (
                    r.route.hosts[0].clone(),
                    format!("{:?}", r.route.matches[0].path),
                )
            })
            .collect();
        assert_eq!(order.len(), 8, "{order:?}");
        assert_eq!(
            order[0],
            ("a.example.com".into(), "Some(Exact(\"/api/x\"))".into())
        );
        assert_eq!(
            order[1],
            ("a.example.com".into(), "Some(Prefix(\"/api\"))".into())
        );
        // A regular expression ranks with the prefixes by its length:
        // after `/api`, before the catch-all `/`.
        assert_eq!(
            order[2],
            ("a.example.com".into(), "Some(Regex(\".*\"))".into())
        );
        assert_eq!(
            order[3],
            ("a.example.com".into(), "Some(Prefix(\"/\"))".into())
        );
        assert_eq!(order[4].0, "*.example.com");
    }

    #[test]
    fn no_backend_refs_answer_500_and_cross_namespace_is_refused() {
        let r = route(
            "h",
            "r",
            json!({"rules": [{}, {"backendRefs": [{"name": "blue", "namespace": "other", "port": 8080}]}]}),
        );
        let out = translate(&r, &[], "gw", &index());
        assert!(
            out.routes
                .iter()
                .all(|r| r.route.backends[0].name == UNRESOLVED_BACKEND)
        );
        assert_eq!(
            out.unresolved.expect("refused").reason,
            reason::REF_NOT_PERMITTED
        );
    }

    #[test]
    fn query_and_path_regex_matches_and_filters_reach_the_proxy_route() {
        let r = route(
            "h",
            "r",
            json!({"rules": [
                {"matches": [{"queryParams": [{"name": "v", "value": "2"}, {"name": "v", "value": "3"},
                                              {"type": "RegularExpression", "name": "id", "value": "[0-9]+"}]}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}]}}],
                 "backendRefs": [{"name": "yellow", "port": 8080}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
                 "backendRefs": [{"name": "blue", "port": 8080}]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}],
                 "backendRefs": [{"name": "blue", "port": 8080}]},
            ]}),
        );
        let mut out = translate(&r, &[], "gw", &index());
        sort(&mut out.routes);
        // The longer path (the regex) first; the query route's is `/`.
        let (regex, query) = (&out.routes[0].route, &out.routes[1].route);
        assert_eq!(
            query.matches[0].query.len(),
            2,
            "the first `v` only, and `id`"
        );
        assert_eq!(query.matches[0].query[0].value.as_deref(), Some("2"));
        assert_eq!(query.matches[0].query[1].regex.as_deref(), Some("[0-9]+"));
        assert!(query.filters.request_headers.is_some());
        assert_eq!(
            regex.matches[0].path,
            Some(PathMatch::Regex("/items/[0-9]+".into()))
        );
        assert_eq!(
            out.routes.len(),
            2,
            "a pattern the proxy refuses is left out"
        );
        assert!(out.unsupported.is_none());
    }

    #[test]
    fn request_and_backend_request_timeouts_bound_the_route_and_each_attempt() {
        let r = route(
            "h",
            "r",
            json!({"rules": [{"timeouts": {"request": "10s", "backendRequest": "500ms"},
                              "backendRefs": [{"name": "blue", "port": 8080}]},
                             {"timeouts": {"request": "0s"}, "backendRefs": [{"name": "blue", "port": 8080}]}]}),
        );
        let out = translate(&r, &[], "gw", &index());
        let first = &out.routes[0].route;
        assert_eq!(first.timeout, Some(Duration::from_secs(10)));
        assert_eq!(first.attempt_timeout, Some(Duration::from_millis(500)));
        assert_eq!(out.routes[1].route.timeout, None, "0s disables it");
    }

    #[test]
    fn a_rule_with_a_filter_the_proxy_cannot_apply_answers_500_and_is_not_accepted() {
        let r = route(
            "h",
            "r",
            json!({"rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Auth", "name": "a"}}],
                              "backendRefs": [{"name": "blue", "port": 8080}]}]}),
        );
        let out = translate(&r, &[], "gw", &index());
        assert_eq!(out.routes[0].route.backends[0].name, UNRESOLVED_BACKEND);
        let conds = parent_conditions(&r, &index(), Cond::yes("Accepted", reason::ACCEPTED));
        assert_eq!(conds[0].reason, reason::UNSUPPORTED_VALUE);
    }

    #[test]
    fn a_consumer_route_may_send_to_the_service_it_is_attached_to_without_a_grant() {
        let r = route(
            "web",
            "consumer",
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "blue", "namespace": "h"}],
                   "rules": [{"backendRefs": [{"name": "blue", "namespace": "h", "port": 8080}]}]}),
        );
        let out = translate(&r, &[], "mesh", &index());
        assert!(out.unresolved.is_none(), "{:?}", out.unresolved);
        assert_eq!(out.routes[0].route.backends[0].name, "h/blue:8080");
        // Another Service of that namespace still needs a grant.
        let other = route(
            "web",
            "consumer",
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "blue", "namespace": "h"}],
                   "rules": [{"backendRefs": [{"name": "yellow", "namespace": "h", "port": 8080}]}]}),
        );
        let out = translate(&other, &[], "mesh", &index());
        assert_eq!(
            out.unresolved.map(|c| c.reason),
            Some(reason::REF_NOT_PERMITTED)
        );
    }

    #[test]
    fn a_reference_grant_lets_a_route_use_a_service_of_another_namespace() {
        let r = route(
            "web",
            "r",
            json!({"rules": [{"backendRefs": [{"name": "blue", "namespace": "h", "port": 8080}]}]}),
        );
        let granted = index().with_grants(Grants::of(&[grant("h", "HTTPRoute", "web", "Service")]));
        let out = translate(&r, &[], "gw", &granted);
        assert!(out.unresolved.is_none(), "{:?}", out.unresolved);
        assert_eq!(out.routes[0].route.backends[0].name, "h/blue:8080");
        // A grant for another namespace's routes does not count.
        let elsewhere =
            index().with_grants(Grants::of(&[grant("h", "HTTPRoute", "shop", "Service")]));
        let out = translate(&r, &[], "gw", &elsewhere);
        assert_eq!(
            out.unresolved.expect("refused").reason,
            reason::REF_NOT_PERMITTED
        );
    }

    #[test]
    fn request_mirror_filters_become_mirrors_and_a_missing_one_is_reported() {
        let r = route(
            "h",
            "r",
            json!({"rules": [{
                "filters": [
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "yellow", "port": 8080}, "percent": 10}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "yellow", "port": 8080}, "fraction": {"numerator": 1, "denominator": 4}}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 8080}}}
                ],
                "backendRefs": [{"name": "blue", "port": 8080}]
            }]}),
        );
        let out = translate(&r, &[], "gw", &index());
        let mirrors: Vec<(&str, u32)> = out.routes[0]
            .route
            .mirrors
            .iter()
            .map(|m| (m.backend.as_str(), m.percent))
            .collect();
        assert_eq!(mirrors, vec![("h/yellow:8080", 10), ("h/yellow:8080", 25)]);
        assert!(out.backends.contains_key("h/yellow:8080"));
        assert_eq!(
            out.unresolved.expect("gone is missing").reason,
            reason::BACKEND_NOT_FOUND
        );
    }

    #[test]
    fn a_managed_route_wins_a_tie_with_an_older_user_route() {
        let user = route(
            "h",
            "user",
            json!({"rules": [{"backendRefs": [{"name": "blue", "port": 8080}]}]}),
        );
        let mut managed = (*route(
            "h",
            "managed",
            json!({"rules": [{"backendRefs": [{"name": "yellow", "port": 8080}]}]}),
        ))
        .clone();
        managed.metadata.creation_timestamp = None;
        managed
            .labels_mut()
            .insert(CANARY_ROUTES_LABEL.into(), "ro".into());
        let mut all = translate(&user, &[], "gw", &index()).routes;
        all.extend(translate(&managed, &[], "gw", &index()).routes);
        sort(&mut all);
        assert_eq!(all[0].route.backends[0].name, "h/yellow:8080");
    }
}
