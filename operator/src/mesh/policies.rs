//! AuthorizationPolicies checked with the proxies' own compiler
//! (`sluice-authz`) before any is pushed: a policy a proxy would refuse is
//! left out of every snapshot and reported on its own status
//! (`Accepted=False`), so that one bad object never makes a proxy refuse
//! its whole config and freeze on an old one.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use sluice_crds::AuthorizationPolicy;
use sluice_proto::authz::Policy;

use super::Cond;

/// The policy as proxies receive it.
pub fn to_proxy(p: &AuthorizationPolicy) -> Policy {
    Policy {
        name: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
        action: p.spec.action,
        rules: p.spec.rules.clone(),
    }
}

/// Status the translation wants on one AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDraft {
    /// metadata.generation.
    pub generation: Option<i64>,
    /// `Accepted`, with the compiler's complaint when False.
    pub accepted: Cond,
}

/// Every policy's verdict, by (namespace, name).
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The verdicts.
    pub drafts: BTreeMap<(String, String), PolicyDraft>,
}

impl Checked {
    /// Compiles each policy on its own.
    pub fn of(policies: &[Arc<AuthorizationPolicy>]) -> Checked {
        let drafts = policies
            .iter()
            .map(|p| {
                let key = (p.namespace().unwrap_or_default(), p.name_any());
                let accepted = match sluice_authz::Policies::compile(&[to_proxy(p)]) {
                    Ok(_) => Cond::yes("Accepted", super::reason::ACCEPTED),
                    Err(e) => Cond::no(
                        "Accepted",
                        super::reason::INVALID,
                        format!("not pushed to any proxy: {e}"),
                    ),
                };
                let draft = PolicyDraft {
                    generation: p.metadata.generation,
                    accepted,
                };
                (key, draft)
            })
            .collect();
        Checked { drafts }
    }

    /// Whether policy `namespace/name` may be pushed.
    pub fn accepted(&self, namespace: &str, name: &str) -> bool {
        self.drafts
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_none_or(|d| d.accepted.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, rules: serde_json::Value) -> Arc<AuthorizationPolicy> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "sluice-system", "generation": 3},
                "spec": {"action": "DENY", "rules": rules}
            }))
            .expect("policy"),
        )
    }

    #[test]
    fn a_policy_the_proxy_would_refuse_is_refused_here_naming_the_field() {
        let checked = Checked::of(&[
            policy(
                "bad",
                serde_json::json!([{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]),
            ),
            policy(
                "good",
                serde_json::json!([{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]),
            ),
        ]);
        assert!(!checked.accepted("sluice-system", "bad"));
        assert!(checked.accepted("sluice-system", "good"));
        let bad = &checked.drafts[&("sluice-system".to_owned(), "bad".to_owned())];
        assert_eq!(bad.generation, Some(3));
        assert!(
            bad.accepted.message.contains("ipBlocks"),
            "{}",
            bad.accepted.message
        );
    }
}
