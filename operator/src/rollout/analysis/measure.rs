//! Taking one measurement of a metric from its provider: the proxies'
//! telemetry, a Prometheus instant query, a JSON endpoint or a Job. Every
//! failure to measure is a measurement in phase `Error` with the reason,
//! never a pass.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde_json::Value;
use sluice_crds::Rollout;
use sluice_crds::analysis::{
    JobMetric, Measurement, Metric, MetricPhase, PrometheusMetric, WebMethod, WebMetric,
};
use sluice_crds::rollout::Verdict;

use super::super::model::{AnalysisRun, time};
use super::super::{Context, ROLLOUT_LABEL, duration};
use super::builtin;
use super::condition::Conditions;
use super::metric::Due;

/// The label that names the metric a Job measures.
pub const METRIC_LABEL: &str = "sluice.dev/analysis-metric";

/// What is being analysed.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The Rollout.
    pub rollout: &'a Rollout,
    /// Its namespace.
    pub ns: &'a str,
    /// The new revision's hash.
    pub canary: &'a str,
    /// Which analysis of the Rollout runs.
    pub run: AnalysisRun,
    /// Since when the new revision's telemetry counts (Unix seconds).
    pub since: Option<i64>,
    /// When this analysis started: `initialDelay` counts from here.
    pub started: Option<i64>,
    /// Unix seconds.
    pub now: i64,
}

/// Takes the measurement `due` says for `metric`.
pub async fn take(ctx: &Context, s: &Subject<'_>, metric: &Metric, due: Due) -> Measurement {
    let p = &metric.provider;
    if let Some(b) = &p.sluice {
        let e = builtin::analyse(ctx, s.rollout, s.ns, s.canary, b, s.since, s.now);
        let phase = match e.verdict {
            Verdict::Successful => MetricPhase::Successful,
            Verdict::Failed => MetricPhase::Failed,
            Verdict::Inconclusive => MetricPhase::Inconclusive,
        };
        return finished(phase, e.figures.canary_error_rate, Some(e.reason), s.now);
    }
    if let Some(job) = &p.job {
        return match due {
            Due::Poll(n) => poll_job(ctx, s, metric, n).await,
            _ => start_job(ctx, s, metric, job, n_of(due)).await,
        };
    }
    let result = if let Some(prom) = &p.prometheus {
        prometheus(&ctx.http, prom).await
    } else if let Some(web) = &p.web {
        fetch(&ctx.http, web).await
    } else {
        Err("the metric names no provider".to_owned())
    };
    match result {
        Ok(value) => judge(metric, &value, s.now),
        Err(why) => finished(MetricPhase::Error, None, Some(why), s.now),
    }
}

fn n_of(due: Due) -> i32 {
    match due {
        Due::Measure(n) | Due::Poll(n) => n,
        Due::Wait(_) | Due::Done => 0,
    }
}

fn finished(
    phase: MetricPhase,
    value: Option<String>,
    message: Option<String>,
    now: i64,
) -> Measurement {
    Measurement {
        phase,
        value,
        message,
        started_at: Some(time(now)),
        finished_at: Some(time(now)),
    }
}

/// Judges `value` by the metric's conditions.
fn judge(metric: &Metric, value: &Value, now: i64) -> Measurement {
    let text = shown(value);
    match Conditions::of(metric).and_then(|c| c.judge(value)) {
        Ok(phase) => finished(phase, Some(text), None, now),
        Err(e) => finished(MetricPhase::Error, Some(text), Some(e.to_string()), now),
    }
}

