//! The `Rollout` resource: a Deployment-like pod template with a canary strategy.
//!
//! The shape follows Argo Rollouts where users already know it (`setWeight`,
//! `pause`, `setCanaryScale`, `stableService`/`canaryService`), and Gateway API
//! for traffic routing. Validation that the schema can express lives here as
//! CEL rules so that the apiserver rejects bad input at admission with a
//! message naming the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::analysis::MetricResult;
pub use crate::analysis::{BuiltinAnalysis, StableComparison};
use crate::rules::{DURATION_MESSAGE, DURATION_RULE};

/// The label that ties a ReplicaSet to its Rollout (set by the operator,
/// read by whoever looks for a Rollout's ReplicaSets).
pub const ROLLOUT_LABEL: &str = "sluice.dev/rollout";

/// A header or mirror route's name: a lowercase RFC 1123 label.
const ROUTE_NAME_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// The characters of an HTTP header name (RFC 9110 token), for the rules
/// on header routes' and mirror routes' header names.
macro_rules! header_name_chars {
    () => {
        "[A-Za-z0-9!#$%&*+.^_|~-]"
    };
}

/// Desired state of a [`Rollout`].
// clippy reads the repeated `type_ = ...` of printcolumn(...) as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "ro",
    category = "sluice",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.step"),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.weights.canary"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.selector) || !has(self.template) || !has(self.selector.matchLabels) || (has(self.template.metadata) && has(self.template.metadata.labels) && self.selector.matchLabels.all(k, k in self.template.metadata.labels && self.template.metadata.labels[k] == self.selector.matchLabels[k]))"
).message("spec.selector.matchLabels must match spec.template.metadata.labels").field_path(".selector"))]
#[x_kube(validation = Rule::new(
    "has(self.workloadRef) ? !has(self.template) && !has(self.selector) : has(self.template) && has(self.selector)"
).message("spec sets selector and template, or workloadRef (whose Deployment gives both)"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Number of desired pods across stable and canary. Defaults to 1.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub replicas: i32,
    /// Label selector for the pods; must match the template's labels.
    /// Absent with `workloadRef` (the Deployment's is used).
    #[serde(default, skip_serializing_if = "is_empty_selector")]
    pub selector: LabelSelector,
    /// The pod template; a change to it starts a new revision. Absent with
    /// `workloadRef` (the Deployment's is used).
    #[serde(default, skip_serializing_if = "is_empty_template")]
    pub template: PodTemplateSpec,
    /// Take the selector and pod template from this Deployment instead:
    /// the Rollout runs the pods (the Deployment is scaled to 0 once the
    /// Rollout's own pods serve) and a change to the Deployment's template
    /// starts a new revision, so a team adopts Sluice without rewriting
    /// its manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadRef>,
    /// How many old ReplicaSets to keep for rollback. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub revision_history_limit: Option<i32>,
    /// Seconds a step may make no progress before the rollout is aborted.
    /// Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("must be greater than 0"))]
    pub progress_deadline_seconds: Option<i32>,
    /// Pauses the rollout where it stands until set back to false.
    #[serde(default)]
    pub paused: bool,
    /// How a new revision replaces the stable one.
    pub strategy: RolloutStrategy,
    /// Webhooks that receive this Rollout's decisions as JSON POSTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
}

/// Where a Rollout's decisions are sent, besides its Events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// Each receives a JSON body per decision (reason, message, phase,
    /// step, weights, revisions), retried with backoff when it fails.
    #[schemars(length(max = 8))]
    pub webhooks: Vec<NotificationWebhook>,
}

/// One webhook of [`Notifications`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotificationWebhook {
    /// The URL to POST to.
    #[schemars(length(max = 2048), regex(pattern = "^https?://"))]
    pub url: String,
    /// Only these event reasons (e.g. `AnalysisFailed`, `Promoted`); all
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub reasons: Vec<String>,
}

fn default_replicas() -> i32 {
    1
}

fn is_empty_selector(s: &LabelSelector) -> bool {
    *s == LabelSelector::default()
}

fn is_empty_template(t: &PodTemplateSpec) -> bool {
    *t == PodTemplateSpec::default()
}

