//! metav1 Conditions from the translation's decisions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::mesh::Cond;

/// Conditions as JSON, keeping `lastTransitionTime` from `existing` when a
/// condition's status did not change (so an unchanged status is byte-equal
/// and not rewritten).
pub fn to_conditions(
    conds: &[Cond],
    generation: Option<i64>,
    existing: &[Condition],
) -> Vec<Value> {
    conds
        .iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let since = existing
                .iter()
                .find(|e| e.type_ == c.kind && e.status == status)
                .map(|e| e.last_transition_time.clone())
                .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
            let mut v = json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::reason;

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let first = to_conditions(&[Cond::yes("Accepted", reason::ACCEPTED)], Some(2), &[]);
        let old: Vec<Condition> =
            serde_json::from_value(Value::Array(first.clone())).expect("conditions");
        let again = to_conditions(&[Cond::yes("Accepted", reason::ACCEPTED)], Some(2), &old);
        assert_eq!(first, again);
        let flipped = to_conditions(
            &[Cond::no("Accepted", reason::NOT_ALLOWED_BY_LISTENERS, "x")],
            Some(3),
            &old,
        );
        assert_eq!(flipped[0]["status"], "False");
        assert_eq!(flipped[0]["observedGeneration"], 3);
    }
}
