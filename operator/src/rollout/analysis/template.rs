//! The metrics a Rollout's analysis runs: its templates read from the API
//! server, their `{{args.NAME}}` and `{{rollout.*}}` placeholders filled
//! in, their conditions compiled. Every way this fails names the template
//! and the field, and holds the rollout as an invalid spec.

use std::collections::BTreeMap;

use kube::{Api, Client};
use serde_json::Value;
use sluice_crds::analysis::{AnalysisTemplateSpec, Metric};
use sluice_crds::rollout::AnalysisSpec;
use sluice_crds::{AnalysisTemplate, ClusterAnalysisTemplate};
use thiserror::Error;

use super::condition::{ConditionError, Conditions};

/// Why the templates of an analysis cannot run.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// A referenced template does not exist.
    #[error("{kind} {name} does not exist")]
    Missing {
        /// `AnalysisTemplate` or `ClusterAnalysisTemplate`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Reading it failed (other than not found).
    #[error("reading {kind} {name}: {source}")]
    Read {
        /// `AnalysisTemplate` or `ClusterAnalysisTemplate`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What the API server said.
        source: Box<kube::Error>,
    },
    /// A placeholder names an argument with no value, or an unknown
    /// variable.
    #[error(
        "{template}: metric {metric} uses {{{{{variable}}}}}, which has no value (give it in the Rollout's analysis args)"
    )]
    Unbound {
        /// The template.
        template: String,
        /// The metric.
        metric: String,
        /// The placeholder's content, e.g. `args.service`.
        variable: String,
    },
    /// Two templates (or one) define a metric twice.
    #[error("metric {0} is defined twice across the analysis templates")]
    Duplicate(String),
    /// A condition does not parse.
    #[error("{template}: metric {metric}: {source}")]
    Condition {
        /// The template.
        template: String,
        /// The metric.
        metric: String,
        /// The parser's complaint.
        source: ConditionError,
    },
    /// A URL is not http(s) once its placeholders are filled.
    #[error("{template}: metric {metric}: {url:?} is not an http:// or https:// URL")]
    Url {
        /// The template.
        template: String,
        /// The metric.
        metric: String,
        /// The URL as substituted.
        url: String,
    },
    /// The substituted metric no longer reads as a metric.
    #[error("{template}: metric {metric}: {source}")]
    Shape {
        /// The template.
        template: String,
        /// The metric.
        metric: String,
        /// What did not fit.
        source: serde_json::Error,
    },
}

/// The values of `{{rollout.*}}`.
#[derive(Debug, Clone, Default)]
pub struct RolloutVars {
    /// `{{rollout.name}}`.
    pub name: String,
    /// `{{rollout.namespace}}`.
    pub namespace: String,
    /// `{{rollout.canaryRevision}}`: the new revision's pod-template hash.
    pub canary_revision: String,
    /// `{{rollout.stableRevision}}`.
    pub stable_revision: String,
}

/// Reads `spec`'s templates and returns their metrics, ready to measure.
pub async fn resolve(
    client: &Client,
    spec: &AnalysisSpec,
    vars: &RolloutVars,
) -> Result<Vec<Metric>, TemplateError> {
    let mut metrics: Vec<Metric> = Vec::new();
    for r in &spec.templates {
        let (kind, template) =
            read(client, &vars.namespace, &r.template_name, r.cluster_scope).await?;
        let label = format!("{kind} {}", r.template_name);
        for metric in instantiate(&label, &template, spec, vars)? {
            if metrics.iter().any(|m| m.name == metric.name) {
                return Err(TemplateError::Duplicate(metric.name));
            }
            metrics.push(metric);
        }
    }
    Ok(metrics)
}