/// The Deployment a Rollout takes its pods' template from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `apps/v1`.
    #[x_kube(validation = Rule::new("self == 'apps/v1'").message("must be apps/v1"))]
    pub api_version: String,
    /// `Deployment`.
    #[x_kube(validation = Rule::new("self == 'Deployment'").message("must be Deployment"))]
    pub kind: String,
    /// The Deployment, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The deployment strategy: exactly one of `canary` and `blueGreen`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.canary) != has(self.blueGreen)")
    .message("spec.strategy sets exactly one of canary, blueGreen"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Shift traffic step by step from the stable revision to the canary.
    /// Absent and empty are the same to the controller (a blue-green
    /// Rollout reads an empty one), so it is written only when set.
    #[serde(default, skip_serializing_if = "CanaryStrategy::is_unset")]
    pub canary: CanaryStrategy,
    /// Run the new revision beside the active one, reachable through
    /// `previewService`, then switch `activeService` to it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
}

/// A blue-green strategy, as Argo Rollouts' `blueGreen`: the new revision
/// runs beside the active one, reachable through `previewService`; once it
/// is ready (and its pre-promotion analysis passed, and it was promoted or
/// auto-promoted) `activeService` is switched to it in one selector change.
/// A failed post-promotion analysis switches it back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "!has(self.previewService) || self.previewService != self.activeService"
).message("spec.strategy.blueGreen.previewService must name another Service than activeService").field_path(".previewService"))]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// The Service whose selector the controller pins to the active
    /// revision: what users reach.
    #[schemars(length(min = 1, max = 63))]
    pub active_service: String,
    /// The Service whose selector the controller pins to the new revision
    /// before it is promoted (to the active one otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub preview_service: Option<String>,
    /// Switch to the new revision as soon as it is ready (and its
    /// pre-promotion analysis passed). Defaults to true; false waits for
    /// `kubectl sluice promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    /// With auto-promotion, wait this many seconds after the preview is
    /// ready before switching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub auto_promotion_seconds: Option<i32>,
    /// Pods of the new revision while it is only previewed; it is scaled to
    /// `spec.replicas` before the switch. Defaults to `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub preview_replica_count: Option<i32>,
    /// Seconds the old revision keeps its pods after the switch (so that
    /// clients with connections to it, and a switch back, lose nothing).
    /// Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Seconds the new revision keeps its pods after an abort. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Analysis of the preview pods that must pass before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
    /// Analysis of the new revision once it is active; a failure switches
    /// back. The revision becomes stable only when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisSpec>,
}

impl BlueGreenStrategy {
    /// Whether the switch happens without `kubectl sluice promote`.
    pub fn auto_promotes(&self) -> bool {
        self.auto_promotion_enabled.unwrap_or(true)
    }
}

/// A canary strategy: steps that move weight, pause and analyse.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "!has(self.stableService) || !has(self.canaryService) || self.stableService != self.canaryService"
).message("spec.strategy.canary.canaryService must name another Service than stableService").field_path(".canaryService"))]
#[x_kube(validation = Rule::new(
    "!self.steps.exists(s, has(s.setHeaderRoute) || has(s.setMirrorRoute)) || (has(self.trafficRouting) && has(self.stableService) && has(self.canaryService))"
).message("setHeaderRoute and setMirrorRoute steps need trafficRouting, stableService and canaryService").field_path(".trafficRouting"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// Service whose selector the controller pins to the stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_service: Option<String>,
    /// Service whose selector the controller pins to the canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_service: Option<String>,
    /// Where the weights are applied. Without it, weights are approximated by
    /// the ratio of canary to stable replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// The steps of the rollout, in order.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one step is required"))]
    #[schemars(length(max = 100))]
    pub steps: Vec<CanaryStep>,
    /// Background analysis that runs from the first step until promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Seconds to keep the canary pods after an abort. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Seconds to keep the old stable pods after promotion. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub scale_down_delay_seconds: Option<i32>,
}

/// Where canary weights are written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// Gateway API HTTPRoutes whose backendRefs to the stable and canary
    /// Services get the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub http_routes: Vec<HttpRouteRef>,
    /// Split the traffic of meshed clients (sidecars) to the stable Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshRouting>,
}

/// A reference to an HTTPRoute in the Rollout's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRef {
    /// Name of the HTTPRoute.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Mesh traffic splitting for a Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeshRouting {
    /// The Service meshed clients call; defaults to `stableService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One step of a canary. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "[has(self.setWeight), has(self.pause), has(self.setCanaryScale), has(self.analysis), has(self.setHeaderRoute), has(self.setMirrorRoute)].filter(x, x).size() == 1"
).message("a step sets exactly one of setWeight, pause, setCanaryScale, analysis, setHeaderRoute, setMirrorRoute"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percentage of traffic (0-100) to send to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub set_weight: Option<i32>,
    /// Wait for a duration, or until promoted when no duration is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Scale the canary independently of its traffic weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
    /// An inline analysis that must pass before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Send requests with matching headers to the canary whatever its
    /// weight, until a later step of the same name or the end of the
    /// canary (promotion or abort) removes the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<SetHeaderRoute>,
    /// Copy matching requests to the canary (its answers discarded, its
    /// errors counted in the analysis), until a later step of the same
    /// name or the end of the canary removes the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror_route: Option<SetMirrorRoute>,
}

