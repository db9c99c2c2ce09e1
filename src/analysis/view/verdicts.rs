//! The error and latency verdicts, with each version's busy users left out of a regression,
//! and the reason the guard gives when it acts on one.

use crate::routing::PerPool;

use crate::analysis::clusters::{Kind, Spread};
use crate::analysis::counts::Counts;
use crate::analysis::guard::{self, Few, LatencyCheck, Thresholds, Verdict};
use crate::analysis::histogram;
use crate::analysis::reference::Recent;
use crate::analysis::stats::{Arm, Interval};

/// The error and latency verdicts over `since`.
#[derive(Debug, Clone, Copy)]
pub struct Verdicts {
    /// canary − stable error rate, and its verdict.
    pub errors: (Interval, Verdict),
    pub latency: LatencyCheck,
    /// Each version's errors with its busy users left out (both pools with requests).
    pub errors_left_out: Option<LeftOut>,
    /// The latency comparison with each version's busy users left out, once there is enough
    /// data and the latency check has a threshold.
    pub slow_left_out: Option<SlowLeftOut>,
}

/// The latency comparison with each version's busy users left out: stable's from the reference
/// "slow" is set from, the canary's from its slow share.
#[derive(Debug, Clone, Copy)]
pub struct SlowLeftOut {
    /// How many users (cells) of each version were left out.
    pub users: PerPool<usize>,
    /// Stable's p99 without its busy users, µs: over its last `reference_looks` seconds, or
    /// since the comparison began.
    pub stable_p99: Option<f64>,
    /// The looks (seconds) stable's p99 spans; None: the whole comparison.
    pub reference_looks: Option<u64>,
    /// The canary's requests and slow answers without its busy users.
    pub canary: Arm,
    /// Their share's confidence sequence.
    pub share: Interval,
    /// The looks (seconds) the canary's slow answers were counted over: since the slow threshold
    /// last moved far and they were counted afresh ([`follow_threshold`]); None: since the
    /// comparison began.
    pub counted_looks: Option<u64>,
}

/// Each version's errors with its busy users left out.
#[derive(Debug, Clone, Copy)]
pub struct LeftOut {
    /// How many users (cells) of each version were left out.
    pub users: PerPool<usize>,
    /// Each version's requests and errors without them.
    pub pools: PerPool<Arm>,
    /// canary − stable error rate, without them.
    pub difference: Interval,
}

/// The variance of canary − stable with users as the unit (see [`Spread`]), and at least the
/// same with both versions' users straying from their common rate as much as all users do
/// (see [`pooled`]); 0 without cells (counts summed otherwise: the variance per request then
/// stands alone).
fn clustered(spread: &PerPool<Option<Spread>>) -> f64 {
    match (spread.canary, spread.stable) {
        (Some(c), Some(s)) => (c.variance + s.variance).max(pooled(&c, &s)),
        _ => 0.0,
    }
}

/// The variance of canary − stable if users of both versions strayed from their common rate p̄
/// as much as all of them do: s² · (Σn_c²/N_c² + Σn_s²/N_s²), with s² = Σ (e − p̄·n)² / Σn² over
/// both versions' cells. The floor the pooled variance per request is for requests: a version
/// with few users (stable at a 90% share) that happened to get few of the users who always
/// fail has a low rate and, its own users straying little from it, a variance as low; a
/// healthy canary was then called worse.
fn pooled(c: &Spread, s: &Spread) -> f64 {
    let (nc, ns) = (c.arm.n as f64, s.arm.n as f64);
    let nn = c.squares[0] + s.squares[0];
    if nc == 0.0 || ns == 0.0 || nn == 0.0 {
        return f64::INFINITY;
    }
    let p = (c.arm.hits + s.arm.hits) as f64 / (nc + ns);
    let s2 = (c.deviation(p) + s.deviation(p)) / nn;
    s2 * (c.squares[0] / (nc * nc) + s.squares[0] / (ns * ns))
}

/// The error and latency verdicts over `since`, "slow" set from stable's whole comparison.
pub fn verdicts(since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
    verdicts_over(since, None, t)
}

