//! Every step is done (or the user promoted fully): the canary is scaled to
//! full size, and only once all its pods are ready does it become the stable
//! revision, so `stableService` never points at a revision that could not
//! take all traffic. A canary whose background analysis never had enough
//! requests to judge it is not promoted on its own: it pauses
//! (`InconclusiveAnalysis`) until traffic arrives or the user promotes.

use std::time::Duration;

use sluice_crds::rollout::{RolloutPhase, RolloutReason};

use super::super::model::{Decision, Draft, Observed, time};
use super::super::replicas;
use super::{
    DEFAULT_SCALE_DOWN_DELAY, abort, abort_past_deadline, last_verdict, requeue_for, running_pods,
};

/// The decision once the steps are done; `release` is the user's promote
/// (or full promotion), which lifts the analysis gate.
pub fn decide(o: &Observed, mut d: Draft, stable: &str, release: bool) -> Decision {
    let total = o.total_steps();
    let hash = o.template_hash.clone();
    d.st.current_step_index = Some(total);
    d.st.step = Some(format!("{total}/{total}"));
    let weight = d.st.weights.as_ref().map_or(0, |w| w.canary);
    let (r, routed) = (o.replicas(), o.routed());
    if gate_closed(o, &d, release) {
        return inconclusive(o, d, stable, weight);
    }
    if d.st.reason != Some(RolloutReason::Promoting) {
        d.normal(
            "Promoting",
            format!("steps done: scaling {hash} to {r} pods before it takes all traffic"),
        );
        d.st.step_start_time = Some(time(o.now));
    }
    let ready = o.ready(&hash);
    if ready < r {
        if abort_past_deadline(o, &mut d, |deadline| {
            format!("canary not fully ready within {deadline}s ({ready} of {r})")
        }) {
            return abort::decide(o, d, stable);
        }
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::Promoting,
            format!("promoting {hash}: {ready} of {r} pods ready before it takes all traffic"),
        );
        d.requeue_within(Duration::from_secs(2));
        let pods = vec![
            (stable.to_owned(), replicas::stable(r, weight, routed)),
            (hash, r),
        ];
        return d.finish(pods, weight);
    }
    let keep = o.spec.strategy.canary.scale_down_delay_seconds;
    make_stable(o, d, stable, keep)
}

/// The new revision `o.template_hash` becomes the stable one; `stable`
/// keeps its pods for `keep` seconds (30 unless given).
pub fn make_stable(o: &Observed, mut d: Draft, stable: &str, keep: Option<i32>) -> Decision {
    let hash = o.template_hash.clone();
    let r = o.replicas();
    d.normal(
        "Promoted",
        format!("revision {hash} is now stable (was {stable})"),
    );
    let keep = keep.unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
    let st = &mut d.st;
    st.previous_stable_revision = Some(stable.to_owned());
    st.scale_down_time = Some(time(o.now.saturating_add(i64::from(keep))));
    st.stable_revision = Some(hash.clone());
    st.canary_revision = None;
    st.pause_start_time = None;
    st.canary_scale = None;
    d.state(
        RolloutPhase::Healthy,
        RolloutReason::RolloutCompleted,
        format!("revision {hash} promoted"),
    );
    d.requeue_within(Duration::from_secs(1));
    d.finish(vec![(hash, r), (stable.to_owned(), r)], 0)
}

/// Whether the background analysis holds the promotion: it never passed,
/// the user did not promote, and the promotion has not started already.
fn gate_closed(o: &Observed, d: &Draft, release: bool) -> bool {
    let analysed = o.spec.strategy.canary.analysis.is_some();
    analysed && !d.analysis_passed() && !release && d.st.reason != Some(RolloutReason::Promoting)
}

fn inconclusive(o: &Observed, mut d: Draft, stable: &str, weight: i32) -> Decision {
    let last = last_verdict(&d);
    if d.st.reason != Some(RolloutReason::InconclusiveAnalysis) {
        d.warning(
            "InconclusiveAnalysis",
            format!("steps done, but the analysis never had enough requests to judge the canary ({last})"),
        );
    }
    d.state(
        RolloutPhase::Paused,
        RolloutReason::InconclusiveAnalysis,
        format!(
            "steps done; the analysis never had enough requests to judge the canary ({last}): \
             waiting for traffic, or `kubectl sluice promote`"
        ),
    );
    requeue_for(o.spec.strategy.canary.analysis.as_ref(), &mut d);
    let pods = running_pods(o, stable, weight, d.st.canary_scale, 0);
    d.finish(pods, weight)
}
