//! The statistics under the guard: confidence sequences for rates and differences of rates
//! (valid at every look at once), a fixed-sample interval for display, and the sample-ratio
//! check. All pure arithmetic on counts.

/// One pool's counts: requests seen and how many of them were "hits" (errors, slow requests,
/// conversions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arm {
    /// Requests seen.
    pub n: u64,
    /// Requests that were hits; more hits than requests is read as `n`.
    pub hits: u64,
}

impl Arm {
    /// The observed rate hits/n, 0 when there are no requests.
    pub fn rate(self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.hits.min(self.n) as f64 / self.n as f64
        }
    }

    /// The shrunk rate (hits + 0.5)/(n + 1): never exactly 0 or 1, so a variance built on it is
    /// never 0. Used for variances only; estimates use the plain rate, because shrinking toward
    /// 1/2 moves the smaller pool more and would bias a difference toward an alarm.
    pub fn shrunk_rate(self) -> f64 {
        (self.hits.min(self.n) as f64 + 0.5) / (self.n as f64 + 1.0)
    }

    /// The variance of the observed rate, p(1 − p)/n with the shrunk p; infinite when n = 0.
    pub fn variance(self) -> f64 {
        if self.n == 0 {
            return f64::INFINITY;
        }
        let p = self.shrunk_rate();
        p * (1.0 - p) / self.n as f64
    }
}

/// An estimate with a confidence range around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The point estimate.
    pub estimate: f64,
    /// The lower end of the range.
    pub low: f64,
    /// The upper end of the range.
    pub high: f64,
}

/// Half the width of the normal-mixture confidence sequence for an estimate with variance `v`:
///
/// h = sqrt( v(v + τ²)/τ² · ( 2·ln(1/α) + ln((v + τ²)/v) ) )
///
/// This is where the mixture likelihood ratio sqrt(v/(v+τ²))·exp(τ²d²/(2v(v+τ²))) of a
/// N(0, τ²) mixture over the effect d reaches 1/α (Robbins 1970; the mSPRT of Johari et al.
/// 2022): by Ville's inequality the estimate strays more than h from the truth at ANY look with
/// probability at most α. τ is the effect size the sequence is tuned for: the bound is
/// tightest when v is near τ²/10. Infinite when α is not in (0, 1), τ is not positive, or v is
/// infinite or NaN; 0 when v is 0.
pub fn mixture_half_width(v: f64, alpha: f64, tau: f64) -> f64 {
    let valid = alpha > 0.0 && alpha < 1.0 && tau > 0.0 && tau.is_finite();
    if !valid || v.is_nan() || v.is_infinite() {
        return f64::INFINITY;
    }
    if v <= 0.0 {
        return 0.0;
    }
    let t2 = tau * tau;
    (v * (v + t2) / t2 * (2.0 * (1.0 / alpha).ln() + ((v + t2) / v).ln())).sqrt()
}

/// The confidence sequence for the difference of rates p_canary − p_stable: at every look at
/// once, the true difference lies in [low, high] with probability ≥ 1 − α (normal
/// approximation; see [`mixture_half_width`]). The estimate is the plain difference of rates;
/// the variance p_c(1−p_c)/n_c + p_s(1−p_s)/n_s uses shrunk rates, and is at least the pooled
/// one ([`pooled_variance`]) and at least `clustered`: the difference's variance with users,
/// not requests, as the unit (0 if unknown; see [`crate::analysis::clusters::Spread`]). The
/// range is clipped to [−1, 1]; with an empty arm it is all of it.
pub fn diff_sequence(canary: Arm, stable: Arm, clustered: f64, alpha: f64, tau: f64) -> Interval {
    let estimate = canary.rate() - stable.rate();
    let clustered = if clustered.is_nan() {
        f64::INFINITY
    } else {
        clustered
    };
    let variance = (canary.variance() + stable.variance())
        .max(pooled_variance(canary, stable))
        .max(clustered);
    clipped(estimate, mixture_half_width(variance, alpha, tau), -1.0)
}

/// The variance of the difference if both pools had their common rate: p̄(1 − p̄)(1/n_c + 1/n_s).
/// A floor under the variance from each pool's own rate, which is far too small when a small
/// pool happens to have no errors yet (0 of 393 at a true 1%): the range then shrinks around a
/// difference that is chance, and an A/A split read as "improved".
fn pooled_variance(canary: Arm, stable: Arm) -> f64 {
    if canary.n == 0 || stable.n == 0 {
        return f64::INFINITY;
    }
    let both = Arm {
        n: canary.n + stable.n,
        hits: canary.hits.min(canary.n) + stable.hits.min(stable.n),
    };
    let p = both.shrunk_rate();
    p * (1.0 - p) * (1.0 / canary.n as f64 + 1.0 / stable.n as f64)
}