/// A mirror route: a copy of `percentage` of the requests matching any
/// entry of `match` goes to the canary. A step without `match` removes the
/// route of its name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SetMirrorRoute {
    /// Names the route, so that a later step can replace or remove it.
    #[x_kube(validation = Rule::new(ROUTE_NAME_RULE).message("must be a lowercase RFC 1123 label, such as shadow"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Percentage (0-100) of matching requests copied. Defaults to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub percentage: Option<i32>,
    /// Which requests are copied: those matching any entry; absent or
    /// empty removes the route.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub matches: Vec<MirrorRouteMatch>,
}

/// Conditions of a [`SetMirrorRoute`] entry, all of which hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.method) || (has(self.method.exact) && !has(self.method.prefix) && !has(self.method.regex))").message("method takes exact only").field_path(".method"))]
#[x_kube(validation = Rule::new("!has(self.path) || !has(self.path.regex)").message("path takes exact or prefix").field_path(".path"))]
#[serde(rename_all = "camelCase")]
pub struct MirrorRouteMatch {
    /// The request method (`exact`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The path (`exact` or `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Header name to value match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    #[x_kube(validation = Rule::new(concat!("self.all(k, k.matches('^", header_name_chars!(), "{1,256}$'))")).message("header names must be HTTP header names, such as x-canary"))]
    pub headers: BTreeMap<String, StringMatch>,
}

impl CanaryStrategy {
    /// Whether nothing of it is set (a blue-green Rollout's).
    pub fn is_unset(&self) -> bool {
        *self == CanaryStrategy::default()
    }
}

impl std::fmt::Display for SetMirrorRoute {
    /// `shadow (35% of GET /api*)`; `shadow (removed)` for a step without
    /// `match`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.matches.is_empty() {
            return write!(f, "{} (removed)", self.name);
        }
        write!(f, "{} ({}% of", self.name, self.percentage.unwrap_or(100))?;
        for (i, m) in self.matches.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " | " })?;
            if let Some(method) = m.method.as_ref().and_then(|s| s.exact.as_deref()) {
                write!(f, "{method} ")?;
            }
            match &m.path {
                Some(StringMatch { exact: Some(e), .. }) => f.write_str(e)?,
                Some(StringMatch {
                    prefix: Some(p), ..
                }) => write!(f, "{p}*")?,
                _ => f.write_str("/*")?,
            }
            for (name, v) in &m.headers {
                write!(f, " {name}{}", string_match(v))?;
            }
        }
        f.write_str(")")
    }
}

/// `=v`, `^=v` or `~=v`.
fn string_match(v: &StringMatch) -> String {
    match (&v.exact, &v.prefix, &v.regex) {
        (Some(e), _, _) => format!("={e}"),
        (None, Some(p), _) => format!("^={p}"),
        (None, None, Some(r)) => format!("~={r}"),
        (None, None, None) => String::new(),
    }
}

/// A header route: requests matching every entry of `match` go to the
/// canary. Routes of different names add up (a request matching any of
/// them goes to the canary); a step without `match` removes its route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    /// Names the route, so that a later step can replace or remove it.
    #[x_kube(validation = Rule::new(ROUTE_NAME_RULE).message("must be a lowercase RFC 1123 label, such as testers"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Conditions that all hold for a request routed to the canary; absent
    /// or empty removes the route.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub matches: Vec<HeaderRouteMatch>,
}

impl std::fmt::Display for SetHeaderRoute {
    /// `testers (x-canary=yes & x-user^=staff-)`: a prefix as `^=`, a regex
    /// as `~=`; `testers (removed)` for a step without `match`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.matches.is_empty() {
            return write!(f, "{} (removed)", self.name);
        }
        write!(f, "{} (", self.name)?;
        for (i, m) in self.matches.iter().enumerate() {
            let sep = if i == 0 { "" } else { " & " };
            write!(f, "{sep}{}{}", m.header_name, string_match(&m.header_value))?;
        }
        f.write_str(")")
    }
}

