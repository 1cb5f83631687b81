//! Per-second buckets of request, error and latency counts per
//! (source, destination service, destination revision, reporting side),
//! kept for a bounded span and summed over any window inside it. Memory is
//! bounded twice: series that saw nothing within the span are dropped, and
//! past a maximum number of series new ones are refused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_proto::mesh::TrafficDelta;
use sluice_proto::telemetry::LATENCY_CELLS;

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
    /// Reported by the destination's own sidecar (what its pod received),
    /// rather than by the gateway that sent it.
    pub inbound: bool,
}

/// One second of one series. Fixed-size and narrow (a series keeps one
/// per second of the span, and a mesh has thousands of series): counts of
/// one second fit in `u32` (they saturate rather than wrap), and the
/// contract fixes the latency vector's length.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Unix seconds (`u32` lasts until 2106).
    second: u32,
    requests: u32,
    errors: u32,
    latency: [u32; LATENCY_CELLS],
}

impl Bucket {
    fn at(second: u64) -> Bucket {
        Bucket {
            second: narrow(second),
            ..Default::default()
        }
    }

    fn second(&self) -> u64 {
        u64::from(self.second)
    }

    fn add(&mut self, d: &TrafficDelta) {
        self.requests = self.requests.saturating_add(narrow(d.requests));
        self.errors = self.errors.saturating_add(narrow(d.errors));
        for (t, n) in self.latency.iter_mut().zip(&d.latency_buckets) {
            *t = t.saturating_add(narrow(*n));
        }
    }
}

fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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

    /// One count of the same requests as two sides saw them (the gateway
    /// that sent them, the sidecar that received them): the larger count of
    /// each, as either side may miss what only the other sees (a
    /// connection that failed, a caller outside the mesh); latency from the
    /// side with more samples.
    pub fn either_side(a: &Totals, b: &Totals) -> Totals {
        let samples = |t: &Totals| t.latency.iter().sum::<u64>();
        Totals {
            requests: a.requests.max(b.requests),
            errors: a.errors.max(b.errors),
            latency: if samples(a) >= samples(b) {
                a.latency.clone()
            } else {
                b.latency.clone()
            },
        }
    }

    fn add(&mut self, b: &Bucket) {
        self.requests += u64::from(b.requests);
        self.errors += u64::from(b.errors);
        if self.latency.len() < b.latency.len() {
            self.latency.resize(b.latency.len(), 0);
        }
        for (t, n) in self.latency.iter_mut().zip(&b.latency) {
            *t += u64::from(*n);
        }
    }
}

/// The per-second buckets of every series, and when keys were last swept.
#[derive(Debug, Default)]
struct Series {
    by_key: HashMap<TrafficKey, VecDeque<Bucket>>,
    swept_at: u64,
}

/// The window, shared by the telemetry service and its readers.
#[derive(Debug)]
pub struct TrafficWindow {
    span: Duration,
    max_series: usize,
    series: Mutex<Series>,
}

/// Deltas [`TrafficWindow::record_at`] could not keep: the window holds
/// its maximum of series and these would have started new ones.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Overflow(pub usize);

/// How often (in seconds of report time) series are swept.
const SWEEP_EVERY: u64 = 5;

impl TrafficWindow {
    /// Keeps `span` of history, in at most `max_series` series.
    pub fn new(span: Duration, max_series: usize) -> TrafficWindow {
        TrafficWindow {
            span,
            max_series,
            series: Mutex::new(Series::default()),
        }
    }

    /// Unix seconds now, the clock buckets are keyed by.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Latency bucket bounds in ms (the contract's, then +Inf).
    pub fn bounds_ms(&self) -> Vec<f64> {
        sluice_proto::telemetry::bounds_with_inf()
    }

    /// Series held now.
    pub fn series_count(&self) -> usize {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// Adds one proxy's deltas (already admitted and attributed) at
    /// `second` (Unix time).
    pub fn record_at(&self, second: u64, deltas: &[TrafficDelta]) -> Overflow {
        let mut guard = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = second.saturating_sub(self.span.as_secs());
        if second >= guard.swept_at + SWEEP_EVERY {
            sweep(&mut guard.by_key, oldest);
            guard.swept_at = second;
        }
        let mut overflow = Overflow::default();
        for d in deltas {
            let key = TrafficKey {
                source_namespace: d.source_namespace.clone(),
                source_workload: d.source_workload.clone(),
                namespace: d.destination_namespace.clone(),
                service: d.destination_service.clone(),
                revision: d.destination_revision.clone(),
                inbound: d.inbound,
            };
            let full = guard.by_key.len() >= self.max_series;
            let q = match guard.by_key.get_mut(&key) {
                Some(q) => q,
                None if full => {
                    overflow.0 += 1;
                    continue;
                }
                None => guard.by_key.entry(key).or_default(),
            };
            while q.front().is_some_and(|b| b.second() < oldest) {
                q.pop_front();
            }
            match q.back_mut() {
                Some(b) if b.second() == second => b.add(d),
                _ => {
                    let mut b = Bucket::at(second);
                    b.add(d);
                    grow_within(q, self.most_buckets());
                    q.push_back(b);
                }
            }
        }
        overflow
    }

    /// The most buckets a series holds: one per second of the span, both
    /// ends included.
    fn most_buckets(&self) -> usize {
        usize::try_from(self.span.as_secs())
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// Adds one proxy's deltas now.
    pub fn record(&self, deltas: &[TrafficDelta]) -> Overflow {
        self.record_at(Self::now(), deltas)
    }

    /// Sweeps every few seconds until the process ends: reports sweep as
    /// they come, but a flood that stopped leaves its series until then.
    /// `swept` gets the series count after each sweep.
    pub async fn keep_swept(self: std::sync::Arc<Self>, swept: impl Fn(usize)) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(SWEEP_EVERY));
        loop {
            every.tick().await;
            self.sweep_at(Self::now());
            swept(self.series_count());
        }
    }

