//! The slow, literal simulation: every request in turn picks its pool, fails or not, and gets a
//! Box–Muller lognormal latency that is recorded in a full histogram; every [`LOOK`] requests
//! the guard's public functions judge the counts. It exists to check `engine` against.

use super::Rng;
use super::engine::{Outcome, Scenario};
use super::model::{LOOK, STABLE_MEDIAN_MICROS};
use crate::analysis::guard::{self, Thresholds, Verdict};
use crate::analysis::histogram::{self, BUCKETS};
use crate::analysis::stats::Arm;

/// Runs one hold of `s`, one request at a time (no early stop for the margin-free check).
pub fn run(s: &Scenario, rng: &mut Rng, t: &Thresholds) -> Outcome {
    let tracks = s.errors.len();
    let mut out = Outcome {
        errors: vec![None; tracks],
        errors_no_margin: vec![None; tracks],
        ..Outcome::default()
    };
    let mu = STABLE_MEDIAN_MICROS.ln();
    let mut canary = vec![Arm::default(); tracks];
    let mut stable = vec![Arm::default(); tracks];
    let (mut canary_n, mut stable_n) = (0u64, 0u64);
    let mut canary_lat = vec![0u64; BUCKETS];
    let mut stable_lat = vec![0u64; BUCKETS];
    while canary_n < s.max_canary && canary_n + stable_n < s.max_total {
        for _ in 0..LOOK {
            let to_canary = rng.bernoulli(s.share);
            if to_canary {
                canary_n += 1;
            } else {
                stable_n += 1;
            }
            for (i, rates) in s.errors.iter().enumerate() {
                let (arm, rate) = if to_canary {
                    (&mut canary[i], rates.canary)
                } else {
                    (&mut stable[i], rates.stable)
                };
                arm.n += 1;
                arm.hits += u64::from(rng.bernoulli(rate));
            }
            if let Some(slowdown) = s.slowdown {
                let (counts, factor) = if to_canary {
                    (&mut canary_lat, slowdown)
                } else {
                    (&mut stable_lat, 1.0)
                };
                let micros = factor * rng.lognormal(mu, s.sigma);
                counts[histogram::index(micros as u64)] += 1;
            }
        }
        for i in 0..tracks {
            if out.errors[i].is_none()
                && guard::errors(canary[i], stable[i], 0.0, t).1 == Verdict::Regressed
            {
                out.errors[i] = Some(canary_n);
            }
        }
        if s.slowdown.is_some()
            && out.latency.is_none()
            && guard::latency(&canary_lat, &stable_lat, t).verdict == Verdict::Regressed
        {
            out.latency = Some(canary_n);
        }
        let errors_done = out.errors.iter().all(Option::is_some);
        if errors_done && (s.slowdown.is_none() || out.latency.is_some()) {
            break;
        }
    }
    out
}