/// A value as status shows it: its JSON, at most 256 bytes.
fn shown(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 256 {
        let mut cut = 253;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn timeout(t: Option<&str>) -> Duration {
    t.and_then(duration).unwrap_or(Duration::from_secs(10))
}

/// An instant query: a vector gives the list of its sample values, a
/// scalar its value. A sample that is not a number (`NaN` from a ratio of
/// no traffic) is `null`, which no numeric condition accepts.
async fn prometheus(http: &reqwest::Client, p: &PrometheusMetric) -> Result<Value, String> {
    let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
    let mut req = http
        .get(&url)
        .query(&[("query", p.query.as_str())])
        .timeout(timeout(p.timeout.as_deref()));
    for h in &p.headers {
        req = req.header(&h.name, &h.value);
    }
    let body = answer(req, &url).await?;
    prometheus_result(&body)
}

/// The `result` of a Prometheus query API answer.
pub fn prometheus_result(body: &Value) -> Result<Value, String> {
    if body["status"] != "success" {
        return Err(format!(
            "prometheus answered {}: {}",
            body["errorType"].as_str().unwrap_or("an error"),
            body["error"].as_str().unwrap_or("no detail")
        ));
    }
    let sample = |v: &Value| -> Value {
        v.get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    };
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("vector") => Ok(Value::Array(
            data["result"]
                .as_array()
                .map(|r| r.iter().map(|s| sample(&s["value"])).collect())
                .unwrap_or_default(),
        )),
        Some("scalar") => Ok(sample(&data["result"])),
        other => Err(format!(
            "prometheus gave a {} result; an instant query of a vector or scalar is needed",
            other.unwrap_or("missing")
        )),
    }
}

/// The value at the metric's JSON path in the endpoint's answer.
async fn fetch(http: &reqwest::Client, w: &WebMetric) -> Result<Value, String> {
    let mut req = match w.method {
        Some(WebMethod::Post) => http.post(&w.url).body(w.body.clone().unwrap_or_default()),
        Some(WebMethod::Get) | None => http.get(&w.url),
    };
    req = req.timeout(timeout(w.timeout.as_deref()));
    for h in &w.headers {
        req = req.header(&h.name, &h.value);
    }
    let body = answer(req, &w.url).await?;
    match w.json_path.as_deref() {
        Some(path) => select(&body, path),
        None => Ok(body),
    }
}

/// The values `path` selects in `body`: one value as itself, several as a
/// list, none an error. Argo's `{$.a.b}` form is read too.
pub fn select(body: &Value, path: &str) -> Result<Value, String> {
    use jsonpath_rust::JsonPath;
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let found = body
        .query(path)
        .map_err(|e| format!("jsonPath {path} does not parse: {e}"))?;
    match found.as_slice() {
        [] => Err(format!(
            "jsonPath {path} matched nothing in {}",
            shown(body)
        )),
        [one] => Ok((*one).clone()),
        many => Ok(Value::Array(many.iter().map(|v| (*v).clone()).collect())),
    }
}

/// Sends `req` and reads a JSON answer; anything but a 2xx is an error.
async fn answer(req: reqwest::RequestBuilder, url: &str) -> Result<Value, String> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("{url} did not answer in time")
        } else {
            format!("{url}: {e}")
        }
    })?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?;
    if !status.is_success() {
        let text: String = text.chars().take(200).collect();
        return Err(format!("{url} answered {status}: {text}"));
    }
    serde_json::from_str(&text)
        .map_err(|e| format!("{url} answered something other than JSON: {e}"))
}

/// The Job of measurement `n`: one name per Rollout, revision, analysis,
/// metric and measurement, so that a restarted operator finds the Job it
/// started instead of starting another.
pub fn job_name(rollout: &str, s: &Subject<'_>, metric: &str, n: i32) -> String {
    let suffix = format!("-{}-{}-{metric}-{n}", s.canary, s.run.tag());
    let keep = 63usize
        .saturating_sub(suffix.len())
        .clamp(1, rollout.len().max(1));
    let mut name = format!("{}{suffix}", rollout.get(..keep).unwrap_or(rollout));
    name.truncate(63);
    name.trim_end_matches(['-', '.']).to_owned()
}

async fn start_job(
    ctx: &Context,
    s: &Subject<'_>,
    metric: &Metric,
    job: &JobMetric,
    n: i32,
) -> Measurement {
    let rollout = s.rollout.name_any();
    let name = job_name(&rollout, s, &metric.name, n);
    let mut labels = job.labels.clone();
    labels.insert(ROLLOUT_LABEL.to_owned(), rollout.clone());
    labels.insert(METRIC_LABEL.to_owned(), metric.name.clone());
    let object = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(s.ns.to_owned()),
            labels: Some(labels),
            owner_references: s.rollout.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(job.spec.clone()),
        status: None,
    };
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), s.ns);
    let running = running(&name, s.now);
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => running,
        Err(kube::Error::Api(e)) if e.code == 409 => running,
        Err(e) => finished(
            MetricPhase::Error,
            None,
            Some(format!("creating Job {name}: {e}")),
            s.now,
        ),
    }
}

