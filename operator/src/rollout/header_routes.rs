//! Header routes (`setHeaderRoute`) as Gateway API rules: requests whose
//! headers match go to the canary whatever its weight.
//!
//! The user's HTTPRoutes stay the user's: for each one the operator keeps
//! a companion HTTPRoute of its own (same parents and hostnames) whose
//! rules copy the user's canary rules with the header conditions added.
//! Gateway API precedence (more header matches win among equal paths)
//! sends matching requests there. On the mesh route, which is the
//! operator's, the header rules sit beside the weighted rule. Everything
//! here is pure: [`super::apply`] writes what it returns.

use gateway_api::httproutes::HttpRoute;
use kube::ResourceExt;
use serde_json::{Value, json};
use sluice_crds::rollout::{CanaryStep, HeaderRouteMatch, RolloutStatus, SetHeaderRoute};
use sluice_proto::config::header_regex;

/// The header routes `status` says are in force, with their conditions
/// as text (`testers (x-canary=yes)`): what `kubectl sluice get` and the
/// dashboard show.
pub fn in_force(steps: &[CanaryStep], status: &RolloutStatus) -> Vec<String> {
    let done = status
        .current_step_index
        .and_then(|i| usize::try_from(i).ok())
        .unwrap_or(0);
    sluice_crds::rollout::header_routes(steps, done)
        .iter()
        .filter(|r| status.header_routes.contains(&r.name))
        .map(ToString::to_string)
        .collect()
}

/// The label on companion routes, naming their Rollout: what is found
/// under it and no longer wanted is deleted.
pub const COMPANION_LABEL: &str = "sluice.dev/header-routes-of";

/// The companion route of user route `route` for Rollout `rollout`.
pub fn companion_name(rollout: &str, route: &str) -> String {
    format!("{rollout}-{route}-headers")
}

/// One condition as a Gateway API header match; a prefix is a regular
/// expression (Gateway API has no prefix match for headers).
fn gateway_header(m: &HeaderRouteMatch) -> Value {
    let v = &m.header_value;
    let (kind, value) = match (&v.exact, &v.prefix, &v.regex) {
        (Some(e), _, _) => ("Exact", e.clone()),
        (None, Some(p), _) => ("RegularExpression", format!("{}.*", regex::escape(p))),
        (None, None, Some(r)) => ("RegularExpression", r.clone()),
        // Admission requires one of them; an empty regex matches nothing
        // but the empty value.
        (None, None, None) => ("Exact", String::new()),
    };
    json!({"name": m.header_name, "type": kind, "value": value})
}

/// The first `setHeaderRoute` regex (or prefix) the proxies would refuse,
/// as a message naming its field: admission cannot compile regexes.
pub fn invalid_regex(steps: &[CanaryStep]) -> Option<String> {
    for (i, step) in steps.iter().enumerate() {
        let Some(r) = &step.set_header_route else {
            continue;
        };
        for (j, m) in r.matches.iter().enumerate() {
            let Some(value) = gateway_header(m)["value"].as_str().map(str::to_owned) else {
                continue;
            };
            if m.header_value.exact.is_none()
                && let Err(e) = header_regex(&value)
            {
                return Some(format!(
                    "spec.strategy.canary.steps[{i}].setHeaderRoute.match[{j}].headerValue: {e}"
                ));
            }
        }
    }
    None
}

/// The mesh route's header rules, before its weighted rule: each route's
/// conditions (all of them) to `canary` alone.
pub fn mesh_rules(routes: &[SetHeaderRoute], canary: &str, port: i32) -> Vec<Value> {
    routes
        .iter()
        .map(|r| {
            let headers: Vec<Value> = r.matches.iter().map(gateway_header).collect();
            json!({
                "matches": [{"headers": headers}],
                "backendRefs": [{"name": canary, "port": port}],
            })
        })
        .collect()
}

/// The companion of `route`: for each of its rules with a backendRef to
/// `canary`, one rule per header route, with that route's conditions
/// added to each of the rule's matches and the canary as the only
/// backend (its filters and timeouts kept). `None` when no header route is
/// in force or the route has no canary rule.
pub fn companion(
    route: &HttpRoute,
    rollout: &str,
    canary: &str,
    routes: &[SetHeaderRoute],
) -> Option<Value> {
    if routes.is_empty() {
        return None;
    }
    let mut rules = Vec::new();
    for rule in route.spec.rules.iter().flatten() {
        let Some(canary_ref) = rule
            .backend_refs
            .iter()
            .flatten()
            .find(|b| b.name == canary && b.kind.as_deref().is_none_or(|k| k == "Service"))
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
        for r in routes {
            let extra: Vec<Value> = r.matches.iter().map(gateway_header).collect();
            let matches: Vec<Value> = user_matches
                .iter()
                .map(|m| with_headers(m.clone(), &extra))
                .collect();
            let mut out = base.clone();
            if let Some(o) = out.as_object_mut() {
                // A rule name must be unique within the route.
                o.remove("name");
                o.insert("matches".into(), Value::Array(matches));
                o.insert("backendRefs".into(), json!([backend.clone()]));
            }
            rules.push(out);
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
            "labels": {COMPANION_LABEL: rollout},
        },
        "spec": spec,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::route;
    use sluice_crds::rollout::StringMatch;

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

    #[test]
    fn the_companion_copies_each_canary_rule_with_the_headers_added_and_the_canary_alone() {
        let user = route(
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
        );
        let body = companion(&user, "ro", "canary", &[testers(exact("yes"))]).expect("a companion");
        assert_eq!(body["metadata"]["name"], "ro-web-headers");
        assert_eq!(body["metadata"]["labels"][COMPANION_LABEL], "ro");
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
        assert!(companion(&user, "ro", "canary", &[]).is_none());
        assert!(companion(&user, "ro", "other", &[testers(exact("yes"))]).is_none());
    }

    #[test]
    fn a_prefix_becomes_an_escaped_regex_and_a_bad_regex_names_its_field() {
        let prefix = testers(StringMatch {
            prefix: Some("v1.2".into()),
            ..Default::default()
        });
        let rules = mesh_rules(&[prefix], "canary", 8080);
        let header = &rules[0]["matches"][0]["headers"][0];
        assert_eq!(header["type"], "RegularExpression");
        let pattern = header["value"].as_str().expect("a pattern");
        let re = header_regex(pattern).expect("compiles");
        assert!(re.is_match("v1.2-beta"));
        assert!(!re.is_match("v1x2"));
        let bad = CanaryStep {
            set_header_route: Some(testers(StringMatch {
                regex: Some("(".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let ok = CanaryStep {
            set_header_route: Some(testers(exact("("))),
            ..Default::default()
        };
        let message = invalid_regex(&[ok.clone(), bad]).expect("refused");
        assert!(
            message
                .starts_with("spec.strategy.canary.steps[1].setHeaderRoute.match[0].headerValue: "),
            "{message}"
        );
        assert_eq!(invalid_regex(&[ok]), None);
    }
}