/// As [`diff_sequence`], for rates whose counts are themselves estimates (distinct-user
/// sketches) with relative standard error `rel_error` each: each rate's variance adds what the
/// two estimates' errors add to a ratio, p²·2σ² (as [`sample_ratio`] does for the share). That
/// term does not shrink with more data, so differences within a few percent of the rates are not
/// told apart from the sketches' error.
pub fn diff_sequence_estimated(
    canary: Arm,
    stable: Arm,
    alpha: f64,
    tau: f64,
    rel_error: f64,
) -> Interval {
    let sigma2 = if rel_error.is_finite() {
        rel_error * rel_error
    } else {
        0.0
    };
    let extra = |a: Arm| a.rate() * a.rate() * 2.0 * sigma2;
    let estimate = canary.rate() - stable.rate();
    let variance = canary.variance() + stable.variance() + extra(canary) + extra(stable);
    clipped(estimate, mixture_half_width(variance, alpha, tau), -1.0)
}

/// The confidence sequence for one pool's rate: at every look at once, the true rate lies in
/// [low, high] with probability ≥ 1 − α (normal approximation, variance p(1−p)/n with the
/// shrunk rate, or `clustered` if larger: the rate's variance with users, not requests, as the
/// unit, 0 if unknown). Clipped to [0, 1].
pub fn rate_sequence(arm: Arm, clustered: f64, alpha: f64, tau: f64) -> Interval {
    let clustered = if clustered.is_nan() {
        f64::INFINITY
    } else {
        clustered
    };
    clipped(
        arm.rate(),
        mixture_half_width(arm.variance().max(clustered), alpha, tau),
        0.0,
    )
}

/// A plain fixed-sample normal-approximation interval for p_canary − p_stable, estimate ± z·sd.
/// It is only valid for ONE look at a fixed sample size: for display (conversion rates), never
/// for a decision taken while watching.
pub fn diff_interval(canary: Arm, stable: Arm, z: f64) -> Interval {
    let estimate = canary.rate() - stable.rate();
    let z = if z.is_nan() { 0.0 } else { z.abs() };
    clipped(
        estimate,
        z * (canary.variance() + stable.variance()).sqrt(),
        -1.0,
    )
}

/// estimate ± half, clipped to [floor, 1]; NaN half-widths count as infinite.
fn clipped(estimate: f64, half: f64, floor: f64) -> Interval {
    let half = if half.is_nan() { f64::INFINITY } else { half };
    Interval {
        estimate,
        low: (estimate - half).max(floor),
        high: (estimate + half).min(1.0),
    }
}

/// Flag a sample-ratio mismatch when the p-value falls below this.
pub const SAMPLE_RATIO_P: f64 = 0.001;

/// With fewer users than this in both pools together, the check reports no mismatch.
pub const SAMPLE_RATIO_MIN_USERS: f64 = 100.0;

/// The weight, in users, of the mixture's prior on the canary's share: Beta(k·e, k·(1−e)),
/// centred on the share asked for. Light, so that a canary that gets nobody (or several times
/// its share) is called within a few hundred users; heavy enough that 4% against 5% is called
/// at 10,000.
const SAMPLE_RATIO_PRIOR_USERS: f64 = 10.0;

/// The result of the sample-ratio check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRatio {
    /// canary users / all users (0 when there are none).
    pub observed_share: f64,
    /// The share the rollout asks for.
    pub expected_share: f64,
    /// The likelihood ratio against the split asked for (1 when there is not enough data).
    pub evidence: f64,
    /// 1 / `evidence`, at most 1: below α with probability at most α at any look, however
    /// often the check looks.
    pub p_value: f64,
    /// True when p_value < [`SAMPLE_RATIO_P`]: the split is not what was asked for.
    pub mismatch: bool,
}

