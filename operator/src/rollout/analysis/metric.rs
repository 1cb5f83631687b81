//! A template metric's bookkeeping, pure: whether a measurement is due,
//! what a new measurement does to the metric's counts and phase, and what
//! the metrics together say about the new revision.

use sluice_crds::analysis::{Measurement, Metric, MetricPhase, MetricResult};
use sluice_crds::rollout::Verdict;

use super::super::duration;
use super::super::model::secs;

/// Measurements kept per metric in status.
pub const KEPT: usize = 10;

/// What a metric needs in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A new measurement, number `n` (from 1).
    Measure(i32),
    /// Measurement `n` is still running (a Job): look at it again.
    Poll(i32),
    /// Nothing before this many seconds.
    Wait(i64),
    /// Concluded, or every measurement taken.
    Done,
}

/// Whether `metric` (with `result` so far, in an analysis that started at
/// `started`) needs a measurement at `now`.
pub fn due(metric: &Metric, result: Option<&MetricResult>, started: i64, now: i64) -> Due {
    let taken = result.map_or(0, |r| r.count);
    let last = result.and_then(|r| r.measurements.last());
    if last.is_some_and(|m| m.phase == MetricPhase::Running) {
        return Due::Poll(taken + 1);
    }
    if result.is_some_and(|r| r.phase != MetricPhase::Running)
        || metric.count.is_some_and(|c| taken >= c)
    {
        return Due::Done;
    }
    let next = match last.and_then(|m| secs(&m.finished_at)) {
        Some(finished) => finished.saturating_add(seconds(&metric.interval, 10)),
        None => {
            started.saturating_add(metric.initial_delay.as_deref().map_or(0, |d| seconds(d, 0)))
        }
    };
    if now >= next {
        Due::Measure(taken + 1)
    } else {
        Due::Wait(next - now)
    }
}