    /// Drops what is older than the span as of `now`, series and all: for
    /// a quiet window, which no report sweeps.
    pub fn sweep_at(&self, now: u64) {
        let mut guard = self.series.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut guard.by_key, now.saturating_sub(self.span.as_secs()));
        guard.swept_at = now;
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
        for (k, q) in guard.by_key.iter().filter(|(k, _)| filter(k)) {
            let t = out.entry(group(k)).or_default();
            for b in q.iter().filter(|b| b.second() > from && b.second() <= now) {
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

    /// Totals per destination (namespace, service, revision) and reporting
    /// side over `window`: what `/debug/traffic` shows.
    pub fn summary(&self, window: Duration) -> Vec<serde_json::Value> {
        let bounds = self.bounds_ms();
        self.sum(
            window,
            |_| true,
            |k| {
                (
                    k.namespace.clone(),
                    k.service.clone(),
                    k.revision.clone(),
                    k.inbound,
                )
            },
        )
        .into_iter()
        .map(|((namespace, service, revision, inbound), t)| {
            serde_json::json!({
                "namespace": namespace,
                "service": service,
                "revision": revision,
                "reporter": if inbound { "destination" } else { "source" },
                "requests": t.requests,
                "errors": t.errors,
                "errorRate": t.error_rate(),
                "p99Ms": t.quantile_ms(0.99, &bounds),
            })
        })
        .collect()
    }
}

/// Makes room for one more bucket in `q`: doubling, as a deque grows, but
/// never past `most`. A series that fills a 300 s window then holds room
/// for 301 buckets (21.7 KB), not the 512 that doubling from 256 leaves.
fn grow_within(q: &mut VecDeque<Bucket>, most: usize) {
    if q.len() < q.capacity() {
        return;
    }
    let room = (q.capacity() * 2).max(4).min(most).max(q.len() + 1);
    q.reserve_exact(room - q.len());
}

/// Drops buckets before `oldest`, and the series left empty; gives the
/// memory of a flood back once it has aged out.
fn sweep(series: &mut HashMap<TrafficKey, VecDeque<Bucket>>, oldest: u64) {
    series.retain(|_, q| {
        while q.front().is_some_and(|b| b.second() < oldest) {
            q.pop_front();
        }
        // A series that was busy once keeps the deque it grew to; give
        // most of it back once it has gone quiet.
        if q.capacity() > 64 && q.len() < q.capacity() / 4 {
            q.shrink_to_fit();
        }
        !q.is_empty()
    });
    if series.capacity() > 64 && series.len() < series.capacity() / 4 {
        series.shrink_to_fit();
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
            ..Default::default()
        }
    }

    fn cells(fast: u64, slow: u64) -> Vec<u64> {
        let mut v = vec![0; sluice_proto::telemetry::LATENCY_CELLS];
        v[1] = fast;
        v[sluice_proto::telemetry::LATENCY_CELLS - 1] = slow;
        v
    }

    #[test]
    fn sums_inside_the_window_and_forgets_the_old() {
        let w = TrafficWindow::new(Duration::from_secs(60), 1000);
        let bounds = w.bounds_ms();
        w.record_at(
            1000,
            &[
                delta("a", 10, 1, cells(10, 0)),
                delta("b", 4, 4, cells(0, 4)),
            ],
        );
        w.record_at(1000, &[delta("a", 10, 0, cells(10, 0))]);
        w.record_at(1020, &[delta("a", 5, 0, cells(5, 0))]);
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
        w.record_at(1100, &[delta("a", 1, 0, cells(1, 0))]);
        assert_eq!(by_rev(1100, 1000)["a"].requests, 1);
        assert_eq!(w.series_count(), 1, "series b aged out");
    }

    #[test]
    fn a_series_busy_every_second_holds_room_for_its_span_and_no_more() {
        let w = TrafficWindow::new(Duration::from_secs(300), 10);
        for second in 1000..1000 + 2 * 300 {
            w.record_at(second, &[delta("a", 1, 0, cells(1, 0))]);
        }
        let guard = w.series.lock().unwrap_or_else(|p| p.into_inner());
        let q = guard
            .by_key
            .values()
            .next()
            .map(|q| (q.len(), q.capacity()));
        assert_eq!(q, Some((301, 301)));
    }

    #[test]
    fn a_flood_of_keys_is_capped_and_ages_out() {
        let w = TrafficWindow::new(Duration::from_secs(60), 20_000);
        let flood: Vec<TrafficDelta> = (0..100_000)
            .map(|i| delta(&format!("rev-{i}"), 1, 0, cells(1, 0)))
            .collect();
        let overflow = w.record_at(1000, &flood);
        assert_eq!(overflow, Overflow(80_000));
        assert_eq!(w.series_count(), 20_000);
        // Known series still count while the window is full.
        assert_eq!(w.record_at(1001, &flood[..10]), Overflow(0));
        w.sweep_at(1000 + 62);
        assert_eq!(w.series_count(), 0);
        assert_eq!(w.record_at(1063, &flood[..10]), Overflow(0));
    }
}
