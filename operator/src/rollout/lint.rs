//! `kubectl sluice lint`: what the API server and the controller would say
//! of a Rollout, said offline, as `kubectl argo rollouts lint` does. Three
//! passes, in the order admission makes them: the CRD's structural schema
//! (unknown and missing fields, types, sizes), its CEL rules (evaluated
//! with kube-cel as the API server evaluates them, defaults applied first),
//! and the spec checks the controller makes before it runs a Rollout
//! (regular expressions the proxies must compile). AnalysisTemplates and
//! ClusterAnalysisTemplates get the same passes, the last one parsing
//! their metrics' conditions.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube_cel::Validator;
use serde::Deserialize;
use serde_json::Value;
use sluice_crds::analysis::AnalysisTemplateSpec;
use sluice_crds::{AnalysisTemplate, ClusterAnalysisTemplate, Rollout};

use super::analysis::condition::Conditions;
use super::analysis::template::substitute_with;
use super::canary_routes::invalid_regex;

/// Why a file could not be linted at all.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// A document is not YAML.
    #[error("document {index}: {source}")]
    Yaml {
        /// Its place in the file, from 1.
        index: usize,
        /// What the parser said.
        source: serde_yaml::Error,
    },
    /// A CRD carries no schema (a build error, never input).
    #[error("the {0} CRD has no schema")]
    NoSchema(&'static str),
}

/// One thing wrong with a Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The field, as admission names it (`spec.strategy.canary.steps[0]`);
    /// empty for the object as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The kinds `lint` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `Rollout`.
    Rollout,
    /// An `AnalysisTemplate`.
    AnalysisTemplate,
    /// A `ClusterAnalysisTemplate`.
    ClusterAnalysisTemplate,
}

impl Kind {
    const ALL: [Kind; 3] = [
        Kind::Rollout,
        Kind::AnalysisTemplate,
        Kind::ClusterAnalysisTemplate,
    ];

    /// As `kind:` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rollout => "Rollout",
            Kind::AnalysisTemplate => "AnalysisTemplate",
            Kind::ClusterAnalysisTemplate => "ClusterAnalysisTemplate",
        }
    }

    fn crd(self) -> CustomResourceDefinition {
        match self {
            Kind::Rollout => Rollout::crd(),
            Kind::AnalysisTemplate => AnalysisTemplate::crd(),
            Kind::ClusterAnalysisTemplate => ClusterAnalysisTemplate::crd(),
        }
    }
}

/// One object of the file and what is wrong with it (nothing: valid).
#[derive(Debug)]
pub struct Linted {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub findings: Vec<Finding>,
}

/// What linting a file found.
#[derive(Debug, Default)]
pub struct Report {
    /// Each Rollout and analysis template, in the file's order.
    pub objects: Vec<Linted>,
    /// Documents of other kinds, not linted.
    pub skipped: usize,
}

impl Report {
    /// Whether every object is valid.
    pub fn ok(&self) -> bool {
        self.objects.iter().all(|o| o.findings.is_empty())
    }

    /// The Rollouts among the objects.
    pub fn rollouts(&self) -> impl Iterator<Item = &Linted> {
        self.objects.iter().filter(|o| o.kind == Kind::Rollout)
    }
}

/// Lints every Rollout and analysis template in the YAML documents of
/// `text`.
pub fn lint(text: &str) -> Result<Report, LintError> {
    let schemas = Kind::ALL
        .iter()
        .map(|k| schema(*k).map(|s| (*k, s)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = Report::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| LintError::Yaml {
            index: i + 1,
            source,
        })?;
        if value.is_null() {
            continue;
        }
        let ours = value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("sluice.dev/"));
        let Some((kind, schema)) = schemas
            .iter()
            .find(|(k, _)| ours && value["kind"] == k.as_str())
        else {
            report.skipped += 1;
            continue;
        };
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or("(no name)")
            .to_owned();
        report.objects.push(Linted {
            kind: *kind,
            name,
            findings: lint_object(*kind, schema, &value),
        });
    }
    Ok(report)
}

/// `kind`'s CRD OpenAPI schema, as the API server holds it.
fn schema(kind: Kind) -> Result<Value, LintError> {
    let crd = kind.crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or(LintError::NoSchema(kind.as_str()))?;
    serde_json::to_value(schema).map_err(|_| LintError::NoSchema(kind.as_str()))
}

/// Everything wrong with one object, each pass on what the one before
/// let through (CEL rules assume a structurally valid object, as on the
/// API server).
pub fn lint_object(kind: Kind, schema: &Value, object: &Value) -> Vec<Finding> {
    let mut found = Vec::new();
    structural(schema, object, "", &mut found);
    if !found.is_empty() {
        return found;
    }
    found.extend(
        Validator::new()
            .validate_with_defaults(schema, object, None)
            .into_iter()
            .map(|e| Finding {
                field: e.field_path,
                message: e.message,
            }),
    );
    if !found.is_empty() {
        return found;
    }
    match kind {
        Kind::Rollout => controller_checks(object, &mut found),
        Kind::AnalysisTemplate | Kind::ClusterAnalysisTemplate => {
            found.extend(template_findings(object));
        }
    }
    found
}

