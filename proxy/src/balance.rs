//! Choosing where a request goes: a backend by weight, then an endpoint by
//! power of two choices over outstanding requests and EWMA latency, with
//! endpoints that refuse connections, or answer 5xx time after time,
//! ejected for a while. All state is
//! atomics; nothing here takes a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds since the process started (a monotonic clock in a u64),
/// by the task's time ([`crate::clock`]).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    crate::clock::since(*START.get_or_init(Instant::now)).as_millis() as u64
}

/// First ejection; doubles with consecutive failures up to [`EJECT_MAX_MS`].
const EJECT_BASE_MS: u64 = 1_000;
const EJECT_MAX_MS: u64 = 30_000;
/// 5xx answers in a row that eject an endpoint (Envoy's outlier detection
/// default): without it, an endpoint that fails fast would look fastest
/// and draw the most traffic.
pub const EJECT_AFTER_ERRORS: u32 = 5;
/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// An endpoint with no samples yet is assumed to be fast, so that a new
/// endpoint (a scaled-up replica) gets tried at once instead of starving
/// behind endpoints whose latency is known.
const DEFAULT_LATENCY_US: u64 = 0;
/// An endpoint's latency estimate halves for every this long without a
/// sample, so that an endpoint that was slow once is probed again: one
/// slowed by a moment of contention (a neighbour starting) gets traffic back
/// within seconds, not after half a minute of sitting out; one that is
/// really ten times slower costs one probe every few seconds.
const DECAY_HALF_LIFE_MS: f64 = 1_000.0;

/// One upstream address and its load.
#[derive(Debug)]
pub struct Endpoint {
    /// The address.
    pub addr: SocketAddr,
    outstanding: AtomicU32,
    ewma_us: AtomicU64,
    /// When the last sample arrived ([`now_ms`]).
    sampled_ms: AtomicU64,
    /// Whether any sample arrived.
    sampled: AtomicBool,
    ejected_until_ms: AtomicU64,
    /// Ejections in a row: each one lasts twice the one before.
    failures: AtomicU32,
    /// 5xx answers in a row.
    errors: AtomicU32,
}

impl Endpoint {
    /// A fresh endpoint.
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            outstanding: AtomicU32::new(0),
            ewma_us: AtomicU64::new(DEFAULT_LATENCY_US),
            sampled_ms: AtomicU64::new(now_ms()),
            sampled: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            errors: AtomicU32::new(0),
        }
    }

    /// The latency estimate at `now`, decayed since the last sample.
    fn latency_us(&self, now: u64) -> f64 {
        let idle = now.saturating_sub(self.sampled_ms.load(Relaxed)) as f64;
        self.ewma_us.load(Relaxed) as f64 * (-idle / DECAY_HALF_LIFE_MS).exp2()
    }

    fn cost(&self, now: u64) -> f64 {
        // At least 1 µs, so that outstanding requests still count between
        // endpoints without samples.
        f64::from(self.outstanding.load(Relaxed) + 1) * self.latency_us(now).max(1.0)
    }

    /// Whether it is ejected at `now` (ms).
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Relaxed);
        InFlight {
            endpoint: self.clone(),
        }
    }

    /// A response arrived after `latency`: fold it into the average and
    /// clear the failure streak.
    pub fn observe(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let now = now_ms();
        let old = self.latency_us(now);
        // The first sample replaces the optimistic default outright.
        let new = if self.sampled.swap(true, Relaxed) {
            old + EWMA_ALPHA * (sample as f64 - old)
        } else {
            sample as f64
        };
        self.ewma_us.store(new.max(1.0) as u64, Relaxed);
        self.sampled_ms.store(now, Relaxed);
        self.failures.store(0, Relaxed);
        self.errors.store(0, Relaxed);
    }

    /// It answered 5xx: its latency says nothing of how fast it serves,
    /// and a run of these ejects it (for the time returned).
    pub fn observe_error(&self) -> Option<Duration> {
        if self.errors.fetch_add(1, Relaxed) + 1 >= EJECT_AFTER_ERRORS {
            self.errors.store(0, Relaxed);
            return self.eject();
        }
        None
    }

    /// Takes the endpoint out of rotation (it could not be reached, or
    /// answered 5xx time after time), longer each time in a row. Returns
    /// how long it is out; `None` when it already was, since
    /// requests sent before the ejection that fail after it say nothing
    /// new (fifty of them must not make it fifty ejections in a row).
    pub fn eject(&self) -> Option<Duration> {
        let now = now_ms();
        let until = self.ejected_until_ms.load(Relaxed);
        let streak = self.failures.load(Relaxed).min(5);
        let ms = (EJECT_BASE_MS << streak).min(EJECT_MAX_MS);
        // One of several concurrent failures wins the ejection.
        if until > now
            || self
                .ejected_until_ms
                .compare_exchange(until, now + ms, Relaxed, Relaxed)
                .is_err()
        {
            return None;
        }
        self.failures.fetch_add(1, Relaxed);
        Some(Duration::from_millis(ms))
    }
}

