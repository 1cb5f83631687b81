//! The rollout state machine: a pure decision over what was observed (the
//! Rollout, its ReplicaSets, the user's request, the latest analysis) that
//! says what the world should look like. Side effects happen in
//! [`super::apply`]; everything the decision needs to resume after a
//! restart lives in `status`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::rollout::{
    AnalysisStatus, CanaryStep, RolloutPhase, RolloutSpec, RolloutStatus, Weights,
};

use super::duration;

/// A user request, from the `sluice.dev/request` annotation that
/// `kubectl sluice` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Finish the current pause step.
    Promote,
    /// Skip every remaining step.
    PromoteFull,
    /// Send all traffic back to stable and stop.
    Abort,
    /// Start an aborted canary again from its first step.
    Retry,
}

impl Request {
    /// Parses the annotation value.
    pub fn parse(s: &str) -> Option<Request> {
        match s {
            "promote" => Some(Request::Promote),
            "promote-full" => Some(Request::PromoteFull),
            "abort" => Some(Request::Abort),
            "retry" => Some(Request::Retry),
            _ => None,
        }
    }
}

/// The verdict of one analysis evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within limits.
    Successful,
    /// Over a limit.
    Failed,
    /// Too few requests to judge.
    Inconclusive,
}

impl Verdict {
    /// As written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Successful => "Successful",
            Verdict::Failed => "Failed",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// An analysis evaluated in this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// What it concluded.
    pub verdict: Verdict,
    /// The figures, as they go into status.
    pub figures: AnalysisStatus,
    /// Why, in a sentence (for events and the message).
    pub reason: String,
}

/// What the decision sees.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The spec.
    pub spec: &'a RolloutSpec,
    /// The status as last written.
    pub status: &'a RolloutStatus,
    /// `metadata.generation`.
    pub generation: i64,
    /// Hash of the current pod template.
    pub template_hash: String,
    /// Ready pods per revision hash.
    pub ready: &'a BTreeMap<String, i32>,
    /// A pending user request.
    pub request: Option<Request>,
    /// An analysis evaluated now, if one was due.
    pub evaluation: Option<Evaluation>,
    /// Why the spec cannot run, when it cannot (a missing Service...).
    pub invalid: Option<String>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// A decision worth an Event on the Rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// What the world should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new status (without conditions' timestamps, set when applied).
    pub status: RolloutStatus,
    /// Desired pods per revision hash; revisions not listed go to 0.
    pub replicas: Vec<(String, i32)>,
    /// Traffic weight of the canary, 0-100.
    pub canary_weight: i32,
    /// Events to record.
    pub events: Vec<Event>,
    /// Reconcile again after this long at the latest.
    pub requeue: Duration,
}

const DEFAULT_ABORT_DELAY: i32 = 30;
const DEFAULT_SCALE_DOWN_DELAY: i32 = 30;
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

