//! Header routes (`setHeaderRoute`) and mirror routes (`setMirrorRoute`)
//! as Gateway API rules: requests whose headers match go to the canary
//! whatever its weight; copies of matching requests go to the canary.
//!
//! The user's HTTPRoutes stay the user's: for each one the operator keeps
//! a companion HTTPRoute of its own (same parents and hostnames, labelled
//! [`CANARY_ROUTES_LABEL`]) whose rules copy the user's canary rules with
//! the route's conditions added: for a header route the canary is the only
//! backend; for a mirror route the weights stay and a `RequestMirror`
//! filter copies to the canary. Gateway API precedence sends the matching
//! requests there (more specific matches win; on a tie the managed route
//! does, as Argo Rollouts' managed routes come first). On the mesh route,
//! which is the operator's, the same rules come before the weighted rule.
//! Everything here is pure: [`super::apply`] writes what it returns.

use gateway_api::httproutes::HttpRoute;
use kube::ResourceExt;
use serde_json::{Value, json};
use sluice_crds::rollout::{
    CanaryStep, MirrorRouteMatch, RolloutStatus, SetHeaderRoute, SetMirrorRoute, StringMatch,
};
use sluice_proto::config::{match_regex, prefix_covers};

pub use crate::mesh::CANARY_ROUTES_LABEL;

/// What the canary's routes are built from.
#[derive(Debug, Clone, Copy)]
pub struct CanaryRoutes<'a> {
    /// The stable Service.
    pub stable: &'a str,
    /// The canary Service.
    pub canary: &'a str,
    /// The canary's weight, 0-100.
    pub weight: i32,
    /// Header routes in force.
    pub headers: &'a [SetHeaderRoute],
    /// Mirror routes in force.
    pub mirrors: &'a [SetMirrorRoute],
}

impl CanaryRoutes<'_> {
    fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.mirrors.is_empty()
    }
}

/// The steps done at `status`'s current step.
fn done(status: &RolloutStatus) -> usize {
    status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0)
}

/// `routes` that `names` (from status) says are in force, as text.
fn described<T: std::fmt::Display>(
    routes: Vec<&T>,
    names: &[String],
    name: impl Fn(&T) -> &str,
) -> Vec<String> {
    routes
        .into_iter()
        .filter(|r| names.iter().any(|n| n == name(r)))
        .map(ToString::to_string)
        .collect()
}

/// The header routes `status` says are in force, with their conditions
/// as text (`testers (x-canary=yes)`): what `kubectl sluice get` and the
/// dashboard show.
pub fn header_routes_in_force(steps: &[CanaryStep], status: &RolloutStatus) -> Vec<String> {
    let routes = sluice_crds::rollout::header_routes(steps, done(status));
    described(routes, &status.header_routes, |r| &r.name)
}

/// The mirror routes `status` says are in force, as text (`shadow (100%
/// of /*)`).
pub fn mirror_routes_in_force(steps: &[CanaryStep], status: &RolloutStatus) -> Vec<String> {
    let routes = sluice_crds::rollout::mirror_routes(steps, done(status));
    described(routes, &status.mirror_routes, |r| &r.name)
}

/// The companion route of user route `route` for Rollout `rollout`.
pub fn companion_name(rollout: &str, route: &str) -> String {
    format!("{rollout}-{route}-canary")
}

/// The regular expression a prefix or regex condition is matched with;
/// `None` for an exact value.
fn pattern(v: &StringMatch) -> Option<String> {
    match (&v.exact, &v.prefix, &v.regex) {
        (Some(_), _, _) => None,
        (None, Some(p), _) => Some(format!("{}.*", regex::escape(p))),
        (None, None, Some(r)) => Some(r.clone()),
        // Admission requires one of them.
        (None, None, None) => None,
    }
}

/// A header condition as a Gateway API header match; a prefix is a
/// regular expression (Gateway API has no prefix match for headers).
fn gateway_header(name: &str, v: &StringMatch) -> Value {
    match pattern(v) {
        Some(p) => json!({"name": name, "type": "RegularExpression", "value": p}),
        None => {
            json!({"name": name, "type": "Exact", "value": v.exact.clone().unwrap_or_default()})
        }
    }
}