async fn poll_job(ctx: &Context, s: &Subject<'_>, metric: &Metric, n: i32) -> Measurement {
    let name = job_name(&s.rollout.name_any(), s, &metric.name, n);
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), s.ns);
    let job = match api.get_opt(&name).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            return finished(
                MetricPhase::Error,
                None,
                Some(format!("Job {name} is gone")),
                s.now,
            );
        }
        Err(e) => {
            return finished(
                MetricPhase::Error,
                None,
                Some(format!("reading Job {name}: {e}")),
                s.now,
            );
        }
    };
    let started = job.metadata.creation_timestamp.clone();
    let mut m = job_outcome(&name, &job, s.now);
    m.started_at = started.or(m.started_at);
    m
}

/// Where Job `name` stands: Successful once it succeeded, Failed with its
/// failure condition's message, Running otherwise.
pub fn job_outcome(name: &str, job: &Job, now: i64) -> Measurement {
    let status = job.status.clone().unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    if let Some(c) = failed {
        let why = c.message.clone().or(c.reason.clone()).unwrap_or_default();
        return finished(
            MetricPhase::Failed,
            Some("failed".into()),
            Some(format!("Job {name} failed: {why}")),
            now,
        );
    }
    let complete = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Complete" && c.status == "True");
    if complete || status.succeeded.unwrap_or(0) > 0 {
        return finished(
            MetricPhase::Successful,
            Some("succeeded".into()),
            Some(format!("Job {name} succeeded")),
            now,
        );
    }
    running(name, now)
}

/// Job `name`'s measurement while it runs.
fn running(name: &str, now: i64) -> Measurement {
    Measurement {
        phase: MetricPhase::Running,
        value: None,
        message: Some(format!("Job {name} runs")),
        started_at: Some(time(now)),
        finished_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_vector_answer_is_the_list_of_its_samples() {
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "a"}, "value": [1700000000.1, "0.25"]},
            {"metric": {"pod": "b"}, "value": [1700000000.1, "NaN"]}
        ]}});
        assert_eq!(prometheus_result(&body), Ok(json!([0.25, null])));
    }

    #[test]
    fn a_scalar_answer_is_its_value_and_an_error_answer_is_an_error() {
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(prometheus_result(&scalar), Ok(json!(3.0)));
        let bad =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        let e = prometheus_result(&bad).expect_err("an error");
        assert!(e.contains("bad_data") && e.contains("parse error"), "{e}");
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(prometheus_result(&matrix).is_err());
    }

    #[test]
    fn a_json_path_selects_one_value_many_or_none() {
        let body = json!({"data": {"ok": true, "rates": [0.1, 0.2]}});
        assert_eq!(select(&body, "$.data.ok"), Ok(json!(true)));
        assert_eq!(select(&body, "{$.data.ok}"), Ok(json!(true)));
        assert_eq!(select(&body, "$.data.rates[*]"), Ok(json!([0.1, 0.2])));
        assert!(select(&body, "$.data.missing").is_err());
    }

    #[test]
    fn a_job_is_running_until_it_completes_or_fails() {
        let job = |conditions: Value| -> Job {
            serde_json::from_value(
                json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
            )
            .expect("a job")
        };
        assert_eq!(
            job_outcome("j", &job(json!([])), 0).phase,
            MetricPhase::Running
        );
        let done = job(json!([{"type": "Complete", "status": "True"}]));
        assert_eq!(job_outcome("j", &done, 0).phase, MetricPhase::Successful);
        let failed =
            job(json!([{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]));
        let m = job_outcome("j", &failed, 0);
        assert_eq!(m.phase, MetricPhase::Failed);
        assert!(
            m.message
                .is_some_and(|t| t.contains("BackoffLimitExceeded"))
        );
    }
}
