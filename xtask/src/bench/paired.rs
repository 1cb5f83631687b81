//! Two rows compared round by round, and what that comparison can claim.
//!
//! The machine's noise moves single rounds by tens of per cent, so a
//! target is judged on an interval around the median of the rounds'
//! comparisons rather than on the median alone. The interval between the
//! k-th lowest and the k-th highest of n rounds holds the true median with
//! a probability that depends only on n and k (the sign test's binomial),
//! whatever the shape of the noise: with 5 rounds, lowest to highest is a
//! 94 % interval; with 15, the 4th to the 12th is a 96 % one.

/// The median of `values`, 0 for none (a row not measured).
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The least confidence an interval is shown and judged with.
const CONFIDENCE: f64 = 0.90;

/// An interval for the median of paired rounds.
#[derive(Debug, PartialEq)]
pub(super) struct Interval {
    pub low: f64,
    pub high: f64,
    /// The probability that it holds the true median.
    pub confidence: f64,
}

/// The narrowest interval of order statistics of `sorted` whose
/// confidence is at least [`CONFIDENCE`]; none for too few rounds.
fn median_interval(sorted: &[f64]) -> Option<Interval> {
    let n = sorted.len();
    let mut best = None;
    // P(B = k - 1) and P(B <= k - 1) for B ~ Binomial(n, 1/2): the chance
    // that k - 1 rounds or fewer fall below the true median.
    let mut term = 0.5f64.powi(n as i32);
    let mut tail = 0.0;
    for k in 1..=n / 2 {
        tail += term;
        let confidence = 1.0 - 2.0 * tail;
        if confidence < CONFIDENCE {
            break;
        }
        best = Some(Interval {
            low: sorted[k - 1],
            high: sorted[n - k],
            confidence,
        });
        term *= (n - k + 1) as f64 / k as f64;
    }
    best
}

/// Whether a comparison meets a target of "at most".
#[derive(Debug, PartialEq, Clone, Copy)]
pub(super) enum Verdict {
    /// The whole interval is at or under the target.
    Met,
    /// The whole interval is over it.
    Missed,
    /// The interval straddles it, or there were too few rounds for one.
    WithinNoise,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::WithinNoise => "within the noise",
        })
    }
}

/// Two rows compared round by round: the median of the rounds'
/// comparisons, the lowest, the highest and the interval for the median.
/// Two contenders measured in the same round ran seconds apart, so
/// comparing them there cancels the drift of the machine that the medians
/// of each alone keep.
#[derive(Debug, PartialEq)]
pub(super) struct Paired {
    pub mid: f64,
    pub low: f64,
    pub high: f64,
    pub interval: Option<Interval>,
}

