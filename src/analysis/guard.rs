//! The guard's verdicts: does the canary pool do worse than the stable pool? Counts in,
//! verdicts out; no clock, no I/O.
//!
//! The guard looks every second for the whole hold of a rollout step. An ordinary test
//! recomputed at every look raises false alarms far more often than its nominal level (a 5%
//! z-test looked at every 50 requests over 20,000 requests acts in about 28% of A/A runs), so
//! every decision here rests on a *confidence sequence*: a range that holds the truth at every
//! look at once with probability ≥ 1 − α, so looking more often costs nothing.
//!
//! - Errors: the normal-mixture confidence sequence for p_canary − p_stable
//!   ([`stats::diff_sequence`]). The mixture martingale is Robbins' (1970); as a sequential test
//!   it is the mixture SPRT of Johari, Koomen, Pekelis and Walsh, "Always Valid Inference:
//!   Continuous Monitoring of A/B Tests" (Operations Research, 2022), a descendant of Wald's
//!   sequential probability ratio test (1945); Howard, Ramdas, McAuliffe and Sekhon,
//!   "Time-uniform, nonparametric, nonasymptotic confidence sequences" (Annals of Statistics,
//!   2021) give the general theory. The canary regressed when the whole range lies above
//!   `max_error_rate_increase` (a non-inferiority margin: smaller increases are accepted). The
//!   variance may be given with users, not requests, as the unit (see
//!   [`crate::analysis::clusters`]); the simulation here draws each request as its own user's,
//!   and `sim::users` runs busy users beside light ones.
//! - Latency: see [`latency`]. A p99 has no simple variance, so the guard turns "the canary's
//!   p99 is at most `max_p99_ratio` × stable's" into a statement about a rate: the share of
//!   canary requests slower than `max_p99_ratio` × stable's p99 is at most 1%. A one-pool
//!   confidence sequence on that share ([`stats::rate_sequence`]) decides.
//!
//! The constants below were tuned by the seeded simulation in the crate's tests: A/A false
//! alarms 0 in 1,000 holds in every cell (error rates 0.5%, 2%, 10%; canary shares 1% to
//! 50%), a 1% → 6% error canary caught within 1,000 canary requests and a 2× latency canary
//! within 2,000 in ≥ 98% of runs at every share.

use crate::analysis::histogram;
use crate::analysis::stats::{self, Arm, Interval};

/// Default error level α of both confidence sequences: the chance that a range misses the
/// truth at any look during a hold. 0.05 rather than the 0.01 of the design note: with 0.01 a
/// 1% → 6% canary at a 50% share was caught within 1,000 canary requests in only 95% of runs,
/// while the accepted margin, not α, is what keeps A/A false alarms away (0 in 12,000 holds at
/// either α). What α still governs: with a zero margin, A/A holds alarm in up to 1.3% of runs
/// (0.3% at α = 0.01), and a canary exactly at the margin alarms in about 0.7%.
pub const ALPHA: f64 = 0.05;

/// Default mixing scale τ of the error-rate sequence: the increase of the error rate it is
/// tuned to catch fastest (absolute, 0.03 = 3 points). The bound is tightest when the
/// estimate's variance is near τ²/10, here about 700 requests per pool at a few percent
/// errors: where a regression should be caught. The simulation's detection figures are flat
/// from τ = 0.025 to 0.04, and about 10% slower at 0.02.
pub const ERROR_TAU: f64 = 0.03;

/// Default mixing scale τ of the slow-share sequence (absolute share of slow requests). A 2×
/// slower canary has 3-4% slow requests against a 1% limit; of τ = 0.005, 0.01, 0.02, 0.04
/// the simulation caught it fastest with 0.02.
pub const SLOW_TAU: f64 = 0.02;

/// z of the low bound of stable's p99 that a faster canary's p99 must be under to be `improved`.
pub const IMPROVED_Z: f64 = 3.0;

/// Default z of the upper confidence bound of stable's p99 used as the latency reference
/// (0 = stable's p99 itself, rounded up to its bucket's upper edge).
pub const REFERENCE_Z: f64 = 0.0;

