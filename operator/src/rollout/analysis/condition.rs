//! A metric's `successCondition` / `failureCondition`: CEL expressions over
//! the measured `result`, parsed by the `cel` crate (the language
//! Kubernetes' own validation rules use), never matched as strings.

use cel::{Context, Program, Value};
use serde_json::Value as Json;
use sluice_crds::analysis::{Metric, MetricPhase};
use thiserror::Error;

/// Why a condition could not judge a measurement.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConditionError {
    /// The expression does not parse.
    #[error("{field} does not parse: {message}")]
    Parse {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// The parser's message.
        message: String,
    },
    /// It parsed but failed on this `result` (an index out of range, a
    /// type mismatch).
    #[error("{field} failed on result {result}: {message}")]
    Eval {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// The measured value.
        result: String,
        /// The evaluator's message.
        message: String,
    },
    /// It gave something other than true or false.
    #[error("{field} gave {value} for result {result}, not a boolean")]
    NotBoolean {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// What it gave.
        value: String,
        /// The measured value.
        result: String,
    },
}

/// A metric's compiled conditions.
pub struct Conditions {
    success: Option<Program>,
    failure: Option<Program>,
}

impl Conditions {
    /// Compiles `metric`'s conditions, naming the one that does not parse.
    pub fn of(metric: &Metric) -> Result<Conditions, ConditionError> {
        Ok(Conditions {
            success: compile("successCondition", metric.success_condition.as_deref())?,
            failure: compile("failureCondition", metric.failure_condition.as_deref())?,
        })
    }

    /// Judges `result`: the failure condition wins; a success condition that
    /// is false fails unless a failure condition (also false) is given,
    /// which makes the measurement inconclusive.
    pub fn judge(&self, result: &Json) -> Result<MetricPhase, ConditionError> {
        let failed = eval("failureCondition", self.failure.as_ref(), result)?;
        let succeeded = eval("successCondition", self.success.as_ref(), result)?;
        Ok(match (succeeded, failed) {
            (_, Some(true)) => MetricPhase::Failed,
            (Some(true), _) | (None, Some(false)) => MetricPhase::Successful,
            (Some(false), None) => MetricPhase::Failed,
            (Some(false), Some(false)) | (None, None) => MetricPhase::Inconclusive,
        })
    }
}

fn compile(field: &'static str, source: Option<&str>) -> Result<Option<Program>, ConditionError> {
    source
        .map(|s| {
            Program::compile(s).map_err(|e| ConditionError::Parse {
                field,
                message: e.to_string(),
            })
        })
        .transpose()
}

fn eval(
    field: &'static str,
    program: Option<&Program>,
    result: &Json,
) -> Result<Option<bool>, ConditionError> {
    let Some(program) = program else {
        return Ok(None);
    };
    let mut ctx = Context::default();
    ctx.add_variable_from_value("result", to_cel(result));
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => Ok(Some(b)),
        Ok(other) => Err(ConditionError::NotBoolean {
            field,
            value: format!("{other:?}"),
            result: result.to_string(),
        }),
        Err(e) => Err(ConditionError::Eval {
            field,
            result: result.to_string(),
            message: e.to_string(),
        }),
    }
}

/// A JSON value as CEL sees it: every number a double, so that
/// `result < 1` and `result[0] < 0.05` both compare as users expect.
fn to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(s.clone().into()),
        Json::Array(items) => Value::List(items.iter().map(to_cel).collect::<Vec<_>>().into()),
        Json::Object(map) => {
            let entries: std::collections::HashMap<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Value::Map(entries.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_crds::analysis::MetricProvider;

    fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
        Metric {
            name: "m".into(),
            interval: "10s".into(),
            initial_delay: None,
            count: None,
            success_condition: success.map(Into::into),
            failure_condition: failure.map(Into::into),
            failure_limit: 0,
            inconclusive_limit: 0,
            dry_run: false,
            provider: MetricProvider::default(),
        }
    }

    fn judge(success: Option<&str>, failure: Option<&str>, result: Json) -> MetricPhase {
        let c = Conditions::of(&metric(success, failure)).expect("compiles");
        c.judge(&result).expect("judges")
    }

    #[test]
    fn a_vector_result_is_judged_by_its_first_sample() {
        assert_eq!(
            judge(Some("result[0] < 0.05"), None, json!([0.01])),
            MetricPhase::Successful
        );
        assert_eq!(
            judge(Some("result[0] < 0.05"), None, json!([0.5])),
            MetricPhase::Failed
        );
    }

    #[test]
    fn integers_and_doubles_compare_as_numbers() {
        assert_eq!(
            judge(Some("result < 1"), None, json!(0.5)),
            MetricPhase::Successful
        );
        assert_eq!(
            judge(
                Some("result.ok && result.rate <= 1"),
                None,
                json!({"ok": true, "rate": 1})
            ),
            MetricPhase::Successful
        );
    }

    #[test]
    fn the_failure_condition_wins_and_neither_holding_is_inconclusive() {
        let (s, f) = (Some("result > 0.9"), Some("result < 0.5"));
        assert_eq!(judge(s, f, json!(0.95)), MetricPhase::Successful);
        assert_eq!(judge(s, f, json!(0.1)), MetricPhase::Failed);
        assert_eq!(judge(s, f, json!(0.7)), MetricPhase::Inconclusive);
        assert_eq!(
            judge(Some("true"), Some("true"), json!(0)),
            MetricPhase::Failed
        );
        assert_eq!(judge(None, f, json!(0.7)), MetricPhase::Successful);
    }

    #[test]
    fn an_empty_vector_is_an_error_never_a_pass() {
        let c = Conditions::of(&metric(Some("result[0] < 0.05"), None)).expect("compiles");
        let e = c.judge(&json!([])).expect_err("out of range");
        assert!(matches!(e, ConditionError::Eval { .. }), "{e}");
    }

    #[test]
    fn a_condition_that_is_not_boolean_is_an_error() {
        let c = Conditions::of(&metric(Some("result[0]"), None)).expect("compiles");
        let e = c.judge(&json!([1])).expect_err("not a boolean");
        assert!(e.to_string().contains("not a boolean"), "{e}");
    }

    #[test]
    fn a_condition_that_does_not_parse_names_its_field() {
        let Err(e) = Conditions::of(&metric(None, Some("result[0] <"))) else {
            panic!("parsed");
        };
        assert!(e.to_string().starts_with("failureCondition"), "{e}");
    }
}
