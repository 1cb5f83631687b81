//! Scenarios of the decision, each a sentence: a spec, a sequence of
//! observations, what the Rollout must look like after each.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_crds::rollout::{
    AnalysisSpec, AnalysisStatus, CanaryStep, CanaryStrategy, HeaderRouteMatch, MirrorRouteMatch,
    PauseStep, Request, RolloutPhase, RolloutReason, RolloutSpec, RolloutStatus, RolloutStrategy,
    SetCanaryScale, SetHeaderRoute, SetMirrorRoute, StringMatch, Verdict,
};

use super::super::model::{Decision, Evaluation, Invalid, Observed};
use super::decide;

fn spec(steps: Vec<CanaryStep>) -> RolloutSpec {
    RolloutSpec {
        replicas: 2,
        selector: Default::default(),
        template: Default::default(),
        revision_history_limit: None,
        progress_deadline_seconds: Some(60),
        paused: false,
        workload_ref: None,
        notifications: None,
        strategy: RolloutStrategy {
            canary: CanaryStrategy {
                steps,
                analysis: Some(AnalysisSpec::default()),
                traffic_routing: Some(Default::default()),
                ..Default::default()
            },
            blue_green: None,
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

fn analysis_step() -> CanaryStep {
    CanaryStep {
        analysis: Some(AnalysisSpec::default()),
        ..Default::default()
    }
}

/// `setHeaderRoute` named `name`: `x-canary: yes` when `on`, else removal.
fn header_route(name: &str, on: bool) -> CanaryStep {
    let matches = if on {
        vec![HeaderRouteMatch {
            header_name: "x-canary".into(),
            header_value: StringMatch {
                exact: Some("yes".into()),
                ..Default::default()
            },
        }]
    } else {
        vec![]
    };
    CanaryStep {
        set_header_route: Some(SetHeaderRoute {
            name: name.into(),
            matches,
        }),
        ..Default::default()
    }
}

fn route_names(d: &Decision) -> Vec<&str> {
    d.header_routes.iter().map(|r| r.name.as_str()).collect()
}

fn all_ready() -> BTreeMap<String, i32> {
    ["a", "b", "c"].map(|h| (h.to_owned(), 10)).into()
}

/// One decision from `status` with the template at `hash`, every pod ready.
fn step(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    hash: &str,
    now: i64,
    request: Option<Request>,
    evaluation: Option<Evaluation>,
) -> Decision {
    with_ready(spec, status, hash, now, request, evaluation, &all_ready())
}

fn with_ready(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    hash: &str,
    now: i64,
    request: Option<Request>,
    evaluation: Option<Evaluation>,
    ready: &BTreeMap<String, i32>,
) -> Decision {
    decide(&Observed {
        spec,
        status,
        generation: 1,
        template_hash: hash.into(),
        ready,
        request,
        evaluation,
        invalid: None,
        now,
    })
}

fn evaluation(verdict: Verdict) -> Evaluation {
    Evaluation {
        verdict,
        figures: AnalysisStatus {
            canary_requests: 100,
            canary_error_rate: Some("0.5000".into()),
            stable_error_rate: Some("0.0000".into()),
            verdict: Some(verdict),
            ..Default::default()
        },
        reason: "canary error rate 0.5000".into(),
    }
}

fn failed() -> Evaluation {
    evaluation(Verdict::Failed)
}

fn passed() -> Evaluation {
    evaluation(Verdict::Successful)
}

fn reasons(d: &Decision) -> Vec<&'static str> {
    d.events.iter().map(|e| e.reason).collect()
}

/// The status of revision `a` stable, at time 0.
fn stable_a(s: &RolloutSpec) -> RolloutStatus {
    step(s, &RolloutStatus::default(), "a", 0, None, None).status
}

#[test]
fn a_healthy_rollout_is_resynced_rarely_and_a_pending_scale_down_sooner() {
    let s = spec(vec![weight(20)]);
    let healthy = step(&s, &RolloutStatus::default(), "a", 0, None, None);
    assert_eq!(healthy.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(healthy.requeue, super::stable::HEALTHY_RESYNC);
    let mut st = healthy.status.clone();
    st.previous_stable_revision = Some("old".into());
    st.scale_down_time = Some(super::super::model::time(40));
    let waiting = step(&s, &st, "a", 10, None, None);
    assert_eq!(waiting.requeue, std::time::Duration::from_secs(30));
}

#[test]
fn the_first_revision_is_stable_at_once() {
    let s = spec(vec![weight(20)]);
    let d = step(&s, &RolloutStatus::default(), "a", 0, None, None);
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
    assert_eq!(d.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(d.status.reason, Some(RolloutReason::RolloutCompleted));
    assert_eq!(d.replicas, vec![("a".into(), 2)]);
    assert_eq!(d.canary_weight, 0);
}

#[test]
fn a_canary_walks_weight_timed_pause_weight_and_waits_for_promotion() {
    let s = spec(vec![weight(20), pause(Some("5s")), weight(50), pause(None)]);
    let d = step(&s, &stable_a(&s), "b", 100, None, Some(passed()));
    assert_eq!(d.canary_weight, 20);
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::PauseStep));
    assert_eq!(d.status.current_step_index, Some(1));
    assert!(reasons(&d).contains(&"CanaryStarted"));
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 1)]);
    let d = step(&s, &d.status, "b", 103, None, None);
    assert_eq!(
        (d.canary_weight, d.status.current_step_index),
        (20, Some(1))
    );
    let d = step(&s, &d.status, "b", 105, None, None);
    assert_eq!(
        (d.canary_weight, d.status.current_step_index),
        (50, Some(3))
    );
    assert_eq!(d.status.reason, Some(RolloutReason::PausedUntilPromoted));
    let d = step(&s, &d.status, "b", 200, None, None);
    assert_eq!(d.status.current_step_index, Some(3));
    // Promote: the steps are done and b is fully ready: b becomes stable,
    // a is kept for its delay.
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
fn promote_at_the_first_pause_ends_that_pause_only_and_stops_at_the_next() {
    // The hands-on's Rollout.
    let s = spec(vec![weight(20), pause(Some("5s")), weight(50), pause(None)]);
    let d = step(&s, &stable_a(&s), "b", 100, None, Some(passed()));
    assert_eq!(d.status.reason, Some(RolloutReason::PauseStep));
    let d = step(&s, &d.status, "b", 101, Some(Request::Promote), None);
    assert_eq!(d.canary_weight, 50);
    assert_eq!(d.status.current_step_index, Some(3));
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::PausedUntilPromoted));
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
}