/// Checks that the canary's share of users is the share the rollout asks for (sample-ratio
/// mismatch), at every look at once: each user goes to the canary with probability e, and the
/// mixture likelihood ratio of the counts (a beta-binomial with the prior above, against the
/// binomial at e) is a martingale under a true split, so by Ville's inequality it ever reaches
/// 1/α with probability at most α however often it is looked at. Exact at small counts, where a
/// chi-square's normal tails are not (one canary user among 300 at 0.01% gave it p = 3e-8,
/// though 3% of healthy splits show that). The user counts are estimates (HyperLogLog) with
/// relative standard error `estimator_rel_error` each (1.04/√4096 ≈ 0.016), an error that does
/// not shrink with more users: the counts are weighed as if there were only as many users as
/// give the share the variance it has with that error added, e(1−e)/N + e²(1−e)²·2σ² — fewer
/// users, the same share — so that the sketches' error alone never flags a healthy split of
/// millions (and weighs next to nothing at a few hundred).
/// Fewer than [`SAMPLE_RATIO_MIN_USERS`] users, negative or NaN counts, or an expected share
/// outside (0, 1) give "not enough data": p_value 1, no mismatch.
pub fn sample_ratio(
    canary_users: f64,
    stable_users: f64,
    expected_canary_share: f64,
    estimator_rel_error: f64,
) -> SampleRatio {
    let total = canary_users + stable_users;
    let e = expected_canary_share;
    let mut out = SampleRatio {
        observed_share: 0.0,
        expected_share: e,
        evidence: 1.0,
        p_value: 1.0,
        mismatch: false,
    };
    let counts_ok = canary_users >= 0.0 && stable_users >= 0.0 && total.is_finite();
    if counts_ok && total > 0.0 {
        out.observed_share = canary_users / total;
    }
    if !counts_ok || total < SAMPLE_RATIO_MIN_USERS || !(e > 0.0 && e < 1.0) {
        return out;
    }
    let sigma = if estimator_rel_error.is_finite() {
        estimator_rel_error.abs()
    } else {
        0.0
    };
    let spread = e * (1.0 - e);
    let as_many = 1.0 / (1.0 / total + spread * 2.0 * sigma * sigma) / total;
    let log_ratio = mixture_log_ratio(
        canary_users * as_many,
        stable_users * as_many,
        e,
        SAMPLE_RATIO_PRIOR_USERS,
    );
    out.evidence = log_ratio.exp();
    out.p_value = (-log_ratio).exp().min(1.0);
    out.mismatch = out.p_value < SAMPLE_RATIO_P;
    out
}

/// ln of the beta-binomial mixture's likelihood of `c` canary and `s` stable users (prior
/// Beta(k·e, k·(1−e))) over the binomial's at share `e`.
fn mixture_log_ratio(c: f64, s: f64, e: f64, k: f64) -> f64 {
    let (a, b) = (k * e, k * (1.0 - e));
    let ln_beta = |x: f64, y: f64| libm::lgamma(x) + libm::lgamma(y) - libm::lgamma(x + y);
    ln_beta(a + c, b + s) - ln_beta(a, b) - c * e.ln() - s * (1.0 - e).ln()
}

/// The complementary error function, erfc(x) = 1 − erf(x), by the Chebyshev fit of Numerical
/// Recipes' `erfcc`: relative error below 1.2e-7 everywhere.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ans = t * (-z * z + poly).exp();
    if x >= 0.0 { ans } else { 2.0 - ans }
}

