//! Analysis templates end to end: a real Prometheus scraping the gateway
//! proxy judges the canary with a PromQL error-rate query, a web metric
//! reads a JSON endpoint served by a pod, a job metric runs a Job that
//! curls the canary, and a dry-run metric that fails is shown but holds
//! nothing. A bad canary then fails the Prometheus metric and is rolled
//! back on its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use sluice_crds::analysis::{MetricPhase, MetricResult};
use sluice_crds::{Rollout, RolloutPhase, RolloutReason};
use sluice_tests::Cluster;
use sluice_tests::prometheus::Prometheus;
use sluice_tests::wait::{deployment_available, poll};

use super::rollouts::{
    event_note, healthy_blue, host, phase, rollout, set_image, until, wait_condition, weight,
};
use super::{Load, mesh};

const NS: &str = "ro-analysis";

/// The steps: half the traffic to the canary, the templates' analysis,
/// then a pause until promoted (so that the analysis' status stays to be
/// read).
const STEPS: &str = "[{setWeight: 50}, {analysis: {interval: 1s, templates: [{templateName: error-rate}, {templateName: smoke, clusterScope: true}, {templateName: judge}], args: [{name: prometheus, value: \"PROMETHEUS\"}, {name: judge, value: \"JUDGE\"}]}}, {pause: {}}]";

/// A PromQL error rate of the canary revision as the gateway proxy counts
/// it, on this namespace's backends alone (other scenarios run the same
/// template, so the same revision); a ClusterAnalysisTemplate that curls the canary from a Job; a web
/// metric and a failing dry-run one on a pod's JSON.
fn templates() -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: error-rate, namespace: {NS}}}
spec:
  args: [{{name: prometheus}}, {{name: max, value: "0.1"}}]
  metrics:
  - name: error-rate
    interval: 2s
    initialDelay: 5s
    count: 3
    inconclusiveLimit: 5
    successCondition: "result[0] < {{{{args.max}}}}"
    provider:
      prometheus:
        address: "{{{{args.prometheus}}}}"
        query: |
          (sum(rate(sluice_requests_total{{backend=~"{NS}/.*",revision="{{{{rollout.canaryRevision}}}}",code=~"5.."}}[10s])) or vector(0))
          / sum(rate(sluice_requests_total{{backend=~"{NS}/.*",revision="{{{{rollout.canaryRevision}}}}"}}[10s]))
---
apiVersion: sluice.dev/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {{name: smoke}}
spec:
  metrics:
  - name: smoke
    count: 1
    provider:
      job:
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: smoke
                image: {curl}
                # The step starts as soon as the weight is set; the canary's
                # endpoints may reach kube-proxy and the mesh a moment later,
                # as with a smoke Job under any rollout controller.
                command: [curl, -sf, --retry, "5", --retry-all-errors, --retry-delay, "1", --retry-max-time, "15", -o, /dev/null, "http://handson-canary.{{{{rollout.namespace}}}}.svc.cluster.local:8080/"]
---
apiVersion: sluice.dev/v1alpha1
kind: AnalysisTemplate
metadata: {{name: judge, namespace: {NS}}}
spec:
  args: [{{name: judge}}]
  metrics:
  - name: page-ok
    interval: 2s
    count: 2
    successCondition: "result == true"
    provider:
      web: {{url: "{{{{args.judge}}}}/verdict.json", jsonPath: "$.data.ok"}}
  - name: budget
    count: 1
    dryRun: true
    successCondition: "result > 1"
    provider:
      web: {{url: "{{{{args.judge}}}}/verdict.json", jsonPath: "$.data.budget"}}
---
"#,
        curl = sluice_proto::images::CURL
    )
}

/// A pod serving `/verdict.json` with busybox httpd, and a webhook
/// receiver: a CGI script that appends each POSTed body to `/events.log`
/// in one write (notifications arrive concurrently), which httpd serves
/// too; and their Service.
fn judge() -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: hook, namespace: {NS}}}
data:
  hook: |
    #!/bin/sh
    body=$(head -c "$CONTENT_LENGTH")
    echo "$body" >> /www/events.log
    printf 'Content-Type: text/plain\r\n\r\nok\n'
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: judge, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: judge}}}}
  template:
    metadata: {{labels: {{app: judge}}}}
    spec:
      containers:
      - name: httpd
        image: {curl}
        command: [sh, -c, "echo '{{\"data\": {{\"ok\": true, \"budget\": 0.9}}}}' > /www/verdict.json && touch /www/events.log && exec httpd -f -p 8080 -h /www"]
        ports: [{{name: http, containerPort: 8080}}]
        volumeMounts: [{{name: www, mountPath: /www}}, {{name: hook, mountPath: /www/cgi-bin}}]
        readinessProbe:
          httpGet: {{path: /verdict.json, port: http}}
          periodSeconds: 1
      volumes:
      - {{name: www, emptyDir: {{}}}}
      - name: hook
        configMap: {{name: hook, defaultMode: 0755}}