/// One header condition of a [`SetHeaderRoute`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRouteMatch {
    /// The header's name (case-insensitive).
    #[x_kube(validation = Rule::new(concat!("self.matches('^", header_name_chars!(), "+$')")).message("must be an HTTP header name, such as x-canary"))]
    #[schemars(length(min = 1, max = 256))]
    pub header_name: String,
    /// How its value is matched.
    pub header_value: StringMatch,
}

/// A string match. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1"
).message("headerValue sets exactly one of exact, prefix, regex"))]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    /// The whole value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

/// The header routes in force once `done` steps have been taken: each
/// `setHeaderRoute` adds or replaces its named route (keeping its place),
/// one without `match` removes it.
pub fn header_routes(steps: &[CanaryStep], done: usize) -> Vec<&SetHeaderRoute> {
    in_force(steps, done, |s| {
        let r = s.set_header_route.as_ref()?;
        Some((r.name.as_str(), r.matches.is_empty(), r))
    })
}

/// The mirror routes in force once `done` steps have been taken, as
/// [`header_routes`].
pub fn mirror_routes(steps: &[CanaryStep], done: usize) -> Vec<&SetMirrorRoute> {
    in_force(steps, done, |s| {
        let r = s.set_mirror_route.as_ref()?;
        Some((r.name.as_str(), r.matches.is_empty(), r))
    })
}

/// Named routes set by the first `done` steps: `route` says a step's
/// (name, whether it removes, route).
fn in_force<'a, T>(
    steps: &'a [CanaryStep],
    done: usize,
    route: impl Fn(&'a CanaryStep) -> Option<(&'a str, bool, &'a T)>,
) -> Vec<&'a T> {
    let mut routes: Vec<(&str, &T)> = Vec::new();
    for (name, removes, r) in steps.iter().take(done).filter_map(route) {
        let at = routes.iter().position(|(have, _)| *have == name);
        match (at, removes) {
            (Some(i), true) => {
                routes.remove(i);
            }
            (Some(i), false) => routes[i] = (name, r),
            (None, true) => {}
            (None, false) => routes.push((name, r)),
        }
    }
    routes.into_iter().map(|(_, r)| r).collect()
}

/// A pause step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait; absent means wait until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub duration: Option<String>,
}

/// Canary scale, independent of traffic weight. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "[has(self.replicas), has(self.weight), has(self.matchTrafficWeight)].filter(x, x).size() == 1"
).message("setCanaryScale sets exactly one of replicas, weight, matchTrafficWeight"))]
#[serde(rename_all = "camelCase")]
pub struct SetCanaryScale {
    /// An absolute number of canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be 0 or more"))]
    pub replicas: Option<i32>,
    /// A percentage (0-100) of `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub weight: Option<i32>,
    /// Go back to scaling the canary with its traffic weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

/// Analysis of the new revision: by default the built-in judge of the
/// proxies' telemetry (its error rate, and p99, alone or against the stable
/// revision); with `templates`, the metrics of those AnalysisTemplates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How often the analysis is evaluated (with templates: how often their
    /// metrics are checked for a measurement due).
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub interval: String,
    /// The built-in judge's limits; unused when `templates` are given (a
    /// template's `sluice` metric carries its own).
    #[serde(flatten)]
    pub builtin: BuiltinAnalysis,
    /// Failed evaluations in a row that abort the rollout (the built-in
    /// judge; a template's metrics have their own `failureLimit`).
    #[serde(default = "default_failure_limit")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be 1 or more"))]
    pub failure_limit: i32,
    /// AnalysisTemplates (or ClusterAnalysisTemplates) whose metrics judge
    /// the new revision instead of the built-in limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub templates: Vec<AnalysisTemplateRef>,
    /// Values of the templates' `args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<AnalysisArg>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: default_interval(),
            builtin: BuiltinAnalysis::default(),
            failure_limit: default_failure_limit(),
            templates: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A reference to an analysis template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// The template's name.
    #[schemars(length(max = 253), regex(pattern = "^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"))]
    pub template_name: String,
    /// A ClusterAnalysisTemplate rather than an AnalysisTemplate of the
    /// Rollout's namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

/// The value of a template argument.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisArg {
    /// The argument's name.
    #[schemars(length(max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Its value; `{{rollout.*}}` is substituted here too.
    #[schemars(length(max = 1024))]
    pub value: String,
}

fn default_interval() -> String {
    "5s".to_owned()
}
fn default_failure_limit() -> i32 {
    1
}