#[test]
fn promote_full_skips_every_step_and_the_analysis_to_full_size_first() {
    let s = spec(vec![weight(20), pause(None), weight(60), pause(None)]);
    let running = step(&s, &stable_a(&s), "b", 10, None, None).status;
    // b has one ready pod of two: it is scaled up, stable stays.
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 2), ("b".to_owned(), 1)].into();
    let d = with_ready(
        &s,
        &running,
        "b",
        11,
        Some(Request::PromoteFull),
        None,
        &ready,
    );
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
    assert_eq!(d.status.reason, Some(RolloutReason::Promoting));
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 2)]);
    assert!(reasons(&d).contains(&"PromotedFull"));
    // Still one of two, no request any more: it keeps promoting, no analysis gate.
    let d = with_ready(&s, &d.status, "b", 12, None, None, &ready);
    assert_eq!(d.status.reason, Some(RolloutReason::Promoting));
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
    // Both ready: only now does b become stable.
    let d = step(&s, &d.status, "b", 13, None, None);
    assert_eq!(d.status.stable_revision.as_deref(), Some("b"));
    assert_eq!(d.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn without_a_final_weight_of_100_the_canary_is_fully_ready_before_it_becomes_stable() {
    let s = spec(vec![weight(20)]);
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 2), ("b".to_owned(), 1)].into();
    let d = with_ready(&s, &stable_a(&s), "b", 10, None, Some(passed()), &ready);
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
    assert_eq!(d.status.reason, Some(RolloutReason::Promoting));
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 2)]);
    assert_eq!(d.canary_weight, 20, "the weight stays until the switch");
}

#[test]
fn a_canary_whose_analysis_was_only_inconclusive_is_not_promoted_silently() {
    let s = spec(vec![weight(20)]);
    let inconclusive = || Some(evaluation(Verdict::Inconclusive));
    let d = step(&s, &stable_a(&s), "b", 10, None, inconclusive());
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::InconclusiveAnalysis));
    assert_eq!(d.status.stable_revision.as_deref(), Some("a"));
    assert!(reasons(&d).contains(&"InconclusiveAnalysis"));
    // Still too little traffic: still paused.
    let d = step(&s, &d.status, "b", 15, None, inconclusive());
    assert_eq!(d.status.reason, Some(RolloutReason::InconclusiveAnalysis));
    // Traffic arrives and the analysis passes: promoted.
    let later = step(&s, &d.status, "b", 20, None, Some(passed()));
    assert_eq!(later.status.stable_revision.as_deref(), Some("b"));
    // Or the user promotes.
    let promoted = step(&s, &d.status, "b", 20, Some(Request::Promote), None);
    assert_eq!(promoted.status.stable_revision.as_deref(), Some("b"));
}