fn seconds(d: &str, default: i64) -> i64 {
    duration(d).map_or(default, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `prev` with measurement `m` added (or, when the latest is still running,
/// in its place): finished measurements are counted and the metric's phase
/// follows from its limits. Errors count against `inconclusiveLimit`: a
/// provider that cannot answer must not pass the rollout.
pub fn record(metric: &Metric, prev: Option<MetricResult>, m: Measurement) -> MetricResult {
    let mut r = prev.unwrap_or_else(|| MetricResult {
        name: metric.name.clone(),
        phase: MetricPhase::Running,
        dry_run: metric.dry_run,
        count: 0,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        error: 0,
        measurements: Vec::new(),
    });
    if r.measurements
        .last()
        .is_some_and(|l| l.phase == MetricPhase::Running)
    {
        r.measurements.pop();
    }
    if m.phase != MetricPhase::Running {
        r.count = r.count.saturating_add(1);
        let counter = match m.phase {
            MetricPhase::Successful => &mut r.successful,
            MetricPhase::Failed => &mut r.failed,
            MetricPhase::Inconclusive => &mut r.inconclusive,
            MetricPhase::Error | MetricPhase::Running => &mut r.error,
        };
        *counter = counter.saturating_add(1);
    }
    r.measurements.push(m);
    if r.measurements.len() > KEPT {
        r.measurements.drain(..r.measurements.len() - KEPT);
    }
    r.phase = phase(metric, &r);
    r
}

fn phase(metric: &Metric, r: &MetricResult) -> MetricPhase {
    if r.failed > metric.failure_limit {
        MetricPhase::Failed
    } else if r.inconclusive.saturating_add(r.error) > metric.inconclusive_limit {
        MetricPhase::Inconclusive
    } else if metric.count.is_some_and(|c| r.count >= c) {
        // Every measurement taken: a pass needs at least one success, so
        // that errors within the limit never add up to one.
        if r.successful > 0 {
            MetricPhase::Successful
        } else {
            MetricPhase::Inconclusive
        }
    } else {
        MetricPhase::Running
    }
}

/// What the metrics say together, with a sentence: Failed when one has
/// failed, Inconclusive when one is (or while some still measure),
/// Successful once each has all its measurements within limits (a metric
/// without `count`: while its latest measurement passes). Dry runs never
/// count.
pub fn verdict(metrics: &[Metric], results: &[MetricResult]) -> (Verdict, String) {
    let mut waiting = Vec::new();
    for metric in metrics.iter().filter(|m| !m.dry_run) {
        let Some(r) = results.iter().find(|r| r.name == metric.name) else {
            waiting.push(format!("{} (no measurement yet)", metric.name));
            continue;
        };
        let last = r
            .measurements
            .iter()
            .rev()
            .find(|m| m.phase != MetricPhase::Running);
        let said = last.map_or_else(String::new, describe);
        match r.phase {
            MetricPhase::Failed => {
                return (
                    Verdict::Failed,
                    format!(
                        "metric {} failed {} of {} measurements (failureLimit {}){said}",
                        r.name, r.failed, r.count, metric.failure_limit
                    ),
                );
            }
            MetricPhase::Inconclusive | MetricPhase::Error => {
                return (
                    Verdict::Inconclusive,
                    format!(
                        "metric {} is inconclusive: {} inconclusive and {} errors of {} measurements (inconclusiveLimit {}){said}",
                        r.name, r.inconclusive, r.error, r.count, metric.inconclusive_limit
                    ),
                );
            }
            MetricPhase::Successful => {}
            MetricPhase::Running => {
                let passing = metric.count.is_none()
                    && last.is_some_and(|m| m.phase == MetricPhase::Successful);
                if !passing {
                    let of = metric.count.map_or_else(String::new, |c| format!("/{c}"));
                    waiting.push(format!("{} ({}{of})", r.name, r.count));
                }
            }
        }
    }
    if waiting.is_empty() {
        (Verdict::Successful, "every metric passed".to_owned())
    } else {
        (
            Verdict::Inconclusive,
            format!("measuring: {}", waiting.join(", ")),
        )
    }
}

fn describe(m: &Measurement) -> String {
    match (&m.value, &m.message) {
        (Some(v), Some(msg)) => format!("; last {v}: {msg}"),
        (Some(v), None) => format!("; last {v}"),
        (None, Some(msg)) => format!("; last: {msg}"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::model::time;
    use sluice_crds::analysis::MetricProvider;

    fn metric(count: Option<i32>, failure_limit: i32, inconclusive_limit: i32) -> Metric {
        Metric {
            name: "error-rate".into(),
            interval: "10s".into(),
            initial_delay: None,
            count,
            success_condition: Some("result[0] < 0.05".into()),
            failure_condition: None,
            failure_limit,
            inconclusive_limit,
            dry_run: false,
            provider: MetricProvider::default(),
        }
    }

    fn measured(phase: MetricPhase, at: i64) -> Measurement {
        Measurement {
            phase,
            value: Some("[0.01]".into()),
            message: None,
            started_at: Some(time(at)),
            finished_at: (phase != MetricPhase::Running).then(|| time(at)),
        }
    }

    fn run(metric: &Metric, phases: &[MetricPhase]) -> Option<MetricResult> {
        phases.iter().enumerate().fold(None, |r, (i, p)| {
            Some(record(metric, r, measured(*p, i as i64 * 10)))
        })
    }

    use MetricPhase::{Error, Failed, Inconclusive, Running, Successful};

    #[test]
    fn a_metric_with_a_count_succeeds_once_every_measurement_is_taken() {
        let m = metric(Some(3), 0, 0);
        let two = run(&m, &[Successful, Successful]);
        assert_eq!(two.as_ref().map(|r| r.phase), Some(Running));
        assert_eq!(
            verdict(std::slice::from_ref(&m), two.as_slice()).0,
            Verdict::Inconclusive
        );
        let three = run(&m, &[Successful, Successful, Successful]);
        assert_eq!(three.as_ref().map(|r| r.phase), Some(Successful));
        assert_eq!(verdict(&[m], three.as_slice()).0, Verdict::Successful);
    }

    #[test]
    fn one_failure_more_than_the_limit_fails_the_metric_and_the_analysis() {
        let m = metric(None, 1, 0);
        let one = run(&m, &[Failed]);
        assert_eq!(one.as_ref().map(|r| r.phase), Some(Running));
        let two = run(&m, &[Failed, Successful, Failed]);
        assert_eq!(two.as_ref().map(|r| r.phase), Some(Failed));
        let (v, why) = verdict(&[m], two.as_slice());
        assert_eq!(v, Verdict::Failed);
        assert!(why.contains("failed 2 of 3"), "{why}");
    }

    #[test]
    fn errors_count_against_the_inconclusive_limit_never_pass() {
        let m = metric(Some(2), 0, 1);
        let r = run(&m, &[Error, Successful]);
        assert_eq!(r.as_ref().map(|r| r.phase), Some(Successful));
        let r = run(&m, &[Error, Inconclusive]);
        assert_eq!(r.as_ref().map(|r| r.phase), Some(Inconclusive));
        assert_eq!(verdict(&[m], r.as_slice()).0, Verdict::Inconclusive);
    }

    #[test]
    fn errors_within_the_limit_never_add_up_to_a_pass() {
        let m = metric(Some(3), 0, 5);
        let r = run(&m, &[Error, Error, Error]);
        assert_eq!(r.as_ref().map(|r| r.phase), Some(Inconclusive));
        assert_eq!(verdict(&[m], r.as_slice()).0, Verdict::Inconclusive);
    }

    #[test]
    fn a_metric_without_count_passes_while_its_latest_measurement_does() {
        let m = metric(None, 3, 0);
        let r = run(&m, &[Successful]);
        assert_eq!(
            verdict(std::slice::from_ref(&m), r.as_slice()).0,
            Verdict::Successful
        );
        let r = run(&m, &[Successful, Failed]);
        assert_eq!(verdict(&[m], r.as_slice()).0, Verdict::Inconclusive);
    }

    #[test]
    fn a_dry_run_metric_is_shown_but_never_fails_the_analysis() {
        let mut dry = metric(None, 0, 0);
        dry.dry_run = true;
        dry.name = "dry".into();
        let good = metric(Some(1), 0, 0);
        let results: Vec<MetricResult> = [run(&dry, &[Failed]), run(&good, &[Successful])]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(results[0].phase, Failed);
        assert!(results[0].dry_run);
        assert_eq!(verdict(&[dry, good], &results).0, Verdict::Successful);
    }

    #[test]
    fn a_running_job_is_polled_then_replaced_by_its_outcome() {
        let m = metric(Some(1), 0, 0);
        let r = run(&m, &[Running]);
        assert_eq!(due(&m, r.as_ref(), 0, 100), Due::Poll(1));
        let r = record(&m, r, measured(Successful, 20));
        assert_eq!(r.measurements.len(), 1);
        assert_eq!((r.count, r.phase), (1, Successful));
        assert_eq!(due(&m, Some(&r), 0, 100), Due::Done);
    }

    #[test]
    fn measurements_are_due_after_the_initial_delay_then_every_interval() {
        let mut m = metric(Some(5), 0, 0);
        m.initial_delay = Some("30s".into());
        assert_eq!(due(&m, None, 100, 110), Due::Wait(20));
        assert_eq!(due(&m, None, 100, 130), Due::Measure(1));
        let r = record(&m, None, measured(Successful, 130));
        assert_eq!(due(&m, Some(&r), 100, 135), Due::Wait(5));
        assert_eq!(due(&m, Some(&r), 100, 140), Due::Measure(2));
    }

    #[test]
    fn status_keeps_the_latest_ten_measurements() {
        let m = metric(None, 100, 0);
        let r = run(&m, &[Failed; 25]);
        let r = r.expect("a result");
        assert_eq!((r.count, r.failed, r.measurements.len()), (25, 25, KEPT));
    }
}
