//! What the rollout decision sees ([`Observed`]) and what it says
//! ([`Decision`]), with the events worth recording. Pure data: the decision
//! itself is [`super::phase::decide`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::rollout::{
    AnalysisStatus, Request, RolloutPhase, RolloutReason, RolloutSpec, RolloutStatus,
    SetHeaderRoute, SetMirrorRoute, Verdict, Weights,
};

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

/// Which of a Rollout's analyses judges the new revision now; a new one
/// starts its templates' metrics afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnalysisRun {
    /// A canary's `analysis`, from the first step until promotion.
    Background,
    /// The inline analysis of canary step N (from 1).
    Step(i32),
    /// A blue-green preview's, before the switch.
    PrePromotion,
    /// A blue-green new revision's, after the switch.
    PostPromotion,
}

impl AnalysisRun {
    /// A short form for object names.
    pub fn tag(self) -> String {
        match self {
            AnalysisRun::Background => "bg".into(),
            AnalysisRun::Step(n) => format!("s{n}"),
            AnalysisRun::PrePromotion => "pre".into(),
            AnalysisRun::PostPromotion => "post".into(),
        }
    }
}

impl std::fmt::Display for AnalysisRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnalysisRun::Background => f.write_str("background"),
            AnalysisRun::Step(n) => write!(f, "step {n}"),
            AnalysisRun::PrePromotion => f.write_str("pre-promotion"),
            AnalysisRun::PostPromotion => f.write_str("post-promotion"),
        }
    }
}

/// Why the spec cannot run as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// [`RolloutReason::TrafficRouteMissing`] or [`RolloutReason::InvalidSpec`].
    pub reason: RolloutReason,
    /// What is wrong, naming the field or object.
    pub message: String,
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
    /// Why the spec cannot run, when it cannot.
    pub invalid: Option<Invalid>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

impl Observed<'_> {
    /// Ready pods of revision `hash`.
    pub fn ready(&self, hash: &str) -> i32 {
        self.ready.get(hash).copied().unwrap_or(0)
    }

    /// Desired pods in total, never negative.
    pub fn replicas(&self) -> i32 {
        self.spec.replicas.max(0)
    }

    /// Whether weights are routed (HTTPRoutes, mesh) rather than
    /// approximated by pod counts.
    pub fn routed(&self) -> bool {
        self.spec.strategy.canary.traffic_routing.is_some()
    }

    /// The number of steps.
    pub fn total_steps(&self) -> i32 {
        i32::try_from(self.spec.strategy.canary.steps.len()).unwrap_or(i32::MAX)
    }
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
    /// The new status (conditions are derived from it when written).
    pub status: RolloutStatus,
    /// Desired pods per revision hash; revisions not listed go to 0.
    pub replicas: Vec<(String, i32)>,
    /// Traffic weight of the canary, 0-100.
    pub canary_weight: i32,
    /// Header routes to the canary in force (none once it is promoted or
    /// aborted).
    pub header_routes: Vec<SetHeaderRoute>,
    /// Mirror routes to the canary in force (none once it is promoted or
    /// aborted).
    pub mirror_routes: Vec<SetMirrorRoute>,
    /// Events to record.
    pub events: Vec<Event>,
    /// Reconcile again after this long at the latest.
    pub requeue: Duration,
}

/// A decision being made: the status so far, the events and the requeue.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The status being built.
    pub st: RolloutStatus,
    /// Events so far.
    pub events: Vec<Event>,
    /// The latest the next reconcile may come.
    pub requeue: Duration,
    /// Header routes in force.
    pub header_routes: Vec<SetHeaderRoute>,
    /// Mirror routes in force.
    pub mirror_routes: Vec<SetMirrorRoute>,
}

impl Draft {
    /// Starts from the observed status.
    pub fn new(o: &Observed) -> Draft {
        let mut st = o.status.clone();
        st.observed_generation = Some(o.generation);
        Draft {
            st,
            events: Vec::new(),
            requeue: Duration::from_secs(30),
            header_routes: Vec::new(),
            mirror_routes: Vec::new(),
        }
    }

    /// Records a `Normal` event.
    pub fn normal(&mut self, reason: &'static str, note: String) {
        self.events.push(Event {
            warning: false,
            reason,
            note,
        });
    }

    /// Records a `Warning` event.
    pub fn warning(&mut self, reason: &'static str, note: String) {
        self.events.push(Event {
            warning: true,
            reason,
            note,
        });
    }

    /// Whether an evaluation of the analysis running now has passed.
    pub fn analysis_passed(&self) -> bool {
        self.st
            .analysis
            .as_ref()
            .is_some_and(|a| a.successful_evaluations > 0)
    }

    /// Reconciles again after `d` at the latest.
    pub fn requeue_within(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d);
    }

    /// Sets phase, reason and message together.
    pub fn state(&mut self, phase: RolloutPhase, reason: RolloutReason, message: String) {
        self.st.phase = Some(phase);
        self.st.reason = Some(reason);
        self.st.message = Some(message);
    }

    /// Finishes with the given pods and weight.
    pub fn finish(mut self, replicas: Vec<(String, i32)>, canary_weight: i32) -> Decision {
        let canary_weight = canary_weight.clamp(0, 100);
        self.st.header_routes = self.header_routes.iter().map(|r| r.name.clone()).collect();
        self.st.mirror_routes = self.mirror_routes.iter().map(|r| r.name.clone()).collect();
        self.st.weights = Some(Weights {
            stable: 100 - canary_weight,
            canary: canary_weight,
        });
        Decision {
            status: self.st,
            replicas,
            canary_weight,
            header_routes: self.header_routes,
            mirror_routes: self.mirror_routes,
            events: self.events,
            requeue: self.requeue,
        }
    }
}

/// Unix seconds as a `Time` (the epoch for what does not fit).
pub fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

/// A `Time` as Unix seconds.
pub fn secs(t: &Option<Time>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_second())
}

/// Whole seconds of a duration, saturating: every admitted duration fits,
/// and what does not must never panic.
pub fn whole_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A non-negative number of seconds as a requeue delay.
pub fn delay(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs.max(0)).unwrap_or(u64::MAX))
}