/// Decides.
pub fn decide(o: &Observed) -> Decision {
    let spec = o.spec;
    let canary = &spec.strategy.canary;
    let mut st = o.status.clone();
    st.observed_generation = Some(o.generation);
    let mut events = Vec::new();
    let mut requeue = Duration::from_secs(30);
    let total = canary.steps.len() as i32;

    if let Some(why) = &o.invalid {
        st.phase = Some(RolloutPhase::Degraded);
        st.message = Some(format!("InvalidSpec: {why}"));
        let keep: Vec<(String, i32)> = st
            .stable_revision
            .iter()
            .map(|h| (h.clone(), spec.replicas))
            .collect();
        let weight = st.weights.as_ref().map_or(0, |w| w.canary);
        return Decision {
            status: st,
            replicas: keep,
            canary_weight: weight,
            events,
            requeue,
        };
    }

    let hash = o.template_hash.clone();
    // First revision: straight to stable.
    let stable = match st.stable_revision.clone() {
        None => {
            st.stable_revision = Some(hash.clone());
            events.push(normal(
                "NewStable",
                format!("first revision {hash} is stable"),
            ));
            hash.clone()
        }
        Some(s) => s,
    };
    let ready = |h: &str| o.ready.get(h).copied().unwrap_or(0);

    if hash == stable {
        // No canary, or the template went back to stable: an immediate
        // rollback of any canary.
        if let Some(old) = st.canary_revision.take() {
            events.push(warning(
                "RolledBack",
                format!("template reverted to the stable revision {stable}; canary {old} removed"),
            ));
        }
        st.aborted = false;
        st.current_step_index = Some(total);
        st.pause_start_time = None;
        st.analysis = None;
        st.weights = Some(all_stable());
        let healthy = ready(&stable) >= spec.replicas;
        st.phase = Some(if spec.paused {
            RolloutPhase::Paused
        } else if healthy {
            RolloutPhase::Healthy
        } else {
            RolloutPhase::Progressing
        });
        st.message = Some(if healthy {
            format!("revision {stable} serves all traffic")
        } else {
            requeue = Duration::from_secs(2);
            format!(
                "waiting for revision {stable}: {} of {} pods ready",
                ready(&stable),
                spec.replicas
            )
        });
        st.step = Some(format!("{total}/{total}"));
        // The stable before the last promotion keeps its pods until its
        // scale-down time.
        let mut replicas = vec![(stable, spec.replicas)];
        if let (Some(old), Some(at)) = (&st.previous_stable_revision, secs(&st.scale_down_time)) {
            if o.now < at {
                replicas.push((old.clone(), spec.replicas));
                requeue = requeue.min(Duration::from_secs((at - o.now) as u64));
            } else {
                events.push(normal(
                    "ScaledDown",
                    format!("old stable revision {old} scaled to 0"),
                ));
                st.previous_stable_revision = None;
                st.scale_down_time = None;
            }
        }
        return Decision {
            status: st,
            replicas,
            canary_weight: 0,
            events,
            requeue,
        };
    }

    // A canary: new, replaced, or continuing.
    if st.canary_revision.as_deref() != Some(hash.as_str()) {
        let replaced = st.canary_revision.replace(hash.clone());
        events.push(normal(
            "CanaryStarted",
            match &replaced {
                Some(old) => format!("revision {hash} replaces canary {old}"),
                None => format!("revision {hash} starts as canary of {stable}"),
            },
        ));
        st.current_step_index = Some(0);
        st.pause_start_time = None;
        st.aborted = false;
        st.analysis = None;
        st.weights = Some(all_stable());
        st.message = None;
        st.canary_start_time = Some(time(o.now));
        st.step_start_time = Some(time(o.now));
    }
    let mut index = st.current_step_index.unwrap_or(0).clamp(0, total);
    let mut weight = st.weights.as_ref().map_or(0, |w| w.canary);
    let mut scale_override = st.canary_scale;

    match o.request {
        Some(Request::Abort) if !st.aborted => {
            abort(&mut st, o.now);
            events.push(warning(
                "Aborted",
                "aborted by the user; all traffic back to stable".into(),
            ));
        }
        Some(Request::Retry) if st.aborted => {
            st.aborted = false;
            st.abort_time = None;
            st.analysis = None;
            index = 0;
            weight = 0;
            st.pause_start_time = None;
            st.canary_start_time = Some(time(o.now));
            st.step_start_time = Some(time(o.now));
            events.push(normal(
                "Retried",
                "canary restarted from its first step".into(),
            ));
        }
        Some(Request::PromoteFull) if !st.aborted => {
            index = total;
            events.push(normal(
                "PromotedFull",
                "promoted past every remaining step".into(),
            ));
        }
        _ => {}
    }

    // Background analysis.
    if let Some(e) = &o.evaluation
        && !st.aborted
    {
        let limit = canary
            .analysis
            .as_ref()
            .map_or(1, |a| a.failure_limit.max(1));
        let previous = st.analysis.as_ref().map_or(0, |a| a.consecutive_failures);
        let mut figures = e.figures.clone();
        figures.consecutive_failures = if e.verdict == Verdict::Failed {
            previous + 1
        } else {
            0
        };
        if figures.consecutive_failures >= limit {
            abort(&mut st, o.now);
            events.push(warning(
                "AnalysisFailed",
                format!("{}; rolling back to {stable}", e.reason),
            ));
        }
        st.analysis = Some(figures);
    }

    let abort_delay = i64::from(
        canary
            .abort_scale_down_delay_seconds
            .unwrap_or(DEFAULT_ABORT_DELAY),
    );
    // Walk the steps as far as they allow in this pass.
    let mut phase = RolloutPhase::Progressing;
    let mut message = String::new();
    // Why a progress deadline stopped the canary in this pass.
    let mut deadline_why = None;
    let deadline = i64::from(
        spec.progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE),
    );
    while !st.aborted && index < total && !spec.paused {
        let step: &CanaryStep = &canary.steps[index as usize];
        if let Some(w) = step.set_weight {
            let want = canary_pods(spec, w, scale_override);
            if ready(&hash) < want {
                message = format!(
                    "step {}/{total}: waiting for {want} canary pods ({} ready)",
                    index + 1,
                    ready(&hash)
                );
                requeue = Duration::from_secs(2);
                let waited = o.now - secs(&st.step_start_time).unwrap_or(o.now);
                if waited > deadline {
                    abort(&mut st, o.now);
                    events.push(warning(
                        "ProgressDeadlineExceeded",
                        format!("canary pods not ready within {deadline}s; rolling back"),
                    ));
                    deadline_why = Some(format!("canary pods not ready within {deadline}s"));
                }
                break;
            }
            if weight != w {
                events.push(normal(
                    "StepAdvanced",
                    format!("step {}/{total}: canary weight {weight} -> {w}", index + 1),
                ));
            }
            weight = w;
        } else if let Some(p) = &step.pause {
            let start = secs(&st.pause_start_time).unwrap_or(o.now);
            st.pause_start_time = Some(time(start));
            match p.duration.as_deref().and_then(duration) {
                Some(d) => {
                    let left = start + d.as_secs().max(1) as i64 - o.now;
                    if left > 0 && o.request != Some(Request::Promote) {
                        phase = RolloutPhase::Paused;
                        message = format!("step {}/{total}: pause, {left}s left", index + 1);
                        requeue = Duration::from_secs(left as u64).min(requeue);
                        break;
                    }
                }
                None => {
                    if o.request != Some(Request::Promote) {
                        phase = RolloutPhase::Paused;
                        message = format!(
                            "step {}/{total}: paused until promoted (kubectl sluice promote)",
                            index + 1
                        );
                        break;
                    }
                    events.push(normal(
                        "Promoted",
                        format!("step {}/{total}: promoted by the user", index + 1),
                    ));
                }
            }
            st.pause_start_time = None;
        } else if let Some(s) = &step.set_canary_scale {
            scale_override = if s.match_traffic_weight == Some(true) {
                None
            } else if let Some(r) = s.replicas {
                Some(r.max(0))
            } else {
                s.weight.map(|w| percent_of(spec.replicas, w))
            };
        } else if step.analysis.is_some() {
            // An inline analysis passes on the first successful evaluation.
            match o.evaluation.as_ref().map(|e| e.verdict) {
                Some(Verdict::Successful) => {}
                _ => {
                    message = format!(
                        "step {}/{total}: waiting for a successful analysis",
                        index + 1
                    );
                    requeue = requeue.min(Duration::from_secs(1));
                    break;
                }
            }
        }
        index += 1;
        st.step_start_time = Some(time(o.now));
    }
    if st.aborted {
        let why = deadline_why.unwrap_or_else(|| {
            st.analysis
                .as_ref()
                .filter(|a| a.verdict.as_deref() == Some("Failed"))
                .map_or(
                    st.message
                        .clone()
                        .and_then(|m| m.strip_prefix("rolled back: ").map(str::to_owned))
                        .unwrap_or_else(|| "aborted".to_owned()),
                    |a| {
                        format!(
                            "canary error rate {} (stable {}) over {} requests",
                            a.canary_error_rate.as_deref().unwrap_or("?"),
                            a.stable_error_rate.as_deref().unwrap_or("?"),
                            a.canary_requests
                        )
                    },
                )
        });
        if weight != 0 {
            events.push(warning(
                "RolledBack",
                format!("canary weight {weight} -> 0; stable {stable} serves all traffic"),
            ));
        }
        st.weights = Some(all_stable());
        st.phase = Some(RolloutPhase::Degraded);
        st.message = Some(format!("rolled back: {why}"));
        st.current_step_index = Some(index);
        st.step = Some(format!("{index}/{total}"));
        // The canary's pods stay for the abort delay (to inspect them), then go.
        let since = o.now - secs(&st.abort_time).unwrap_or(o.now);
        let mut replicas = vec![(stable, spec.replicas)];
        if since < abort_delay {
            replicas.push((hash, canary_pods(spec, weight.max(1), scale_override)));
        }
        return Decision {
            status: st,
            replicas,
            canary_weight: 0,
            events,
            requeue: Duration::from_secs((abort_delay - since).clamp(1, 30) as u64),
        };
    }
    if spec.paused {
        phase = RolloutPhase::Paused;
        message = "paused (spec.paused)".into();
    }
    st.canary_scale = scale_override;

    if index >= total && !spec.paused {
        // Promotion: the canary becomes stable.
        events.push(normal(
            "Promoted",
            format!("revision {hash} is now stable (was {stable})"),
        ));
        let delay = canary
            .scale_down_delay_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
        st.previous_stable_revision = Some(stable.clone());
        st.scale_down_time = Some(time(o.now + i64::from(delay)));
        st.stable_revision = Some(hash.clone());
        st.canary_revision = None;
        st.current_step_index = Some(total);
        st.step = Some(format!("{total}/{total}"));
        st.pause_start_time = None;
        st.canary_scale = None;
        st.weights = Some(all_stable());
        let healthy = ready(&hash) >= spec.replicas;
        st.phase = Some(if healthy {
            RolloutPhase::Healthy
        } else {
            RolloutPhase::Progressing
        });
        st.message = Some(format!("revision {hash} promoted"));
        return Decision {
            status: st,
            replicas: vec![(hash, spec.replicas), (stable, spec.replicas)],
            canary_weight: 0,
            events,
            requeue: Duration::from_secs(1),
        };
    }

    // Analysis runs on its interval while the canary is live.
    if let Some(a) = &canary.analysis
        && let Some(i) = duration(&a.interval)
    {
        requeue = requeue.min(i);
    }
    st.current_step_index = Some(index);
    st.step = Some(format!("{}/{total}", index.min(total)));
    st.weights = Some(Weights {
        stable: 100 - weight,
        canary: weight,
    });
    st.phase = Some(phase);
    st.message = Some(if message.is_empty() {
        format!("step {}/{total}: canary weight {weight}", index.min(total))
    } else {
        message
    });
    let canary_n = canary_pods(spec, weight, scale_override);
    // Without traffic routing the weight is the share of pods: stable gives
    // up what the canary takes. With routing, stable keeps every pod so that
    // an abort can move all traffic back at once.
    let stable_n = if canary.traffic_routing.is_some() {
        spec.replicas
    } else {
        (spec.replicas - canary_n).max(0)
    };
    Decision {
        status: st,
        replicas: vec![(stable, stable_n), (hash, canary_n)],
        canary_weight: weight,
        events,
        requeue,
    }
}

