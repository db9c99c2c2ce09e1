//! The traffic model: lognormal latencies drawn straight into histogram buckets.
//!
//! Stable latency is lognormal with median 20 ms and σ = 0.5 (p90 38 ms, p99 64 ms) unless a
//! scenario says otherwise; a slower
//! canary multiplies every latency by a factor. A duration truncated to whole µs falls in
//! bucket i exactly when the continuous duration lies in [lower(i), upper(i)), so the bucket
//! probabilities below are exact, and drawing a bucket from them is the same as drawing a
//! latency and recording it.
//!
//! Only the slow end of the histogram matters to the guard's regression call (stable's p99
//! bucket and the canary's count above 1.5 × it), so each request is first sorted into "fast"
//! or "tail" (at or above stable's p90 bucket edge) with one binomial draw per look, and only
//! tail requests get their own bucket; fast ones are all counted in the bucket just below the
//! cut. That cuts the draws tenfold. `engine` checks that no decision ever read a fast bucket.

use super::{Alias, Binomials, Rng};
use crate::analysis::histogram::{self, BUCKETS};
use crate::analysis::stats::normal_cdf;

/// Stable's median latency, µs.
pub const STABLE_MEDIAN_MICROS: f64 = 20_000.0;

/// σ of log latency in the standard scenarios.
pub const SIGMA: f64 = 0.5;

/// Requests between two looks of the guard.
pub const LOOK: usize = 50;

/// The z of the fast/tail cut: stable's p90.
const CUT_Z: f64 = 1.281_551_565_545;

/// The probability of each bucket for a lognormal(mu, sigma) duration in µs.
pub fn bucket_masses(mu: f64, sigma: f64) -> Vec<f64> {
    // P(X ≥ x), computed as an upper tail so that small tail masses keep their precision.
    let above = |x: f64| {
        if x <= 0.0 {
            1.0
        } else {
            normal_cdf(-(x.ln() - mu) / sigma)
        }
    };
    (0..BUCKETS)
        .map(|i| {
            let hi = histogram::upper_bound(i);
            let tail_hi = if hi.is_infinite() { 0.0 } else { above(hi) };
            (above(histogram::lower(i) as f64) - tail_hi).max(0.0)
        })
        .collect()
}

/// The first bucket of the tail: the first whose lower edge is at or above stable's p90.
pub fn cut(sigma: f64) -> usize {
    histogram::first_at_or_above(STABLE_MEDIAN_MICROS * (sigma * CUT_Z).exp())
}

/// Draws one pool's latencies into its histogram.
#[derive(Clone, Debug)]
pub struct LatencyDraw {
    cut: usize,
    tail: Binomials,
    buckets: Alias,
}

impl LatencyDraw {
    /// Latencies of stable × `factor`, stable's log latency having standard deviation `sigma`.
    pub fn new(factor: f64, sigma: f64) -> LatencyDraw {
        let masses = bucket_masses((STABLE_MEDIAN_MICROS * factor).ln(), sigma);
        let cut = cut(sigma);
        let tail_mass: f64 = masses[cut..].iter().sum();
        LatencyDraw {
            cut,
            tail: Binomials::new(tail_mass, LOOK),
            buckets: Alias::new(&masses[cut..]),
        }
    }

    /// The bucket that stands for every fast request.
    pub fn fast_bucket(&self) -> usize {
        self.cut - 1
    }

    /// Draws `k` requests: returns how many were fast, and calls `slow` with the bucket of each
    /// tail request.
    pub fn draw(&self, k: usize, rng: &mut Rng, mut slow: impl FnMut(usize)) -> u64 {
        let tail = self.tail.sample(k, rng);
        for _ in 0..tail {
            slow(self.cut + self.buckets.sample(rng));
        }
        k as u64 - tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_masses_match_box_muller_draws() {
        let mu = STABLE_MEDIAN_MICROS.ln();
        let masses = bucket_masses(mu, SIGMA);
        assert!((masses.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        let mut rng = Rng::new(3, 0);
        let n = 200_000;
        let mut counts = vec![0u64; BUCKETS];
        for _ in 0..n {
            counts[histogram::index(rng.lognormal(mu, SIGMA) as u64)] += 1;
        }
        // Compare the share at or above a few edges, in binomial standard errors.
        let cut = cut(SIGMA);
        for from in [cut - 16, cut, cut + 16, cut + 32] {
            let want: f64 = masses[from..].iter().sum();
            let got = counts[from..].iter().sum::<u64>() as f64 / n as f64;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (got - want).abs() < 5.0 * se,
                "from {from}: {got} vs {want}"
            );
        }
        let p99 = histogram::quantile(&counts, 0.99).expect("non-empty");
        let want = STABLE_MEDIAN_MICROS * (SIGMA * 2.326_347_874).exp();
        assert!((p99 / want - 1.0).abs() < 0.04, "p99 {p99} vs {want}");
    }

    #[test]
    fn tail_is_a_tenth() {
        let masses = bucket_masses(STABLE_MEDIAN_MICROS.ln(), SIGMA);
        let tail: f64 = masses[cut(SIGMA)..].iter().sum();
        assert!(tail > 0.08 && tail <= 0.10, "tail {tail}");
    }
}