#[test]
fn weight_waits_for_canary_pods_and_the_deadline_aborts() {
    let s = spec(vec![weight(50)]);
    let none_ready = BTreeMap::new();
    let d = with_ready(&s, &stable_a(&s), "b", 10, None, None, &none_ready);
    assert_eq!(d.canary_weight, 0);
    assert_eq!(d.status.current_step_index, Some(0));
    assert_eq!(d.status.reason, Some(RolloutReason::WaitingForCanaryPods));
    let d = with_ready(&s, &d.status, "b", 80, None, None, &none_ready);
    assert!(d.status.aborted);
    assert!(reasons(&d).contains(&"ProgressDeadlineExceeded"));
    assert_eq!(d.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(
        d.status.reason,
        Some(RolloutReason::ProgressDeadlineExceeded)
    );
}

#[test]
fn ten_replicas_without_routing_scale_the_canary_to_what_the_step_waits_for() {
    let mut s = spec(vec![weight(20), pause(None)]);
    s.replicas = 10;
    s.strategy.canary.traffic_routing = None;
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 10)].into();
    let d = with_ready(&s, &stable_a(&s), "b", 10, None, None, &ready);
    assert_eq!(d.replicas, vec![("a".into(), 10), ("b".into(), 2)]);
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("2 canary pods"),
        "{:?}",
        d.status.message
    );
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 10), ("b".to_owned(), 2)].into();
    let d = with_ready(&s, &d.status, "b", 12, None, None, &ready);
    assert_eq!(d.canary_weight, 20);
    assert_eq!(d.replicas, vec![("a".into(), 8), ("b".into(), 2)]);
}

#[test]
fn one_replica_without_routing_keeps_its_stable_pod() {
    let mut s = spec(vec![weight(20), pause(None)]);
    s.replicas = 1;
    s.strategy.canary.traffic_routing = None;
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 1)].into();
    let d = with_ready(&s, &stable_a(&s), "b", 10, None, None, &ready);
    assert_eq!(d.replicas, vec![("a".into(), 1), ("b".into(), 1)]);
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 1), ("b".to_owned(), 1)].into();
    let d = with_ready(&s, &d.status, "b", 12, None, None, &ready);
    assert_eq!(d.canary_weight, 20);
    assert_eq!(d.replicas, vec![("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(d.status.reason, Some(RolloutReason::PausedUntilPromoted));
}

#[test]
fn failed_analysis_rolls_back_at_once_and_retry_restarts() {
    let s = spec(vec![weight(20), pause(None)]);
    let d = step(&s, &stable_a(&s), "b", 10, None, None);
    assert_eq!(d.canary_weight, 20);
    let d = step(&s, &d.status, "b", 15, None, Some(failed()));
    assert_eq!(d.canary_weight, 0);
    assert!(d.status.aborted);
    assert_eq!(d.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(d.status.reason, Some(RolloutReason::AnalysisFailed));
    assert_eq!(reasons(&d), vec!["AnalysisFailed", "RolledBack"]);
    assert!(d.events[0].note.contains("0.5000"), "{}", d.events[0].note);
    // The reason stays on later passes, without being read back from text.
    assert_eq!(d.replicas.len(), 2);
    let later = step(&s, &d.status, "b", 15 + 31, None, None);
    assert_eq!(later.replicas, vec![("a".into(), 2)]);
    assert_eq!(later.canary_weight, 0);
    assert_eq!(later.status.reason, Some(RolloutReason::AnalysisFailed));
    assert!(
        later
            .status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("0.5000"),
        "{:?}",
        later.status.message
    );
    let r = step(&s, &later.status, "b", 60, Some(Request::Retry), None);
    assert!(!r.status.aborted);
    assert_eq!(r.canary_weight, 20);
}

#[test]
fn inconclusive_analysis_never_rolls_back() {
    let s = spec(vec![weight(20), pause(None)]);
    let mut st = stable_a(&s);
    for t in 0..100 {
        let d = step(
            &s,
            &st,
            "b",
            10 + t * 5,
            None,
            Some(evaluation(Verdict::Inconclusive)),
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
    let d = step(&s, &stable_a(&s), "b", 10, None, Some(failed()));
    assert!(!d.status.aborted);
    let d = step(&s, &d.status, "b", 15, None, Some(passed()));
    let d = step(&s, &d.status, "b", 20, None, Some(failed()));
    assert!(!d.status.aborted, "the streak was broken");
    let d = step(&s, &d.status, "b", 25, None, Some(failed()));
    assert!(d.status.aborted);
}

#[test]
fn an_inline_analysis_that_never_gets_traffic_pauses_at_the_deadline() {
    let s = spec(vec![weight(20), analysis_step(), weight(50), pause(None)]);
    let d = step(&s, &stable_a(&s), "b", 10, None, None);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.status.reason, Some(RolloutReason::WaitingForAnalysis));
    let inconclusive = || Some(evaluation(Verdict::Inconclusive));
    let d = step(&s, &d.status, "b", 40, None, inconclusive());
    assert_eq!(d.status.reason, Some(RolloutReason::WaitingForAnalysis));
    let d = step(&s, &d.status, "b", 75, None, inconclusive());
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::InconclusiveAnalysis));
    assert_eq!(d.canary_weight, 20);
    // A pass later moves on.
    let d = step(&s, &d.status, "b", 80, None, Some(passed()));
    assert_eq!(d.canary_weight, 50);
}

#[test]
fn an_inline_template_metric_past_its_inconclusive_limit_pauses_at_once() {
    use sluice_crds::analysis::{MetricPhase, MetricResult};
    let s = spec(vec![weight(20), analysis_step(), weight(50), pause(None)]);
    let d = step(&s, &stable_a(&s), "b", 10, None, None);
    let metric = |name: &str, dry_run: bool| MetricResult {
        name: name.into(),
        phase: MetricPhase::Inconclusive,
        dry_run,
        count: 2,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        error: 2,
        measurements: Vec::new(),
    };
    let stuck = |metrics: Vec<MetricResult>| {
        let mut e = evaluation(Verdict::Inconclusive);
        e.figures.run = Some("step 2".into());
        e.figures.metrics = metrics;
        Some(e)
    };
    // A dry run's inconclusive metric holds nothing.
    let d = step(
        &s,
        &d.status,
        "b",
        12,
        None,
        stuck(vec![metric("p99", true)]),
    );
    assert_eq!(d.status.reason, Some(RolloutReason::WaitingForAnalysis));
    // Long before the deadline, the user decides.
    let d = step(
        &s,
        &d.status,
        "b",
        14,
        None,
        stuck(vec![metric("error-rate", false)]),
    );
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::InconclusiveAnalysis));
    let message = d.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("metric error-rate is inconclusive"),
        "{message}"
    );
    let d = step(&s, &d.status, "b", 15, Some(Request::Promote), None);
    assert_eq!(d.canary_weight, 50);
}

