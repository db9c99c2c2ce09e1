//! The fast simulation of one hold: the guard looks every [`LOOK`] requests.
//!
//! Instead of one draw per request, each look draws how many of its requests went to the
//! canary (Binomial(50, share)), how many of each pool's new requests failed (binomial), and
//! the pools' latencies through [`LatencyDraw`]. The guard only ever sees counts at looks, and
//! these are the exact distributions of those counts, so nothing is approximated (the lumping
//! of fast latencies in `model` never reaches a decision: [`Outcome::lumped_reads`] counts the
//! looks where it would, and the tests assert 0); `literal` runs the same holds one request at
//! a time and the tests compare the two.
//!
//! The error check calls [`guard::errors`] at every look where the canary's error rate is above
//! stable's (at the others no margin ≥ 0 can call a regression). The latency check calls the same
//! guard functions as [`guard::latency`], but finds stable's reference bucket and the canary's
//! slow count with cursors that move a few buckets per look instead of re-summing 401 buckets:
//! [`guard::latency`] costs about 100 µs in a debug build, and an A/A hold has up to 4,000
//! looks. With `check` set, every look also calls [`guard::latency`] on the full histograms
//! and asserts the same slow share and regression call.

use super::model::{LOOK, LatencyDraw};
use super::{Binomials, Rng};
use crate::analysis::guard::{self, Thresholds, Verdict};
use crate::analysis::histogram::{self, BUCKETS};
use crate::analysis::stats::Arm;

/// Error rates of the two pools.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// Stable's error rate.
    pub stable: f64,
    /// The canary's error rate.
    pub canary: f64,
}

/// What one simulated hold looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The canary's share of requests.
    pub share: f64,
    /// Error-rate pairs, each checked on the same traffic (the same canary/stable split).
    pub errors: Vec<Rates>,
    /// Canary latency = stable latency × this; None skips the latency check.
    pub slowdown: Option<f64>,
    /// σ of log latency (stable's median is 20 ms).
    pub sigma: f64,
    /// The hold ends when the canary has this many requests ...
    pub max_canary: u64,
    /// ... or all pools together have this many, whichever comes first.
    pub max_total: u64,
}

/// Canary requests seen at the first look that said Regressed, for each check (None: never).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Per error-rate pair, with the thresholds given.
    pub errors: Vec<Option<u64>>,
    /// Per error-rate pair, with `max_error_rate_increase` = 0.
    pub errors_no_margin: Vec<Option<u64>>,
    /// The latency check.
    pub latency: Option<u64>,
    /// Looks where the latency check read a bucket made of lumped fast requests (should be 0).
    pub lumped_reads: u64,
}

/// A scenario ready to run: its binomial and latency tables built once.
pub struct Engine {
    scenario: Scenario,
    split: Binomials,
    errors: Vec<(Binomials, Binomials)>,
    latency: Option<(LatencyDraw, LatencyDraw)>,
}

/// Keeps the bucket holding a given rank, moving from where it was last time.
struct RankCursor {
    bucket: usize,
    through: u64, // values in buckets 0..=bucket
}

impl RankCursor {
    fn added(&mut self, bucket: usize, k: u64) {
        if bucket <= self.bucket {
            self.through += k;
        }
    }

    /// The same answer as `histogram::bucket_of_rank(counts, rank)` for 1 ≤ rank ≤ total.
    fn find(&mut self, counts: &[u64], rank: u64) -> usize {
        while self.bucket > 0 && self.through - counts[self.bucket] >= rank {
            self.through -= counts[self.bucket];
            self.bucket -= 1;
        }
        while self.through < rank && self.bucket + 1 < BUCKETS {
            self.bucket += 1;
            self.through += counts[self.bucket];
        }
        self.bucket
    }
}

/// Keeps the count of values in buckets from..BUCKETS.
struct TailCursor {
    from: usize,
    count: u64,
}

impl TailCursor {
    fn added(&mut self, bucket: usize, k: u64) {
        if bucket >= self.from {
            self.count += k;
        }
    }

    /// The same answer as summing counts[from..].
    fn count_from(&mut self, counts: &[u64], from: usize) -> u64 {
        while self.from < from {
            self.count -= counts[self.from];
            self.from += 1;
        }
        while self.from > from {
            self.from -= 1;
            self.count += counts[self.from];
        }
        self.count
    }
}

/// One pool's latency histogram and cursors.
struct Latencies {
    counts: Box<[u64]>,
    total: u64,
    rank: RankCursor,
    tail: TailCursor,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            counts: vec![0; BUCKETS].into(),
            total: 0,
            rank: RankCursor {
                bucket: 0,
                through: 0,
            },
            tail: TailCursor {
                from: BUCKETS,
                count: 0,
            },
        }
    }

    fn add(&mut self, bucket: usize, k: u64) {
        self.counts[bucket] += k;
        self.total += k;
        self.rank.added(bucket, k);
        self.tail.added(bucket, k);
    }

    fn draw(&mut self, draw: &LatencyDraw, k: usize, rng: &mut Rng) {
        let fast = draw.draw(k, rng, |b| self.add(b, 1));
        self.add(draw.fast_bucket(), fast);
    }
}