/// The error and latency verdicts over `since`, "slow" set from `recent` (stable's latencies
/// over its last minute or so, without its busy users: see [`Recent`]) when given.
pub fn verdicts_over(since: &PerPool<Counts>, recent: Option<&Recent>, t: &Thresholds) -> Verdicts {
    let arm = |c: &Counts| Arm {
        n: c.requests,
        hits: c.errors,
    };
    // The call rests on the comparison without each version's busy users (bots, busy clients,
    // batch jobs: far more requests than a user's usual, whatever their errors), left out whole
    // with their requests: a bot's successful requests left in would dilute the rate and hide a
    // regression of everyone else, and a bot failing on stable would hide a worse canary. Busy
    // users who stay in (more than are left out) still move a rate counted per request; the
    // variance with users as the unit widens the range by as much. And the errors must come
    // from at least `min_users` users (cells) of the canary's: one user's bad input is no
    // regression of the version.
    let few = |why| few(t, why);
    let (canary, stable) = (&since.canary, &since.stable);
    let whole = PerPool::from_fn(|p| since[p].clusters.as_ref().map(|c| c.whole(Kind::Errors)));
    let mut errors = guard::errors(arm(canary), arm(stable), clustered(&whole), t);
    // Worked out at every look, so that status shows how near the guard is to acting.
    let spread = PerPool::from_fn(|p| {
        since[p]
            .clusters
            .as_ref()
            .map(|c| c.without_busy(Kind::Errors))
    });
    let errors_left_out = match (spread.canary, spread.stable) {
        (Some(c), Some(s)) if canary.requests > 0 && stable.requests > 0 => {
            let (difference, verdict) = guard::errors(c.arm, s.arm, clustered(&spread), t);
            let verdict = match verdict {
                Verdict::Regressed if c.hit_cells < t.min_users => few(Few::Users),
                Verdict::Regressed => Verdict::Regressed,
                // Counted per request, what remains is still worse: the range is wide
                // because the errors come from too few users, or are spread unevenly across
                // more, not for busy users.
                _ if guard::errors(c.arm, s.arm, 0.0, t).1 == Verdict::Regressed => {
                    few(if c.hit_cells < t.min_users {
                        Few::Users
                    } else {
                        Few::Spread
                    })
                }
                v => v,
            };
            Some((
                LeftOut {
                    users: PerPool {
                        canary: c.left_out,
                        stable: s.left_out,
                    },
                    pools: PerPool {
                        canary: c.arm,
                        stable: s.arm,
                    },
                    difference,
                },
                verdict,
            ))
        }
        _ => None,
    };
    let without = errors_left_out.map(|(_, v)| v);
    // What counting requests, not users, would call: said when a few users make it so.
    let per_request = guard::errors(arm(canary), arm(stable), 0.0, t).1;
    match (errors.1, without) {
        (Verdict::NotEnoughData { .. }, _) | (_, None) => {}
        // Also when the whole comparison shows none: busy users failing on both versions,
        // more of them on stable, hid a regression of everyone else.
        (_, Some(Verdict::Regressed)) => errors.1 = Verdict::Regressed,
        (Verdict::Regressed, Some(v)) => errors.1 = few(why(v)),
        // Nor is the canary better on the strength of a few users (a bot failing on stable).
        (Verdict::Improved, Some(v)) if v != Verdict::Improved => errors.1 = Verdict::Ok,
        (_, Some(v)) if per_request == Verdict::Regressed => errors.1 = few(why(v)),
        _ => {}
    }
    let errors_left_out = errors_left_out.map(|(l, _)| l);
    let (latency, slow_left_out) = latency(since, recent, t);
    Verdicts {
        errors,
        latency,
        errors_left_out,
        slow_left_out,
    }
}

/// A regression counted per request that is not the guard's call, and `why`.
fn few(t: &Thresholds, why: Few) -> Verdict {
    Verdict::FewUsers {
        needed: t.min_users,
        why,
    }
}

/// Why a regression counted per request is not the guard's call, from the call without the
/// busy users: its own reason when it gives one (too few users, or its errors spread unevenly
/// across users), else the busy users.
fn why(without: Verdict) -> Few {
    match without {
        Verdict::FewUsers { why, .. } => why,
        _ => Few::Busy,
    }
}