/// The standard normal distribution function Φ(x) = erfc(−x/√2)/2.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        let known = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in known {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 2e-7,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert!((normal_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-8);
    }

    #[test]
    fn sequences_are_wider_than_a_single_look_and_shrink_with_data() {
        let c = Arm { n: 1_000, hits: 60 };
        let s = Arm { n: 1_000, hits: 10 };
        let once = diff_interval(c, s, 2.576);
        let seq = diff_sequence(c, s, 0.0, 0.01, 0.02);
        assert!((seq.estimate - 0.05).abs() < 1e-12);
        assert!(seq.low < once.low && seq.high > once.high);
        let more = diff_sequence(
            Arm {
                n: 10_000,
                hits: 600,
            },
            Arm {
                n: 10_000,
                hits: 100,
            },
            0.0,
            0.01,
            0.02,
        );
        assert!(more.high - more.low < seq.high - seq.low);
        assert!(more.low > 0.03, "{more:?}");
        // A variance with users as the unit larger than the one per request widens it; a
        // smaller one does not narrow it; an unknown one makes it all of [−1, 1].
        let clustered = diff_sequence(c, s, 0.001, 0.01, 0.02);
        assert!(clustered.low < seq.low && clustered.high > seq.high);
        assert_eq!(diff_sequence(c, s, 1e-9, 0.01, 0.02), seq);
        let unknown = diff_sequence(c, s, f64::NAN, 0.01, 0.02);
        assert_eq!((unknown.low, unknown.high), (-1.0, 1.0));
    }

    #[test]
    fn degenerate_input_gives_no_conclusion() {
        let empty = diff_sequence(Arm::default(), Arm { n: 10, hits: 1 }, 0.0, 0.01, 0.02);
        assert_eq!((empty.low, empty.high), (-1.0, 1.0));
        let bad = rate_sequence(Arm { n: 100, hits: 5 }, 0.0, 0.0, 0.02);
        assert_eq!((bad.low, bad.high), (0.0, 1.0));
        let bad = rate_sequence(Arm { n: 100, hits: 5 }, 0.0, 0.01, f64::NAN);
        assert_eq!((bad.low, bad.high), (0.0, 1.0));
        let over = rate_sequence(Arm { n: 10, hits: 50 }, 0.0, 0.01, 0.02);
        assert_eq!(over.estimate, 1.0);
        let zero = rate_sequence(Arm { n: 1_000, hits: 0 }, 0.0, 0.01, 0.02);
        assert!(zero.low == 0.0 && zero.high > 0.0);
    }

    #[test]
    fn a_true_split_is_not_flagged_despite_estimator_error() {
        // 5% of 20,000 users, each HLL count off by about one standard error in opposite ways.
        let r = sample_ratio(1_000.0 * 1.016, 19_000.0 * 0.984, 0.05, 0.016);
        assert!(!r.mismatch, "{r:?}");
        assert!(r.p_value > 0.01, "{r:?}");
        // With a million users the estimator's error dominates: two standard errors each way
        // would be a certain "mismatch" taken as exact, and is not one with it.
        let big = sample_ratio(50_000.0 * 1.032, 950_000.0 * 0.968, 0.05, 0.016);
        assert!(!big.mismatch, "{big:?}");
        let big_naive = sample_ratio(50_000.0 * 1.032, 950_000.0 * 0.968, 0.05, 0.0);
        assert!(big_naive.mismatch, "{big_naive:?}");
        let exact = sample_ratio(1_000.0, 19_000.0, 0.05, 0.016);
        assert!(exact.p_value == 1.0 && !exact.mismatch, "{exact:?}");
        // One canary user among 300 at 0.01%: a chi-square's normal tails called it p = 3e-8,
        // though one healthy split in 33 shows it.
        let one = sample_ratio(1.0, 299.0, 0.0001, 0.016);
        assert!(!one.mismatch && one.p_value > 0.01, "{one:?}");
    }

    #[test]
    fn a_wrong_split_is_flagged() {
        for (canary, stable, share) in [
            // 3% of users where 5% was asked for.
            (600.0, 19_400.0, 0.05),
            // 4% of 20,000 where 5%.
            (800.0, 19_200.0, 0.05),
            // Nobody on the canary: at 5% among 200 users, at 1% among 1,000, at 0.1% among
            // 10,000.
            (0.0, 200.0, 0.05),
            (0.0, 1_000.0, 0.01),
            (0.0, 10_000.0, 0.001),
            // 12.8% where 5% (users of an earlier, higher share counted at this one).
            (128.0, 872.0, 0.05),
            // 45% where 50%, among 4,000.
            (1_800.0, 2_200.0, 0.5),
        ] {
            let r = sample_ratio(canary, stable, share, 0.016);
            assert!(
                (r.observed_share - canary / (canary + stable)).abs() < 1e-12,
                "{r:?}"
            );
            assert!(
                r.mismatch,
                "{canary} of {} at {share}: {r:?}",
                canary + stable
            );
        }
    }

    /// Healthy splits, looked at every 10 users up to 5,000 (as the analysis looks every
    /// second): the share of runs ever flagged stays within α = 0.1%, at every share.
    #[test]
    fn healthy_splits_looked_at_again_and_again_are_flagged_within_alpha() {
        let runs = 2_000;
        for (stream, share) in [0.0001, 0.001, 0.01, 0.05, 0.5].into_iter().enumerate() {
            let mut rng = crate::analysis::sim::Rng::new(20_261_208, stream as u64);
            let flagged = (0..runs)
                .filter(|_| {
                    let (mut canary, mut stable) = (0u32, 0u32);
                    (1..=5_000).any(|n| {
                        if rng.bernoulli(share) {
                            canary += 1;
                        } else {
                            stable += 1;
                        }
                        n % 10 == 0
                            && sample_ratio(f64::from(canary), f64::from(stable), share, 0.016)
                                .mismatch
                    })
                })
                .count();
            assert!(
                flagged <= 4,
                "{flagged} of {runs} healthy runs at {share} flagged"
            );
        }
    }

    #[test]
    fn tiny_or_bad_counts_are_never_flagged() {
        for (c, s) in [
            (0.0, 0.0),
            (0.0, 99.0),
            (50.0, 49.0),
            (-5.0, 500.0),
            (f64::NAN, 1e4),
        ] {
            let r = sample_ratio(c, s, 0.05, 0.016);
            assert!(!r.mismatch && r.p_value == 1.0, "{c} {s}: {r:?}");
        }
        let r = sample_ratio(500.0, 500.0, 0.0, 0.016);
        assert!(!r.mismatch && r.observed_share == 0.5);
    }
}