#[test]
fn user_abort_and_template_revert() {
    let s = spec(vec![weight(20), pause(None), weight(60), pause(None)]);
    let running = step(&s, &stable_a(&s), "b", 10, None, None).status;
    let aborted = step(&s, &running, "b", 11, Some(Request::Abort), None);
    assert!(aborted.status.aborted);
    assert_eq!(aborted.canary_weight, 0);
    assert_eq!(reasons(&aborted), vec!["Aborted", "RolledBack"]);
    assert_eq!(aborted.status.reason, Some(RolloutReason::Aborted));

    let reverted = step(&s, &running, "a", 11, None, None);
    assert_eq!(reverted.canary_weight, 0);
    assert_eq!(reverted.status.canary_revision, None);
    assert_eq!(reverted.replicas, vec![("a".into(), 2)]);
    assert!(reasons(&reverted).contains(&"RolledBack"));
}

#[test]
fn a_new_template_during_a_canary_replaces_it() {
    let s = spec(vec![weight(20), pause(None)]);
    let b = step(&s, &stable_a(&s), "b", 10, None, None).status;
    let c = step(&s, &b, "c", 20, None, None);
    assert_eq!(c.status.canary_revision.as_deref(), Some("c"));
    assert_eq!(c.replicas, vec![("a".into(), 2), ("c".into(), 1)]);
    assert_eq!(c.canary_weight, 20);
}

#[test]
fn spec_paused_holds_the_step() {
    let mut s = spec(vec![weight(20), weight(40)]);
    let stable = stable_a(&s);
    s.paused = true;
    let d = step(&s, &stable, "b", 10, None, None);
    assert_eq!(d.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(d.status.reason, Some(RolloutReason::SpecPaused));
    assert_eq!(d.canary_weight, 0);
}

#[test]
fn a_route_gone_mid_canary_takes_all_traffic_back_and_keeps_the_stable_pods() {
    let s = spec(vec![weight(50), pause(None)]);
    let running = step(&s, &stable_a(&s), "b", 10, None, None).status;
    let d = decide(&Observed {
        spec: &s,
        status: &running,
        generation: 1,
        template_hash: "b".into(),
        ready: &all_ready(),
        request: None,
        evaluation: None,
        invalid: Some(Invalid {
            reason: RolloutReason::TrafficRouteMissing,
            message: "spec.strategy.canary.trafficRouting.httpRoutes[0].name: HTTPRoute ns/web does not exist".into(),
        }),
        now: 11,
    });
    assert_eq!(d.canary_weight, 0);
    assert_eq!(d.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(d.status.reason, Some(RolloutReason::TrafficRouteMissing));
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 1)]);
    assert!(reasons(&d).contains(&"TrafficRouteMissing"));
    // The route is back: the canary carries on at its step's weight.
    let back = step(&s, &d.status, "b", 20, None, None);
    assert_eq!(back.canary_weight, 50);
    assert_eq!(back.status.reason, Some(RolloutReason::PausedUntilPromoted));
}

