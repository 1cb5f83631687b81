//! The built-in judge: a canary judged from the proxies' telemetry: its error rate (and p99)
//! over the analysis window, alone or against the stable revision's.

use std::time::Duration;

use sluice_crds::Rollout;
use sluice_crds::rollout::{AnalysisStatus, BuiltinAnalysis, Verdict};

use super::super::model::{Evaluation, time};
use super::super::{Context, duration};
use crate::traffic::window::Totals;

/// Evaluates `spec` for new revision `canary` of `rollout` from the
/// proxies' telemetry window: only what it did since `since` (when it
/// started or, after a blue-green switch, the switch) counts.
pub fn analyse(
    ctx: &Context,
    rollout: &Rollout,
    ns: &str,
    canary: &str,
    spec: &BuiltinAnalysis,
    since: Option<i64>,
    now: i64,
) -> Evaluation {
    let status = rollout.status.clone().unwrap_or_default();
    let window = duration(&spec.window).unwrap_or(Duration::from_secs(30));
    let since_start = since
        .map(|t| Duration::from_secs(u64::try_from((now - t).max(1)).unwrap_or(1)))
        .unwrap_or(window);
    let window = window.min(since_start + Duration::from_secs(1));
    let stable = status.stable_revision.clone().unwrap_or_default();
    let totals = ctx.traffic.sum(
        window,
        |k| k.namespace == ns && (k.revision == canary || k.revision == stable),
        |k| (k.revision == canary, k.inbound),
    );
    let bounds = ctx.traffic.bounds_ms();
    let side = |canary: bool| {
        let get = |inbound| totals.get(&(canary, inbound)).cloned().unwrap_or_default();
        Totals::either_side(&get(true), &get(false))
    };
    let (c, s) = (side(true), side(false));
    let p99 = c.quantile_ms(0.99, &bounds);
    evaluate(spec, &c, &s, p99, now)
}

/// Evaluates one interval from the window's totals of each revision.
pub fn evaluate(
    spec: &BuiltinAnalysis,
    canary: &Totals,
    stable: &Totals,
    canary_p99_ms: Option<f64>,
    now: i64,
) -> Evaluation {
    let canary_rate = canary.error_rate();
    let stable_rate = stable.error_rate();
    let figures = AnalysisStatus {
        evaluated_at: Some(time(now)),
        verdict: None,
        canary_requests: canary.requests as i64,
        stable_requests: stable.requests as i64,
        canary_error_rate: Some(format!("{canary_rate:.4}")),
        stable_error_rate: (stable.requests > 0).then(|| format!("{stable_rate:.4}")),
        canary_p99_ms: canary_p99_ms.map(|v| v.round() as i64),
        ..AnalysisStatus::default()
    };
    let (verdict, reason) = judge(spec, canary, stable, canary_p99_ms);
    Evaluation {
        verdict,
        figures: AnalysisStatus {
            verdict: Some(verdict),
            ..figures
        },
        reason,
    }
}

fn judge(
    spec: &BuiltinAnalysis,
    canary: &Totals,
    stable: &Totals,
    canary_p99_ms: Option<f64>,
) -> (Verdict, String) {
    let n = canary.requests;
    let rate = canary.error_rate();
    if (n as i64) < spec.min_requests {
        return (
            Verdict::Inconclusive,
            format!(
                "{n} canary requests in the window, fewer than minRequests {}",
                spec.min_requests
            ),
        );
    }
    if let Some(cmp) = &spec.compare_with_stable
        && stable.requests as i64 >= spec.min_requests
    {
        // A shared downstream outage raises both rates: only the canary's
        // excess over stable counts against it.
        let stable_rate = stable.error_rate();
        if rate > stable_rate + cmp.max_error_rate_margin && rate > spec.max_error_rate {
            return (
                Verdict::Failed,
                format!(
                    "canary error rate {rate:.4} exceeds stable's {stable_rate:.4} by more than {} over {n} requests",
                    cmp.max_error_rate_margin
                ),
            );
        }
    } else if rate > spec.max_error_rate {
        return (
            Verdict::Failed,
            format!(
                "canary error rate {rate:.4} over {n} requests exceeds maxErrorRate {} (stable {:.4})",
                spec.max_error_rate,
                stable.error_rate()
            ),
        );
    }
    if let (Some(max), Some(p99)) = (
        spec.max_latency_p99.as_deref().and_then(duration),
        canary_p99_ms,
    ) && p99 > max.as_secs_f64() * 1000.0
    {
        return (
            Verdict::Failed,
            format!("canary p99 {p99:.0} ms exceeds maxLatencyP99 {max:?}"),
        );
    }
    (
        Verdict::Successful,
        format!("canary error rate {rate:.4} over {n} requests is within limits"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::rollout::StableComparison;

    fn totals(requests: u64, errors: u64) -> Totals {
        Totals {
            requests,
            errors,
            latency: Vec::new(),
        }
    }

    #[test]
    fn few_requests_are_inconclusive_never_failed() {
        let spec = BuiltinAnalysis::default();
        let e = evaluate(&spec, &totals(19, 19), &totals(0, 0), None, 0);
        assert_eq!(e.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn absolute_error_rate() {
        let spec = BuiltinAnalysis::default();
        assert_eq!(
            evaluate(&spec, &totals(100, 5), &totals(0, 0), None, 0).verdict,
            Verdict::Successful
        );
        let failed = evaluate(&spec, &totals(100, 50), &totals(400, 0), None, 0);
        assert_eq!(failed.verdict, Verdict::Failed);
        assert_eq!(failed.figures.canary_error_rate.as_deref(), Some("0.5000"));
        assert!(failed.reason.contains("0.5000"), "{}", failed.reason);
    }

    #[test]
    fn comparison_with_stable_forgives_a_shared_outage() {
        let spec = BuiltinAnalysis {
            compare_with_stable: Some(StableComparison {
                max_error_rate_margin: 0.05,
            }),
            ..BuiltinAnalysis::default()
        };
        // Both at 40%: the downstream, not the canary.
        assert_eq!(
            evaluate(&spec, &totals(100, 40), &totals(400, 160), None, 0).verdict,
            Verdict::Successful
        );
        // Canary far worse than stable.
        assert_eq!(
            evaluate(&spec, &totals(100, 50), &totals(400, 4), None, 0).verdict,
            Verdict::Failed
        );
    }

    #[test]
    fn p99_limit() {
        let spec = BuiltinAnalysis {
            max_latency_p99: Some("200ms".into()),
            ..BuiltinAnalysis::default()
        };
        assert_eq!(
            evaluate(&spec, &totals(100, 0), &totals(0, 0), Some(500.0), 0).verdict,
            Verdict::Failed
        );
        assert_eq!(
            evaluate(&spec, &totals(100, 0), &totals(0, 0), Some(100.0), 0).verdict,
            Verdict::Successful
        );
    }
}
