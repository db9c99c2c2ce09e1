//! The guard's targets, measured by seeded simulation and asserted; `cargo test -- --nocapture`
//! prints the table.
//!
//! Hold: 20,000 canary requests or 200,000 requests in all, whichever comes first (2,000 canary
//! requests at a 1% share, 10,000 at 5%, 20,000 at 20% and 50%), looked at every 50 requests.

use super::Rng;
use super::engine::{Engine, Outcome, Rates, Scenario};
use super::literal;
use super::model::SIGMA;
use crate::analysis::guard::Thresholds;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Simulated holds per cell.
pub const RUNS: usize = 1_000;

/// Canary shares tried.
pub const SHARES: [f64; 4] = [0.01, 0.05, 0.20, 0.50];

/// Error rates of the A/A holds (both pools).
const AA_RATES: [f64; 3] = [0.005, 0.02, 0.10];

/// The hold: canary requests ...
const HOLD_CANARY: u64 = 20_000;

/// ... or requests in all.
const HOLD_TOTAL: u64 = 200_000;

/// A scenario at `share` with the standard hold.
pub fn scenario(share: f64, errors: Vec<Rates>, slowdown: Option<f64>) -> Scenario {
    Scenario {
        share,
        errors,
        slowdown,
        sigma: SIGMA,
        max_canary: HOLD_CANARY,
        max_total: HOLD_TOTAL,
    }
}

/// The A/A scenario at `share`: every A/A error rate on the same traffic, same latencies.
pub fn aa(share: f64) -> Scenario {
    let rates = AA_RATES
        .iter()
        .map(|&p| Rates {
            stable: p,
            canary: p,
        })
        .collect();
    scenario(share, rates, Some(1.0))
}

/// Stable 1% errors, canary 6%.
pub fn error_canary(share: f64) -> Scenario {
    scenario(
        share,
        vec![Rates {
            stable: 0.01,
            canary: 0.06,
        }],
        None,
    )
}

/// Every canary latency doubled.
pub fn slow_canary(share: f64) -> Scenario {
    scenario(share, Vec::new(), Some(2.0))
}

/// Runs `runs` holds of every scenario, spread over the machine's cores. Run r of scenario c
/// uses stream (c, r) of `seed`, so results do not depend on scheduling.
pub fn run_all(
    scenarios: Vec<Scenario>,
    runs: usize,
    seed: u64,
    t: &Thresholds,
) -> Vec<Vec<Outcome>> {
    const CHUNK: usize = 50;
    let engines: Vec<Engine> = scenarios.into_iter().map(Engine::new).collect();
    let chunks = runs.div_ceil(CHUNK);
    let jobs = engines.len() * chunks;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Vec<Option<Outcome>>>> =
        Mutex::new(vec![vec![None; runs]; engines.len()]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= jobs {
                        break;
                    }
                    let (cell, chunk) = (job / chunks, job % chunks);
                    let range = chunk * CHUNK..((chunk + 1) * CHUNK).min(runs);
                    let done: Vec<(usize, Outcome)> = range
                        .map(|r| {
                            let mut rng = Rng::new(seed, (cell * 1_000_000 + r) as u64);
                            (r, engines[cell].run(&mut rng, t, false))
                        })
                        .collect();
                    let mut all = results.lock().expect("no worker panicked");
                    for (r, outcome) in done {
                        all[cell][r] = Some(outcome);
                    }
                }
            });
        }
    });
    let all = results.into_inner().expect("no worker panicked");
    all.into_iter()
        .map(|cell| {
            cell.into_iter()
                .map(|o| o.expect("every run done"))
                .collect()
        })
        .collect()
}

/// Percent of `outcomes` where `alarm` is Some.
pub fn percent(outcomes: &[Outcome], alarm: impl Fn(&Outcome) -> bool) -> f64 {
    100.0 * outcomes.iter().filter(|o| alarm(o)).count() as f64 / outcomes.len() as f64
}

/// Detection figures: % caught within `within` canary requests, median and 95th percentile of
/// canary requests until caught (None: not caught in the hold).
pub fn detection(caught: &[Option<u64>], within: u64) -> (f64, Option<u64>, Option<u64>) {
    let mut sorted: Vec<u64> = caught.iter().map(|c| c.unwrap_or(u64::MAX)).collect();
    sorted.sort_unstable();
    let at = |q: f64| {
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        Some(sorted[i]).filter(|&v| v != u64::MAX)
    };
    let hit = sorted.iter().filter(|&&v| v <= within).count();
    (100.0 * hit as f64 / sorted.len() as f64, at(0.5), at(0.95))
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "never".to_string(), |v| v.to_string())
}