/// Why an endpoint was taken out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// A connection to it failed (refused, unreachable, timed out).
    Unreachable,
    /// It answered 5xx [`EJECT_AFTER_ERRORS`] times in a row.
    Failing,
}

impl Ejection {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Ejection::Unreachable => "unreachable",
            Ejection::Failing => "5xx",
        }
    }
}

/// Decrements the endpoint's outstanding count when dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Whether any endpoint other than `avoid` is in rotation.
pub fn usable_besides(endpoints: &[Arc<Endpoint>], avoid: &Arc<Endpoint>) -> bool {
    let now = now_ms();
    endpoints
        .iter()
        .any(|e| !Arc::ptr_eq(e, avoid) && !e.ejected(now))
}

/// Power of two choices among the endpoints not ejected, skipping `avoid`
/// (the endpoint a retry just failed on, as Envoy's previous-hosts
/// predicate). When that leaves none, ejected endpoints are candidates too,
/// so that a total outage still probes for recovery; `avoid` is taken only
/// when it is the sole endpoint.
pub fn pick<'a>(
    endpoints: &'a [Arc<Endpoint>],
    avoid: Option<&Arc<Endpoint>>,
) -> Option<&'a Arc<Endpoint>> {
    let now = now_ms();
    let not_avoided = |e: &&Arc<Endpoint>| avoid.is_none_or(|a| !Arc::ptr_eq(a, e));
    p2c(endpoints, now, |e| not_avoided(e) && !e.ejected(now))
        .or_else(|| p2c(endpoints, now, not_avoided))
        .or_else(|| p2c(endpoints, now, |_| true))
}

