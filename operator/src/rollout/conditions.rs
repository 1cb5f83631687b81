//! A Rollout's conditions, derived from its status alone: what `kubectl
//! wait --for=condition=...` and `kubectl describe` read. Each condition's
//! reason is the status's [`RolloutReason`] where it applies.

use sluice_crds::rollout::{RolloutPhase, RolloutReason, RolloutStatus};

use crate::mesh::Cond;

/// The condition types of a Rollout, in the order they are written.
pub const TYPES: [&str; 6] = [
    "Available",
    "Progressing",
    "Paused",
    "Healthy",
    "RolledBack",
    "InvalidSpec",
];

/// The conditions of `status`; `stable_ready` of `replicas` stable pods are
/// ready.
pub fn conditions(status: &RolloutStatus, stable_ready: i32, replicas: i32) -> Vec<Cond> {
    let phase = status.phase.unwrap_or(RolloutPhase::Progressing);
    let reason = status
        .reason
        .map_or("RolloutProgressing", RolloutReason::as_str);
    let message = status.message.clone().unwrap_or_default();
    let with = |kind: &'static str, ok: bool| Cond {
        kind,
        ok,
        reason,
        message: message.clone(),
    };
    let invalid = matches!(
        status.reason,
        Some(RolloutReason::InvalidSpec | RolloutReason::TrafficRouteMissing)
    );
    vec![
        if stable_ready >= replicas {
            Cond::yes("Available", "AvailableReplicas")
        } else {
            Cond::no(
                "Available",
                "NotEnoughReplicas",
                format!("{stable_ready} of {replicas} stable pods ready"),
            )
        },
        // True while it moves or waits to move; False once done or stopped.
        with(
            "Progressing",
            matches!(phase, RolloutPhase::Progressing | RolloutPhase::Paused),
        ),
        if phase == RolloutPhase::Paused {
            with("Paused", true)
        } else {
            Cond::no("Paused", "NotPaused", "")
        },
        if phase == RolloutPhase::Healthy {
            with("Healthy", true)
        } else {
            Cond::no("Healthy", "RolloutNotHealthy", message.clone())
        },
        if status.aborted {
            with("RolledBack", true)
        } else {
            Cond::no("RolledBack", "NotRolledBack", "")
        },
        if invalid {
            with("InvalidSpec", true)
        } else {
            Cond::no("InvalidSpec", "ValidSpec", "")
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: RolloutPhase, reason: RolloutReason) -> RolloutStatus {
        RolloutStatus {
            phase: Some(phase),
            reason: Some(reason),
            message: Some("why".into()),
            ..Default::default()
        }
    }

    fn find<'a>(conds: &'a [Cond], kind: &str) -> &'a Cond {
        conds.iter().find(|c| c.kind == kind).expect("condition")
    }

    #[test]
    fn every_type_is_written_in_order() {
        let conds = conditions(&RolloutStatus::default(), 0, 1);
        let kinds: Vec<&str> = conds.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, TYPES);
    }

    #[test]
    fn a_healthy_rollout_is_available_healthy_and_no_longer_progressing() {
        let c = conditions(
            &status(RolloutPhase::Healthy, RolloutReason::RolloutCompleted),
            3,
            3,
        );
        assert!(find(&c, "Available").ok && find(&c, "Healthy").ok);
        let p = find(&c, "Progressing");
        assert!(!p.ok);
        assert_eq!(p.reason, "RolloutCompleted");
    }

    #[test]
    fn a_failed_analysis_is_rolled_back_with_its_reason() {
        let mut st = status(RolloutPhase::Degraded, RolloutReason::AnalysisFailed);
        st.aborted = true;
        let c = conditions(&st, 3, 3);
        let rb = find(&c, "RolledBack");
        assert!(rb.ok);
        assert_eq!(rb.reason, "AnalysisFailed");
        assert_eq!(rb.message, "why");
        assert!(!find(&c, "Healthy").ok);
        assert_eq!(find(&c, "Progressing").reason, "AnalysisFailed");
    }

    #[test]
    fn an_inconclusive_analysis_pauses_with_its_reason() {
        let c = conditions(
            &status(RolloutPhase::Paused, RolloutReason::InconclusiveAnalysis),
            3,
            3,
        );
        let p = find(&c, "Paused");
        assert!(p.ok);
        assert_eq!(p.reason, "InconclusiveAnalysis");
        assert!(find(&c, "Progressing").ok);
    }

    #[test]
    fn a_missing_route_is_an_invalid_spec_naming_it() {
        let mut st = status(RolloutPhase::Degraded, RolloutReason::TrafficRouteMissing);
        st.message = Some("HTTPRoute ns/web does not exist".into());
        let c = conditions(&st, 1, 3);
        let inv = find(&c, "InvalidSpec");
        assert!(inv.ok);
        assert!(inv.message.contains("ns/web"));
        assert!(!find(&c, "Available").ok);
        assert!(!find(&c, "RolledBack").ok);
    }
}