/// The latency check over `since`, with each version's busy users left out: stable's from its
/// p99 (over `recent` when given, else since the comparison began), which "slow" is set from
/// (one busy stable client with slow answers, an exporter or a report, raised it, and a
/// canary slower for everyone read as no slower, or better), and the
/// canary's from its slow share, judged with users as the unit of its variance. The call rests
/// on that, as the errors' does. The percentiles shown are everyone's.
fn latency(
    since: &PerPool<Counts>,
    recent: Option<&Recent>,
    t: &Thresholds,
) -> (LatencyCheck, Option<SlowLeftOut>) {
    let canary = &since.canary;
    let everyone = guard::latency(&canary.latency, &since.stable.latency, t);
    let Some(cells) = canary.clusters.as_deref() else {
        return (everyone, None);
    };
    let kept = PerPool::from_fn(|p| match since[p].clusters.as_deref() {
        Some(c) => c.latency_without_busy(&since[p].latency),
        None => (since[p].latency.clone(), 0),
    });
    let reference = recent.map_or(&kept.stable.0[..], |r| &r.latency[..]);
    let mut latency = guard::latency(&kept.canary.0, reference, t);
    let stable_p99 = latency.stable.map(|p| p.p99);
    // Improved: faster than stable both lately and over the whole comparison (the canary's
    // answers span it all).
    let improved = latency.verdict == Verdict::Improved
        && (recent.is_none()
            || guard::latency(&kept.canary.0, &kept.stable.0, t).verdict == Verdict::Improved);
    latency.canary = everyone.canary;
    latency.stable = everyone.stable;
    latency.p99_ratio = everyone.p99_ratio;
    // Until there are enough requests, the threshold (without stable's busy users) still goes
    // to the request path: the answers counted slow meanwhile are part of what is judged.
    if matches!(everyone.verdict, Verdict::NotEnoughData { .. }) {
        latency.verdict = everyone.verdict;
        return (latency, None);
    }
    let Some(micros) = latency.slow_micros else {
        return (latency, None);
    };
    let whole = Arm {
        n: histogram::total(&canary.latency),
        hits: histogram::count_above(&canary.latency, micros),
    };
    let all = cells.whole(Kind::Slow);
    latency.slow_share = Some(guard::slow_sequence(whole, all.variance, t));
    // What counting everyone's requests, not users, would call — the canary's answers against
    // everyone's stable, busy users on both sides: said when a few users make it so. (Against
    // stable without its busy users, an A/A whose busy users are slow on both versions read as
    // a canary slower only with its busy users.)
    let per_request = everyone
        .slow_share
        .is_some_and(|s| s.low > guard::SLOW_SHARE_LIMIT);
    // The cells count slow answers by the threshold in force when they came (none before the
    // first): the share without the busy users is the cells' own, requests and slow answers
    // alike. (Taking the busy users' slow answers from the histogram's, by today's threshold,
    // left their answers from before the first threshold in, as slow ones of everyone else.)
    let without = cells.without_busy(Kind::Slow);
    let left = without.arm;
    let decided = guard::slow_sequence(left, without.variance, t);
    let left_out = Some(SlowLeftOut {
        users: PerPool {
            canary: without.left_out,
            stable: kept.stable.1,
        },
        stable_p99,
        reference_looks: recent.map(|r| r.looks),
        canary: left,
        share: decided,
        counted_looks: None,
    });
    // As for errors, what remains must still have `min_requests`, and slow answers of
    // `min_users` users.
    let enough = left.n >= t.min_requests && without.hit_cells >= t.min_users;
    let few = |why| few(t, why);
    let above = |share: &Interval| share.low > guard::SLOW_SHARE_LIMIT;
    latency.verdict = if above(&decided) {
        if enough {
            Verdict::Regressed
        } else {
            few(Few::Users)
        }
    } else if above(&guard::slow_sequence(left, 0.0, t)) {
        // Counted per request, what remains is above the limit: the range is wide because the
        // slow answers are spread unevenly across users, not for busy users.
        few(if enough { Few::Spread } else { Few::Users })
    } else if per_request {
        few(Few::Busy)
    } else if improved {
        Verdict::Improved
    } else {
        Verdict::Ok
    };
    (latency, left_out)
}

/// How far apart the slow thresholds the cells' slow answers were counted by may be before
/// they are forgotten.
const RECOUNT: f64 = 1.5;

