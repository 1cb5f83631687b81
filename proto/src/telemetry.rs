//! The shape of telemetry, fixed by the contract rather than by each
//! reporter: a report whose latency vector has another length is refused.

/// Upper bounds of the latency buckets, in milliseconds; a last bucket
/// (+Inf) follows, so every latency vector has `LATENCY_BUCKETS_MS.len() + 1`
/// cells.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Cells in a latency vector.
pub const LATENCY_CELLS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// The bounds with the final +Inf, as reports and the window carry them.
pub fn bounds_with_inf() -> Vec<f64> {
    LATENCY_BUCKETS_MS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .collect()
}