---
apiVersion: v1
kind: Service
metadata: {{name: judge, namespace: {NS}}}
spec:
  selector: {{app: judge}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
---
"#,
        curl = sluice_proto::images::CURL
    )
}

/// The notifications the receiver got so far, one JSON object per line.
async fn received(judge: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = sluice_tests::operator::http()
        .get(format!("{judge}/events.log"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn metric<'a>(ro: &'a Rollout, name: &str) -> Option<&'a MetricResult> {
    ro.status
        .as_ref()?
        .analysis
        .as_ref()?
        .metrics
        .iter()
        .find(|m| m.name == name)
}

fn metric_phase(ro: &Rollout, name: &str) -> Option<MetricPhase> {
    metric(ro, name).map(|m| m.phase)
}

/// The scenario: a good canary passes every metric (the dry run's failure
/// shown), a bad one fails the Prometheus metric and is rolled back.
pub async fn templates_judge_the_canary(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let prometheus = Prometheus::start(&cluster).await?;
    let mesh = mesh(&cluster).await?;
    cluster.create_namespace(NS).await?;
    cluster.apply(&judge())?;
    cluster.apply(&templates())?;
    // The README's example is admitted as it stands.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/rollouts/analysis-templates.yaml")
        .display()
        .to_string();
    cluster.kubectl(
        &["apply", "--dry-run=server", "-n", NS, "-f", &example],
        None,
    )?;
    // A condition that does not parse is refused at admission, naming it.
    let refused = cluster
        .apply(&templates().replace("result[0] < {{args.max}}", "result[0] <"))
        .err()
        .context("a template whose condition does not parse was admitted")?;
    ensure!(
        refused
            .to_string()
            .contains("spec.metrics[0]: successCondition does not parse"),
        "{refused}"
    );
    deployment_available(&cluster.client(), NS, "judge", super::TIMEOUT).await?;
    let judge_ip = cluster.cluster_ip(NS, "judge").await?;
    let judge = format!("http://{judge_ip}:8080");
    let steps = STEPS
        .replace("PROMETHEUS", &prometheus.url)
        .replace("JUDGE", &judge);
    healthy_blue(&cluster, NS, &steps, "null").await?;
    prometheus.until_scraping().await?;
    // Every decision to the receiver; rollbacks also to a webhook that
    // refuses every attempt, whose failures are counted.
    Api::<Rollout>::namespaced(cluster.client(), NS)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"notifications": {"webhooks": [
                {"url": format!("{judge}/cgi-bin/hook")},
                {"url": "http://127.0.0.1:9/refused", "reasons": ["AnalysisFailed"]},
            ]}}})),
        )
        .await?;

    // A good canary: every metric passes, the dry run fails and is shown.
    let load = Load::start(mesh.gateway_ip.clone(), host(NS));
    set_image(&cluster, NS, "green", 0.0).await?;
    let ro = until(
        &cluster,
        NS,
        "the analysis passed and the last pause holds",
        |ro| ro.status.as_ref().and_then(|s| s.reason) == Some(RolloutReason::PausedUntilPromoted),
    )
    .await?;
    load.finish().await?;
    for (name, want) in [
        ("error-rate", MetricPhase::Successful),
        ("smoke", MetricPhase::Successful),
        ("page-ok", MetricPhase::Successful),
        ("budget", MetricPhase::Failed),
    ] {
        ensure!(
            metric_phase(&ro, name) == Some(want),
            "metric {name} is {:?}, not {want:?}: {:?}",
            metric_phase(&ro, name),
            ro.status.as_ref().and_then(|s| s.analysis.as_ref())
        );
    }
    let rate = metric(&ro, "error-rate").context("error-rate")?;
    ensure!(rate.count == 3 && rate.successful == 3, "{rate:?}");
    let first = rate.measurements.last().and_then(|m| m.value.clone());
    eprintln!("analysis: Prometheus error rate of the good canary: {first:?}");
    ensure!(
        metric(&ro, "budget").is_some_and(|m| m.dry_run),
        "the dry-run metric is not marked as one"
    );
    let tree = cluster.kubectl(&["sluice", "-n", NS, "get", "rollout", "handson"], None)?;
    for want in ["error-rate", "smoke", "page-ok", "budget", "[dry run]"] {
        ensure!(
            tree.contains(want),
            "kubectl sluice get lacks {want}:\n{tree}"
        );
    }
    cluster.kubectl(&["sluice", "-n", NS, "promote", "--full", "handson"], None)?;
    wait_condition(&cluster, NS, "handson", "Healthy", 60)?;

    // A bad canary, judged by the Prometheus metric alone.
    Api::<Rollout>::namespaced(cluster.client(), NS)
        .patch(
            "handson",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/strategy/canary/steps/1/analysis/templates",
                 "value": [{"templateName": "error-rate"}]},
            ]))?),
        )
        .await?;
    let load = Load::start(mesh.gateway_ip.clone(), host(NS));
    set_image(&cluster, NS, "red", 0.5).await?;
    wait_condition(&cluster, NS, "handson", "RolledBack", 60)?;
    load.finish().await?;
    let ro = rollout(&cluster, NS).await?;
    ensure!(
        phase(&ro) == Some(RolloutPhase::Degraded) && weight(&ro) == 0,
        "{:?}",
        ro.status
    );
    let failed = metric(&ro, "error-rate").context("no error-rate metric in status")?;
    ensure!(failed.phase == MetricPhase::Failed, "{failed:?}");
    let why = event_note(&cluster, NS, "AnalysisFailed").await?;
    eprintln!("analysis: {why}");
    ensure!(
        why.contains("metric error-rate failed"),
        "the event does not name the metric: {why}"
    );
    let seen = prometheus
        .first_sample("count(sluice_requests_total)")
        .await?
        .unwrap_or(0.0);
    eprintln!("analysis: Prometheus holds {seen} sluice_requests_total series");
    notifications_arrived(&cluster, &judge).await
}