/// A canary whose p99 is within the allowed ratio has at most this share of requests above
/// the ratio × stable's p99: 1 − 0.99.
pub const SLOW_SHARE_LIMIT: f64 = 0.01;

/// z of the fixed-sample percentile ranges shown beside the verdicts (about 99% for one look):
/// for display only, as they are not protected against repeated looks.
pub const PERCENTILE_Z: f64 = 2.576;

/// When the guard calls a regression, and the statistical constants behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Largest accepted increase of the canary's error rate over stable's, absolute
    /// (0.01 = 1 point). Default 0.01.
    pub max_error_rate_increase: f64,
    /// Largest accepted canary p99 / stable p99. Default 1.5.
    pub max_p99_ratio: f64,
    /// Least increase over the reference, µs, for an answer to count as slow. Default 0.
    pub min_p99_increase_micros: f64,
    /// Requests each pool needs before any verdict. Default 300.
    pub min_requests: u64,
    /// Distinct canary users a regression must show in — its errors, or its slow answers —
    /// before it counts (at most [`crate::analysis::ERROR_USERS`]). Default 5.
    pub min_users: u64,
    /// α of the confidence sequences. Default [`ALPHA`].
    pub alpha: f64,
    /// τ of the error-rate sequence. Default [`ERROR_TAU`].
    pub error_tau: f64,
    /// τ of the slow-share sequence. Default [`SLOW_TAU`].
    pub slow_tau: f64,
    /// z of the upper bound of stable's p99 used as the latency reference. Default
    /// [`REFERENCE_Z`].
    pub reference_z: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            min_p99_increase_micros: 0.0,
            min_requests: 300,
            min_users: 5,
            alpha: ALPHA,
            error_tau: ERROR_TAU,
            slow_tau: SLOW_TAU,
            reference_z: REFERENCE_Z,
        }
    }
}

/// What the guard concludes from one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No evidence either way beyond the accepted margin.
    Ok,
    /// The canary is worse than the margin allows, with confidence at every look.
    Regressed,
    /// The canary is better than stable.
    Improved,
    /// A pool has fewer than `min_requests`; `more` is how many the emptier pool still needs.
    NotEnoughData {
        /// Requests still needed by the pool furthest from `min_requests`.
        more: u64,
    },
    /// Counted per request the canary is worse than the margin allows, but not with the errors
    /// (or slow answers) of the `needed` − 1 heaviest users left out: one client's doing (a bot,
    /// one user's bad input or heavy report, an attacker with an id on the canary) is no
    /// regression of the version.
    FewUsers {
        /// `min_users`.
        needed: u64,
        /// Why the per-request call is not the guard's.
        why: Few,
    },
}

/// Why a regression counted per request is not the guard's call ([`Verdict::FewUsers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Few {
    /// With each version's busy users left out, the canary is not worse than the margin.
    Busy,
    /// Without them it is, but the errors (slow answers) come from fewer than `min_users`
    /// users, or too few requests remain.
    Users,
    /// With users as the unit of the variance, the range still reaches the margin: the errors
    /// (slow answers) are spread unevenly across users and more users are needed to tell.
    Spread,
}

/// NotEnoughData while either pool has fewer than `min_requests`.
fn shortfall(canary_n: u64, stable_n: u64, t: &Thresholds) -> Option<Verdict> {
    let more = t
        .min_requests
        .saturating_sub(canary_n)
        .max(t.min_requests.saturating_sub(stable_n));
    (more > 0).then_some(Verdict::NotEnoughData { more })
}

/// Compares error rates: the confidence sequence for p_canary − p_stable and its verdict.
/// Regressed when its low end is above `max_error_rate_increase`, Improved when its high end is
/// below 0, NotEnoughData until both pools have `min_requests`.
pub fn errors(canary: Arm, stable: Arm, clustered: f64, t: &Thresholds) -> (Interval, Verdict) {
    let diff = stats::diff_sequence(canary, stable, clustered, t.alpha, t.error_tau);
    let verdict = match shortfall(canary.n, stable.n, t) {
        Some(short) => short,
        None if diff.low > t.max_error_rate_increase => Verdict::Regressed,
        None if diff.high < 0.0 => Verdict::Improved,
        None => Verdict::Ok,
    };
    (diff, verdict)
}

