//! Holds simulated user by user, through the verdicts the guard acts on ([`verdicts`]): many
//! light users (sessions of one to five requests) beside a few busy ones (clients, bots), whose
//! requests all fall in one cell of [`crate::analysis::clusters::Clusters`]. `engine` draws
//! requests as if each were its own user's, and cannot show what busy users do to a rate.
//!
//! The scenarios are those a hostile tester found against leaving users out by requests: busy
//! users failing on both versions beside a bot, busy users split unevenly, and a busy client
//! that never fails.

use super::Rng;
use super::model::{SIGMA, STABLE_MEDIAN_MICROS};
use crate::analysis::Counts;
use crate::analysis::clusters::{CELLS, Clusters};
use crate::analysis::guard::{Thresholds, Verdict};
use crate::analysis::histogram;
use crate::analysis::reference::Reference;
use crate::analysis::view::Verdicts;
use crate::routing::{PerPool, PoolName};

/// One busy user: its pool, its requests a second, the share of them that fail, and how long
/// each takes (µs; None: as its pool's light users').
#[derive(Clone, Copy, Debug)]
struct Busy {
    pool: PoolName,
    per_second: u64,
    rate: f64,
    micros: Option<f64>,
}

/// A hold's traffic.
#[derive(Clone, Debug)]
struct Mix {
    /// The canary's share of users.
    share: f64,
    /// Light users' requests a second (both pools).
    light: u64,
    /// Light users' error rate per pool.
    light_rate: PerPool<f64>,
    busy: Vec<Busy>,
    /// Regular users, each sent to a pool by the share: how many, their requests a second
    /// each, and their error rate per pool.
    regulars: Vec<(usize, f64, PerPool<f64>)>,
    seconds: u64,
    /// The canary's latencies are stable's (lognormal, median 20 ms, σ 0.5) times this.
    slower: f64,
    /// In these seconds, this many more stable requests a second from ever new users, each
    /// taking this long (µs): a burst of timeouts at an overloaded upstream.
    burst: Option<(std::ops::Range<u64>, u64, f64)>,
}

impl Mix {
    fn new(share: f64, light: u64, stable: f64, canary: f64, seconds: u64) -> Mix {
        Mix {
            share,
            light,
            light_rate: PerPool { stable, canary },
            busy: Vec::new(),
            regulars: Vec::new(),
            seconds,
            slower: 1.0,
            burst: None,
        }
    }

    /// With a burst of `per_second` more stable requests a second in `seconds`, each taking
    /// `micros`, from ever new users.
    fn burst(mut self, seconds: std::ops::Range<u64>, per_second: u64, micros: f64) -> Mix {
        self.burst = Some((seconds, per_second, micros));
        self
    }

    /// With `users` regular users, each sent to a pool by the share, `per_second` requests a
    /// second each, failing at `stable` on stable and `canary` on the canary.
    fn regulars(mut self, users: usize, per_second: f64, stable: f64, canary: f64) -> Mix {
        self.regulars
            .push((users, per_second, PerPool { stable, canary }));
        self
    }

    /// With the canary's latencies `slower` times stable's.
    fn slower(mut self, slower: f64) -> Mix {
        self.slower = slower;
        self
    }

    /// With `users` busy users on `pool` whose every answer takes `micros`, none failing.
    fn slow(mut self, users: usize, pool: PoolName, per_second: u64, micros: f64) -> Mix {
        self.busy.extend((0..users).map(|_| Busy {
            pool,
            per_second,
            rate: 0.0,
            micros: Some(micros),
        }));
        self
    }

    /// With `users` busy users on `pool`, `per_second` requests a second each, failing at
    /// `rate`.
    fn with(mut self, users: usize, pool: PoolName, per_second: u64, rate: f64) -> Mix {
        self.busy.extend((0..users).map(|_| Busy {
            pool,
            per_second,
            rate,
            micros: None,
        }));
        self
    }
}

/// The counts the verdicts judge, as the request path and the analysis task make them.
struct Books {
    since: PerPool<Counts>,
    /// This second's counts per cell, added to `since` at each look.
    tick: PerPool<Clusters>,
    /// The latency check's slow threshold as the last look set it, µs.
    slow_over: f64,
    /// What the threshold is set from, and the one the cells' slow answers were counted by.
    reference: Reference,
    /// The latencies this second of the cells whose latencies are counted apart (the busiest at
    /// the last look), and per cell its place among them + 1 (0: none).
    tracked: PerPool<Vec<(usize, Vec<u64>)>>,
    slot: PerPool<Vec<u8>>,
}