/// What the controller refuses in a Rollout: regular expressions the
/// proxies cannot compile.
fn controller_checks(object: &Value, found: &mut Vec<Finding>) {
    match serde_json::from_value::<Rollout>(object.clone()) {
        Ok(ro) => found.extend(
            invalid_regex(&ro.spec.strategy.canary.steps).map(|m| Finding {
                field: String::new(),
                message: m,
            }),
        ),
        Err(e) => found.push(Finding {
            field: String::new(),
            message: e.to_string(),
        }),
    }
}

/// What an analysis template's schema cannot say: a spec that does not
/// read as one (a Job spec of the wrong shape) and conditions that do not
/// parse, each placeholder read as `0` (the values come with the
/// Rollout). The admission webhook refuses the same.
pub fn template_findings(object: &Value) -> Vec<Finding> {
    let mut found = Vec::new();
    match serde_json::from_value::<AnalysisTemplateSpec>(object["spec"].clone()) {
        Ok(spec) => {
            for (i, m) in spec.metrics.iter().enumerate() {
                let neutral = |c: &Option<String>| {
                    c.as_deref()
                        .and_then(|c| substitute_with(c, |_| Some("0".into())).ok())
                };
                let mut m = m.clone();
                m.success_condition = neutral(&m.success_condition);
                m.failure_condition = neutral(&m.failure_condition);
                if let Err(e) = Conditions::of(&m) {
                    found.push(Finding {
                        field: format!("spec.metrics[{i}]"),
                        message: e.to_string(),
                    });
                }
            }
        }
        Err(e) => found.push(Finding {
            field: "spec".into(),
            message: e.to_string(),
        }),
    }
    found
}