/// Quantiles of one pool's latency histogram, µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// The percentiles of a histogram (see [`histogram`]); None when it is empty.
    pub fn of(counts: &[u64]) -> Option<Percentiles> {
        Some(Percentiles {
            p50: histogram::quantile(counts, 0.50)?,
            p95: histogram::quantile(counts, 0.95)?,
            p99: histogram::quantile(counts, 0.99)?,
        })
    }
}

/// The latency comparison of one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyCheck {
    /// The canary's percentiles; None when it has no requests yet.
    pub canary: Option<Percentiles>,
    /// Stable's percentiles; None when it has no requests yet.
    pub stable: Option<Percentiles>,
    /// canary p99 / stable p99, when both exist.
    pub p99_ratio: Option<f64>,
    /// The "slow" threshold, µs: `max_p99_ratio` × the reference (see [`latency`]).
    pub slow_micros: Option<f64>,
    /// The confidence sequence for the share of canary requests above `slow_micros`.
    pub slow_share: Option<Interval>,
    /// The conclusion.
    pub verdict: Verdict,
}

/// Compares latency histograms (counts per bucket of [`histogram`]).
///
/// Reference: stable's p99, taken as the UPPER edge of the bucket holding it (the bucket that
/// holds rank n·0.99 + `reference_z`·sqrt(n·0.99·0.01); with the default z = 0 that is the
/// p99's own bucket). Threshold ("slow"): `max_p99_ratio` × reference. If the canary's p99 is
/// within the ratio, at most 1% of canary requests are slow; the guard keeps a confidence
/// sequence on the slow share and calls a regression when its low end is above 1%.
///
/// Why the point estimate and not an upper confidence bound of stable's p99: while stable has
/// a few hundred requests (a 50% share), a bound with z = 2.58 sits near stable's p99.8, and in
/// the simulation a 2× slower canary at a 50% share was then caught within 2,000 requests in
/// only 41% of runs (94% with z = 1, 99.7% with z = 0), while the point estimate costs nothing in
/// false alarms: under A/A the true share above 1.5 × p99 is far below 1% (0.09% for a
/// lognormal with σ = 0.5, 0.6% even at σ = 2), so a low reference from a small stable sample
/// does not bring it near the limit; A/A holds gave 0 alarms in every simulated cell, σ up to
/// 2 included. Every rounding leans against alarms: the reference is rounded up to its
/// bucket's edge, and only buckets wholly above the threshold count as slow
/// ([`histogram::count_above`]). The cost: the test is not exact for a canary whose p99 sits
/// right at the ratio while stable is small; the ratio is a policy number, not a law.
///
/// Detection speed depends on the tail's shape, as it must for any p99 test: the p99 of a
/// wider distribution is known less precisely. A 2× canary is caught in a median of about 450
/// to 500 canary requests at σ = 0.5, but 1,500 to 2,000 at σ = 1 and 3,000 to 4,400 at
/// σ = 1.5 (shares 5% to 50%).
///
/// Improved when the share of canary requests in or above the bucket of a low bound of stable's
/// p99 ([`IMPROVED_Z`]) is below 1% with confidence (the same one-pool sequence, so repeated looks cost nothing here either).
/// NotEnoughData until both pools have `min_requests`.
pub fn latency(canary: &[u64], stable: &[u64], t: &Thresholds) -> LatencyCheck {
    let canary_n = histogram::total(canary);
    let stable_n = histogram::total(stable);
    let canary_p = Percentiles::of(canary);
    let stable_p = Percentiles::of(stable);
    let slow_micros = histogram::bucket_of_rank(stable, reference_rank(stable_n, t))
        .map(|bucket| slow_threshold(bucket, t));
    let slow_share = slow_micros.map(|micros| {
        let slow = histogram::count_above(canary, micros);
        slow_sequence(
            Arm {
                n: canary_n,
                hits: slow,
            },
            0.0,
            t,
        )
    });
    // Improved: the share of canary answers in or above the bucket of a low bound of stable's
    // p99 is below 1% with confidence at every look — the canary's p99 is below stable's. The
    // bound, not stable's p99 itself: a few hundred stable answers place their p99 loosely, and
    // one placed high by chance made an A/A canary `improved`.
    let low_rank = histogram::rank_interval(stable_n, 0.99, IMPROVED_Z).0;
    let improved = histogram::bucket_of_rank(stable, low_rank).is_some_and(|bucket| {
        let share = slow_sequence(
            Arm {
                n: canary_n,
                hits: histogram::count_from(canary, bucket),
            },
            0.0,
            t,
        );
        share.high < SLOW_SHARE_LIMIT
    });
    LatencyCheck {
        canary: canary_p,
        stable: stable_p,
        p99_ratio: canary_p.zip(stable_p).map(|(c, s)| c.p99 / s.p99),
        slow_micros,
        slow_share,
        verdict: latency_verdict(canary_n, stable_n, slow_share, improved, t),
    }
}

