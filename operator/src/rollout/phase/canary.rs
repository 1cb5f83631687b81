//! A canary walks its steps as far as they allow in one pass: `setWeight`
//! once its pods are ready, `pause` until its time is up or the user
//! promotes (one pause per promote), `setCanaryScale`, `setHeaderRoute`
//! and `setMirrorRoute` once the canary has pods to answer, and inline
//! `analysis` until an evaluation passes. Every wait has the progress
//! deadline.

use std::time::Duration;

use sluice_crds::rollout::{
    AnalysisSpec, CanaryStep, PauseStep, Request, RolloutPhase, RolloutReason, SetCanaryScale,
    Verdict, header_routes, mirror_routes,
};

use super::super::duration;
use super::super::model::{AnalysisRun, Decision, Draft, Observed, delay, secs, time, whole_secs};
use super::super::replicas;
use super::{
    abort, abort_past_deadline, last_verdict, progress_deadline, promote, requeue_for,
    running_pods, settled_inconclusive, waited,
};

/// Where the walk stands.
#[derive(Debug)]
struct Walk {
    index: i32,
    weight: i32,
    scale: Option<i32>,
    /// Canary pods a `setWeight` waits for (more than its weight gives now).
    want_pods: i32,
    /// The user's promote, until a pause (or analysis) takes it.
    promote: bool,
}

impl Walk {
    fn take_promote(&mut self) -> bool {
        std::mem::take(&mut self.promote)
    }
}

/// What a step says.
enum Next {
    /// Done: on to the next step.
    Advance,
    /// Not yet: the state is set.
    Wait,
    /// The canary is aborted.
    Abort,
}

/// The decision while canary `o.template_hash` runs against `stable`.
pub fn decide(o: &Observed, mut d: Draft, stable: &str) -> Decision {
    let total = o.total_steps();
    let index = d.st.current_step_index.unwrap_or(0).clamp(0, total);
    let mut w = Walk {
        index,
        weight: weight_at(o, index),
        scale: d.st.canary_scale,
        want_pods: 0,
        promote: o.request == Some(Request::Promote),
    };
    if o.spec.paused {
        d.state(
            RolloutPhase::Paused,
            RolloutReason::SpecPaused,
            "paused (spec.paused)".into(),
        );
        return finish(o, d, stable, &w);
    }
    while w.index < total {
        let Some(step) = usize::try_from(w.index)
            .ok()
            .and_then(|i| o.spec.strategy.canary.steps.get(i))
        else {
            break;
        };
        match take(o, &mut d, &mut w, step) {
            Next::Advance => {
                w.index += 1;
                d.st.step_start_time = Some(time(o.now));
                d.st.pause_start_time = None;
            }
            Next::Wait => return finish(o, d, stable, &w),
            Next::Abort => return abort::decide(o, d, stable),
        }
    }
    d.st.current_step_index = Some(total);
    d.st.canary_scale = w.scale;
    d.st.weights = Some(sluice_crds::rollout::Weights {
        stable: 100 - w.weight,
        canary: w.weight,
    });
    promote::decide(o, d, stable, w.promote)
}

/// The canary's weight at step `index`: that of the last `setWeight`
/// before it (derived, so that it comes back after the routes were gone).
fn weight_at(o: &Observed, index: i32) -> i32 {
    o.spec
        .strategy
        .canary
        .steps
        .iter()
        .take(usize::try_from(index).unwrap_or(0))
        .filter_map(|s| s.set_weight)
        .next_back()
        .unwrap_or(0)
}

fn take(o: &Observed, d: &mut Draft, w: &mut Walk, step: &CanaryStep) -> Next {
    if let Some(target) = step.set_weight {
        set_weight(o, d, w, target)
    } else if let Some(p) = &step.pause {
        pause(o, d, w, p)
    } else if let Some(s) = &step.set_canary_scale {
        w.scale = canary_scale(o, s);
        Next::Advance
    } else if let Some(a) = &step.analysis {
        analysis(o, d, w, a)
    } else if let Some(r) = &step.set_header_route {
        set_route(o, d, w, RouteKind::Header, &r.name, r.matches.is_empty())
    } else if let Some(r) = &step.set_mirror_route {
        set_route(o, d, w, RouteKind::Mirror, &r.name, r.matches.is_empty())
    } else {
        Next::Advance
    }
}

fn label(o: &Observed, w: &Walk) -> String {
    format!("step {}/{}", w.index + 1, o.total_steps())
}

/// Waits (up to the progress deadline) until `want` canary pods are
/// ready; `None` once they are.
fn wait_for_canary_pods(o: &Observed, d: &mut Draft, w: &mut Walk, want: i32) -> Option<Next> {
    let ready = o.ready(&o.template_hash);
    if ready >= want {
        return None;
    }
    // The canary is scaled to what this step needs while it waits.
    w.want_pods = want;
    if abort_past_deadline(o, d, |deadline| {
        format!("canary pods not ready within {deadline}s ({ready} of {want})")
    }) {
        return Some(Next::Abort);
    }
    d.state(
        RolloutPhase::Progressing,
        RolloutReason::WaitingForCanaryPods,
        format!(
            "{}: waiting for {want} canary pods ({ready} ready)",
            label(o, w)
        ),
    );
    d.requeue_within(Duration::from_secs(2));
    Some(Next::Wait)
}

fn set_weight(o: &Observed, d: &mut Draft, w: &mut Walk, target: i32) -> Next {
    let want = replicas::canary(o.replicas(), target, o.routed(), w.scale);
    if let Some(next) = wait_for_canary_pods(o, d, w, want) {
        return next;
    }
    if w.weight != target {
        d.normal(
            "StepAdvanced",
            format!("{}: canary weight {} -> {target}", label(o, w), w.weight),
        );
    }
    w.weight = target;
    Next::Advance
}