/// `path.field`, or `field` at the root.
fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// The structural checks of an OpenAPI v3 schema node over `value`, as the
/// API server's strict field validation makes them.
fn structural(schema: &Value, value: &Value, path: &str, out: &mut Vec<Finding>) {
    let mut say = |message: String| {
        out.push(Finding {
            field: path.to_owned(),
            message,
        })
    };
    if value.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            say("must not be null".into());
        }
        return;
    }
    if let Some(want) = schema["type"].as_str()
        && schema["x-kubernetes-int-or-string"] != true
        && !type_matches(want, value)
    {
        say(format!("must be of type {want}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        say(format!("must be one of {}", Value::Array(allowed.clone())));
    }
    let bound = |key: &str| schema[key].as_f64();
    match value {
        Value::String(s) => {
            let n = s.chars().count() as f64;
            if bound("maxLength").is_some_and(|m| n > m) {
                say(format!("may not be longer than {}", schema["maxLength"]));
            }
            if bound("minLength").is_some_and(|m| n < m) {
                say(format!(
                    "must be at least {} characters",
                    schema["minLength"]
                ));
            }
        }
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            if bound("minimum").is_some_and(|m| v < m) {
                say(format!(
                    "must be greater than or equal to {}",
                    schema["minimum"]
                ));
            }
            if bound("maximum").is_some_and(|m| v > m) {
                say(format!(
                    "must be less than or equal to {}",
                    schema["maximum"]
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as f64;
            if bound("maxItems").is_some_and(|m| n > m) {
                say(format!("must have at most {} items", schema["maxItems"]));
            }
            if bound("minItems").is_some_and(|m| n < m) {
                say(format!("must have at least {} items", schema["minItems"]));
            }
            for (i, item) in items.iter().enumerate() {
                structural(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => object_fields(schema, fields, path, out),
        Value::Bool(_) | Value::Null => {}
    }
}

/// An object's fields: required ones present, none unknown, each valid.
fn object_fields(
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    path: &str,
    out: &mut Vec<Finding>,
) {
    if schema["maxProperties"]
        .as_u64()
        .is_some_and(|m| fields.len() as u64 > m)
    {
        out.push(Finding {
            field: path.to_owned(),
            message: format!("must have at most {} properties", schema["maxProperties"]),
        });
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = name.as_str()
            && !fields.contains_key(name)
        {
            out.push(Finding {
                field: child(path, name),
                message: "Required value".into(),
            });
        }
    }
    let properties = schema["properties"].as_object();
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let open = schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema.get("additionalProperties") == Some(&Value::Bool(true))
        || (properties.is_none() && additional.is_none());
    for (name, v) in fields {
        // Every object's own, which CRD schemas leave out.
        if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let at = child(path, name);
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(s), _) | (None, Some(s)) => structural(s, v, &at, out),
            (None, None) if !open => out.push(Finding {
                field: at,
                message: "unknown field".into(),
            }),
            (None, None) => {}
        }
    }
}

fn type_matches(want: &str, value: &Value) -> bool {
    match want {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(strategy: &str) -> String {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: app, image: demo}}]}}\n  strategy:\n{strategy}"
        )
    }

    fn findings(text: &str) -> Vec<String> {
        let report = lint(text).expect("lints");
        report
            .objects
            .iter()
            .flat_map(|o| o.findings.iter().map(ToString::to_string))
            .collect()
    }

    #[test]
    fn a_valid_canary_and_a_valid_blue_green_have_nothing_to_say() {
        let canary = rollout("    canary:\n      steps: [{setWeight: 20}, {pause: {}}]\n");
        let bg = rollout("    blueGreen: {activeService: web, previewService: web-preview}\n");
        let text = format!(
            "{canary}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n---\n{bg}"
        );
        let report = lint(&text).expect("lints");
        assert_eq!(report.skipped, 1);
        assert_eq!(report.rollouts().count(), 2);
        assert!(report.ok(), "{:?}", report.objects);
    }

    #[test]
    fn a_weight_out_of_range_is_named_by_its_field_as_admission_names_it() {
        let found = findings(&rollout("    canary:\n      steps: [{setWeight: 150}]\n"));
        assert_eq!(
            found,
            vec!["spec.strategy.canary.steps[0].setWeight: must be between 0 and 100"]
        );
    }

    #[test]
    fn a_misspelt_field_is_unknown() {
        let found = findings(&rollout("    canary:\n      steps: [{setWieght: 20}]\n"));
        assert!(
            found.contains(&"spec.strategy.canary.steps[0].setWieght: unknown field".to_owned()),
            "{found:?}"
        );
    }

    #[test]
    fn both_strategies_or_a_step_of_two_kinds_break_their_cel_rules() {
        let both = findings(&rollout(
            "    canary: {steps: [{setWeight: 20}]}\n    blueGreen: {activeService: web}\n",
        ));
        assert!(
            both.iter()
                .any(|f| f.contains("exactly one of canary, blueGreen")),
            "{both:?}"
        );
        let two = findings(&rollout(
            "    canary:\n      steps: [{setWeight: 20, pause: {}}]\n",
        ));
        assert!(
            two.iter().any(|f| f.contains("a step sets exactly one of")),
            "{two:?}"
        );
    }

    #[test]
    fn a_missing_required_field_and_a_bad_duration_are_reported() {
        let missing = findings(&rollout("    blueGreen: {previewService: web}\n"));
        assert_eq!(
            missing,
            vec!["spec.strategy.blueGreen.activeService: Required value"]
        );
        let long = findings(&rollout(
            "    canary:\n      steps: [{pause: {duration: 5 days}}]\n",
        ));
        assert!(
            long.iter().any(|f| f
                .starts_with("spec.strategy.canary.steps[0].pause.duration: must be a duration")),
            "{long:?}"
        );
    }

    #[test]
    fn a_regex_the_proxies_cannot_compile_is_what_the_controller_would_refuse() {
        let found = findings(&rollout(
            "    canary:\n      stableService: a\n      canaryService: b\n      trafficRouting: {httpRoutes: [{name: r}]}\n      steps: [{setHeaderRoute: {name: t, match: [{headerName: x-user, headerValue: {regex: \"(\"}}]}}]\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerValue: regex parse error"),
            "{found:?}"
        );
    }

    #[test]
    fn every_rollout_the_readme_shows_lints_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<_> = std::fs::read_dir(root.join("examples/rollouts"))
            .expect("examples/rollouts")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        files.push(root.join("examples/handson/60-rollout.yaml"));
        assert!(files.len() >= 5, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            let report = lint(&text).expect("lints");
            assert!(
                report.rollouts().count() > 0,
                "{} has no Rollout",
                file.display()
            );
            assert!(report.ok(), "{}: {:?}", file.display(), report.objects);
        }
    }

    #[test]
    fn a_template_condition_that_does_not_parse_is_named_by_its_metric() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: rate\n    successCondition: \"result[0] <\"\n    provider: {prometheus: {address: \"http://p:9090\", query: up}}\n";
        let found = findings(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("spec.metrics[0]: successCondition does not parse"),
            "{found:?}"
        );
    }

    #[test]
    fn a_template_metric_with_two_providers_is_refused_as_admission_would() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: ClusterAnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: rate\n    successCondition: \"result < 1\"\n    provider: {prometheus: {address: \"http://p:9090\", query: up}, web: {url: \"http://w\"}}\n";
        let found = findings(text);
        assert!(
            found
                .iter()
                .any(|f| f.contains("exactly one of sluice, prometheus, web, job")),
            "{found:?}"
        );
    }

    #[test]
    fn text_that_is_not_yaml_is_an_error_naming_the_document() {
        let err = lint("kind: Rollout\n---\n: [").expect_err("not yaml");
        assert!(err.to_string().starts_with("document 2:"), "{err}");
    }
}