#[test]
fn absurd_durations_and_times_never_panic() {
    let s = spec(vec![
        weight(20),
        pause(Some("99999999999999999999h")),
        pause(Some("999999h")),
        weight(50),
    ]);
    for now in [i64::MIN, -1, 0, 1, i64::MAX] {
        let st = stable_a(&s);
        let d = step(&s, &st, "b", now, Some(Request::Promote), Some(failed()));
        let _ = step(&s, &d.status, "b", now.saturating_add(1), None, None);
    }
}

fn arb_step() -> impl Strategy<Value = CanaryStep> {
    prop_oneof![
        any::<i32>().prop_map(weight),
        proptest::option::of("[0-9]{0,25}(ms|s|m|h)?").prop_map(|d| pause(d.as_deref())),
        any::<Option<i32>>().prop_map(|r| CanaryStep {
            set_canary_scale: Some(SetCanaryScale {
                replicas: r,
                weight: None,
                match_traffic_weight: r.is_none().then_some(true),
            }),
            ..Default::default()
        }),
        Just(analysis_step()),
    ]
}

fn arb_request() -> impl Strategy<Value = Option<Request>> {
    proptest::option::of(proptest::sample::select(Request::ALL.to_vec()))
}

fn arb_verdict() -> impl Strategy<Value = Option<Evaluation>> {
    proptest::option::of(
        proptest::sample::select(vec![
            Verdict::Successful,
            Verdict::Failed,
            Verdict::Inconclusive,
        ])
        .prop_map(evaluation),
    )
}

proptest! {
    /// Whatever the spec (passed admission or not) and whatever was
    /// observed, a sequence of decisions never panics and stays in range.
    #[test]
    fn any_spec_and_observation_is_decided_without_panic(
        steps in proptest::collection::vec(arb_step(), 1..8),
        replicas in any::<i32>(),
        routed in any::<bool>(),
        deadline in any::<Option<i32>>(),
        passes in proptest::collection::vec((any::<i32>(), arb_request(), arb_verdict(), 0i32..20, any::<bool>()), 1..12),
    ) {
        let mut s = spec(steps);
        s.replicas = replicas;
        s.progress_deadline_seconds = deadline;
        if !routed {
            s.strategy.canary.traffic_routing = None;
        }
        let mut st = RolloutStatus::default();
        let mut now = 0i64;
        for (dt, request, evaluation, ready_n, new_template) in passes {
            now = now.saturating_add(i64::from(dt));
            let hash = if new_template { "c" } else { "b" };
            let ready: BTreeMap<String, i32> =
                ["a", "b", "c"].map(|h| (h.to_owned(), ready_n)).into();
            let d = with_ready(&s, &st, hash, now, request, evaluation, &ready);
            prop_assert!((0..=100).contains(&d.canary_weight));
            prop_assert!(d.replicas.iter().all(|(_, n)| *n >= 0));
            st = d.status;
        }
    }
}

#[test]
fn a_header_route_sends_testers_to_the_canary_at_weight_zero_until_a_later_step_removes_it() {
    let s = spec(vec![
        header_route("testers", true),
        pause(None),
        header_route("testers", false),
        pause(None),
    ]);
    let d = step(&s, &stable_a(&s), "b", 10, None, None);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.canary_weight, 0);
    assert_eq!(route_names(&d), vec!["testers"]);
    assert!(reasons(&d).contains(&"HeaderRouteSet"));
    // The canary keeps a pod to answer the testers.
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 1)]);
    let d = step(&s, &d.status, "b", 11, Some(Request::Promote), None);
    assert_eq!(d.status.current_step_index, Some(3));
    assert!(d.header_routes.is_empty(), "{:?}", d.header_routes);
    assert!(reasons(&d).contains(&"HeaderRouteRemoved"));
}

#[test]
fn a_header_route_waits_for_a_ready_canary_pod_before_it_takes_effect() {
    let s = spec(vec![header_route("testers", true), pause(None)]);
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 2)].into();
    let d = with_ready(&s, &stable_a(&s), "b", 10, None, None, &ready);
    assert_eq!(d.status.current_step_index, Some(0));
    assert_eq!(d.status.reason, Some(RolloutReason::WaitingForCanaryPods));
    assert!(d.header_routes.is_empty());
    assert_eq!(d.replicas, vec![("a".into(), 2), ("b".into(), 1)]);
}

