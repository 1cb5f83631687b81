//! `AnalysisTemplate` and `ClusterAnalysisTemplate`: metrics that Rollouts'
//! analyses reference by name, so that a team writes its SLO queries once
//! and every service reuses them with its own `args`.
//!
//! A metric is measured by one provider (the proxies' own telemetry,
//! Prometheus, a web endpoint or a Job) every `interval`, and each
//! measurement is judged by `successCondition` / `failureCondition`, CEL
//! expressions over `result`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::rules::{DURATION_MESSAGE, DURATION_RULE};

/// An http(s) URL, or one that starts with a placeholder (`{{args.url}}`)
/// and is checked once substituted.
const URL_PATTERN: &str = "^(https?://|\\{\\{)";

/// An RFC 1123 label: metric and argument names.
const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Desired state of an [`AnalysisTemplate`].
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    shortname = "at",
    category = "sluice"
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// Arguments the metrics' queries use as `{{args.NAME}}`; a Rollout's
    /// analysis gives their values (or the default here stands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<TemplateArg>,
    /// The metrics; the analysis passes when every one that is not a dry
    /// run does.
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<Metric>,
}

/// Desired state of a [`ClusterAnalysisTemplate`]: the same as an
/// [`AnalysisTemplateSpec`], usable from every namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    shortname = "cat",
    category = "sluice"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAnalysisTemplateSpec {
    /// See [`AnalysisTemplateSpec::args`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<TemplateArg>,
    /// See [`AnalysisTemplateSpec::metrics`].
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<Metric>,
}

impl From<ClusterAnalysisTemplateSpec> for AnalysisTemplateSpec {
    fn from(c: ClusterAnalysisTemplateSpec) -> Self {
        AnalysisTemplateSpec {
            args: c.args,
            metrics: c.metrics,
        }
    }
}

/// An argument a template declares.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateArg {
    /// Referenced as `{{args.NAME}}`.
    #[schemars(length(max = 63), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The value when the Rollout gives none; without one the Rollout must.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
}

/// One metric: what to measure, how often and how to judge it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "has(self.provider.sluice) || has(self.provider.job) ? !has(self.successCondition) && !has(self.failureCondition) : has(self.successCondition) || has(self.failureCondition)"
).message("prometheus and web metrics need successCondition or failureCondition; sluice and job metrics judge themselves and take neither"))]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Unique within the analysis; status reports measurements under it.
    #[schemars(length(max = 63), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Time between measurements.
    #[serde(default = "default_metric_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub interval: String,
    /// Wait this long after the analysis starts before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub initial_delay: Option<String>,
    /// Measurements to take; the metric is Successful once all are taken
    /// within its limits. Without a count it measures for as long as the
    /// analysis runs and passes while its latest measurement does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<i32>,
    /// A CEL expression over `result` that is true when a measurement is
    /// good, e.g. `result[0] < 0.05`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub success_condition: Option<String>,
    /// A CEL expression over `result` that is true when a measurement is
    /// bad; it wins over `successCondition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated: one more fails the metric.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_limit: i32,
    /// Inconclusive measurements (neither condition held) and errors (the
    /// provider failed to answer, the expression could not be evaluated)
    /// tolerated: one more makes the metric Inconclusive, which pauses the
    /// rollout rather than pass it.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub inconclusive_limit: i32,
    /// Measured and shown, but never fails or holds the rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Where the measurement comes from.
    pub provider: MetricProvider,
}

fn default_metric_interval() -> String {
    "10s".to_owned()
}

/// Exactly one source of measurements.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "[has(self.sluice), has(self.prometheus), has(self.web), has(self.job)].filter(x, x).size() == 1"
).message("provider sets exactly one of sluice, prometheus, web, job"))]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// The proxies' telemetry of the new revision, judged by the built-in
    /// error-rate (and p99) limits; `result` is its error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sluice: Option<BuiltinAnalysis>,
    /// An instant PromQL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// A JSON value from an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// A Kubernetes Job: the measurement succeeds when the Job does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobMetric>,
}

/// A Prometheus instant query. `result` is the list of the vector's sample
/// values (`result[0]`), or the scalar's value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// The server's base URL, e.g. `http://prometheus.monitoring:9090`
    /// (or a placeholder that gives one).
    #[schemars(length(max = 512), regex(pattern = URL_PATTERN))]
    pub address: String,
    /// The PromQL query; `{{args.NAME}}` and `{{rollout.*}}` are substituted.
    #[schemars(length(max = 4096))]
    pub query: String,
    /// How long to wait for an answer before the measurement is an Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
    /// Headers sent with the query (e.g. an Authorization header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
}

