//! After a rollback (failed analysis, the user, a missed deadline) and
//! while the spec cannot run: all traffic on stable. An aborted canary's
//! pods stay for `abortScaleDownDelaySeconds` (to be inspected), then go.

use sluice_crds::rollout::{RolloutPhase, RolloutReason};

use super::super::model::{Decision, Draft, Invalid, Observed, delay, secs, time};
use super::super::replicas;
use super::DEFAULT_ABORT_DELAY;

/// Aborts the canary for `reason`: traffic back to stable from this pass on.
pub fn start(d: &mut Draft, now: i64, reason: RolloutReason, why: String) {
    d.st.aborted = true;
    d.st.abort_time = Some(time(now));
    d.state(
        RolloutPhase::Degraded,
        reason,
        format!("rolled back: {why}"),
    );
}

/// The decision for an aborted canary.
pub fn decide(o: &Observed, mut d: Draft, stable: &str) -> Decision {
    let weight = d.st.weights.as_ref().map_or(0, |w| w.canary);
    if weight != 0 {
        d.warning(
            "RolledBack",
            format!("canary weight {weight} -> 0; stable {stable} serves all traffic"),
        );
    }
    // The reason and message were set when it was aborted, in an earlier
    // pass perhaps: they stay as they are.
    d.st.phase = Some(RolloutPhase::Degraded);
    let total = o.total_steps();
    let index = d.st.current_step_index.unwrap_or(0).clamp(0, total);
    d.st.step = Some(format!("{index}/{total}"));
    let abort_delay = i64::from(
        o.spec
            .strategy
            .canary
            .abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_DELAY),
    );
    let since = o
        .now
        .saturating_sub(secs(&d.st.abort_time).unwrap_or(o.now));
    let r = o.replicas();
    let mut pods = vec![(stable.to_owned(), replicas::stable(r, 0, o.routed()))];
    if since < abort_delay {
        pods.push((
            o.template_hash.clone(),
            replicas::canary(r, weight.max(1), o.routed(), d.st.canary_scale),
        ));
    }
    d.requeue_within(delay(abort_delay.saturating_sub(since).clamp(1, 30)));
    d.finish(pods, 0)
}

/// The decision while the spec cannot run: no traffic on the canary (its
/// pods stay, idle, until the spec is fixed), stable at full size, and the
/// reason on the Rollout. Not an abort: a fixed spec carries on.
pub fn invalid(o: &Observed, mut d: Draft, why: &Invalid) -> Decision {
    if d.st.reason != Some(why.reason) || d.st.message.as_deref() != Some(why.message.as_str()) {
        d.warning(why.reason.as_str(), why.message.clone());
    }
    d.state(RolloutPhase::Degraded, why.reason, why.message.clone());
    let r = o.replicas();
    let mut pods: Vec<(String, i32)> = Vec::new();
    if let Some(stable) = &d.st.stable_revision {
        pods.push((stable.clone(), replicas::stable(r, 0, o.routed())));
    }
    if let Some(canary) = d.st.canary_revision.clone() {
        pods.push((
            canary,
            replicas::canary(r, 0, o.routed(), d.st.canary_scale),
        ));
    }
    d.requeue_within(std::time::Duration::from_secs(10));
    d.finish(pods, 0)
}