/// The rank (1-based) in stable's sorted latencies whose bucket sets the reference.
pub fn reference_rank(stable_n: u64, t: &Thresholds) -> u64 {
    histogram::rank_interval(stable_n, 0.99, t.reference_z).1
}

/// The slow threshold (µs) when the reference rank falls in bucket `bucket`:
/// `max_p99_ratio` × the bucket's upper edge (infinite for the open-ended last bucket), and at
/// least `min_p99_increase` above that edge. A higher threshold counts fewer answers slow, so
/// the floor can only remove alarms: the false-alarm bound holds.
pub fn slow_threshold(bucket: usize, t: &Thresholds) -> f64 {
    let edge = histogram::upper_bound(bucket);
    (t.max_p99_ratio * edge).max(edge + t.min_p99_increase_micros)
}

/// The confidence sequence for the canary's slow share (`slow.hits` slow of `slow.n`), its
/// variance at least `clustered` (with users as the unit; 0 if unknown).
pub fn slow_sequence(slow: Arm, clustered: f64, t: &Thresholds) -> Interval {
    stats::rate_sequence(slow, clustered, t.alpha, t.slow_tau)
}

/// The latency verdict from its parts: NotEnoughData, then Regressed when the slow share is
/// above [`SLOW_SHARE_LIMIT`] with confidence, then Improved when `improved`, else Ok.
pub fn latency_verdict(
    canary_n: u64,
    stable_n: u64,
    slow_share: Option<Interval>,
    improved: bool,
    t: &Thresholds,
) -> Verdict {
    if let Some(short) = shortfall(canary_n, stable_n, t) {
        return short;
    }
    match slow_share {
        Some(share) if share.low > SLOW_SHARE_LIMIT => Verdict::Regressed,
        _ if improved => Verdict::Improved,
        _ => Verdict::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::histogram::{BUCKETS, index};

    /// `n` latencies evenly spread over [from, to) µs.
    fn spread(n: u64, from: f64, to: f64) -> Vec<u64> {
        let mut counts = vec![0; BUCKETS];
        for i in 0..n {
            counts[index((from + (to - from) * i as f64 / n as f64) as u64)] += 1;
        }
        counts
    }

    #[test]
    fn error_verdicts() {
        let t = Thresholds::default();
        let arm = |n, hits| Arm { n, hits };
        assert_eq!(
            errors(arm(100, 50), arm(250, 0), 0.0, &t).1,
            Verdict::NotEnoughData { more: 200 }
        );
        assert_eq!(
            errors(arm(2_000, 40), arm(2_000, 40), 0.0, &t).1,
            Verdict::Ok
        );
        assert_eq!(
            errors(arm(2_000, 120), arm(2_000, 20), 0.0, &t).1,
            Verdict::Regressed
        );
        assert_eq!(
            errors(arm(5_000, 20), arm(5_000, 250), 0.0, &t).1,
            Verdict::Improved
        );
        // A small canary with no errors yet, beside stable's 1.2%: chance, not an improvement
        // (the variance of each pool's own rate called it one, 0 errors having none).
        assert_eq!(errors(arm(393, 0), arm(7_000, 84), 0.0, &t).1, Verdict::Ok);
        // A real but small increase (+0.5 point) stays inside the accepted margin.
        let (diff, verdict) = errors(arm(100_000, 2_500), arm(100_000, 2_000), 0.0, &t);
        assert!(
            diff.low > 0.0 && verdict == Verdict::Ok,
            "{diff:?} {verdict:?}"
        );
        let strict = Thresholds {
            max_error_rate_increase: 0.0,
            ..t
        };
        assert_eq!(
            errors(arm(100_000, 2_500), arm(100_000, 2_000), 0.0, &strict).1,
            Verdict::Regressed
        );
    }

    #[test]
    fn latency_verdicts() {
        let t = Thresholds::default();
        let stable = spread(5_000, 10_000.0, 50_000.0);
        let same = latency(&spread(5_000, 10_000.0, 50_000.0), &stable, &t);
        assert_eq!(same.verdict, Verdict::Ok);
        let ratio = same.p99_ratio.expect("both have data");
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
        let slow = latency(&spread(1_000, 20_000.0, 100_000.0), &stable, &t);
        assert_eq!(slow.verdict, Verdict::Regressed);
        let ratio = slow.p99_ratio.expect("both have data");
        assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
        let share = slow.slow_share.expect("stable has data");
        assert!(
            share.estimate > 0.25 && share.low > SLOW_SHARE_LIMIT,
            "{share:?}"
        );
        let fast = latency(&spread(5_000, 5_000.0, 25_000.0), &stable, &t);
        assert_eq!(fast.verdict, Verdict::Improved);
        // An A/A whose 300 stable answers drew four times their share of the 80 ms tail: stable's
        // p99 reads 80 ms, far above the canary's (and its own true) 50 ms. Not an improvement.
        let mut lucky = spread(294, 10_000.0, 50_000.0);
        lucky[index(80_000)] += 6;
        let mut canary = spread(19_900, 10_000.0, 50_000.0);
        canary[index(80_000)] += 100;
        assert_eq!(latency(&canary, &lucky, &t).verdict, Verdict::Ok);
        let short = latency(&spread(100, 20_000.0, 100_000.0), &stable, &t);
        assert_eq!(short.verdict, Verdict::NotEnoughData { more: 200 });
        let p = short.canary.expect("canary has data");
        assert!(p.p50 < p.p95 && p.p95 < p.p99);
    }

    #[test]
    fn latency_without_stable_data_has_no_threshold() {
        let t = Thresholds::default();
        let check = latency(&spread(1_000, 10_000.0, 50_000.0), &[], &t);
        assert_eq!(check.verdict, Verdict::NotEnoughData { more: 300 });
        assert_eq!(
            (check.slow_micros, check.slow_share, check.stable),
            (None, None, None)
        );
        assert!(check.p99_ratio.is_none());
    }

    #[test]
    fn slow_threshold_uses_the_upper_edge() {
        let t = Thresholds::default();
        let bucket = index(64_000);
        let edge = crate::analysis::histogram::upper(bucket) as f64;
        assert_eq!(slow_threshold(bucket, &t), 1.5 * edge);
        assert_eq!(slow_threshold(BUCKETS - 1, &t), f64::INFINITY);
        // With a floor: the larger of the ratio and the least increase.
        let floor = Thresholds {
            min_p99_increase_micros: 100_000.0,
            ..t
        };
        assert_eq!(slow_threshold(bucket, &floor), edge + 100_000.0);
        let small = Thresholds {
            min_p99_increase_micros: 1_000.0,
            ..t
        };
        assert_eq!(slow_threshold(bucket, &small), 1.5 * edge);
        assert_eq!(reference_rank(1_000, &t), 990);
    }
}
