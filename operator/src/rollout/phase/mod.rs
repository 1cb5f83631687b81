//! The rollout state machine: a pure decision over what was observed (the
//! Rollout, its ReplicaSets, the user's request, the latest analysis) that
//! says what the world should look like. Side effects happen in
//! [`super::apply`]; everything the decision needs to resume after a
//! restart lives in `status`.
//!
//! [`decide`] only dispatches, the way Argo Rollouts' `rollout/canary.go`
//! reads: [`stable`] when the template is the stable revision, [`canary`]
//! while a canary walks its steps, [`promote`] once they are done,
//! [`abort`] after a rollback or while the spec cannot run; a blue-green
//! Rollout's new revision goes through [`blue_green`] instead.

pub mod abort;
pub mod blue_green;
pub mod canary;
pub mod promote;
pub mod stable;

use sluice_crds::analysis::MetricPhase;
use sluice_crds::rollout::{
    AnalysisSpec, Request, RolloutReason, RolloutSpec, RolloutStatus, Verdict,
};

use super::model::{AnalysisRun, Decision, Draft, Observed, time};

/// Seconds the canary's pods stay after an abort, unless the spec says.
pub const DEFAULT_ABORT_DELAY: i32 = 30;
/// Seconds the old stable's pods stay after a promotion, unless the spec says.
pub const DEFAULT_SCALE_DOWN_DELAY: i32 = 30;
/// Seconds a step may wait, unless the spec says.
pub const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

/// Decides.
pub fn decide(o: &Observed) -> Decision {
    let mut decision = decide_for_strategy(o);
    if o.spec.strategy.blue_green.is_some() {
        // Steps are a canary's: a blue-green status names the Services'
        // revisions instead.
        let st = &mut decision.status;
        st.blue_green = blue_green::selectors(st);
        st.step = None;
        st.current_step_index = None;
    }
    decision
}

fn decide_for_strategy(o: &Observed) -> Decision {
    let mut d = Draft::new(o);
    if let Some(invalid) = &o.invalid {
        return abort::invalid(o, d, invalid);
    }
    let stable = stable_revision(o, &mut d);
    if o.template_hash == stable {
        return stable::decide(o, d, &stable);
    }
    start_canary(o, &mut d, &stable);
    let full = handle_request(o, &mut d);
    record_analysis(o, &mut d, &stable);
    if let Some(bg) = &o.spec.strategy.blue_green {
        return blue_green::decide(o, d, bg, &stable, full);
    }
    if d.st.aborted {
        return abort::decide(o, d, &stable);
    }
    if full || d.st.current_step_index.unwrap_or(0) >= o.total_steps() {
        let release = full || o.request == Some(Request::Promote);
        return promote::decide(o, d, &stable, release);
    }
    canary::decide(o, d, &stable)
}

/// The stable revision; the first revision becomes it at once.
fn stable_revision(o: &Observed, d: &mut Draft) -> String {
    match d.st.stable_revision.clone() {
        Some(s) => s,
        None => {
            let hash = o.template_hash.clone();
            d.normal("NewStable", format!("first revision {hash} is stable"));
            d.st.stable_revision = Some(hash.clone());
            hash
        }
    }
}

/// A template that is neither stable nor the running canary starts a new
/// canary (replacing the running one) from its first step.
fn start_canary(o: &Observed, d: &mut Draft, stable: &str) {
    let hash = &o.template_hash;
    if d.st.canary_revision.as_deref() == Some(hash.as_str()) {
        return;
    }
    let replaced = d.st.canary_revision.replace(hash.clone());
    let (reason, role) = if o.spec.strategy.blue_green.is_some() {
        ("PreviewStarted", "preview")
    } else {
        ("CanaryStarted", "canary")
    };
    d.normal(
        reason,
        match &replaced {
            Some(old) => format!("revision {hash} replaces {role} {old}"),
            None => format!("revision {hash} starts as {role} of {stable}"),
        },
    );
    restart_steps(o, d);
    d.st.canary_scale = None;
}

/// Back to the first step, with nothing of the last attempt left.
fn restart_steps(o: &Observed, d: &mut Draft) {
    let st = &mut d.st;
    st.current_step_index = Some(0);
    st.pause_start_time = None;
    st.aborted = false;
    st.abort_time = None;
    st.analysis = None;
    st.reason = None;
    st.message = None;
    st.weights = None;
    st.canary_start_time = Some(time(o.now));
    st.step_start_time = Some(time(o.now));
}

/// Acts on an abort, retry or full promotion; says whether to promote
/// fully now. `promote` (one step) is the steps' business.
fn handle_request(o: &Observed, d: &mut Draft) -> bool {
    match o.request {
        Some(Request::Abort) if !d.st.aborted => {
            abort::start(
                d,
                o.now,
                RolloutReason::Aborted,
                "aborted by the user".into(),
            );
            d.warning(
                "Aborted",
                "aborted by the user; all traffic back to stable".into(),
            );
            false
        }
        Some(Request::Retry) if d.st.aborted => {
            restart_steps(o, d);
            d.normal("Retried", "canary restarted from its first step".into());
            false
        }
        Some(Request::PromoteFull) if !d.st.aborted => {
            d.st.current_step_index = Some(o.total_steps());
            d.st.reason = Some(RolloutReason::Promoting);
            d.st.step_start_time = Some(time(o.now));
            d.normal(
                "PromotedFull",
                "promoted past every remaining step and the analysis".into(),
            );
            true
        }
        _ => false,
    }
}