impl Books {
    /// A request of a user in `cell` on `pool` that took `micros`.
    fn request(&mut self, pool: PoolName, cell: usize, error: bool, micros: f64) {
        let c = &mut self.since[pool];
        c.requests += 1;
        c.errors += u64::from(error);
        let bucket = histogram::index(micros as u64);
        c.latency[bucket] += 1;
        let slow = micros as u64 > self.slow_over as u64;
        self.tick[pool].add_cell(cell, 1, [u64::from(error), u64::from(slow)]);
        let slot = usize::from(self.slot[pool][cell]);
        if let Some((_, h)) = slot
            .checked_sub(1)
            .and_then(|s| self.tracked[pool].get_mut(s))
        {
            if h.is_empty() {
                h.resize(histogram::BUCKETS, 0);
            }
            h[bucket] += 1;
        }
    }

    /// The second's counts per cell to `since`, with the tracked cells' latencies, and the
    /// cells to track next: the busiest now.
    fn look(&mut self) {
        for pool in PoolName::BOTH {
            let tick = &mut self.tick[pool];
            for (cell, h) in self.tracked[pool].drain(..) {
                self.slot[pool][cell] = 0;
                if !h.is_empty() {
                    tick.add_latency(cell, &h);
                }
            }
            let Some(cells) = self.since[pool].clusters.as_mut() else {
                continue;
            };
            // `add` keeps the latencies of the busiest cells only, as the analysis task does.
            cells.add(tick);
            tick.clear();
            self.tracked[pool] = cells.busiest().iter().map(|&c| (c, Vec::new())).collect();
            for (i, (cell, _)) in self.tracked[pool].iter().enumerate() {
                self.slot[pool][*cell] = i as u8 + 1;
            }
        }
    }
}

/// Runs one hold, looking once a second; the canary requests seen at the first look whose
/// verdict (`pick`ed of the look's) was Regressed (None: never).
fn run(mix: &Mix, seed: u64, t: &Thresholds, pick: fn(&Verdicts) -> Verdict) -> Option<u64> {
    let mut rng = Rng::new(seed, 0x05E5);
    let cell = |rng: &mut Rng| (rng.next_u64() % CELLS as u64) as usize;
    let busy: Vec<(Busy, usize)> = mix.busy.iter().map(|&b| (b, cell(&mut rng))).collect();
    let mut regulars = Vec::new();
    for &(users, per_second, rate) in &mix.regulars {
        for _ in 0..users {
            let pool = if rng.bernoulli(mix.share) {
                PoolName::Canary
            } else {
                PoolName::Stable
            };
            regulars.push((pool, cell(&mut rng), per_second, rate[pool]));
        }
    }
    let mut books = Books {
        since: PerPool::from_fn(|_| Counts::judged()),
        tick: PerPool::default(),
        slow_over: f64::INFINITY,
        reference: Reference::default(),
        tracked: PerPool::default(),
        slot: PerPool::from_fn(|_| vec![0; CELLS]),
    };
    let mu = STABLE_MEDIAN_MICROS.ln();
    for second in 0..mix.seconds {
        if let Some((during, per_second, micros)) = &mix.burst
            && during.contains(&second)
        {
            for _ in 0..*per_second {
                let at = cell(&mut rng);
                books.request(PoolName::Stable, at, false, *micros);
            }
        }
        let mut made = 0;
        while made < mix.light {
            let pool = if rng.bernoulli(mix.share) {
                PoolName::Canary
            } else {
                PoolName::Stable
            };
            let factor = if pool == PoolName::Canary {
                mix.slower
            } else {
                1.0
            };
            let (at, session) = (cell(&mut rng), 1 + rng.next_u64() % 5);
            for _ in 0..session {
                let error = rng.bernoulli(mix.light_rate[pool]);
                let micros = rng.lognormal(mu, SIGMA) * factor;
                books.request(pool, at, error, micros);
            }
            made += session;
        }
        for &(b, at) in &busy {
            for _ in 0..b.per_second {
                let error = rng.bernoulli(b.rate);
                let micros = b
                    .micros
                    .unwrap_or_else(|| rng.lognormal(mu, SIGMA) * mix.slower);
                books.request(b.pool, at, error, micros);
            }
        }
        for &(pool, at, per_second, rate) in &regulars {
            let n = per_second.floor() as u64 + u64::from(rng.bernoulli(per_second.fract()));
            for _ in 0..n {
                let error = rng.bernoulli(rate);
                let micros = rng.lognormal(mu, SIGMA);
                books.request(pool, at, error, micros);
            }
        }
        books.look();
        let v = books.reference.look(&mut books.since, t);
        if pick(&v) == Verdict::Regressed {
            return Some(books.since.canary.requests);
        }
        books.slow_over = v.latency.slow_micros.unwrap_or(f64::INFINITY);
    }
    None
}