/// Observed state of a [`Rollout`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Healthy`, `Progressing`, `Paused` or `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Why the rollout is in its phase (the reason of its conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RolloutReason>,
    /// A sentence on what the rollout is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Index of the current step in `spec.strategy.canary.steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// The current step as `N/M`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Pod-template hash of the stable revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Pod-template hash of the canary revision, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// Traffic weights currently applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Total pods of the Rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods of the Rollout that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pods of the canary revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Pods available for at least minReadySeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The label selector in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// When the current pause step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_start_time: Option<Time>,
    /// When the current canary started (or was retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_start_time: Option<Time>,
    /// When the current step started, for the progress deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_start_time: Option<Time>,
    /// When the canary was aborted, for its scale-down delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_time: Option<Time>,
    /// Canary pods set by a `setCanaryScale` step, overriding the weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_scale: Option<i32>,
    /// The stable revision before the last promotion, kept until
    /// `scaleDownTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable_revision: Option<String>,
    /// When `previousStableRevision` is scaled to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_time: Option<Time>,
    /// True after an abort, until the template changes or the user retries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborted: bool,
    /// The latest analysis figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// Names of the `setHeaderRoute` routes in force: requests matching
    /// them go to the canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_routes: Vec<String>,
    /// Names of the `setMirrorRoute` routes in force: copies of matching
    /// requests go to the canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror_routes: Vec<String>,
    /// Which revision each blue-green Service selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
    /// `Available`, `Progressing`, `Paused`, `Healthy`, `RolledBack`,
    /// `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Which revision each Service of a blue-green Rollout selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// The revision `activeService` selects.
    pub active_revision: String,
    /// The revision `previewService` selects.
    pub preview_revision: String,
}

/// The phase of a rollout.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// The stable revision serves all traffic and is available.
    Healthy,
    /// A canary is moving through its steps.
    Progressing,
    /// Waiting at a pause step or on `spec.paused`.
    Paused,
    /// Aborted or failed; traffic is back on the stable revision.
    Degraded,
}

/// Why a rollout is in its phase. Conditions, `kubectl sluice get` and the
/// dashboard all read this one value.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutReason {
    /// Healthy: the stable revision serves all traffic.
    RolloutCompleted,
    /// Progressing: waiting for the stable revision's pods.
    WaitingForStablePods,
    /// Progressing: waiting for the canary's pods before moving weight.
    WaitingForCanaryPods,
    /// Progressing: an inline analysis step is being evaluated.
    WaitingForAnalysis,
    /// Progressing: the canary moves through its steps.
    StepAdvanced,
    /// Progressing: the canary is scaled to full size before it becomes stable.
    Promoting,
    /// Progressing: waiting for a blue-green preview's pods.
    WaitingForPreviewPods,
    /// Progressing: `activeService` selects the new revision; its
    /// post-promotion analysis decides whether it stays.
    PostPromotionAnalysis,
    /// Paused: a timed pause step.
    PauseStep,
    /// Paused: a pause step without duration, until promoted.
    PausedUntilPromoted,
    /// Paused: `spec.paused`.
    SpecPaused,
    /// Paused: the analysis never had enough requests to judge the canary.
    InconclusiveAnalysis,
    /// Degraded: the analysis failed; traffic is back on stable.
    AnalysisFailed,
    /// Degraded: aborted by the user.
    Aborted,
    /// Degraded: the canary made no progress within `progressDeadlineSeconds`.
    ProgressDeadlineExceeded,
    /// Degraded: an HTTPRoute of `trafficRouting` (or its backendRef) is gone.
    TrafficRouteMissing,
    /// Degraded: the spec cannot run (a missing Service...).
    InvalidSpec,
}

impl RolloutReason {
    /// As written in conditions and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutReason::RolloutCompleted => "RolloutCompleted",
            RolloutReason::WaitingForStablePods => "WaitingForStablePods",
            RolloutReason::WaitingForCanaryPods => "WaitingForCanaryPods",
            RolloutReason::WaitingForAnalysis => "WaitingForAnalysis",
            RolloutReason::StepAdvanced => "StepAdvanced",
            RolloutReason::Promoting => "Promoting",
            RolloutReason::WaitingForPreviewPods => "WaitingForPreviewPods",
            RolloutReason::PostPromotionAnalysis => "PostPromotionAnalysis",
            RolloutReason::PauseStep => "PauseStep",
            RolloutReason::PausedUntilPromoted => "PausedUntilPromoted",
            RolloutReason::SpecPaused => "SpecPaused",
            RolloutReason::InconclusiveAnalysis => "InconclusiveAnalysis",
            RolloutReason::AnalysisFailed => "AnalysisFailed",
            RolloutReason::Aborted => "Aborted",
            RolloutReason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            RolloutReason::TrafficRouteMissing => "TrafficRouteMissing",
            RolloutReason::InvalidSpec => "InvalidSpec",
        }
    }
}

