//! Judging the new revision. Without templates, the built-in judge of the
//! proxies' telemetry ([`builtin`]); with them, each template metric is
//! measured by its provider when due ([`measure`]) and judged by its
//! conditions ([`condition`]), and the metrics' counts decide
//! ([`metric`]).

pub mod builtin;
pub mod condition;
pub mod measure;
pub mod metric;
pub mod template;

use futures::future::join_all;
use sluice_crds::analysis::MetricResult;
use sluice_crds::rollout::{AnalysisSpec, AnalysisStatus};

use super::Context;
use super::model::{Evaluation, time};
use measure::Subject;
use metric::Due;
use template::{RolloutVars, TemplateError};

/// Evaluates `spec` for `s`: the built-in judge, or the templates' metrics
/// that are due (the others keep their last results).
pub async fn evaluate(
    ctx: &Context,
    s: &Subject<'_>,
    spec: &AnalysisSpec,
) -> Result<Evaluation, TemplateError> {
    if spec.templates.is_empty() {
        return Ok(builtin::analyse(
            ctx,
            s.rollout,
            s.ns,
            s.canary,
            &spec.builtin,
            s.since,
            s.now,
        ));
    }
    let status = s.rollout.status.clone().unwrap_or_default();
    let vars = RolloutVars {
        name: kube::ResourceExt::name_any(s.rollout),
        namespace: s.ns.to_owned(),
        canary_revision: s.canary.to_owned(),
        stable_revision: status.stable_revision.clone().unwrap_or_default(),
    };
    let metrics = template::resolve(&ctx.client, spec, &vars).await?;
    let run = s.run.to_string();
    let previous: Vec<MetricResult> = status
        .analysis
        .filter(|a| a.run.as_deref() == Some(run.as_str()))
        .map(|a| a.metrics)
        .unwrap_or_default();
    let started = s.started.unwrap_or(s.now);
    let results = join_all(metrics.iter().map(|m| {
        let prev = previous.iter().find(|r| r.name == m.name).cloned();
        async move {
            match metric::due(m, prev.as_ref(), started, s.now) {
                due @ (Due::Measure(_) | Due::Poll(_)) => {
                    let taken = measure::take(ctx, s, m, due).await;
                    Some(metric::record(m, prev, taken))
                }
                Due::Wait(_) | Due::Done => prev,
            }
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    let (verdict, reason) = metric::verdict(&metrics, &results);
    Ok(Evaluation {
        verdict,
        figures: AnalysisStatus {
            evaluated_at: Some(time(s.now)),
            verdict: Some(verdict),
            run: Some(run),
            metrics: results,
            ..AnalysisStatus::default()
        },
        reason,
    })
}