/// The first header regex (or prefix) of a `setHeaderRoute` or
/// `setMirrorRoute` that the proxies would refuse, as a message naming its
/// field: admission cannot compile regexes.
pub fn invalid_regex(steps: &[CanaryStep]) -> Option<String> {
    for (i, step) in steps.iter().enumerate() {
        let mut conditions: Vec<(String, &StringMatch)> = Vec::new();
        if let Some(r) = &step.set_header_route {
            conditions.extend(r.matches.iter().enumerate().map(|(j, m)| {
                (
                    format!("setHeaderRoute.match[{j}].headerValue"),
                    &m.header_value,
                )
            }));
        }
        if let Some(r) = &step.set_mirror_route {
            for (j, m) in r.matches.iter().enumerate() {
                conditions.extend(
                    m.headers
                        .iter()
                        .map(|(h, v)| (format!("setMirrorRoute.match[{j}].headers.{h}"), v)),
                );
            }
        }
        for (field, v) in conditions {
            if let Some(p) = pattern(v)
                && let Err(e) = match_regex(&p)
            {
                return Some(format!("spec.strategy.canary.steps[{i}].{field}: {e}"));
            }
        }
    }
    None
}

/// A header route's conditions as Gateway API header matches.
fn header_conditions(r: &SetHeaderRoute) -> Vec<Value> {
    r.matches
        .iter()
        .map(|m| gateway_header(&m.header_name, &m.header_value))
        .collect()
}

/// The `RequestMirror` filter of mirror route `m` to `canary_ref`.
fn mirror_filter(m: &SetMirrorRoute, canary_ref: &Value) -> Value {
    json!({
        "type": "RequestMirror",
        "requestMirror": {
            "backendRef": canary_ref,
            "percent": m.percentage.unwrap_or(100).clamp(0, 100),
        },
    })
}

/// The mesh route's rules: header rules, then mirror rules, then the
/// weighted rule (earlier rules win ties within a route).
pub fn mesh_rules(r: &CanaryRoutes, stable_port: i32, canary_port: i32) -> Vec<Value> {
    let weighted = json!([
        {"name": r.stable, "port": stable_port, "weight": 100 - r.weight},
        {"name": r.canary, "port": canary_port, "weight": r.weight},
    ]);
    let canary_ref = json!({"name": r.canary, "port": canary_port});
    let mut rules: Vec<Value> = r
        .headers
        .iter()
        .map(|h| {
            json!({
                "matches": [{"headers": header_conditions(h)}],
                "backendRefs": [canary_ref.clone()],
            })
        })
        .collect();
    for m in r.mirrors {
        let matches: Vec<Value> = m
            .matches
            .iter()
            .filter_map(|mm| intersect(&json!({}), mm))
            .collect();
        rules.push(json!({
            "matches": matches,
            "filters": [mirror_filter(m, &canary_ref)],
            "backendRefs": weighted.clone(),
        }));
    }
    rules.push(json!({"backendRefs": weighted}));
    rules
}

