//! The template is the stable revision: no canary runs (or the template
//! went back to stable, which removes the canary at once). The stable
//! before the last promotion keeps its pods until its scale-down time.

use std::time::Duration;

use sluice_crds::rollout::{RolloutPhase, RolloutReason};

use super::super::model::{Decision, Draft, Observed, delay, secs};

/// How often a Healthy Rollout is looked at without a change: with
/// thousands of them, a 30 s resync kept the API server busy at rest (see
/// `cargo xtask bench scale` in docs/benchmarks.md).
pub const HEALTHY_RESYNC: Duration = Duration::from_secs(300);

/// The decision when the template is the stable revision `stable`.
pub fn decide(o: &Observed, mut d: Draft, stable: &str) -> Decision {
    if let Some(old) = d.st.canary_revision.take() {
        d.warning(
            "RolledBack",
            format!("template reverted to the stable revision {stable}; canary {old} removed"),
        );
    }
    let total = o.total_steps();
    let st = &mut d.st;
    st.aborted = false;
    st.abort_time = None;
    st.current_step_index = Some(total);
    st.step = Some(format!("{total}/{total}"));
    st.pause_start_time = None;
    st.analysis = None;
    st.canary_scale = None;
    let (ready, r) = (o.ready(stable), o.replicas());
    if o.spec.paused {
        d.state(
            RolloutPhase::Paused,
            RolloutReason::SpecPaused,
            "paused (spec.paused)".into(),
        );
    } else if ready >= r {
        d.state(
            RolloutPhase::Healthy,
            RolloutReason::RolloutCompleted,
            format!("revision {stable} serves all traffic"),
        );
        // Nothing to do until the Rollout, its ReplicaSets or its
        // Deployment change, and each of those wakes the controller: the
        // resync only repairs drift (a Service selector edited by hand).
        d.requeue = HEALTHY_RESYNC;
    } else {
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::WaitingForStablePods,
            format!("waiting for revision {stable}: {ready} of {r} pods ready"),
        );
        d.requeue_within(Duration::from_secs(2));
    }
    let mut pods = vec![(stable.to_owned(), r)];
    if let (Some(old), Some(at)) = (
        d.st.previous_stable_revision.clone(),
        secs(&d.st.scale_down_time),
    ) {
        if o.now < at {
            pods.push((old, r));
            d.requeue_within(delay(at.saturating_sub(o.now)));
        } else {
            d.normal(
                "ScaledDown",
                format!("old stable revision {old} scaled to 0"),
            );
            d.st.previous_stable_revision = None;
            d.st.scale_down_time = None;
        }
    }
    d.finish(pods, 0)
}