#[test]
fn targets_hold() {
    let t = Thresholds::default();
    println!("guard simulation, {RUNS} seeded holds per cell, defaults {t:?}");
    let aa_out = run_all(SHARES.iter().map(|&s| aa(s)).collect(), RUNS, 1, &t);
    println!("\nA/A false alarms, % of holds (hold: 20,000 canary or 200,000 total requests)");
    println!("errors  share   error-check  latency-check  combined  | error-check at margin 0");
    let mut worst: f64 = 0.0;
    for (i, &rate) in AA_RATES.iter().enumerate() {
        for (share, outs) in SHARES.iter().zip(&aa_out) {
            let err = percent(outs, |o| o.errors[i].is_some());
            let lat = percent(outs, |o| o.latency.is_some());
            let both = percent(outs, |o| o.errors[i].is_some() || o.latency.is_some());
            let zero = percent(outs, |o| o.errors_no_margin[i].is_some());
            println!(
                "{:5.1}%  {:4.0}%   {err:10.1}  {lat:13.1}  {both:8.1}  | {zero:6.1}",
                rate * 100.0,
                share * 100.0
            );
            worst = worst.max(both);
        }
    }
    let lumped: u64 = aa_out.iter().flatten().map(|o| o.lumped_reads).sum();

    let err_out = run_all(
        SHARES.iter().map(|&s| error_canary(s)).collect(),
        RUNS,
        2,
        &t,
    );
    let lat_out = run_all(
        SHARES.iter().map(|&s| slow_canary(s)).collect(),
        RUNS,
        3,
        &t,
    );
    println!("\ndetection: canary requests until caught");
    println!("regression            share   caught-within  median   p95");
    let mut weakest: f64 = 100.0;
    for (name, within, cells) in [
        ("errors 1% -> 6%", 1_000, &err_out),
        ("latency x2", 2_000, &lat_out),
    ] {
        for (share, outs) in SHARES.iter().zip(cells) {
            let caught: Vec<Option<u64>> = outs
                .iter()
                .map(|o| o.errors.first().copied().flatten().or(o.latency))
                .collect();
            let (rate, median, p95) = detection(&caught, within);
            println!(
                "{name:20}  {:4.0}%   {rate:5.1}% <= {within:5}  {:>6}  {:>6}",
                share * 100.0,
                show(median),
                show(p95)
            );
            weakest = weakest.min(rate);
        }
    }
    let lumped = lumped
        + lat_out
            .iter()
            .flatten()
            .map(|o| o.lumped_reads)
            .sum::<u64>();
    assert_eq!(lumped, 0, "a decision read the lumped fast bucket");
    assert!(worst <= 1.0, "an A/A cell raised {worst}% false alarms");
    assert!(
        weakest >= 95.0,
        "a regression was caught in time in only {weakest}% of runs"
    );
}

#[test]
fn fast_engine_agrees_with_the_guard_at_every_look() {
    let t = Thresholds::default();
    let short = |mut s: Scenario| {
        s.max_total = 20_000;
        s
    };
    for (k, s) in [
        short(aa(0.05)),
        aa(0.5),
        slow_canary(0.2),
        short(slow_canary(0.01)),
    ]
    .into_iter()
    .enumerate()
    {
        let engine = Engine::new(s);
        for r in 0..10 {
            let out = engine.run(&mut Rng::new(9, (k * 100 + r) as u64), &t, true);
            assert_eq!(out.lumped_reads, 0);
        }
    }
}

#[test]
fn fast_engine_matches_one_request_at_a_time() {
    let t = Thresholds::default();
    let runs = 300;
    for (name, within, s) in [
        ("errors", 1_000, error_canary(0.2)),
        ("latency", 2_000, slow_canary(0.2)),
    ] {
        let engine = Engine::new(s.clone());
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for r in 0..runs {
            let f = engine.run(&mut Rng::new(21, r), &t, false);
            let l = literal::run(&s, &mut Rng::new(22, r), &t);
            fast.push(f.errors.first().copied().flatten().or(f.latency));
            slow.push(l.errors.first().copied().flatten().or(l.latency));
        }
        let (fast_rate, fast_median, _) = detection(&fast, within);
        let (slow_rate, slow_median, _) = detection(&slow, within);
        let (f, l) = (
            fast_median.expect("caught") as f64,
            slow_median.expect("caught") as f64,
        );
        println!(
            "{name}: fast median {f} caught {fast_rate}%, literal median {l} caught {slow_rate}%"
        );
        assert!((f / l - 1.0).abs() < 0.1, "{name}: medians {f} vs {l}");
        assert!(
            (fast_rate - slow_rate).abs() < 6.0,
            "{name}: {fast_rate}% vs {slow_rate}%"
        );
    }
}