async fn read(
    client: &Client,
    ns: &str,
    name: &str,
    cluster: bool,
) -> Result<(&'static str, AnalysisTemplateSpec), TemplateError> {
    let (kind, got) = if cluster {
        let api: Api<ClusterAnalysisTemplate> = Api::all(client.clone());
        (
            "ClusterAnalysisTemplate",
            api.get_opt(name).await.map(|t| t.map(|t| t.spec.into())),
        )
    } else {
        let api: Api<AnalysisTemplate> = Api::namespaced(client.clone(), ns);
        (
            "AnalysisTemplate",
            api.get_opt(name).await.map(|t| t.map(|t| t.spec)),
        )
    };
    match got {
        Ok(Some(spec)) => Ok((kind, spec)),
        Ok(None) => Err(TemplateError::Missing {
            kind,
            name: name.to_owned(),
        }),
        Err(source) => Err(TemplateError::Read {
            kind,
            name: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// `template`'s metrics with their placeholders filled from the Rollout's
/// args (over the template's defaults) and `vars`, conditions checked.
pub fn instantiate(
    label: &str,
    template: &AnalysisTemplateSpec,
    spec: &AnalysisSpec,
    vars: &RolloutVars,
) -> Result<Vec<Metric>, TemplateError> {
    let mut values: BTreeMap<String, String> = BTreeMap::from([
        ("rollout.name".to_owned(), vars.name.clone()),
        ("rollout.namespace".to_owned(), vars.namespace.clone()),
        (
            "rollout.canaryRevision".to_owned(),
            vars.canary_revision.clone(),
        ),
        (
            "rollout.stableRevision".to_owned(),
            vars.stable_revision.clone(),
        ),
    ]);
    for a in &template.args {
        if let Some(v) = &a.value {
            values.insert(format!("args.{}", a.name), v.clone());
        }
    }
    for a in &spec.args {
        let v = substitute(&a.value, &values).unwrap_or_else(|_| a.value.clone());
        values.insert(format!("args.{}", a.name), v);
    }
    template
        .metrics
        .iter()
        .map(|m| {
            let unbound = |variable: String| TemplateError::Unbound {
                template: label.to_owned(),
                metric: m.name.clone(),
                variable,
            };
            let shape = |source| TemplateError::Shape {
                template: label.to_owned(),
                metric: m.name.clone(),
                source,
            };
            let mut json = serde_json::to_value(m).map_err(shape)?;
            fill(&mut json, &values).map_err(unbound)?;
            let metric: Metric = serde_json::from_value(json).map_err(shape)?;
            let p = &metric.provider;
            let urls = p.prometheus.iter().map(|p| &p.address);
            if let Some(url) = urls
                .chain(p.web.iter().map(|w| &w.url))
                .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
            {
                return Err(TemplateError::Url {
                    template: label.to_owned(),
                    metric: m.name.clone(),
                    url: url.clone(),
                });
            }
            Conditions::of(&metric).map_err(|source| TemplateError::Condition {
                template: label.to_owned(),
                metric: m.name.clone(),
                source,
            })?;
            Ok(metric)
        })
        .collect()
}

/// Substitutes in every string of `v`.
fn fill(v: &mut Value, values: &BTreeMap<String, String>) -> Result<(), String> {
    match v {
        Value::String(s) => *s = substitute(s, values)?,
        Value::Array(items) => items.iter_mut().try_for_each(|i| fill(i, values))?,
        Value::Object(map) => map.values_mut().try_for_each(|i| fill(i, values))?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// `text` with each `{{ name }}` replaced by its value; the first name
/// without one is the error. Text without a closing `}}` stays as it is.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    substitute_with(text, |name| values.get(name).cloned())
}

/// [`substitute`] with values from `lookup`.
pub fn substitute_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        let name = rest[open + 2..open + 2 + close].trim();
        let value = lookup(name).ok_or_else(|| name.to_owned())?;
        out.push_str(&rest[..open]);
        out.push_str(&value);
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::analysis::{MetricProvider, PrometheusMetric, TemplateArg};
    use sluice_crds::rollout::AnalysisArg;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_are_replaced_with_or_without_spaces() {
        let v = values(&[("args.service", "web"), ("rollout.canaryRevision", "abc")]);
        assert_eq!(
            substitute(
                "rate({service=\"{{args.service}}\", rev=\"{{ rollout.canaryRevision }}\"}[1m])",
                &v
            ),
            Ok("rate({service=\"web\", rev=\"abc\"}[1m])".to_owned())
        );
        assert_eq!(substitute("no {{ end", &v), Ok("no {{ end".to_owned()));
    }

    #[test]
    fn an_unknown_placeholder_is_named() {
        assert_eq!(
            substitute("{{args.missing}}", &values(&[])),
            Err("args.missing".to_owned())
        );
    }

    fn template() -> AnalysisTemplateSpec {
        AnalysisTemplateSpec {
            args: vec![
                TemplateArg {
                    name: "service".into(),
                    value: None,
                },
                TemplateArg {
                    name: "threshold".into(),
                    value: Some("0.05".into()),
                },
            ],
            metrics: vec![Metric {
                name: "error-rate".into(),
                interval: "10s".into(),
                initial_delay: None,
                count: Some(3),
                success_condition: Some("result[0] < {{args.threshold}}".into()),
                failure_condition: None,
                failure_limit: 0,
                inconclusive_limit: 0,
                dry_run: false,
                provider: MetricProvider {
                    prometheus: Some(PrometheusMetric {
                        address: "http://prom:9090".into(),
                        query: "errors{service=\"{{args.service}}\",rev=\"{{rollout.canaryRevision}}\"}".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }],
        }
    }

    fn vars() -> RolloutVars {
        RolloutVars {
            name: "web".into(),
            namespace: "shop".into(),
            canary_revision: "c4f3".into(),
            stable_revision: "5ab1".into(),
        }
    }

    #[test]
    fn the_rollouts_args_fill_the_template_over_its_defaults() {
        let spec = AnalysisSpec {
            args: vec![AnalysisArg {
                name: "service".into(),
                value: "{{rollout.name}}-svc".into(),
            }],
            ..Default::default()
        };
        let metrics =
            instantiate("AnalysisTemplate t", &template(), &spec, &vars()).expect("fills");
        let prom = metrics[0].provider.prometheus.as_ref().expect("prometheus");
        assert_eq!(prom.query, "errors{service=\"web-svc\",rev=\"c4f3\"}");
        assert_eq!(
            metrics[0].success_condition.as_deref(),
            Some("result[0] < 0.05")
        );
    }

    #[test]
    fn an_argument_without_a_value_holds_the_rollout_naming_it() {
        let err = instantiate(
            "AnalysisTemplate t",
            &template(),
            &AnalysisSpec::default(),
            &vars(),
        )
        .expect_err("service has no value");
        let text = err.to_string();
        assert!(
            text.contains("{{args.service}}") && text.contains("error-rate"),
            "{text}"
        );
    }

    #[test]
    fn a_condition_that_does_not_parse_is_refused_naming_the_metric() {
        let mut t = template();
        t.metrics[0].success_condition = Some("result[0] <".into());
        let spec = AnalysisSpec {
            args: vec![AnalysisArg {
                name: "service".into(),
                value: "web".into(),
            }],
            ..Default::default()
        };
        let err = instantiate("AnalysisTemplate t", &t, &spec, &vars()).expect_err("bad condition");
        assert!(
            err.to_string()
                .contains("metric error-rate: successCondition"),
            "{err}"
        );
    }
}