/// Of `runs` holds, the canary requests each that regressed took (by the `pick`ed verdict).
fn alarms(mix: &Mix, runs: u64, pick: fn(&Verdicts) -> Verdict) -> Vec<u64> {
    let t = Thresholds::default();
    (0..runs)
        .filter_map(|seed| run(mix, seed, &t, pick))
        .collect()
}

/// The share of `runs` holds in which a regression was `caught` within `within` canary
/// requests, printed with the median under `name`.
fn caught_share(name: &str, caught: &[u64], within: u64, runs: u64) -> f64 {
    let share = caught.iter().filter(|&&n| n <= within).count() as f64 / runs as f64;
    let mut sorted = caught.to_vec();
    sorted.sort_unstable();
    eprintln!(
        "{name}: caught within {within} canary requests in {:.0}% of {runs} holds, median {:?}",
        share * 100.0,
        sorted.get(sorted.len() / 2)
    );
    share
}

fn errors(v: &Verdicts) -> Verdict {
    v.errors.1
}

fn latency(v: &Verdicts) -> Verdict {
    v.latency.verdict
}

#[test]
fn healthy_canaries_beside_busy_users_are_not_called_regressed() {
    use PoolName::{Canary, Stable};
    let cases = [
        // Nobody busy: sessions of one to five requests, 2% errors on both, at two shares.
        ("A/A", Mix::new(0.5, 100, 0.02, 0.02, 200)),
        ("A/A at 5%", Mix::new(0.05, 200, 0.02, 0.02, 200)),
        // Four busy users a version failing 30% on both, a bot on the canary failing always:
        // the bot took one of the canary's places among the left out, one busy canary user
        // stayed in while all of stable's were left out, and a healthy canary was halted.
        (
            "busy users and a bot",
            Mix::new(0.5, 40, 0.05, 0.05, 300)
                .with(4, Stable, 10, 0.3)
                .with(4, Canary, 10, 0.3)
                .with(1, Canary, 10, 1.0),
        ),
        // A client on stable that never fails, at 10% errors for everyone: never left out (it
        // has no error), it pulled stable's rate down to 5%.
        (
            "a client that never fails",
            Mix::new(0.5, 40, 0.10, 0.10, 300).with(1, Stable, 20, 0.0),
        ),
        // Five busy users on the canary failing 30% (as they would on stable), none on stable:
        // one more than are left out (4, with the default min_users of 5) stays in.
        (
            "more busy users than are left out",
            Mix::new(0.5, 40, 0.02, 0.02, 300).with(5, Canary, 10, 0.3),
        ),
    ];
    let cases = cases.into_iter().chain([
        // 300 regular users, a third of a request a second each; 30 of them always fail, on
        // either version. At a 90% share stable got three or so, and leaving out each version's
        // four users with the most errors left it none: a healthy canary halted in 30 s.
        (
            "30 of 300 users always failing, 90% share",
            Mix::new(0.9, 0, 0.0, 0.0, 200)
                .regulars(30, 0.33, 1.0, 1.0)
                .regulars(270, 0.33, 0.0, 0.0),
        ),
        (
            "50 of 1,000 users always failing, 1% for everyone, 95% share",
            Mix::new(0.95, 0, 0.0, 0.0, 200)
                .regulars(50, 0.1, 1.0, 1.0)
                .regulars(950, 0.1, 0.01, 0.01),
        ),
    ]);
    for (name, mix) in cases {
        let runs = 100;
        let alarms = alarms(&mix, runs, errors);
        eprintln!("{name}: {} alarms in {runs} holds", alarms.len());
        assert!(alarms.len() <= 1, "{name}: {alarms:?}");
    }
}

#[test]
fn regressions_of_everyone_are_caught_beside_busy_users() {
    use PoolName::{Canary, Stable};
    let cases = [
        // 1% → 6%, sessions of one to five requests.
        ("1% → 6%", Mix::new(0.5, 100, 0.01, 0.06, 40), 1_000, 0.95),
        // 1% → 4%, with busy users failing 30% on both, four on stable and two on the canary:
        // their errors made stable's rate as high as the canary's, and the regression of every
        // ordinary user was never called.
        (
            "1% → 4% beside busy users split unevenly",
            Mix::new(0.5, 30, 0.01, 0.04, 300)
                .with(4, Stable, 10, 0.3)
                .with(2, Canary, 10, 0.3),
            10_000,
            0.9,
        ),
        // 1% → 6% with a bot on stable failing always: it made the canary look better.
        (
            "1% → 6% beside a failing bot on stable",
            Mix::new(0.5, 30, 0.01, 0.06, 300).with(1, Stable, 20, 1.0),
            10_000,
            0.9,
        ),
    ];
    for (name, mix, within, least) in cases {
        let runs = 100;
        let caught = alarms(&mix, runs, errors);
        let share = caught_share(name, &caught, within, runs);
        assert!(share >= least, "{name}: {share}");
    }
}