impl std::fmt::Display for RolloutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict of one analysis evaluation.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
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

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user's request to a running rollout: the value of the
/// [`Request::ANNOTATION`] annotation that `kubectl sluice` and the
/// dashboard set and the controller removes once handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// End the current pause step (or an inconclusive analysis) and go on.
    Promote,
    /// Skip every remaining step and the analysis: to 100%.
    PromoteFull,
    /// Send all traffic back to stable and stop.
    Abort,
    /// Start an aborted canary again from its first step.
    Retry,
}

impl Request {
    /// The annotation that carries a request.
    pub const ANNOTATION: &'static str = "sluice.dev/request";

    /// Every request, for help texts and validation.
    pub const ALL: [Request; 4] = [
        Request::Promote,
        Request::PromoteFull,
        Request::Abort,
        Request::Retry,
    ];

    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Promote => "promote",
            Request::PromoteFull => "promote-full",
            Request::Abort => "abort",
            Request::Retry => "retry",
        }
    }

    /// Parses an annotation value.
    pub fn parse(s: &str) -> Option<Request> {
        Request::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Weights applied to the stable and canary revisions, in percent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Weights {
    /// Percentage of traffic on the stable revision.
    pub stable: i32,
    /// Percentage of traffic on the canary revision.
    pub canary: i32,
}

/// The figures of the latest analysis evaluation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the evaluation ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<Time>,
    /// `Successful`, `Failed` or `Inconclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Canary requests in the window.
    #[serde(default)]
    pub canary_requests: i64,
    /// Stable requests in the window.
    #[serde(default)]
    pub stable_requests: i64,
    /// Canary error rate in the window, as a decimal string (e.g. `0.4812`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_error_rate: Option<String>,
    /// Stable error rate in the window, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_error_rate: Option<String>,
    /// Canary p99 latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_p99_ms: Option<i64>,
    /// Failed evaluations in a row.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// Successful evaluations of this canary so far: a canary with none is
    /// not promoted on its own.
    #[serde(default)]
    pub successful_evaluations: i32,
    /// Which analysis the metrics belong to (`background`, `step 3`,
    /// `pre-promotion`, `post-promotion`): a new one starts them afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The templates' metrics and their latest measurements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, value: Option<&str>) -> CanaryStep {
        CanaryStep {
            set_header_route: Some(SetHeaderRoute {
                name: name.into(),
                matches: value
                    .map(|v| HeaderRouteMatch {
                        header_name: "x-canary".into(),
                        header_value: StringMatch {
                            exact: Some(v.into()),
                            ..Default::default()
                        },
                    })
                    .into_iter()
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_header_route_is_replaced_in_place_and_removed_by_a_step_without_match() {
        let steps = vec![
            route("a", Some("1")),
            route("b", Some("2")),
            route("a", Some("3")),
            route("b", None),
            route("c", None),
        ];
        let values = |done| {
            header_routes(&steps, done)
                .iter()
                .map(|r| {
                    let v = r.matches[0].header_value.exact.as_deref().unwrap_or("");
                    format!("{}={v}", r.name)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(values(0), Vec::<String>::new());
        assert_eq!(values(2), vec!["a=1", "b=2"]);
        assert_eq!(values(3), vec!["a=3", "b=2"]);
        assert_eq!(values(5), vec!["a=3"]);
        assert_eq!(values(99), vec!["a=3"]);
    }

    #[test]
    fn a_header_route_reads_as_its_conditions() {
        let mut r = route("testers", Some("yes"));
        let hr = r.set_header_route.as_mut().expect("a route");
        hr.matches.push(HeaderRouteMatch {
            header_name: "x-user".into(),
            header_value: StringMatch {
                prefix: Some("staff-".into()),
                ..Default::default()
            },
        });
        assert_eq!(hr.to_string(), "testers (x-canary=yes & x-user^=staff-)");
        let removal = route("testers", None);
        let text = removal.set_header_route.as_ref().map(ToString::to_string);
        assert_eq!(text.as_deref(), Some("testers (removed)"));
    }
}