/// Records this pass's evaluation: counts failures in a row against the
/// failure limit of the analysis that ran (the current inline step's, else
/// the background one), and successes for the promotion gate.
fn record_analysis(o: &Observed, d: &mut Draft, stable: &str) {
    let Some(e) = &o.evaluation else { return };
    if d.st.aborted {
        return;
    }
    // A template metric has applied its own failureLimit already.
    let limit = analysis_in_force(o.spec, &d.st)
        .filter(|(_, a)| a.templates.is_empty())
        .map_or(1, |(_, a)| a.failure_limit.max(1));
    let previous = d.st.analysis.clone().unwrap_or_default();
    let mut figures = e.figures.clone();
    figures.verdict = Some(e.verdict);
    figures.consecutive_failures = if e.verdict == Verdict::Failed {
        previous.consecutive_failures.saturating_add(1)
    } else {
        0
    };
    figures.successful_evaluations = previous
        .successful_evaluations
        .saturating_add(i32::from(e.verdict == Verdict::Successful));
    let failed = figures.consecutive_failures >= limit;
    d.st.analysis = Some(figures);
    if failed {
        abort::start(d, o.now, RolloutReason::AnalysisFailed, e.reason.clone());
        d.warning(
            "AnalysisFailed",
            format!("{}; rolling back to {stable}", e.reason),
        );
    }
}

/// The analysis that judges the new revision now: a blue-green Rollout's
/// pre-promotion analysis before the switch and post-promotion analysis
/// after it; a canary's current inline step, else its background one.
pub fn analysis_in_force<'a>(
    spec: &'a RolloutSpec,
    st: &RolloutStatus,
) -> Option<(AnalysisRun, &'a AnalysisSpec)> {
    if let Some(bg) = &spec.strategy.blue_green {
        return if blue_green::switched(st) {
            bg.post_promotion_analysis
                .as_ref()
                .map(|a| (AnalysisRun::PostPromotion, a))
        } else {
            bg.pre_promotion_analysis
                .as_ref()
                .map(|a| (AnalysisRun::PrePromotion, a))
        };
    }
    let canary = &spec.strategy.canary;
    let step = st.current_step_index.and_then(|i| {
        let a = canary
            .steps
            .get(usize::try_from(i).ok()?)?
            .analysis
            .as_ref()?;
        Some((AnalysisRun::Step(i.saturating_add(1)), a))
    });
    step.or(canary
        .analysis
        .as_ref()
        .map(|a| (AnalysisRun::Background, a)))
}

/// Since when the new revision's telemetry counts: since the switch for a
/// blue-green post-promotion analysis (the preview's traffic was another
/// load), since the canary (or preview) started otherwise.
pub fn analysis_since(spec: &RolloutSpec, st: &RolloutStatus) -> Option<i64> {
    let switched = spec.strategy.blue_green.is_some() && blue_green::switched(st);
    super::model::secs(if switched {
        &st.step_start_time
    } else {
        &st.canary_start_time
    })
}

/// Reconciles again on `analysis`'s interval, if there is one (it is
/// evaluated while the new revision is live).
fn requeue_for(analysis: Option<&AnalysisSpec>, d: &mut Draft) {
    if let Some(i) = analysis.and_then(|a| super::duration(&a.interval)) {
        d.requeue_within(i);
    }
}

/// Aborts with `ProgressDeadlineExceeded` when the current wait has passed
/// the progress deadline, saying why with `why(deadline)`; whether it did.
fn abort_past_deadline(o: &Observed, d: &mut Draft, why: impl FnOnce(i64) -> String) -> bool {
    let deadline = progress_deadline(o);
    if waited(o, d) <= deadline {
        return false;
    }
    let why = why(deadline);
    d.warning("ProgressDeadlineExceeded", format!("{why}; rolling back"));
    abort::start(d, o.now, RolloutReason::ProgressDeadlineExceeded, why);
    true
}

/// Pods while canary `o.template_hash` runs at `weight` beside `stable`:
/// each its share, the canary at least `want` (what a step waits for).
fn running_pods(
    o: &Observed,
    stable: &str,
    weight: i32,
    scale: Option<i32>,
    want: i32,
) -> Vec<(String, i32)> {
    let (r, routed) = (o.replicas(), o.routed());
    vec![
        (
            stable.to_owned(),
            super::replicas::stable(r, weight, routed),
        ),
        (
            o.template_hash.clone(),
            super::replicas::canary(r, weight, routed, scale).max(want),
        ),
    ]
}

/// The first metric of analysis `run` (not a dry run) that is past its
/// `inconclusiveLimit`: nothing more will be measured, so waiting for the
/// deadline would only delay the user's decision.
fn settled_inconclusive(d: &Draft, run: AnalysisRun) -> Option<String> {
    let a = d.st.analysis.as_ref()?;
    if a.run.as_deref() != Some(run.to_string().as_str()) {
        return None;
    }
    a.metrics
        .iter()
        .find(|m| !m.dry_run && m.phase == MetricPhase::Inconclusive)
        .map(|m| m.name.clone())
}

/// The last analysis verdict, for messages.
fn last_verdict(d: &Draft) -> String {
    d.st.analysis
        .as_ref()
        .and_then(|a| a.verdict)
        .map_or("no evaluation yet".to_owned(), |v| format!("last {v}"))
}

/// The deadline of every wait, in seconds.
fn progress_deadline(o: &Observed) -> i64 {
    i64::from(
        o.spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE),
    )
}

/// Seconds the current step has waited.
fn waited(o: &Observed, d: &Draft) -> i64 {
    o.now
        .saturating_sub(super::model::secs(&d.st.step_start_time).unwrap_or(o.now))
}

#[cfg(test)]
mod scenarios;