#[test]
fn header_routes_of_different_names_add_up_and_go_at_promotion_and_abort() {
    let s = spec(vec![
        header_route("testers", true),
        header_route("staff", true),
        pause(None),
    ]);
    let paused = step(&s, &stable_a(&s), "b", 10, None, None);
    assert_eq!(route_names(&paused), vec!["testers", "staff"]);
    let aborted = step(&s, &paused.status, "b", 11, Some(Request::Abort), None);
    assert!(aborted.header_routes.is_empty());
    let promoted = step(&s, &paused.status, "b", 11, Some(Request::Promote), None);
    assert_eq!(promoted.status.current_step_index, Some(3));
    assert!(promoted.header_routes.is_empty());
}

#[test]
fn a_mirror_route_copies_to_a_ready_canary_until_the_canary_is_aborted() {
    let mirror = CanaryStep {
        set_mirror_route: Some(SetMirrorRoute {
            name: "shadow".into(),
            percentage: Some(50),
            matches: vec![MirrorRouteMatch::default()],
        }),
        ..Default::default()
    };
    let s = spec(vec![mirror, pause(None)]);
    let ready: BTreeMap<String, i32> = [("a".to_owned(), 2)].into();
    let waiting = with_ready(&s, &stable_a(&s), "b", 10, None, None, &ready);
    assert!(waiting.mirror_routes.is_empty());
    assert_eq!(
        waiting.status.reason,
        Some(RolloutReason::WaitingForCanaryPods)
    );
    let paused = step(&s, &waiting.status, "b", 11, None, None);
    assert_eq!(paused.status.mirror_routes, vec!["shadow".to_owned()]);
    assert_eq!(paused.canary_weight, 0);
    assert!(reasons(&paused).contains(&"MirrorRouteSet"));
    let aborted = step(&s, &paused.status, "b", 12, None, Some(failed()));
    assert!(aborted.mirror_routes.is_empty());
    assert!(aborted.status.mirror_routes.is_empty());
    assert_eq!(aborted.status.phase, Some(RolloutPhase::Degraded));
}

mod blue_green {
    //! Blue-green scenarios: `active` and `preview` Services, two replicas.

    use sluice_crds::rollout::{BlueGreenStatus, BlueGreenStrategy};

    use super::*;

    fn spec(edit: impl FnOnce(&mut BlueGreenStrategy)) -> RolloutSpec {
        let mut bg = BlueGreenStrategy {
            active_service: "active".into(),
            preview_service: Some("preview".into()),
            ..Default::default()
        };
        edit(&mut bg);
        let mut s = super::spec(vec![]);
        s.strategy = RolloutStrategy {
            canary: CanaryStrategy::default(),
            blue_green: Some(bg),
        };
        s
    }

    fn selects(d: &Decision) -> (String, String) {
        let sel = d
            .status
            .blue_green
            .clone()
            .unwrap_or_else(|| BlueGreenStatus {
                active_revision: "-".into(),
                preview_revision: "-".into(),
            });
        (sel.active_revision, sel.preview_revision)
    }

    fn pair(active: &str, preview: &str) -> (String, String) {
        (active.into(), preview.into())
    }

    #[test]
    fn the_preview_runs_beside_the_active_revision_and_is_switched_to_once_ready() {
        let s = spec(|_| {});
        let first = stable_a(&s);
        assert_eq!(
            first
                .blue_green
                .as_ref()
                .map(|b| b.active_revision.as_str()),
            Some("a")
        );
        assert_eq!(first.step, None);
        let ready: BTreeMap<String, i32> = [("a".to_owned(), 2), ("b".to_owned(), 1)].into();
        let waiting = with_ready(&s, &first, "b", 10, None, None, &ready);
        assert_eq!(
            waiting.status.reason,
            Some(RolloutReason::WaitingForPreviewPods)
        );
        assert_eq!(selects(&waiting), pair("a", "b"));
        assert_eq!(waiting.replicas, vec![("a".into(), 2), ("b".into(), 2)]);
        assert!(reasons(&waiting).contains(&"PreviewStarted"));
        let switched = step(&s, &waiting.status, "b", 11, None, None);
        assert!(reasons(&switched).contains(&"Switched"));
        assert_eq!(selects(&switched), pair("b", "b"));
        assert_eq!(switched.status.stable_revision.as_deref(), Some("b"));
        assert_eq!(switched.status.phase, Some(RolloutPhase::Healthy));
        // The old revision keeps its pods for the scale-down delay.
        let later = step(&s, &switched.status, "b", 20, None, None);
        assert_eq!(later.replicas, vec![("b".into(), 2), ("a".into(), 2)]);
        let done = step(&s, &later.status, "b", 42, None, None);
        assert_eq!(done.replicas, vec![("b".into(), 2)]);
    }