#[test]
fn latency_beside_busy_users() {
    use PoolName::{Canary, Stable};
    let runs = 100;
    // Five busy users on the canary whose every answer takes 200 ms (slow on either version):
    // one more than are left out.
    let healthy = Mix::new(0.5, 60, 0.0, 0.0, 200).slow(5, Canary, 10, 200_000.0);
    let false_alarms = alarms(&healthy, runs, latency);
    eprintln!(
        "busy slow users: {} alarms in {runs} holds",
        false_alarms.len()
    );
    assert!(false_alarms.len() <= 1, "{false_alarms:?}");
    // A busy stable client whose answers take 1 ms (a cached call), nine in ten of stable's
    // answers: counted per request, stable's p99 is its light users' p90, and a tenth of a
    // healthy canary's answers were over 1.5 × that.
    // And sixteen such clients, 5 a second each: as many busy users as the rates would leave
    // none of out (a hostile tester's: a healthy canary halted in 33 s).
    for (name, healthy) in [
        (
            "a busy fast stable client",
            Mix::new(0.5, 60, 0.0, 0.0, 200).slow(1, Stable, 270, 1_000.0),
        ),
        (
            "16 busy fast stable clients",
            Mix::new(0.5, 60, 0.0, 0.0, 200).slow(16, Stable, 5, 1_000.0),
        ),
    ] {
        let false_alarms = alarms(&healthy, runs, latency);
        eprintln!("{name}: {} alarms in {runs} holds", false_alarms.len());
        assert!(false_alarms.len() <= 1, "{name}: {false_alarms:?}");
    }
    // Every light user's answers twice as slow on the canary, beside three busy slow ones.
    for (name, mix, within) in [
        (
            "2× slower",
            Mix::new(0.5, 100, 0.0, 0.0, 60).slower(2.0),
            2_000,
        ),
        (
            "2× slower beside busy slow users",
            Mix::new(0.5, 60, 0.0, 0.0, 200)
                .slower(2.0)
                .slow(3, Canary, 10, 200_000.0),
            // Half the canary's requests are the busy users': 2,000 of everyone else's.
            4_000,
        ),
        // Beside a busy stable client whose answers take 200 ms (an exporter, a report), a
        // quarter of stable's: counted per request, stable's p99 was its, and the slower
        // canary read as faster.
        (
            "2× slower beside a busy slow stable client",
            Mix::new(0.5, 60, 0.0, 0.0, 200)
                .slower(2.0)
                .slow(1, Stable, 10, 200_000.0),
            2_000,
        ),
        // Sixteen such clients, one report a second each: the regression was hidden for good.
        // Each is busy only once it has 8 times the usual user's requests (about 25 s here),
        // and its slow answers raise the reference until then.
        (
            "2× slower beside 16 busy slow stable clients",
            Mix::new(0.5, 60, 0.0, 0.0, 200)
                .slower(2.0)
                .slow(16, Stable, 1, 200_000.0),
            4_000,
        ),
    ] {
        let caught = alarms(&mix, runs, latency);
        let share = caught_share(name, &caught, within, runs);
        assert!(share >= 0.9, "{name}: {share}");
    }
}

#[test]
fn latency_after_a_burst_and_over_long_holds() {
    let runs = 100;
    // A burst of 380 stable answers in two seconds from ever new users, each taking a second
    // (timeouts at an overloaded upstream), beside 30 stable requests a second. Over the whole
    // comparison it held stable's p99 at a second until stable had 38,000 answers (21 minutes
    // here); over the last minute, it leaves the reference about 70 s after it.
    for (name, healthy) in [
        ("A/A over 20 minutes", Mix::new(0.5, 60, 0.0, 0.0, 1_200)),
        (
            "A/A after a burst of slow stable answers",
            Mix::new(0.5, 60, 0.0, 0.0, 600).burst(5..7, 190, 1_000_000.0),
        ),
    ] {
        let false_alarms = alarms(&healthy, runs, latency);
        eprintln!("{name}: {} alarms in {runs} holds", false_alarms.len());
        assert!(false_alarms.len() <= 1, "{name}: {false_alarms:?}");
    }
    let mix = Mix::new(0.5, 60, 0.0, 0.0, 600)
        .slower(2.0)
        .burst(5..7, 190, 1_000_000.0);
    let caught = alarms(&mix, runs, latency);
    // About 90 s of 30 canary requests a second until the reference is stable's last minute,
    // then as without the burst.
    let name = "2× slower after a burst of slow stable answers";
    let share = caught_share(name, &caught, 4_000, runs);
    assert!(share >= 0.9, "{share}");
}
