//! Which of a policy's rules can match a peer, looked up by its principal.
//!
//! Most rules of a large policy name their callers by exact principal
//! (`from: [{source: {principals: [...]}}]`, one service account per rule).
//! A peer whose principal is not among a rule's can never match it, so the
//! evaluator need not try it: a 100-rule policy costs as little as a
//! one-rule one. The result is the same as trying every rule, since a
//! policy matches when any rule does and the rules are pure.

use std::collections::HashMap;

use crate::{Pattern, Rule};

/// A policy's rules split by whether a principal lookup can rule them out.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    /// Rules that only peers with one of a few exact principals can match,
    /// by principal (indices into the policy's rules, ascending).
    by_principal: HashMap<Box<str>, Vec<usize>>,
    /// The other rules: any peer may match them.
    open: Vec<usize>,
}

impl RuleIndex {
    /// Indexes `rules`.
    pub(crate) fn new(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, r) in rules.iter().enumerate() {
            let Some(principals) = exact_principals(r) else {
                index.open.push(i);
                continue;
            };
            for p in principals {
                let list = index.by_principal.entry(p.into()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        index
    }

    /// The rules a peer with `principal` may match: the open ones, then
    /// those indexed under its principal.
    pub(crate) fn candidates(&self, principal: Option<&str>) -> impl Iterator<Item = usize> + '_ {
        let named = principal
            .and_then(|p| self.by_principal.get(p))
            .map_or(&[][..], Vec::as_slice);
        self.open.iter().chain(named).copied()
    }
}

/// The principals a peer must have one of to match `r`, when every source
/// of it requires an exact one; `None` when some peer without one of them
/// could still match (no `from`, a source without principals, or one with
/// a wildcard).
fn exact_principals(r: &Rule) -> Option<Vec<&str>> {
    if r.from.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for s in &r.from {
        if s.principals.yes.is_empty() {
            return None;
        }
        for p in &s.principals.yes {
            match p {
                Pattern::Exact(e) => all.push(e.as_str()),
                _ => return None,
            }
        }
    }
    Some(all)
}