fn all_stable() -> Weights {
    Weights {
        stable: 100,
        canary: 0,
    }
}

fn abort(st: &mut RolloutStatus, now: i64) {
    st.aborted = true;
    st.abort_time = Some(time(now));
}

/// Canary pods for a traffic weight: at least one while a canary runs, so
/// that it can be analysed before it gets traffic.
fn canary_pods(spec: &RolloutSpec, weight: i32, scale_override: Option<i32>) -> i32 {
    scale_override.unwrap_or_else(|| percent_of(spec.replicas, weight).max(1))
}

fn percent_of(replicas: i32, percent: i32) -> i32 {
    ((i64::from(replicas.max(0)) * i64::from(percent.clamp(0, 100)) + 99) / 100) as i32
}

fn normal(reason: &'static str, note: String) -> Event {
    Event {
        warning: false,
        reason,
        note,
    }
}

fn warning(reason: &'static str, note: String) -> Event {
    Event {
        warning: true,
        reason,
        note,
    }
}

/// Unix seconds as a `Time`.
pub fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

/// A `Time` as Unix seconds.
pub fn secs(t: &Option<Time>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::rollout::{AnalysisSpec, CanaryStrategy, PauseStep, RolloutStrategy};

    fn spec(steps: Vec<CanaryStep>) -> RolloutSpec {
        RolloutSpec {
            replicas: 2,
            selector: Default::default(),
            template: Default::default(),
            revision_history_limit: None,
            progress_deadline_seconds: Some(60),
            paused: false,
            strategy: RolloutStrategy {
                canary: CanaryStrategy {
                    steps,
                    analysis: Some(AnalysisSpec::default()),
                    traffic_routing: Some(Default::default()),
                    ..Default::default()
                },
            },
        }
    }

    fn weight(w: i32) -> CanaryStep {
        CanaryStep {
            set_weight: Some(w),
            ..Default::default()
        }
    }

    fn pause(d: Option<&str>) -> CanaryStep {
        CanaryStep {
            pause: Some(PauseStep {
                duration: d.map(str::to_owned),
            }),
            ..Default::default()
        }
    }

    fn all_ready() -> BTreeMap<String, i32> {
        ["a", "b", "c"].map(|h| (h.to_owned(), 10)).into()
    }

    /// Runs one decision from `status` with the template at `hash`.
    fn step(
        spec: &RolloutSpec,
        status: &RolloutStatus,
        hash: &str,
        now: i64,
        request: Option<Request>,
        evaluation: Option<Evaluation>,
    ) -> Decision {
        decide(&Observed {
            spec,
            status,
            generation: 1,
            template_hash: hash.into(),
            ready: &all_ready(),
            request,
            evaluation,
            invalid: None,
            now,
        })
    }

    fn failed() -> Evaluation {
        Evaluation {
            verdict: Verdict::Failed,
            figures: AnalysisStatus {
                canary_requests: 100,
                canary_error_rate: Some("0.5000".into()),
                stable_error_rate: Some("0.0000".into()),
                verdict: Some("Failed".into()),
                ..Default::default()
            },
            reason: "canary error rate 0.5000".into(),
        }
    }

    fn reasons(d: &Decision) -> Vec<&'static str> {
        d.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn the_first_revision_is_stable_at_once() {
        let s = spec(vec![weight(20)]);
        let d = step(&s, &RolloutStatus::default(), "a", 0, None, None);
        assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
        assert_eq!(d.status.phase, Some(RolloutPhase::Healthy));
        assert_eq!(d.replicas, vec![("a".into(), 2)]);
        assert_eq!(d.canary_weight, 0);
    }

    #[test]
    fn a_canary_walks_weight_timed_pause_weight_and_waits_for_promotion() {
        let s = spec(vec![weight(20), pause(Some("5s")), weight(50), pause(None)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let d = step(&s, &stable, "b", 100, None, None);
        assert_eq!(d.canary_weight, 20);
        assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(d.status.current_step_index, Some(1));
        assert!(reasons(&d).contains(&"CanaryStarted"));
        assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 1)]);
        // 3 s later: still paused.
        let d = step(&s, &d.status, "b", 103, None, None);
        assert_eq!(
            (d.canary_weight, d.status.current_step_index),
            (20, Some(1))
        );
        // After 5 s: weight 50, then paused until promoted.
        let d = step(&s, &d.status, "b", 105, None, None);
        assert_eq!(
            (d.canary_weight, d.status.current_step_index),
            (50, Some(3))
        );
        assert!(
            d.status
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("promote")
        );
        let d = step(&s, &d.status, "b", 200, None, None);
        assert_eq!(d.status.current_step_index, Some(3));
        // Promote: b becomes stable, a is kept for its delay.
        let d = step(&s, &d.status, "b", 201, Some(Request::Promote), None);
        assert_eq!(d.status.stable_revision.as_deref(), Some("b"));
        assert_eq!(d.status.canary_revision, None);
        assert_eq!(d.canary_weight, 0);
        assert!(reasons(&d).contains(&"Promoted"));
        let d = step(&s, &d.status, "b", 210, None, None);
        assert_eq!(d.replicas, vec![("b".into(), 2), ("a".into(), 2)]);
        let d = step(&s, &d.status, "b", 231, None, None);
        assert_eq!(d.replicas, vec![("b".into(), 2)]);
        assert_eq!(d.status.phase, Some(RolloutPhase::Healthy));
    }

    #[test]
    fn weight_waits_for_canary_pods_and_the_deadline_aborts() {
        let s = spec(vec![weight(50)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let none_ready = BTreeMap::new();
        let observe = |status: &RolloutStatus, now| {
            decide(&Observed {
                spec: &s,
                status,
                generation: 1,
                template_hash: "b".into(),
                ready: &none_ready,
                request: None,
                evaluation: None,
                invalid: None,
                now,
            })
        };
        let d = observe(&stable, 10);
        assert_eq!(d.canary_weight, 0);
        assert_eq!(d.status.current_step_index, Some(0));
        let d = observe(&d.status, 80);
        assert!(d.status.aborted);
        assert!(reasons(&d).contains(&"ProgressDeadlineExceeded"));
        assert_eq!(d.status.phase, Some(RolloutPhase::Degraded));
    }

    #[test]
    fn failed_analysis_rolls_back_at_once_and_retry_restarts() {
        let s = spec(vec![weight(20), pause(None)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let d = step(&s, &stable, "b", 10, None, None);
        assert_eq!(d.canary_weight, 20);
        let d = step(&s, &d.status, "b", 15, None, Some(failed()));
        assert_eq!(d.canary_weight, 0);
        assert!(d.status.aborted);
        assert_eq!(d.status.phase, Some(RolloutPhase::Degraded));
        assert_eq!(reasons(&d), vec!["AnalysisFailed", "RolledBack"]);
        let why = &d.events[0].note;
        assert!(why.contains("0.5000"), "{why}");
        // The canary's pods stay for the abort delay, then go.
        assert_eq!(d.replicas.len(), 2);
        let later = step(&s, &d.status, "b", 15 + 31, None, None);
        assert_eq!(later.replicas, vec![("a".into(), 2)]);
        assert_eq!(later.canary_weight, 0);
        // Retry starts over.
        let r = step(&s, &later.status, "b", 60, Some(Request::Retry), None);
        assert!(!r.status.aborted);
        assert_eq!(r.canary_weight, 20);
    }

    #[test]
    fn inconclusive_analysis_never_rolls_back() {
        let s = spec(vec![weight(20), pause(None)]);
        let mut st = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        for t in 0..100 {
            let d = step(
                &s,
                &st,
                "b",
                10 + t * 5,
                None,
                Some(Evaluation {
                    verdict: Verdict::Inconclusive,
                    figures: AnalysisStatus::default(),
                    reason: String::new(),
                }),
            );
            assert!(!d.status.aborted);
            st = d.status;
        }
    }

    #[test]
    fn failure_limit_counts_consecutive_failures() {
        let mut s = spec(vec![weight(20), pause(None)]);
        if let Some(a) = s.strategy.canary.analysis.as_mut() {
            a.failure_limit = 2;
        }
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let d = step(&s, &stable, "b", 10, None, Some(failed()));
        assert!(!d.status.aborted);
        let ok = Evaluation {
            verdict: Verdict::Successful,
            ..failed()
        };
        let d = step(&s, &d.status, "b", 15, None, Some(ok));
        let d = step(&s, &d.status, "b", 20, None, Some(failed()));
        assert!(!d.status.aborted, "the streak was broken");
        let d = step(&s, &d.status, "b", 25, None, Some(failed()));
        assert!(d.status.aborted);
    }

    #[test]
    fn user_abort_promote_full_and_template_revert() {
        let s = spec(vec![weight(20), pause(None), weight(60), pause(None)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let running = step(&s, &stable, "b", 10, None, None).status;
        let aborted = step(&s, &running, "b", 11, Some(Request::Abort), None);
        assert!(aborted.status.aborted);
        assert_eq!(aborted.canary_weight, 0);
        assert_eq!(reasons(&aborted), vec!["Aborted", "RolledBack"]);

        let full = step(&s, &running, "b", 11, Some(Request::PromoteFull), None);
        assert_eq!(full.status.stable_revision.as_deref(), Some("b"));

        let reverted = step(&s, &running, "a", 11, None, None);
        assert_eq!(reverted.canary_weight, 0);
        assert_eq!(reverted.status.canary_revision, None);
        assert_eq!(reverted.replicas, vec![("a".into(), 2)]);
        assert!(reasons(&reverted).contains(&"RolledBack"));
    }

    #[test]
    fn a_new_template_during_a_canary_replaces_it() {
        let s = spec(vec![weight(20), pause(None)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let b = step(&s, &stable, "b", 10, None, None).status;
        let c = step(&s, &b, "c", 20, None, None);
        assert_eq!(c.status.canary_revision.as_deref(), Some("c"));
        assert_eq!(c.replicas, vec![("a".into(), 2), ("c".into(), 1)]);
        assert_eq!(c.canary_weight, 20);
    }

    #[test]
    fn without_traffic_routing_the_weight_is_a_share_of_pods() {
        let mut s = spec(vec![weight(25), pause(None)]);
        s.replicas = 4;
        s.strategy.canary.traffic_routing = None;
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        let d = step(&s, &stable, "b", 10, None, None);
        assert_eq!(d.replicas, vec![("a".into(), 3), ("b".into(), 1)]);
        s.strategy.canary.traffic_routing = Some(Default::default());
        let d = step(&s, &stable, "b", 10, None, None);
        assert_eq!(d.replicas, vec![("a".into(), 4), ("b".into(), 1)]);
    }

    #[test]
    fn spec_paused_holds_the_step() {
        let mut s = spec(vec![weight(20), weight(40)]);
        let stable = step(&s, &RolloutStatus::default(), "a", 0, None, None).status;
        s.paused = true;
        let d = step(&s, &stable, "b", 10, None, None);
        assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(d.canary_weight, 0);
    }
}