/// The companion of `route`: for each of its rules with a backendRef to
/// the canary, one rule per header route (the route's conditions added to
/// each of the rule's matches, the canary the only backend) and one per
/// mirror route (the rule's matches narrowed to the mirror's, the weights
/// kept, a `RequestMirror` filter to the canary); filters and timeouts are
/// kept. `None` when no route is in force or the route has no canary rule.
pub fn companion(route: &HttpRoute, rollout: &str, r: &CanaryRoutes) -> Option<Value> {
    if r.is_empty() {
        return None;
    }
    let mut rules = Vec::new();
    for rule in route.spec.rules.iter().flatten() {
        let Some(canary_ref) = rule
            .backend_refs
            .iter()
            .flatten()
            .find(|b| b.name == r.canary && b.kind.as_deref().is_none_or(|k| k == "Service"))
        else {
            continue;
        };
        let mut backend = serde_json::to_value(canary_ref).ok()?;
        if let Some(b) = backend.as_object_mut() {
            b.remove("weight");
        }
        let base = serde_json::to_value(rule).ok()?;
        let user_matches: Vec<Value> = match base.get("matches").and_then(Value::as_array) {
            Some(m) if !m.is_empty() => m.clone(),
            _ => vec![json!({})],
        };
        let copy = |matches: Vec<Value>, backends: Value, extra_filter: Option<Value>| {
            let mut out = base.clone();
            if let Some(o) = out.as_object_mut() {
                // A rule name must be unique within the route.
                o.remove("name");
                o.insert("matches".into(), Value::Array(matches));
                o.insert("backendRefs".into(), backends);
                if let Some(f) = extra_filter {
                    let mut filters = o
                        .get("filters")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    filters.push(f);
                    o.insert("filters".into(), Value::Array(filters));
                }
            }
            out
        };
        for h in r.headers {
            let extra = header_conditions(h);
            let matches = user_matches
                .iter()
                .map(|m| with_headers(m.clone(), &extra))
                .collect();
            rules.push(copy(matches, json!([backend.clone()]), None));
        }
        let weighted = weighted_refs(&base, r);
        for m in r.mirrors {
            let matches: Vec<Value> = user_matches
                .iter()
                .flat_map(|um| m.matches.iter().filter_map(|mm| intersect(um, mm)))
                .collect();
            if matches.is_empty() {
                continue;
            }
            let filter = mirror_filter(m, &backend);
            rules.push(copy(matches, weighted.clone(), Some(filter)));
        }
    }
    if rules.is_empty() {
        return None;
    }
    let ns = route.namespace().unwrap_or_default();
    let mut spec = json!({
        "parentRefs": serde_json::to_value(&route.spec.parent_refs).ok()?,
        "rules": rules,
    });
    if let Some(h) = &route.spec.hostnames {
        spec["hostnames"] = serde_json::to_value(h).ok()?;
    }
    Some(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": companion_name(rollout, &route.name_any()),
            "namespace": ns,
            "labels": {CANARY_ROUTES_LABEL: rollout},
        },
        "spec": spec,
    }))
}

/// The rule's backendRefs with the stable and canary weights this pass
/// sets (the route as read may be a pass behind).
fn weighted_refs(rule: &Value, r: &CanaryRoutes) -> Value {
    let mut refs = rule.get("backendRefs").cloned().unwrap_or(json!([]));
    for b in refs.as_array_mut().into_iter().flatten() {
        let weight = match b.get("name").and_then(Value::as_str) {
            Some(n) if n == r.stable => 100 - r.weight,
            Some(n) if n == r.canary => r.weight,
            _ => continue,
        };
        b["weight"] = json!(weight);
    }
    refs
}

