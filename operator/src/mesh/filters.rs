//! HTTPRoute rule filters as proxy filters: `RequestHeaderModifier`,
//! `ResponseHeaderModifier`, `RequestRedirect` and `URLRewrite`
//! (`RequestMirror` is a route's mirrors, see `rules`). A filter the proxy
//! cannot apply is never skipped (it could be one that protects
//! something): its rule answers 500 and the route is not `Accepted`.

use gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPath,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePath,
};
use sluice_proto::config::{Filters, HeaderChanges, PathChange, Redirect, Rewrite};

use super::{Cond, reason};

/// The generated modifier types differ per filter but share a shape.
macro_rules! header_changes {
    ($m:expr) => {
        HeaderChanges {
            set: $m
                .set
                .iter()
                .flatten()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                .collect(),
            add: $m
                .add
                .iter()
                .flatten()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                .collect(),
            remove: $m
                .remove
                .iter()
                .flatten()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        }
    };
}

/// A rule's filters, or why the rule cannot be served (`Accepted=False`).
pub fn of_rule(rule: &HttpRouteRules) -> Result<Filters, Cond> {
    let mut out = Filters::default();
    for f in rule.filters.iter().flatten() {
        if let Some(m) = &f.request_header_modifier {
            out.request_headers = Some(header_changes!(m));
        } else if let Some(m) = &f.response_header_modifier {
            out.response_headers = Some(header_changes!(m));
        } else if let Some(r) = &f.request_redirect {
            out.redirect = Some(redirect(r));
        } else if let Some(r) = &f.url_rewrite {
            out.rewrite = Some(rewrite(r));
        } else if f.request_mirror.is_none() {
            return Err(Cond::no(
                "Accepted",
                reason::UNSUPPORTED_VALUE,
                "a filter other than RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror: its rule answers 500",
            ));
        }
    }
    let per_backend = rule
        .backend_refs
        .iter()
        .flatten()
        .any(|b| b.filters.as_ref().is_some_and(|f| !f.is_empty()));
    if per_backend {
        return Err(Cond::no(
            "Accepted",
            reason::UNSUPPORTED_VALUE,
            "filters on a backendRef are not supported yet (the rule's own are): its rule answers 500",
        ));
    }
    if out.redirect.is_some() && out.rewrite.is_some() {
        return Err(Cond::no(
            "Accepted",
            reason::UNSUPPORTED_VALUE,
            "RequestRedirect and URLRewrite cannot be used together",
        ));
    }
    Ok(out)
}

fn redirect(r: &HttpRouteRulesFiltersRequestRedirect) -> Redirect {
    Redirect {
        scheme: r.scheme.as_ref().map(|s| {
            match s {
                HttpRouteRulesFiltersRequestRedirectScheme::Http => "http",
                HttpRouteRulesFiltersRequestRedirectScheme::Https => "https",
            }
            .to_owned()
        }),
        hostname: r.hostname.clone(),
        port: r.port.and_then(|p| u16::try_from(p).ok()),
        path: r.path.as_ref().and_then(redirect_path),
        status: r
            .status_code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(302),
    }
}

fn redirect_path(p: &HttpRouteRulesFiltersRequestRedirectPath) -> Option<PathChange> {
    path_change(
        p.replace_full_path.as_deref(),
        p.replace_prefix_match.as_deref(),
    )
}

fn rewrite(r: &HttpRouteRulesFiltersUrlRewrite) -> Rewrite {
    Rewrite {
        hostname: r.hostname.clone(),
        path: r.path.as_ref().and_then(rewrite_path),
    }
}

fn rewrite_path(p: &HttpRouteRulesFiltersUrlRewritePath) -> Option<PathChange> {
    path_change(
        p.replace_full_path.as_deref(),
        p.replace_prefix_match.as_deref(),
    )
}

fn path_change(full: Option<&str>, prefix: Option<&str>) -> Option<PathChange> {
    match (full, prefix) {
        (Some(f), _) => Some(PathChange::Full(f.to_owned())),
        (None, Some(p)) => Some(PathChange::Prefix(p.to_owned())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(filters: serde_json::Value) -> HttpRouteRules {
        serde_json::from_value(json!({"filters": filters})).expect("a rule")
    }

    #[test]
    fn header_modifiers_redirects_and_rewrites_become_proxy_filters() {
        let f = of_rule(&rule(json!([
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "X-Env", "value": "prod"}], "add": [{"name": "x-tag", "value": "a"}], "remove": ["X-Secret"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-served", "value": "sluice"}]}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "one.example.org", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"}}},
        ])))
        .expect("supported");
        let req = f.request_headers.expect("request headers");
        assert_eq!(req.set, vec![("x-env".to_owned(), "prod".to_owned())]);
        assert_eq!(req.remove, vec!["x-secret".to_owned()]);
        assert_eq!(f.response_headers.expect("response").set.len(), 1);
        let rw = f.rewrite.expect("rewrite");
        assert_eq!(rw.hostname.as_deref(), Some("one.example.org"));
        assert_eq!(rw.path, Some(PathChange::Prefix("/one".into())));

        let r = of_rule(&rule(
            json!([{"type": "RequestRedirect", "requestRedirect": {
            "scheme": "https", "hostname": "example.net", "statusCode": 301,
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]),
        ))
        .expect("supported")
        .redirect
        .expect("redirect");
        assert_eq!(
            (r.scheme.as_deref(), r.hostname.as_deref(), r.status),
            (Some("https"), Some("example.net"), 301)
        );
        assert_eq!(r.path, Some(PathChange::Full("/new".into())));
    }

    #[test]
    fn an_unknown_filter_is_not_skipped() {
        let err = of_rule(&rule(json!([{"type": "ExtensionRef", "extensionRef": {
            "group": "example.com", "kind": "Auth", "name": "x"}}])))
        .expect_err("refused");
        assert_eq!(err.reason, reason::UNSUPPORTED_VALUE);
        let per_backend: HttpRouteRules = serde_json::from_value(json!({"backendRefs": [
            {"name": "blue", "port": 8080, "filters": [{"type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "x", "value": "y"}]}}]}]}))
        .expect("a rule");
        assert!(of_rule(&per_backend).is_err());
    }
}