/// The receiver got the decisions of both canaries as JSON, the rollback
/// among them; the refusing webhook's failures are counted once retried.
async fn notifications_arrived(cluster: &Cluster, judge: &str) -> anyhow::Result<()> {
    let mesh = mesh(cluster).await?;
    let got = poll(
        "an AnalysisFailed notification",
        super::TIMEOUT,
        Duration::from_millis(200),
        || async {
            let got = received(judge)
                .await
                .map_err(|e| sluice_tests::Error::Check(e.to_string()))?;
            Ok(got
                .iter()
                .any(|n| n["reason"] == "AnalysisFailed")
                .then_some(got))
        },
    )
    .await;
    let got = match got {
        Ok(got) => got,
        Err(e) => {
            let operator = mesh.operator.lock().await;
            let counted = operator.metrics_text().await.unwrap_or_default();
            let counted: Vec<&str> = counted
                .lines()
                .filter(|l| l.starts_with("sluice_notifications"))
                .collect();
            let log = operator.log();
            let said: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("notification"))
                .take(10)
                .collect();
            anyhow::bail!(
                "{e}; received {:?}; counted {counted:?}; operator said {said:?}",
                received(judge).await
            );
        }
    };
    let reasons: Vec<&str> = got.iter().filter_map(|n| n["reason"].as_str()).collect();
    eprintln!("analysis: notifications received: {reasons:?}");
    for want in ["StepAdvanced", "AnalysisPassed", "AnalysisFailed"] {
        ensure!(
            reasons.contains(&want),
            "no {want} notification: {reasons:?}"
        );
    }
    let failed = got
        .iter()
        .find(|n| n["reason"] == "AnalysisFailed")
        .context("AnalysisFailed")?;
    ensure!(
        failed["rollout"] == "handson"
            && failed["type"] == "Warning"
            && failed["weights"]["canary"] == 0,
        "{failed}"
    );
    let operator = mesh.operator.lock().await;
    poll(
        "the refused webhook counted as failed",
        super::TIMEOUT,
        Duration::from_millis(200),
        || async {
            let n = operator
                .counter("sluice_notifications_total", "result=\"failed\"")
                .await?;
            Ok((n >= 1.0).then_some(()))
        },
    )
    .await?;
    Ok(())
}