impl Engine {
    /// Builds the tables for `scenario`.
    pub fn new(scenario: Scenario) -> Engine {
        let errors = scenario
            .errors
            .iter()
            .map(|r| {
                (
                    Binomials::new(r.canary, LOOK),
                    Binomials::new(r.stable, LOOK),
                )
            })
            .collect();
        let latency = scenario.slowdown.map(|f| {
            (
                LatencyDraw::new(f, scenario.sigma),
                LatencyDraw::new(1.0, scenario.sigma),
            )
        });
        Engine {
            split: Binomials::new(scenario.share, LOOK),
            errors,
            latency,
            scenario,
        }
    }

    /// Runs one hold; stops early once every check has called a regression. The margin
    /// `t.max_error_rate_increase` must not be negative.
    pub fn run(&self, rng: &mut Rng, t: &Thresholds, check: bool) -> Outcome {
        assert!(
            t.max_error_rate_increase >= 0.0,
            "the skip below needs a margin ≥ 0"
        );
        let no_margin = Thresholds {
            max_error_rate_increase: 0.0,
            ..*t
        };
        let tracks = self.errors.len();
        let mut out = Outcome {
            errors: vec![None; tracks],
            errors_no_margin: vec![None; tracks],
            ..Outcome::default()
        };
        let mut hits = vec![(0u64, 0u64); tracks];
        let (mut canary_n, mut stable_n) = (0u64, 0u64);
        let mut canary_lat = Latencies::new();
        let mut stable_lat = Latencies::new();
        let s = &self.scenario;
        while canary_n < s.max_canary && canary_n + stable_n < s.max_total {
            let k_canary = self.split.sample(LOOK, rng) as usize;
            let k_stable = LOOK - k_canary;
            canary_n += k_canary as u64;
            stable_n += k_stable as u64;
            for (i, (canary_err, stable_err)) in self.errors.iter().enumerate() {
                hits[i].0 += canary_err.sample(k_canary, rng);
                hits[i].1 += stable_err.sample(k_stable, rng);
                let canary = Arm {
                    n: canary_n,
                    hits: hits[i].0,
                };
                let stable = Arm {
                    n: stable_n,
                    hits: hits[i].1,
                };
                // A canary rate at or below stable's puts the interval's low end at or below 0,
                // so no margin ≥ 0 can call a regression: skip the call (half the looks of an
                // A/A hold). `check` makes the call anyway and asserts that.
                let canary_worse = u128::from(canary.hits) * u128::from(stable.n)
                    > u128::from(stable.hits) * u128::from(canary.n);
                if !canary_worse && !check {
                    continue;
                }
                // 0: each simulated request is its own user's, so the variance with users as
                // the unit is the one per request.
                let (diff, verdict) = guard::errors(canary, stable, 0.0, t);
                // The interval does not depend on the margin: look again only when it could
                // matter.
                let no_margin_verdict = if diff.low > 0.0 || check {
                    guard::errors(canary, stable, 0.0, &no_margin).1
                } else {
                    Verdict::Ok
                };
                if !canary_worse {
                    assert!(diff.low <= 0.0 && no_margin_verdict != Verdict::Regressed);
                }
                if out.errors[i].is_none() && verdict == Verdict::Regressed {
                    out.errors[i] = Some(canary_n);
                }
                if out.errors_no_margin[i].is_none() && no_margin_verdict == Verdict::Regressed {
                    out.errors_no_margin[i] = Some(canary_n);
                }
            }
            if let Some((canary_draw, stable_draw)) = &self.latency {
                canary_lat.draw(canary_draw, k_canary, rng);
                stable_lat.draw(stable_draw, k_stable, rng);
                let regressed =
                    self.latency_regressed(&mut canary_lat, &mut stable_lat, &mut out, t, check);
                if out.latency.is_none() && regressed {
                    out.latency = Some(canary_n);
                }
            }
            let errors_done = out
                .errors
                .iter()
                .chain(&out.errors_no_margin)
                .all(Option::is_some);
            if errors_done && (self.latency.is_none() || out.latency.is_some()) {
                break;
            }
        }
        out
    }

    /// The latency check's regression call at this look, by cursors.
    fn latency_regressed(
        &self,
        canary: &mut Latencies,
        stable: &mut Latencies,
        out: &mut Outcome,
        t: &Thresholds,
        check: bool,
    ) -> bool {
        let (canary_n, stable_n) = (canary.total, stable.total);
        if guard::latency_verdict(canary_n, stable_n, None, false, t) != Verdict::Ok {
            if check {
                let full = guard::latency(&canary.counts, &stable.counts, t);
                assert!(matches!(full.verdict, Verdict::NotEnoughData { .. }));
            }
            return false;
        }
        let bucket = stable
            .rank
            .find(&stable.counts, guard::reference_rank(stable_n, t));
        if self
            .latency
            .as_ref()
            .is_some_and(|(_, s)| bucket <= s.fast_bucket())
        {
            out.lumped_reads += 1;
        }
        let from = histogram::first_at_or_above(guard::slow_threshold(bucket, t));
        let slow = canary.tail.count_from(&canary.counts, from);
        let share = guard::slow_sequence(
            Arm {
                n: canary_n,
                hits: slow,
            },
            0.0,
            t,
        );
        let verdict = guard::latency_verdict(canary_n, stable_n, Some(share), false, t);
        let regressed = verdict == Verdict::Regressed;
        if check {
            let full = guard::latency(&canary.counts, &stable.counts, t);
            assert_eq!(full.slow_share, Some(share));
            assert_eq!(full.verdict == Verdict::Regressed, regressed);
        }
        regressed
    }
}