    #[test]
    fn without_auto_promotion_the_ready_preview_waits_for_the_user() {
        let s = spec(|bg| bg.auto_promotion_enabled = Some(false));
        let paused = step(&s, &stable_a(&s), "b", 10, None, None);
        assert_eq!(paused.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(
            paused.status.reason,
            Some(RolloutReason::PausedUntilPromoted)
        );
        assert_eq!(selects(&paused), pair("a", "b"));
        let still = step(&s, &paused.status, "b", 500, None, None);
        assert_eq!(selects(&still), pair("a", "b"));
        let promoted = step(&s, &still.status, "b", 501, Some(Request::Promote), None);
        assert_eq!(selects(&promoted), pair("b", "b"));
        assert_eq!(promoted.status.stable_revision.as_deref(), Some("b"));
    }

    #[test]
    fn the_promote_that_ends_the_preview_does_not_skip_the_post_promotion_analysis() {
        let s = spec(|bg| {
            bg.auto_promotion_enabled = Some(false);
            bg.post_promotion_analysis = Some(AnalysisSpec::default());
        });
        let paused = step(&s, &stable_a(&s), "b", 10, None, None);
        let switched = step(&s, &paused.status, "b", 11, Some(Request::Promote), None);
        assert_eq!(selects(&switched), pair("b", "b"));
        assert_eq!(
            switched.status.reason,
            Some(RolloutReason::PostPromotionAnalysis)
        );
        assert_eq!(switched.status.stable_revision.as_deref(), Some("a"));
        // A second promote, during the analysis, lifts it.
        let promoted = step(&s, &switched.status, "b", 12, Some(Request::Promote), None);
        assert_eq!(promoted.status.stable_revision.as_deref(), Some("b"));
    }

    #[test]
    fn a_full_promotion_skips_both_analyses() {
        let s = spec(|bg| {
            bg.pre_promotion_analysis = Some(AnalysisSpec::default());
            bg.post_promotion_analysis = Some(AnalysisSpec::default());
        });
        let judging = step(&s, &stable_a(&s), "b", 10, None, None);
        let done = step(
            &s,
            &judging.status,
            "b",
            11,
            Some(Request::PromoteFull),
            None,
        );
        assert_eq!(done.status.stable_revision.as_deref(), Some("b"));
        assert_eq!(selects(&done), pair("b", "b"));
    }

    #[test]
    fn auto_promotion_seconds_hold_the_switch_that_long_after_the_preview_is_ready() {
        let s = spec(|bg| bg.auto_promotion_seconds = Some(30));
        let held = step(&s, &stable_a(&s), "b", 10, None, None);
        assert_eq!(held.status.reason, Some(RolloutReason::PauseStep));
        assert!(held.requeue <= std::time::Duration::from_secs(30));
        let still = step(&s, &held.status, "b", 39, None, None);
        assert_eq!(selects(&still), pair("a", "b"));
        let switched = step(&s, &still.status, "b", 40, None, None);
        assert_eq!(selects(&switched), pair("b", "b"));
    }

    #[test]
    fn a_smaller_preview_is_scaled_to_full_size_before_the_switch() {
        let s = spec(|bg| bg.preview_replica_count = Some(1));
        let ready: BTreeMap<String, i32> = [("a".to_owned(), 2), ("b".to_owned(), 1)].into();
        let scaling = with_ready(&s, &stable_a(&s), "b", 10, None, None, &ready);
        assert_eq!(scaling.status.reason, Some(RolloutReason::Promoting));
        assert_eq!(scaling.replicas, vec![("a".into(), 2), ("b".into(), 2)]);
        assert_eq!(selects(&scaling), pair("a", "b"));
        let switched = step(&s, &scaling.status, "b", 11, None, None);
        assert_eq!(selects(&switched), pair("b", "b"));
    }

    #[test]
    fn a_failing_pre_promotion_analysis_aborts_before_any_switch() {
        let s = spec(|bg| bg.pre_promotion_analysis = Some(AnalysisSpec::default()));
        let judging = step(&s, &stable_a(&s), "b", 10, None, None);
        assert_eq!(
            judging.status.reason,
            Some(RolloutReason::WaitingForAnalysis)
        );
        let inconclusive = step(
            &s,
            &judging.status,
            "b",
            15,
            None,
            Some(evaluation(Verdict::Inconclusive)),
        );
        assert_eq!(selects(&inconclusive), pair("a", "b"));
        let failed = step(&s, &inconclusive.status, "b", 20, None, Some(failed()));
        assert_eq!(failed.status.phase, Some(RolloutPhase::Degraded));
        assert_eq!(failed.status.reason, Some(RolloutReason::AnalysisFailed));
        assert_eq!(selects(&failed), pair("a", "b"));
        assert!(!reasons(&failed).contains(&"SwitchedBack"));
        // The preview's pods stay for the abort delay, then go.
        assert_eq!(failed.replicas, vec![("a".into(), 2), ("b".into(), 2)]);
        let gone = step(&s, &failed.status, "b", 51, None, None);
        assert_eq!(gone.replicas, vec![("a".into(), 2)]);
    }

    #[test]
    fn a_passing_pre_promotion_analysis_opens_the_switch() {
        let s = spec(|bg| bg.pre_promotion_analysis = Some(AnalysisSpec::default()));
        let judging = step(&s, &stable_a(&s), "b", 10, None, None);
        let switched = step(&s, &judging.status, "b", 15, None, Some(passed()));
        assert_eq!(selects(&switched), pair("b", "b"));
    }

    #[test]
    fn a_failing_post_promotion_analysis_switches_back_to_the_old_revision() {
        let s = spec(|bg| bg.post_promotion_analysis = Some(AnalysisSpec::default()));
        let switched = step(&s, &stable_a(&s), "b", 10, None, None);
        assert_eq!(
            switched.status.reason,
            Some(RolloutReason::PostPromotionAnalysis)
        );
        assert_eq!(selects(&switched), pair("b", "b"));
        assert_eq!(switched.status.stable_revision.as_deref(), Some("a"));
        assert_eq!(switched.replicas, vec![("b".into(), 2), ("a".into(), 2)]);
        let back = step(&s, &switched.status, "b", 15, None, Some(failed()));
        assert_eq!(back.status.phase, Some(RolloutPhase::Degraded));
        assert_eq!(back.status.reason, Some(RolloutReason::AnalysisFailed));
        assert!(back.status.aborted);
        assert_eq!(selects(&back), pair("a", "b"));
        assert!(reasons(&back).contains(&"SwitchedBack"));
        let after = step(&s, &back.status, "b", 16, None, None);
        assert_eq!(selects(&after), pair("a", "b"));
        assert!(!reasons(&after).contains(&"SwitchedBack"));
    }

    #[test]
    fn a_passing_post_promotion_analysis_makes_the_new_revision_stable() {
        let s = spec(|bg| bg.post_promotion_analysis = Some(AnalysisSpec::default()));
        let switched = step(&s, &stable_a(&s), "b", 10, None, None);
        let judged = step(
            &s,
            &switched.status,
            "b",
            15,
            None,
            Some(evaluation(Verdict::Inconclusive)),
        );
        assert_eq!(judged.status.stable_revision.as_deref(), Some("a"));
        let stable = step(&s, &judged.status, "b", 20, None, Some(passed()));
        assert_eq!(stable.status.stable_revision.as_deref(), Some("b"));
        assert!(reasons(&stable).contains(&"PostPromotionAnalysisPassed"));
        assert_eq!(stable.status.phase, Some(RolloutPhase::Healthy));
        assert_eq!(selects(&stable), pair("b", "b"));
    }

    #[test]
    fn the_post_promotion_analysis_judges_only_what_came_after_the_switch() {
        let s = spec(|bg| bg.post_promotion_analysis = Some(AnalysisSpec::default()));
        let switched = step(&s, &stable_a(&s), "b", 10, None, None);
        assert_eq!(super::super::analysis_since(&s, &switched.status), Some(10));
        assert!(super::super::analysis_in_force(&s, &switched.status).is_some());
        let spec_pre = spec(|bg| bg.pre_promotion_analysis = Some(AnalysisSpec::default()));
        let judging = step(&spec_pre, &stable_a(&spec_pre), "b", 3, None, None);
        assert_eq!(
            super::super::analysis_since(&spec_pre, &judging.status),
            Some(3)
        );
        assert!(super::super::analysis_in_force(&spec_pre, &judging.status).is_some());
        // Before the switch the post-promotion analysis is not in force.
        assert!(super::super::analysis_in_force(&s, &judging.status).is_none());
    }

    #[test]
    fn an_abort_while_switched_switches_back_and_a_retry_previews_again() {
        let s = spec(|bg| bg.post_promotion_analysis = Some(AnalysisSpec::default()));
        let switched = step(&s, &stable_a(&s), "b", 10, None, None);
        let aborted = step(&s, &switched.status, "b", 11, Some(Request::Abort), None);
        assert_eq!(selects(&aborted), pair("a", "b"));
        assert_eq!(aborted.status.reason, Some(RolloutReason::Aborted));
        let retried = step(&s, &aborted.status, "b", 12, Some(Request::Retry), None);
        assert!(!retried.status.aborted);
        assert_eq!(selects(&retried), pair("b", "b"));
    }

    #[test]
    fn a_template_reverted_while_switched_puts_the_old_revision_back_at_once() {
        let s = spec(|bg| bg.post_promotion_analysis = Some(AnalysisSpec::default()));
        let switched = step(&s, &stable_a(&s), "b", 10, None, None);
        let reverted = step(&s, &switched.status, "a", 11, None, None);
        assert_eq!(selects(&reverted), pair("a", "a"));
        assert!(reasons(&reverted).contains(&"RolledBack"));
    }
}