impl Paired {
    /// `f(a, b)` in each round.
    fn by(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Paired {
        let mut each: Vec<f64> = a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect();
        each.sort_by(f64::total_cmp);
        Paired {
            mid: median(each.clone()),
            low: each.first().copied().unwrap_or(0.0),
            high: each.last().copied().unwrap_or(0.0),
            interval: median_interval(&each),
        }
    }

    /// `a / b` in each round.
    pub fn ratio(a: &[f64], b: &[f64]) -> Paired {
        Paired::by(a, b, ratio)
    }

    /// `a - b` in each round.
    pub fn difference(a: &[f64], b: &[f64]) -> Paired {
        Paired::by(a, b, |a, b| a - b)
    }

    /// Whether the comparison is at most `target`, judged on its interval.
    pub fn at_most(&self, target: f64) -> Verdict {
        match &self.interval {
            Some(i) if i.high <= target => Verdict::Met,
            Some(i) if i.low > target => Verdict::Missed,
            _ => Verdict::WithinNoise,
        }
    }

    /// As a ratio: "1.04x (rounds 0.95-1.20; 94 % interval 0.95-1.20)".
    pub fn times(&self) -> String {
        self.shown(|v| format!("{v:.2}x"), |v| format!("{v:.2}"), "-")
    }

    /// As a difference in µs: "+12 µs (rounds -40 to +90; ...)".
    pub fn micros(&self) -> String {
        self.shown(|v| format!("{v:+.0} µs"), |v| format!("{v:+.0}"), " to ")
    }

    fn shown(&self, mid: impl Fn(f64) -> String, end: impl Fn(f64) -> String, to: &str) -> String {
        let mut s = format!(
            "{} (rounds {}{to}{}",
            mid(self.mid),
            end(self.low),
            end(self.high)
        );
        if let Some(i) = &self.interval {
            s.push_str(&format!(
                "; {:.0} % interval {}{to}{}",
                i.confidence * 100.0,
                end(i.low),
                end(i.high)
            ));
        }
        s.push(')');
        s
    }
}

/// `a / b`, 0 when `b` is not measured.
pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_take_the_median_round_and_show_the_spread() {
        let sluice = [10.0, 12.0, 9.0];
        let nginx = [10.0, 10.0, 10.0];
        let paired = Paired::ratio(&sluice, &nginx);
        assert_eq!((paired.mid, paired.low, paired.high), (1.0, 0.9, 1.2));
        assert_eq!(paired.times(), "1.00x (rounds 0.90-1.20)");
    }

    #[test]
    fn paired_differences_keep_their_sign_when_every_round_is_lower() {
        let sluice = [300.0, 250.0, 420.0];
        let nginx = [350.0, 390.0, 430.0];
        let paired = Paired::difference(&sluice, &nginx);
        assert_eq!(paired.mid, -50.0);
        assert_eq!(paired.micros(), "-50 µs (rounds -140 to -10)");
    }

    #[test]
    fn three_rounds_are_too_few_to_judge_a_target() {
        let paired = Paired::ratio(&[8.0, 8.0, 8.0], &[10.0, 10.0, 10.0]);
        assert_eq!(paired.interval, None);
        assert_eq!(paired.at_most(1.0), Verdict::WithinNoise);
    }

    #[test]
    fn five_rounds_give_lowest_to_highest_as_a_94_per_cent_interval() {
        let paired = Paired::ratio(&[8.0, 9.0, 7.0, 9.5, 8.5], &[10.0; 5]);
        let i = paired.interval.as_ref().expect("an interval");
        assert_eq!((i.low, i.high), (0.7, 0.95));
        assert!((i.confidence - 0.9375).abs() < 1e-9);
        assert_eq!(paired.at_most(1.0), Verdict::Met);
        assert_eq!(
            paired.times(),
            "0.85x (rounds 0.70-0.95; 94 % interval 0.70-0.95)"
        );
    }

    #[test]
    fn fifteen_rounds_leave_three_outliers_out_at_each_end() {
        let a: Vec<f64> = (1..=15).map(f64::from).collect();
        let paired = Paired::difference(&a, &[0.0; 15]);
        let i = paired.interval.as_ref().expect("an interval");
        assert_eq!((i.low, i.high), (4.0, 12.0));
        assert!((i.confidence - (1.0 - 2.0 * 576.0 / 32768.0)).abs() < 1e-9);
    }

    #[test]
    fn a_target_inside_the_interval_is_within_the_noise_and_one_under_it_missed() {
        let paired = Paired::ratio(&[9.0, 11.0, 10.5, 9.5, 12.0], &[10.0; 5]);
        assert_eq!(paired.at_most(1.0), Verdict::WithinNoise);
        assert_eq!(paired.at_most(0.85), Verdict::Missed);
        assert_eq!(paired.at_most(1.2), Verdict::Met);
    }

    #[test]
    fn a_row_not_measured_pairs_to_zero_instead_of_panicking() {
        assert_eq!(Paired::ratio(&[], &[]).times(), "0.00x (rounds 0.00-0.00)");
    }
}
