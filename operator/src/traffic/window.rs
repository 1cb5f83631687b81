//! Per-second buckets of request, error and latency counts per
//! (source, destination service, destination revision), kept for a bounded
//! span and summed over any window inside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_proto::mesh::TrafficDelta;

/// What one series counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TrafficKey {
    /// Source namespace.
    pub source_namespace: String,
    /// Source workload.
    pub source_workload: String,
    /// Destination Service namespace.
    pub namespace: String,
    /// Destination Service name.
    pub service: String,
    /// Destination revision (pod-template hash), empty when mixed.
    pub revision: String,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

/// Sums over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// 5xx and connection failures.
    pub errors: u64,
    /// Latency bucket counts (bounds in [`TrafficWindow::bounds_ms`]).
    #[serde(skip)]
    pub latency: Vec<u64>,
}

impl Totals {
    /// errors / requests, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The upper bound of the bucket holding the `q` quantile, in ms.
    pub fn quantile_ms(&self, q: f64, bounds: &[f64]) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bounds.get(i).copied();
            }
        }
        bounds.last().copied()
    }

    fn add(&mut self, b: &Bucket) {
        self.requests += b.requests;
        self.errors += b.errors;
        if self.latency.len() < b.latency.len() {
            self.latency.resize(b.latency.len(), 0);
        }
        for (t, n) in self.latency.iter_mut().zip(&b.latency) {
            *t += n;
        }
    }
}

/// Latency bucket bounds (ms) as last reported, and the per-second buckets
/// of every series.
type Series = (Vec<f64>, HashMap<TrafficKey, VecDeque<Bucket>>);

/// The window, shared by the telemetry service and its readers.
#[derive(Debug)]
pub struct TrafficWindow {
    span: Duration,
    series: Mutex<Series>,
}

impl TrafficWindow {
    /// Keeps `span` of history.
    pub fn new(span: Duration) -> TrafficWindow {
        TrafficWindow {
            span,
            series: Mutex::new((Vec::new(), HashMap::new())),
        }
    }

    /// Unix seconds now, the clock buckets are keyed by.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Latency bucket bounds in ms (as the proxies report them).
    pub fn bounds_ms(&self) -> Vec<f64> {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Adds one proxy's deltas at `second` (Unix time).
    pub fn record_at(&self, second: u64, bounds: &[f64], deltas: &[TrafficDelta]) {
        let mut guard = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let (known_bounds, series) = &mut *guard;
        if known_bounds.is_empty() && !bounds.is_empty() {
            *known_bounds = bounds.to_vec();
        }
        let oldest = second.saturating_sub(self.span.as_secs());
        for d in deltas {
            let key = TrafficKey {
                source_namespace: d.source_namespace.clone(),
                source_workload: d.source_workload.clone(),
                namespace: d.destination_namespace.clone(),
                service: d.destination_service.clone(),
                revision: d.destination_revision.clone(),
            };
            let q = series.entry(key).or_default();
            while q.front().is_some_and(|b| b.second < oldest) {
                q.pop_front();
            }
            let bucket = match q.back_mut() {
                Some(b) if b.second == second => b,
                _ => {
                    q.push_back(Bucket {
                        second,
                        ..Default::default()
                    });
                    // Just pushed: the deque is not empty.
                    let Some(b) = q.back_mut() else { continue };
                    b
                }
            };
            bucket.requests += d.requests;
            bucket.errors += d.errors;
            if bucket.latency.len() < d.latency_buckets.len() {
                bucket.latency.resize(d.latency_buckets.len(), 0);
            }
            for (t, n) in bucket.latency.iter_mut().zip(&d.latency_buckets) {
                *t += n;
            }
        }
    }

    /// Adds one proxy's deltas now.
    pub fn record(&self, bounds: &[f64], deltas: &[TrafficDelta]) {
        self.record_at(Self::now(), bounds, deltas);
    }

    /// Sums the series whose key passes `filter` over the last `window`
    /// ending at `now` (Unix seconds), grouped by `group`.
    pub fn sum_at<G: Ord>(
        &self,
        now: u64,
        window: Duration,
        filter: impl Fn(&TrafficKey) -> bool,
        group: impl Fn(&TrafficKey) -> G,
    ) -> BTreeMap<G, Totals> {
        let from = now.saturating_sub(window.as_secs());
        let guard = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<G, Totals> = BTreeMap::new();
        for (k, q) in guard.1.iter().filter(|(k, _)| filter(k)) {
            let t = out.entry(group(k)).or_default();
            for b in q.iter().filter(|b| b.second > from && b.second <= now) {
                t.add(b);
            }
        }
        out
    }

    /// [`Self::sum_at`] ending now.
    pub fn sum<G: Ord>(
        &self,
        window: Duration,
        filter: impl Fn(&TrafficKey) -> bool,
        group: impl Fn(&TrafficKey) -> G,
    ) -> BTreeMap<G, Totals> {
        self.sum_at(Self::now(), window, filter, group)
    }

    /// Totals per destination (namespace, service, revision) over `window`:
    /// what `/debug/traffic` shows.
    pub fn summary(&self, window: Duration) -> Vec<serde_json::Value> {
        let bounds = self.bounds_ms();
        self.sum(
            window,
            |_| true,
            |k| (k.namespace.clone(), k.service.clone(), k.revision.clone()),
        )
        .into_iter()
        .map(|((namespace, service, revision), t)| {
            serde_json::json!({
                "namespace": namespace,
                "service": service,
                "revision": revision,
                "requests": t.requests,
                "errors": t.errors,
                "errorRate": t.error_rate(),
                "p99Ms": t.quantile_ms(0.99, &bounds),
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(rev: &str, requests: u64, errors: u64, latency: Vec<u64>) -> TrafficDelta {
        TrafficDelta {
            source_workload: "gw".into(),
            source_namespace: "sys".into(),
            destination_service: "handson".into(),
            destination_namespace: "h".into(),
            destination_revision: rev.into(),
            requests,
            errors,
            latency_buckets: latency,
            denied: 0,
        }
    }

    #[test]
    fn sums_inside_the_window_and_forgets_the_old() {
        let w = TrafficWindow::new(Duration::from_secs(60));
        let bounds = [1.0, 10.0, f64::INFINITY];
        w.record_at(
            1000,
            &bounds,
            &[
                delta("a", 10, 1, vec![9, 1, 0]),
                delta("b", 4, 4, vec![0, 0, 4]),
            ],
        );
        w.record_at(1000, &bounds, &[delta("a", 10, 0, vec![10, 0, 0])]);
        w.record_at(1020, &bounds, &[delta("a", 5, 0, vec![5, 0, 0])]);
        let by_rev = |now, secs| {
            w.sum_at(
                now,
                Duration::from_secs(secs),
                |k| k.namespace == "h",
                |k| k.revision.clone(),
            )
        };
        let all = by_rev(1020, 30);
        assert_eq!(all["a"].requests, 25);
        assert_eq!(all["a"].errors, 1);
        assert!((all["b"].error_rate() - 1.0).abs() < f64::EPSILON);
        assert_eq!(all["b"].quantile_ms(0.99, &bounds), Some(f64::INFINITY));
        assert_eq!(all["a"].quantile_ms(0.5, &bounds), Some(1.0));
        let recent = by_rev(1020, 10);
        assert_eq!(recent["a"].requests, 5);
        // Past the span, old buckets are dropped on the next record.
        w.record_at(1100, &bounds, &[delta("a", 1, 0, vec![1, 0, 0])]);
        assert_eq!(by_rev(1100, 1000)["a"].requests, 1);
    }
}