fn p2c(
    endpoints: &[Arc<Endpoint>],
    now: u64,
    usable: impl Fn(&&Arc<Endpoint>) -> bool,
) -> Option<&Arc<Endpoint>> {
    let n = endpoints.iter().filter(&usable).count();
    let nth = |k: usize| endpoints.iter().filter(&usable).nth(k);
    match n {
        0 => None,
        1 => nth(0),
        _ => {
            let a = fastrand::usize(0..n);
            let mut b = fastrand::usize(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (nth(a)?, nth(b)?);
            Some(if eb.cost(now) < ea.cost(now) { eb } else { ea })
        }
    }
}

/// A weighted choice among backends (indices into the compiled backends).
///
/// Choices follow a Weyl sequence (the request count times the golden
/// ratio, modulo 1) rather than random draws: consecutive requests spread
/// evenly over the weights, so any run of them splits within a few
/// requests of the weights, where random draws stray by about √n (a 50/50
/// split of 1,000 requests lands outside 450–550 about once in 600 runs).
/// The count is one atomic shared by the connections on the route: no lock.
#[derive(Debug, Default)]
pub struct Split {
    /// (backend index, cumulative weight up to and including it).
    entries: Vec<(usize, u32)>,
    total: u32,
    /// Requests chosen for so far (from a random start).
    count: AtomicU64,
}

/// 2^64 divided by the golden ratio: the step of the Weyl sequence.
const GOLDEN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

impl Split {
    /// From (backend index, weight) pairs; weights are relative, 0 allowed.
    pub fn new(weights: impl IntoIterator<Item = (usize, u32)>) -> Split {
        let mut total = 0u32;
        let entries = weights
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(i, w)| {
                total = total.saturating_add(w);
                (i, total)
            })
            .collect();
        Split {
            entries,
            total,
            // A random start, so that new configs do not all begin alike.
            count: AtomicU64::new(fastrand::u64(..)),
        }
    }

    /// A weighted choice among the backends other than `skip`, or `None`
    /// when no other has weight: a retry after `skip` failed with no usable
    /// endpoint left (a canary whose only pod just went away).
    pub fn choose_except(&self, skip: usize) -> Option<usize> {
        let mut prev = 0;
        let others: Vec<(usize, u32)> = self
            .entries
            .iter()
            .filter_map(|&(i, cum)| {
                let w = cum - prev;
                prev = cum;
                (i != skip).then_some((i, w))
            })
            .collect();
        Split::new(others).choose()
    }

    /// A backend index, or `None` when every weight is 0.
    pub fn choose(&self) -> Option<usize> {
        match self.entries.as_slice() {
            [] => None,
            [(only, _)] => Some(*only),
            entries => {
                let n = self.count.fetch_add(1, Relaxed);
                let point = n.wrapping_mul(GOLDEN_STEP);
                // The point in [0, 1) scaled to [0, total).
                let r = ((u128::from(point) * u128::from(self.total)) >> 64) as u32;
                let pos = entries.partition_point(|(_, cum)| *cum <= r);
                entries.get(pos).map(|(i, _)| *i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_weights() {
        let s = Split::new([(0, 90), (1, 10), (2, 0)]);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[s.choose().unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = f64::from(counts[0]) / 100_000.0;
        assert!((share - 0.9).abs() < 0.01, "{share}");
        assert_eq!(Split::new([(0, 0)]).choose(), None);
        // Any run of consecutive requests splits within a few of the weights.
        for weights in [[50, 50], [20, 80], [1, 99]] {
            let s = Split::new([(0, weights[0]), (1, weights[1])]);
            for run in [100u32, 1_000, 10_000] {
                let first = (0..run).filter(|_| s.choose() == Some(0)).count();
                let want = run * weights[0] / 100;
                let off = (i64::try_from(first).unwrap() - i64::from(want)).abs();
                assert!(off <= 3, "{weights:?}: {first} of {run}, want {want}");
            }
        }
        assert_eq!(Split::new([(3, 5)]).choose(), Some(3));
        let two = Split::new([(0, 50), (1, 50)]);
        for _ in 0..100 {
            assert_eq!(two.choose_except(0), Some(1));
        }
        assert_eq!(Split::new([(0, 100), (1, 0)]).choose_except(0), None);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_skips_ejected() {
        let a = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap()));
        let b = Arc::new(Endpoint::new("127.0.0.1:2".parse().unwrap()));
        let eps = vec![a.clone(), b.clone()];
        let _busy: Vec<InFlight> = (0..10).map(|_| a.begin()).collect();
        for _ in 0..100 {
            assert_eq!(pick(&eps, None).unwrap().addr, b.addr);
        }
        b.eject();
        assert!(b.ejected(now_ms()));
        for _ in 0..100 {
            assert_eq!(pick(&eps, None).unwrap().addr, a.addr);
        }
        a.eject();
        // All ejected: still answers, so that recovery is noticed.
        assert!(pick(&eps, None).is_some());
        assert!(pick(&[], None).is_none());
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_just_failed() {
        let eps: Vec<_> = (1..=3)
            .map(|p| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p)))))
            .collect();
        for _ in 0..200 {
            let got = pick(&eps, Some(&eps[0])).unwrap();
            assert!(!Arc::ptr_eq(got, &eps[0]));
        }
        // The only endpoint is still tried.
        assert!(pick(&eps[..1], Some(&eps[0])).is_some());
    }

    #[test]
    fn a_new_endpoint_is_tried_at_once_and_estimates_decay() {
        let old = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap()));
        old.observe(Duration::from_micros(300));
        let new = Arc::new(Endpoint::new("127.0.0.1:2".parse().unwrap()));
        let eps = vec![old.clone(), new.clone()];
        assert_eq!(pick(&eps, None).unwrap().addr, new.addr);
        // Two seconds without samples: a quarter of the estimate is left.
        let later = old.sampled_ms.load(Relaxed) + 2_000;
        let left = old.latency_us(later);
        assert!((74.0..=76.0).contains(&left), "{left}");
    }

    #[test]
    fn a_run_of_5xx_answers_ejects_and_a_success_breaks_the_run() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
        for _ in 0..EJECT_AFTER_ERRORS - 1 {
            assert_eq!(e.observe_error(), None);
        }
        e.observe(Duration::from_millis(1));
        assert_eq!(e.observe_error(), None);
        assert!(!e.ejected(now_ms()));
        for _ in 2..EJECT_AFTER_ERRORS {
            assert_eq!(e.observe_error(), None);
        }
        let out = e.observe_error();
        assert_eq!(out, Some(Duration::from_millis(EJECT_BASE_MS)));
        assert!(e.ejected(now_ms()));
    }

    /// Each ejection once the last one is over (its time pretended past).
    fn eject_after_the_last(e: &Endpoint) -> Option<u64> {
        e.ejected_until_ms.store(0, Relaxed);
        e.eject().map(|d| d.as_millis() as u64)
    }

    #[test]
    fn ejections_in_a_row_double_up_to_the_cap_and_a_success_resets_them() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
        let outs: Vec<u64> = (0..8).filter_map(|_| eject_after_the_last(&e)).collect();
        assert_eq!(
            outs,
            [
                1_000,
                2_000,
                4_000,
                8_000,
                16_000,
                EJECT_MAX_MS,
                EJECT_MAX_MS,
                EJECT_MAX_MS
            ]
        );
        e.observe(Duration::from_millis(1));
        assert_eq!(eject_after_the_last(&e), Some(EJECT_BASE_MS));
    }

    #[test]
    fn failures_while_ejected_neither_eject_again_nor_lengthen_the_next() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(e.eject(), Some(Duration::from_millis(EJECT_BASE_MS)));
        for _ in 0..50 {
            assert_eq!(e.eject(), None);
        }
        assert_eq!(eject_after_the_last(&e), Some(2 * EJECT_BASE_MS));
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
        for _ in 0..50 {
            e.observe(Duration::from_millis(20));
        }
        let v = e.ewma_us.load(Relaxed);
        assert!((19_000..=20_000).contains(&v), "{v}");
    }
}
