//! Blue-green: the new revision runs beside the active one (reachable
//! through `previewService`), is judged by its pre-promotion analysis,
//! waits for the user or its auto-promotion, is scaled to full size, and
//! then `activeService` is switched to it in one selector change. It
//! becomes the stable revision only once its post-promotion analysis
//! passes; a failure switches `activeService` back to the old revision,
//! whose pods were kept for that.
//!
//! The switch is the canary weight going from 0 to 100: the status's
//! `weights` say which revision `activeService` selects, and
//! [`selectors`] turns them into the Services' pins.

use std::time::Duration;

use sluice_crds::rollout::{
    BlueGreenStatus, BlueGreenStrategy, Request, RolloutPhase, RolloutReason, RolloutStatus,
    Weights,
};

use super::super::model::{Decision, Draft, Observed, delay, secs, time};
use super::{DEFAULT_ABORT_DELAY, abort_past_deadline, last_verdict, promote, requeue_for};

/// Whether `activeService` selects the new revision (the switch happened
/// and was not undone).
pub fn switched(st: &RolloutStatus) -> bool {
    st.canary_revision.is_some() && st.weights.as_ref().is_some_and(|w| w.canary == 100)
}

/// Which revision each Service selects, from the status the decision
/// wrote; `None` before there is a stable revision.
pub fn selectors(st: &RolloutStatus) -> Option<BlueGreenStatus> {
    let stable = st.stable_revision.clone()?;
    let new = st.canary_revision.clone();
    Some(BlueGreenStatus {
        active_revision: match &new {
            Some(n) if switched(st) => n.clone(),
            _ => stable.clone(),
        },
        preview_revision: new.unwrap_or(stable),
    })
}

/// The decision while new revision `o.template_hash` is previewed beside,
/// or has replaced, `stable`; `full` is a full promotion (which skips both
/// analyses).
pub fn decide(
    o: &Observed,
    d: Draft,
    bg: &BlueGreenStrategy,
    stable: &str,
    full: bool,
) -> Decision {
    // A promote lifts the one gate closed when it came.
    let release = full || o.request == Some(Request::Promote);
    if d.st.aborted {
        return aborted(o, d, bg, stable);
    }
    if switched(&d.st) {
        return post_promotion(o, d, bg, stable, release);
    }
    preview(o, d, bg, stable, release, full)
}

/// Pods of the new revision while it is previewed.
fn preview_pods(o: &Observed, bg: &BlueGreenStrategy) -> i32 {
    bg.preview_replica_count.unwrap_or(o.replicas()).max(0)
}

/// Before the switch: preview pods, pre-promotion analysis, the promotion
/// gate, then full size, then the switch. The promote that opened the gate
/// does not also skip the post-promotion analysis; a full promotion does.
fn preview(
    o: &Observed,
    mut d: Draft,
    bg: &BlueGreenStrategy,
    stable: &str,
    release: bool,
    full: bool,
) -> Decision {
    let hash = o.template_hash.clone();
    let r = o.replicas();
    let beside = |n: i32| vec![(stable.to_owned(), r), (hash.clone(), n)];
    if d.st.reason != Some(RolloutReason::Promoting) {
        if let Some(wait) = preview_gate(o, &mut d, bg, release) {
            return wait_or_abort(o, d, bg, stable, wait, beside(preview_pods(o, bg)));
        }
        d.normal(
            "Promoting",
            format!("preview {hash} accepted: scaling it to {r} pods before the switch"),
        );
        d.st.reason = Some(RolloutReason::Promoting);
        d.st.step_start_time = Some(time(o.now));
        d.st.pause_start_time = None;
    }
    let ready = o.ready(&hash);
    if ready < r {
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::Promoting,
            format!(
                "promoting {hash}: {ready} of {r} pods ready before activeService switches to it"
            ),
        );
        return wait_or_abort(o, d, bg, stable, Wait::Pods, beside(r));
    }
    d.normal(
        "Switched",
        format!(
            "activeService {} selects {hash} (was {stable})",
            bg.active_service
        ),
    );
    let st = &mut d.st;
    st.step_start_time = Some(time(o.now));
    st.analysis = None;
    st.weights = Some(Weights {
        stable: 0,
        canary: 100,
    });
    post_promotion(o, d, bg, stable, full)
}

/// What the preview waits for.
enum Wait {
    /// Pods to be ready (under the progress deadline).
    Pods,
    /// An analysis, the user or a timer (no deadline).
    Gate,
}