/// A JSON endpoint. `result` is the value at `jsonPath` (the whole body
/// without one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebMetric {
    /// The URL; `{{args.NAME}}` and `{{rollout.*}}` are substituted.
    #[schemars(length(max = 2048), regex(pattern = URL_PATTERN))]
    pub url: String,
    /// `GET` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WebMethod>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<MetricHeader>,
    /// A request body for `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub body: Option<String>,
    /// A JSONPath into the response, e.g. `$.data.errorRate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub json_path: Option<String>,
    /// How long to wait for an answer before the measurement is an Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
}

/// The HTTP method of a web metric.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebMethod {
    /// Without a body.
    Get,
    /// With `body`.
    Post,
}

/// A request header of a metric's provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricHeader {
    /// The header name.
    #[schemars(length(max = 256), regex(pattern = "^[A-Za-z0-9!#$%&*+.^_|~-]+$"))]
    pub name: String,
    /// Its value; `{{args.NAME}}` is substituted.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A Job run once per measurement, in the Rollout's namespace and owned by
/// it. Its string fields take `{{args.NAME}}` and `{{rollout.*}}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobMetric {
    /// Labels added to the Job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Job's spec.
    pub spec: JobSpec,
}

/// The phase of one measurement, and of a metric over its measurements.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricPhase {
    /// Being measured (a Job runs), or a metric with measurements to come.
    Running,
    /// Within its conditions; a metric: every measurement taken, within
    /// its limits.
    Successful,
    /// Outside its conditions; a metric: more failures than `failureLimit`.
    Failed,
    /// Neither condition held; a metric: more inconclusive measurements
    /// and errors than `inconclusiveLimit`.
    Inconclusive,
    /// The provider or the expression failed.
    Error,
}

impl MetricPhase {
    /// As written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricPhase::Running => "Running",
            MetricPhase::Successful => "Successful",
            MetricPhase::Failed => "Failed",
            MetricPhase::Inconclusive => "Inconclusive",
            MetricPhase::Error => "Error",
        }
    }
}

impl std::fmt::Display for MetricPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement of a metric.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// What it concluded.
    pub phase: MetricPhase,
    /// The measured value as text (`[0.0123]`, `0.5`, `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why it errored, failed or is inconclusive, or the Job it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished (absent while Running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// A metric's measurements so far in the running analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// The metric's name.
    pub name: String,
    /// Where it stands.
    pub phase: MetricPhase,
    /// Measured for information only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Measurements taken.
    #[serde(default)]
    pub count: i32,
    /// Successful measurements.
    #[serde(default)]
    pub successful: i32,
    /// Failed measurements.
    #[serde(default)]
    pub failed: i32,
    /// Inconclusive measurements.
    #[serde(default)]
    pub inconclusive: i32,
    /// Measurements that errored.
    #[serde(default)]
    pub error: i32,
    /// The latest measurements, newest last (at most ten).
    #[serde(default)]
    pub measurements: Vec<Measurement>,
}

/// The built-in judge: the new revision's error rate (and p99) from the
/// proxies' telemetry over a sliding window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinAnalysis {
    /// The sliding window of telemetry each evaluation looks at.
    #[serde(default = "default_window")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub window: String,
    /// Highest acceptable fraction of failed requests (5xx and connection
    /// failures), from 0 to 1.
    #[serde(default = "default_max_error_rate")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be between 0 and 1"))]
    pub max_error_rate: f64,
    /// Highest acceptable p99 latency of the canary, as a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 32))]
    pub max_latency_p99: Option<String>,
    /// Fewer canary requests than this in the window make the evaluation
    /// inconclusive, never a failure.
    #[serde(default = "default_min_requests")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be 1 or more"))]
    pub min_requests: i64,
    /// Judge the canary against the stable revision instead of the absolute
    /// limit alone, so that a shared downstream outage does not blame it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_with_stable: Option<StableComparison>,
}

impl Default for BuiltinAnalysis {
    fn default() -> Self {
        BuiltinAnalysis {
            window: default_window(),
            max_error_rate: default_max_error_rate(),
            max_latency_p99: None,
            min_requests: default_min_requests(),
            compare_with_stable: None,
        }
    }
}

fn default_window() -> String {
    "30s".to_owned()
}
fn default_max_error_rate() -> f64 {
    0.05
}
fn default_min_requests() -> i64 {
    20
}

/// The comparison mode of an analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StableComparison {
    /// How far (as a fraction, 0-1) the canary's error rate may exceed the
    /// stable's before the evaluation fails.
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be between 0 and 1"))]
    pub max_error_rate_margin: f64,
}