/// After a look whose slow threshold is `now` (it goes to the request path): if it is more
/// than 1.5× above the lowest or below the highest of `counted_with` (those the cells' slow
/// answers were counted by), the slow answers are forgotten and counted afresh by the new one
/// (true).
///
/// A rise: slow answers counted by a threshold set from a second's handful of stable answers
/// stayed for good (a canary's first second, counted against 2 ms, showed as 6% of its
/// answers slower than 307 ms when none was); and as an incident that slows both versions
/// begins, the canary's answers of its first second are counted by the threshold from before
/// it. A fall (a burst of slow stable answers leaving the reference, stable's p99 taken from
/// more answers): answers counted by the higher one are fewer than by today's, and left in,
/// the minute and more of answers counted while a burst held the threshold at a second
/// diluted the share of a canary twice as slow: in simulation its halt came a median of 4,112
/// canary requests in, against 2,828 with them forgotten.
pub fn follow_threshold(
    since: &mut PerPool<Counts>,
    counted_with: &mut Option<(f64, f64)>,
    now: Option<f64>,
) -> bool {
    let Some(now) = now.filter(|m| m.is_finite()) else {
        return false;
    };
    match *counted_with {
        Some((lowest, highest)) if now > lowest * RECOUNT || now * RECOUNT < highest => {
            for pool in crate::routing::PoolName::BOTH {
                if let Some(c) = since[pool].clusters.as_mut() {
                    c.clear_slow();
                }
            }
            *counted_with = Some((now, now));
            true
        }
        Some((lowest, highest)) => {
            *counted_with = Some((lowest.min(now), highest.max(now)));
            false
        }
        None => {
            *counted_with = Some((now, now));
            false
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

impl Verdicts {
    /// The figures that made the guard act, as the log, status and page show them: first those
    /// the call rested on (without each version's busy users), then everyone's.
    pub fn reason(&self, since: &PerPool<Counts>) -> String {
        let (errors, latency) = (self.errors, &self.latency);
        let mut parts = Vec::new();
        if errors.1 == Verdict::Regressed {
            let rate = |c: &Counts| c.errors as f64 / c.requests.max(1) as f64;
            let (canary, stable) = (&since.canary, &since.stable);
            let range = |d: Interval| {
                format!(
                    "{:+.2} points, range {:+.2} to {:+.2}",
                    d.estimate * 100.0,
                    d.low * 100.0,
                    d.high * 100.0
                )
            };
            parts.push(match self.errors_left_out {
                Some(l) => format!(
                    "error rate without busy users ({} on canary, {} on stable) {} on canary vs {} on stable ({}) over {} and {} requests; everyone's {} vs {} over {} and {} requests",
                    l.users.canary,
                    l.users.stable,
                    pct(l.pools.canary.rate()),
                    pct(l.pools.stable.rate()),
                    range(l.difference),
                    l.pools.canary.n,
                    l.pools.stable.n,
                    pct(rate(canary)),
                    pct(rate(stable)),
                    canary.requests,
                    stable.requests,
                ),
                None => format!(
                    "error rate {} on canary vs {} on stable ({}) over {} and {} requests",
                    pct(rate(canary)),
                    pct(rate(stable)),
                    range(errors.0),
                    canary.requests,
                    stable.requests
                ),
            });
        }
        if latency.verdict == Verdict::Regressed {
            let ms = |micros: f64| format!("{:.1} ms", micros / 1000.0);
            let p99 = |p: Option<guard::Percentiles>| p.map_or(0.0, |p| p.p99);
            let slow = latency.slow_micros.unwrap_or(0.0);
            let everyone = format!(
                "everyone's p99 {} on canary vs {} on stable",
                ms(p99(latency.canary)),
                ms(p99(latency.stable))
            );
            let share = |s: Interval| {
                format!(
                    "{} (range {} to {}, limit 1%)",
                    pct(s.estimate),
                    pct(s.low),
                    pct(s.high)
                )
            };
            parts.push(match (self.slow_left_out, latency.slow_share) {
                (Some(l), _) => format!(
                    "without busy users ({} on canary, {} on stable) {} of canary requests slower than {} (stable's p99 {} {}) over {} requests; {everyone}",
                    l.users.canary,
                    l.users.stable,
                    share(l.share),
                    ms(slow),
                    ms(l.stable_p99.unwrap_or(0.0)),
                    l.reference_looks.map_or("since the comparison began".to_owned(), |s| format!("over its last {s} s")),
                    l.canary.n,
                ),
                (None, Some(s)) => format!(
                    "{} of canary requests slower than {}; {everyone}",
                    share(s),
                    ms(slow)
                ),
                (None, None) => everyone,
            });
        }
        parts.join("; ")
    }
}