/// Which gate before the switch is still closed, with the state set; none
/// once the preview may be promoted.
fn preview_gate(
    o: &Observed,
    d: &mut Draft,
    bg: &BlueGreenStrategy,
    release: bool,
) -> Option<Wait> {
    let hash = &o.template_hash;
    let (want, ready) = (preview_pods(o, bg), o.ready(hash));
    if ready < want {
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::WaitingForPreviewPods,
            format!("waiting for preview {hash}: {ready} of {want} pods ready"),
        );
        return Some(Wait::Pods);
    }
    let preview = bg
        .preview_service
        .as_deref()
        .unwrap_or("(no previewService)");
    if o.spec.paused {
        d.state(
            RolloutPhase::Paused,
            RolloutReason::SpecPaused,
            "paused (spec.paused)".into(),
        );
        return Some(Wait::Gate);
    }
    if bg.pre_promotion_analysis.is_some() && !d.analysis_passed() && !release {
        let last = last_verdict(d);
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::WaitingForAnalysis,
            format!("preview {hash} is ready on {preview}; pre-promotion analysis ({last})"),
        );
        return Some(Wait::Gate);
    }
    if release {
        return None;
    }
    let since = secs(&d.st.pause_start_time).unwrap_or(o.now);
    d.st.pause_start_time = Some(time(since));
    if !bg.auto_promotes() {
        if d.st.reason != Some(RolloutReason::PausedUntilPromoted) {
            d.normal(
                "PreviewReady",
                format!("preview {hash} is ready on {preview}; waiting for promotion"),
            );
        }
        d.state(
            RolloutPhase::Paused,
            RolloutReason::PausedUntilPromoted,
            format!(
                "preview {hash} is ready on {preview}: `kubectl sluice promote` switches {} to it",
                bg.active_service
            ),
        );
        return Some(Wait::Gate);
    }
    let at = since.saturating_add(i64::from(bg.auto_promotion_seconds.unwrap_or(0)));
    if o.now < at {
        d.state(
            RolloutPhase::Paused,
            RolloutReason::PauseStep,
            format!(
                "preview {hash} is ready on {preview}; {} switches to it in {}s (autoPromotionSeconds)",
                bg.active_service,
                at - o.now
            ),
        );
        d.requeue_within(delay(at - o.now));
        return Some(Wait::Gate);
    }
    None
}

/// Holds `pods` while waiting; a wait for pods past the progress deadline
/// aborts instead.
fn wait_or_abort(
    o: &Observed,
    mut d: Draft,
    bg: &BlueGreenStrategy,
    stable: &str,
    wait: Wait,
    pods: Vec<(String, i32)>,
) -> Decision {
    match wait {
        Wait::Pods => {
            if abort_past_deadline(o, &mut d, |deadline| {
                format!("{} pods not ready within {deadline}s", o.template_hash)
            }) {
                return aborted(o, d, bg, stable);
            }
            d.requeue_within(Duration::from_secs(2));
        }
        Wait::Gate => requeue_for(bg.pre_promotion_analysis.as_ref(), &mut d),
    }
    d.finish(pods, 0)
}

/// After the switch: the new revision serves all traffic, the old one keeps
/// its pods, and the post-promotion analysis decides. With none (or once it
/// passes, or the user promotes) the new revision becomes stable.
fn post_promotion(
    o: &Observed,
    mut d: Draft,
    bg: &BlueGreenStrategy,
    stable: &str,
    release: bool,
) -> Decision {
    let hash = o.template_hash.clone();
    let r = o.replicas();
    let passed = d.analysis_passed();
    if bg.post_promotion_analysis.is_some() && !passed && !release {
        let last = last_verdict(&d);
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::PostPromotionAnalysis,
            format!(
                "{} selects {hash}; post-promotion analysis ({last}) decides whether it stays or {stable} comes back",
                bg.active_service
            ),
        );
        requeue_for(bg.post_promotion_analysis.as_ref(), &mut d);
        return d.finish(vec![(hash, r), (stable.to_owned(), r)], 100);
    }
    if let Some(a) = d.st.analysis.as_ref().filter(|_| passed) {
        let note = format!(
            "revision {hash} passed its post-promotion analysis: {} requests, error rate {}",
            a.canary_requests,
            a.canary_error_rate.as_deref().unwrap_or("-")
        );
        d.normal("PostPromotionAnalysisPassed", note);
    }
    promote::make_stable(o, d, stable, bg.scale_down_delay_seconds)
}

/// After an abort: `activeService` on the old revision (switched back if
/// it had moved); the new revision's pods stay for
/// `abortScaleDownDelaySeconds`, reachable on `previewService`.
fn aborted(o: &Observed, mut d: Draft, bg: &BlueGreenStrategy, stable: &str) -> Decision {
    if switched(&d.st) {
        d.warning(
            "SwitchedBack",
            format!(
                "activeService {} selects {stable} again (was {})",
                bg.active_service, o.template_hash
            ),
        );
    }
    d.st.phase = Some(RolloutPhase::Degraded);
    let keep = i64::from(
        bg.abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_DELAY),
    );
    let since = o
        .now
        .saturating_sub(secs(&d.st.abort_time).unwrap_or(o.now));
    let mut pods = vec![(stable.to_owned(), o.replicas())];
    if since < keep {
        pods.push((o.template_hash.clone(), preview_pods(o, bg)));
    }
    d.requeue_within(delay(keep.saturating_sub(since).clamp(1, 30)));
    d.finish(pods, 0)
}