/// Which kind of named route a step sets.
#[derive(Clone, Copy)]
enum RouteKind {
    Header,
    Mirror,
}

/// A header route sends requests to the canary whatever its weight, and a
/// mirror route copies them there, so either waits for the canary's pods
/// at the current weight first; a step without `match` removes its route.
fn set_route(
    o: &Observed,
    d: &mut Draft,
    w: &mut Walk,
    kind: RouteKind,
    name: &str,
    removes: bool,
) -> Next {
    let (set, removed, what, does) = match kind {
        RouteKind::Header => (
            "HeaderRouteSet",
            "HeaderRouteRemoved",
            "header route",
            "go to",
        ),
        RouteKind::Mirror => (
            "MirrorRouteSet",
            "MirrorRouteRemoved",
            "mirror route",
            "are copied to",
        ),
    };
    if removes {
        d.normal(removed, format!("{}: {what} {name} removed", label(o, w)));
        return Next::Advance;
    }
    let want = replicas::canary(o.replicas(), w.weight, o.routed(), w.scale);
    if let Some(next) = wait_for_canary_pods(o, d, w, want) {
        return next;
    }
    d.normal(
        set,
        format!(
            "{}: requests matching {what} {name} {does} the canary",
            label(o, w)
        ),
    );
    Next::Advance
}

fn pause(o: &Observed, d: &mut Draft, w: &mut Walk, p: &PauseStep) -> Next {
    let start = secs(&d.st.pause_start_time).unwrap_or(o.now);
    d.st.pause_start_time = Some(time(start));
    let timed = p.duration.as_deref().and_then(duration);
    if let Some(length) = timed {
        let left = start
            .saturating_add(whole_secs(length).max(1))
            .saturating_sub(o.now);
        if left <= 0 {
            return Next::Advance;
        }
        if !w.take_promote() {
            d.state(
                RolloutPhase::Paused,
                RolloutReason::PauseStep,
                format!("{}: pause, {left}s left", label(o, w)),
            );
            d.requeue_within(delay(left));
            return Next::Wait;
        }
    } else if !w.take_promote() {
        d.state(
            RolloutPhase::Paused,
            RolloutReason::PausedUntilPromoted,
            format!(
                "{}: paused until promoted (kubectl sluice promote)",
                label(o, w)
            ),
        );
        return Next::Wait;
    }
    d.normal(
        "Promoted",
        format!("{}: pause ended by the user", label(o, w)),
    );
    Next::Advance
}

fn canary_scale(o: &Observed, s: &SetCanaryScale) -> Option<i32> {
    if s.match_traffic_weight == Some(true) {
        None
    } else if let Some(r) = s.replicas {
        Some(r.max(0))
    } else {
        s.weight.map(|w| replicas::share(o.replicas(), w))
    }
}

/// An inline analysis passes on a successful evaluation made at this step.
/// While evaluations are inconclusive it waits; past the deadline it
/// pauses (reason `InconclusiveAnalysis`) until the user promotes or an
/// evaluation passes. Failures count against its failure limit (see
/// [`super::record_analysis`]).
fn analysis(o: &Observed, d: &mut Draft, w: &mut Walk, a: &AnalysisSpec) -> Next {
    let current = o.status.current_step_index == Some(w.index);
    let verdict = o.evaluation.as_ref().filter(|_| current).map(|e| e.verdict);
    if verdict == Some(Verdict::Successful) {
        d.normal(
            "AnalysisPassed",
            format!("{}: the canary's analysis passed", label(o, w)),
        );
        return Next::Advance;
    }
    if w.take_promote() {
        d.normal(
            "Promoted",
            format!("{}: analysis skipped by the user", label(o, w)),
        );
        return Next::Advance;
    }
    let last = last_verdict(d);
    let deadline = progress_deadline(o);
    // A template metric past its inconclusiveLimit will say no more: the
    // user decides now, as Argo Rollouts pauses an inconclusive run.
    let stuck = settled_inconclusive(d, AnalysisRun::Step(w.index.saturating_add(1)));
    if stuck.is_some() || waited(o, d) > deadline {
        let why = stuck.map_or_else(
            || format!("no conclusive analysis within {deadline}s ({last})"),
            |m| format!("metric {m} is inconclusive"),
        );
        d.state(
            RolloutPhase::Paused,
            RolloutReason::InconclusiveAnalysis,
            format!("{}: {why}; promote to go on", label(o, w)),
        );
    } else {
        d.state(
            RolloutPhase::Progressing,
            RolloutReason::WaitingForAnalysis,
            format!(
                "{}: waiting for a successful analysis ({last})",
                label(o, w)
            ),
        );
    }
    if let Some(i) = duration(&a.interval) {
        d.requeue_within(i);
    }
    Next::Wait
}

/// Finishes a pass that waits at `w.index`.
fn finish(o: &Observed, mut d: Draft, stable: &str, w: &Walk) -> Decision {
    let total = o.total_steps();
    d.st.current_step_index = Some(w.index);
    d.st.step = Some(format!("{}/{total}", w.index.min(total)));
    d.st.canary_scale = w.scale;
    requeue_for(o.spec.strategy.canary.analysis.as_ref(), &mut d);
    let steps = &o.spec.strategy.canary.steps;
    let done = usize::try_from(w.index).unwrap_or(0);
    d.header_routes = header_routes(steps, done).into_iter().cloned().collect();
    d.mirror_routes = mirror_routes(steps, done).into_iter().cloned().collect();
    let pods = running_pods(o, stable, w.weight, w.scale, w.want_pods);
    d.finish(pods, w.weight)
}
