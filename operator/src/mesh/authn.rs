//! RequestAuthentications checked with the proxies' own JWT compiler
//! (`sluice-authz`), keys resolved, before any is pushed: a rule whose
//! `jwks` is malformed is left out of every snapshot and reported on the
//! resource's status, as a refused AuthorizationPolicy is. A `jwksUri` is
//! fetched by the operator ([`crate::jwks`]), never by a proxy; until its
//! keys arrive (or when the fetch fails) the rule is pushed without keys,
//! so its issuer's tokens are refused rather than trusted unchecked.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use sluice_authz::jwt::Authenticator;
use sluice_crds::RequestAuthentication;
use sluice_proto::authn::JwtRule;

use super::Cond;
use super::policies::PolicyDraft;

/// A fetched JWKS document, or why there is none (yet).
pub type Fetched = Result<String, String>;

/// Every RequestAuthentication's rules with their keys inline, and its
/// status.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The accepted resources' rules, keys inline, by (namespace, name).
    pub rules: BTreeMap<(String, String), Vec<JwtRule>>,
    /// The status of every resource.
    pub drafts: BTreeMap<(String, String), PolicyDraft>,
}

impl Resolved {
    /// Resolves each resource's keys from `jwks` (fetched documents by
    /// URI) and compiles its rules on their own.
    pub fn of(authns: &[Arc<RequestAuthentication>], jwks: &BTreeMap<String, Fetched>) -> Resolved {
        let mut out = Resolved::default();
        for a in authns {
            let key = (a.namespace().unwrap_or_default(), a.name_any());
            let mut waiting = Vec::new();
            let rules: Vec<JwtRule> = a
                .spec
                .jwt_rules
                .iter()
                .map(|r| resolve(r, jwks, &mut waiting))
                .collect();
            // Rules that compile are pushed, with or without their keys.
            let accepted = match Authenticator::compile(&rules, "spec.jwtRules") {
                Err(e) => Cond::no(
                    "Accepted",
                    super::reason::INVALID,
                    format!("not pushed to any proxy: {e}"),
                ),
                Ok(_) => {
                    out.rules.insert(key.clone(), rules);
                    if waiting.is_empty() {
                        Cond::yes("Accepted", super::reason::ACCEPTED)
                    } else {
                        Cond::no(
                            "Accepted",
                            super::reason::PENDING,
                            format!(
                                "pushed without keys, so these issuers' tokens are refused: {}",
                                waiting.join("; ")
                            ),
                        )
                    }
                }
            };
            let draft = PolicyDraft {
                generation: a.metadata.generation,
                accepted,
            };
            out.drafts.insert(key, draft);
        }
        out
    }
}

/// `rule` with its keys inline: its own `jwks`, else the fetched document
/// of its `jwksUri`; a rule still without keys is noted in `waiting`.
fn resolve(rule: &JwtRule, jwks: &BTreeMap<String, Fetched>, waiting: &mut Vec<String>) -> JwtRule {
    let mut out = rule.clone();
    if out.jwks.is_some() {
        return out;
    }
    let Some(uri) = &rule.jwks_uri else {
        return out;
    };
    match jwks.get(uri) {
        Some(Ok(doc)) => out.jwks = Some(doc.clone()),
        Some(Err(e)) => waiting.push(format!("{}: fetching {uri}: {e}", rule.issuer)),
        None => waiting.push(format!("{}: {uri} not fetched yet", rule.issuer)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWKS: &str = r#"{"keys": [{"kty": "oct", "alg": "HS256", "kid": "k", "k": "c2VjcmV0"}]}"#;

    fn authn(name: &str, rules: serde_json::Value) -> Arc<RequestAuthentication> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "RequestAuthentication",
                "metadata": {"name": name, "namespace": "shop", "generation": 2},
                "spec": {"jwtRules": rules}
            }))
            .expect("RequestAuthentication"),
        )
    }

    fn key(name: &str) -> (String, String) {
        ("shop".to_owned(), name.to_owned())
    }

    #[test]
    fn keys_come_inline_or_from_the_fetched_uri() {
        let jwks = BTreeMap::from([("https://idp.test/keys".to_owned(), Ok(JWKS.to_owned()))]);
        let r = Resolved::of(
            &[
                authn("inline", json!([{"issuer": "a", "jwks": JWKS}])),
                authn(
                    "by-uri",
                    json!([{"issuer": "b", "jwksUri": "https://idp.test/keys"}]),
                ),
            ],
            &jwks,
        );
        assert!(r.drafts.values().all(|d| d.accepted.ok), "{:?}", r.drafts);
        assert_eq!(r.rules[&key("by-uri")][0].jwks.as_deref(), Some(JWKS));
        assert_eq!(r.drafts[&key("by-uri")].generation, Some(2));
    }

    #[test]
    fn a_uri_not_fetched_is_pushed_without_keys_and_says_so() {
        let jwks = BTreeMap::from([(
            "https://down.test/keys".to_owned(),
            Err("connection refused".to_owned()),
        )]);
        let r = Resolved::of(
            &[
                authn(
                    "down",
                    json!([{"issuer": "a", "jwksUri": "https://down.test/keys"}]),
                ),
                authn(
                    "later",
                    json!([{"issuer": "b", "jwksUri": "https://idp.test/keys"}]),
                ),
            ],
            &jwks,
        );
        for (name, says) in [("down", "connection refused"), ("later", "not fetched yet")] {
            let d = &r.drafts[&key(name)];
            assert!(!d.accepted.ok && d.accepted.message.contains(says), "{d:?}");
            assert_eq!(r.rules[&key(name)][0].jwks, None);
        }
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_field() {
        let r = Resolved::of(
            &[authn("bad", json!([{"issuer": "a", "jwks": "{"}]))],
            &BTreeMap::new(),
        );
        let d = &r.drafts[&key("bad")];
        assert!(!d.accepted.ok, "{d:?}");
        assert!(
            d.accepted.message.contains("spec.jwtRules[0].jwks"),
            "{}",
            d.accepted.message
        );
        assert!(!r.rules.contains_key(&key("bad")));
    }
}