/// `m` with `extra` header conditions after its own.
fn with_headers(mut m: Value, extra: &[Value]) -> Value {
    let mut headers = m
        .get("headers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    headers.extend_from_slice(extra);
    m["headers"] = Value::Array(headers);
    m
}

/// The user's match `user` (Gateway API JSON) narrowed to mirror match
/// `m`: the more specific path, one method, both sets of headers; `None`
/// when no request can match both.
fn intersect(user: &Value, m: &MirrorRouteMatch) -> Option<Value> {
    let user_path = user.get("path");
    let kind = user_path
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("PathPrefix");
    let value = user_path
        .and_then(|p| p.get("value"))
        .and_then(Value::as_str)
        .unwrap_or("/");
    let (m_kind, m_value) = match &m.path {
        Some(StringMatch { exact: Some(e), .. }) => ("Exact", e.as_str()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => ("PathPrefix", p.as_str()),
        _ => ("PathPrefix", "/"),
    };
    let path = match (kind, m_kind) {
        ("PathPrefix", "PathPrefix") if prefix_covers(value, m_value) => (m_kind, m_value),
        ("PathPrefix", "PathPrefix") if prefix_covers(m_value, value) => (kind, value),
        ("PathPrefix", "Exact") if prefix_covers(value, m_value) => (m_kind, m_value),
        ("Exact", "PathPrefix") if prefix_covers(m_value, value) => (kind, value),
        ("Exact", "Exact") if value == m_value => (kind, value),
        _ => return None,
    };
    let mut out = user.clone();
    out["path"] = json!({"type": path.0, "value": path.1});
    if let Some(method) = m.method.as_ref().and_then(|s| s.exact.as_deref()) {
        match user.get("method").and_then(Value::as_str) {
            Some(have) if have != method => return None,
            _ => out["method"] = json!(method),
        }
    }
    let extra: Vec<Value> = m
        .headers
        .iter()
        .map(|(name, v)| gateway_header(name, v))
        .collect();
    if !extra.is_empty() {
        out = with_headers(out, &extra);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::route;
    use sluice_crds::rollout::HeaderRouteMatch;

    fn testers(value: StringMatch) -> SetHeaderRoute {
        SetHeaderRoute {
            name: "testers".into(),
            matches: vec![HeaderRouteMatch {
                header_name: "x-canary".into(),
                header_value: value,
            }],
        }
    }

    fn exact(v: &str) -> StringMatch {
        StringMatch {
            exact: Some(v.into()),
            ..Default::default()
        }
    }

    fn prefix(v: &str) -> StringMatch {
        StringMatch {
            prefix: Some(v.into()),
            ..Default::default()
        }
    }

    fn routes<'a>(
        headers: &'a [SetHeaderRoute],
        mirrors: &'a [SetMirrorRoute],
    ) -> CanaryRoutes<'a> {
        CanaryRoutes {
            stable: "stable",
            canary: "canary",
            weight: 20,
            headers,
            mirrors,
        }
    }

    fn user_route() -> std::sync::Arc<HttpRoute> {
        route(
            "h",
            "web",
            json!({
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["app.example.com"],
                "rules": [
                    {"name": "api",
                     "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                  "headers": [{"name": "x-tenant", "value": "a"}]}],
                     "filters": [{"type": "RequestHeaderModifier",
                                  "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}]}}],
                     "backendRefs": [{"name": "stable", "port": 8080, "weight": 90},
                                     {"name": "canary", "port": 8080, "weight": 10}]},
                    {"backendRefs": [{"name": "stable", "port": 8080}]},
                    {"backendRefs": [{"name": "stable", "port": 8080, "weight": 100},
                                     {"name": "canary", "port": 8080, "weight": 0}]}
                ]
            }),
        )
    }

    #[test]
    fn the_companion_copies_each_canary_rule_with_the_headers_added_and_the_canary_alone() {
        let user = user_route();
        let headers = [testers(exact("yes"))];
        let body = companion(&user, "ro", &routes(&headers, &[])).expect("a companion");
        assert_eq!(body["metadata"]["name"], "ro-web-canary");
        assert_eq!(body["metadata"]["labels"][CANARY_ROUTES_LABEL], "ro");
        assert_eq!(body["spec"]["parentRefs"][0]["name"], "gw");
        assert_eq!(body["spec"]["hostnames"], json!(["app.example.com"]));
        let rules = body["spec"]["rules"].as_array().expect("rules");
        assert_eq!(
            rules.len(),
            2,
            "the stable-only rule gets no copy: {rules:?}"
        );
        assert_eq!(
            rules[0]["matches"],
            json!([{"path": {"type": "PathPrefix", "value": "/api"},
                    "headers": [{"name": "x-tenant", "value": "a"},
                                {"name": "x-canary", "type": "Exact", "value": "yes"}]}])
        );
        assert_eq!(
            rules[0]["backendRefs"],
            json!([{"name": "canary", "port": 8080}])
        );
        assert_eq!(rules[0]["filters"][0]["type"], "RequestHeaderModifier");
        assert!(rules[0].get("name").is_none());
        assert_eq!(
            rules[1]["matches"],
            json!([{"headers": [{"name": "x-canary", "type": "Exact", "value": "yes"}]}])
        );
        assert!(companion(&user, "ro", &routes(&[], &[])).is_none());
        let other = CanaryRoutes {
            canary: "other",
            ..routes(&headers, &[])
        };
        assert!(companion(&user, "ro", &other).is_none());
    }

    #[test]
    fn a_mirror_narrows_each_canary_rule_keeps_this_passes_weights_and_mirrors_to_the_canary() {
        let user = user_route();
        let mirror = SetMirrorRoute {
            name: "shadow".into(),
            percentage: Some(35),
            matches: vec![
                MirrorRouteMatch {
                    method: Some(exact("GET")),
                    path: Some(prefix("/api/v1")),
                    ..Default::default()
                },
                // Disjoint from /api: no copy of that rule for it.
                MirrorRouteMatch {
                    path: Some(prefix("/web")),
                    ..Default::default()
                },
            ],
        };
        let mirrors = [mirror];
        let body = companion(&user, "ro", &routes(&[], &mirrors)).expect("a companion");
        let rules = body["spec"]["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0]["matches"],
            json!([{"path": {"type": "PathPrefix", "value": "/api/v1"}, "method": "GET",
                    "headers": [{"name": "x-tenant", "value": "a"}]}])
        );
        assert_eq!(
            rules[0]["backendRefs"],
            json!([{"name": "stable", "port": 8080, "weight": 80},
                   {"name": "canary", "port": 8080, "weight": 20}])
        );
        assert_eq!(
            rules[0]["filters"][1],
            json!({"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": "canary", "port": 8080}, "percent": 35}})
        );
        // The catch-all rule narrowed to both entries.
        assert_eq!(rules[1]["matches"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn paths_intersect_by_whole_segments() {
        let m = |p: StringMatch| MirrorRouteMatch {
            path: Some(p),
            ..Default::default()
        };
        let user = json!({"path": {"type": "PathPrefix", "value": "/api"}});
        let path = |v: Option<Value>| v.map(|v| v["path"]["value"].clone());
        assert_eq!(
            path(intersect(&user, &m(prefix("/api/v1")))),
            Some(json!("/api/v1"))
        );
        assert_eq!(path(intersect(&user, &m(prefix("/")))), Some(json!("/api")));
        assert_eq!(path(intersect(&user, &m(prefix("/apix")))), None);
        assert_eq!(
            path(intersect(&user, &m(exact("/api/x")))),
            Some(json!("/api/x"))
        );
        let get = json!({"method": "GET"});
        let post = MirrorRouteMatch {
            method: Some(exact("POST")),
            ..Default::default()
        };
        assert_eq!(intersect(&get, &post), None);
    }

    #[test]
    fn mesh_rules_put_header_and_mirror_rules_before_the_weighted_one() {
        let mirror = SetMirrorRoute {
            name: "shadow".into(),
            percentage: None,
            matches: vec![MirrorRouteMatch::default()],
        };
        let headers = [testers(exact("yes"))];
        let mirrors = [mirror];
        let rules = mesh_rules(&routes(&headers, &mirrors), 8080, 8081);
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0]["backendRefs"],
            json!([{"name": "canary", "port": 8081}])
        );
        assert_eq!(rules[1]["filters"][0]["requestMirror"]["percent"], 100);
        assert_eq!(
            rules[2]["backendRefs"],
            json!([{"name": "stable", "port": 8080, "weight": 80},
                   {"name": "canary", "port": 8081, "weight": 20}])
        );
    }

    #[test]
    fn a_prefix_becomes_an_escaped_regex_and_a_bad_regex_names_its_field() {
        let header = gateway_header("x-version", &prefix("v1.2"));
        assert_eq!(header["type"], "RegularExpression");
        let pattern = header["value"].as_str().expect("a pattern");
        let re = match_regex(pattern).expect("compiles");
        assert!(re.is_match("v1.2-beta"));
        assert!(!re.is_match("v1x2"));
        let bad = CanaryStep {
            set_mirror_route: Some(SetMirrorRoute {
                name: "shadow".into(),
                percentage: None,
                matches: vec![MirrorRouteMatch {
                    headers: [(
                        "x-user".to_owned(),
                        StringMatch {
                            regex: Some("(".into()),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let ok = CanaryStep {
            set_header_route: Some(testers(exact("("))),
            ..Default::default()
        };
        let message = invalid_regex(&[ok.clone(), bad]).expect("refused");
        assert!(
            message.starts_with(
                "spec.strategy.canary.steps[1].setMirrorRoute.match[0].headers.x-user: "
            ),
            "{message}"
        );
        assert_eq!(invalid_regex(&[ok]), None);
    }
}
