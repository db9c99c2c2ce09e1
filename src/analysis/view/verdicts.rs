//! The error and latency verdicts, with each version's heaviest users left out of a regression,
//! and the reason the guard gives when it acts on one.

use crate::routing::PerPool;

use crate::analysis::clusters::{Kind, Spread};
use crate::analysis::counts::Counts;
use crate::analysis::guard::{self, LatencyCheck, Thresholds, Verdict};
use crate::analysis::histogram;
use crate::analysis::stats::{Arm, Interval};

/// The error and latency verdicts over `since`.
pub struct Verdicts {
    /// canary − stable error rate, and its verdict.
    pub errors: (Interval, Verdict),
    pub latency: LatencyCheck,
    /// Each version's errors with its heaviest users left out (`min_users` > 1, both pools with
    /// requests).
    pub errors_left_out: Option<LeftOut>,
    /// The canary's slow share with its heaviest users (by slow answers) left out, when the
    /// latency check has a threshold and `min_users` > 1.
    pub slow_left_out: Option<SlowLeftOut>,
}

/// The canary's slow share with its heaviest users left out.
#[derive(Debug, Clone, Copy)]
pub struct SlowLeftOut {
    /// How many users were left out (at most).
    pub users: usize,
    /// The canary's requests and slow answers without them.
    pub canary: Arm,
    /// Their share's confidence sequence.
    pub share: Interval,
}

/// Each version's errors with its heaviest users left out.
#[derive(Debug, Clone, Copy)]
pub struct LeftOut {
    /// How many users of each version were left out (at most).
    pub users: usize,
    /// Each version's requests and errors without them.
    pub pools: PerPool<Arm>,
    /// canary − stable error rate, without them.
    pub difference: Interval,
}

/// The variance of canary − stable with users as the unit (see [`Spread`]); 0 without cells
/// (counts summed otherwise: the variance per request then stands alone).
fn clustered(spread: &PerPool<Option<Spread>>) -> f64 {
    match (spread.canary, spread.stable) {
        (Some(c), Some(s)) => c.variance + s.variance,
        _ => 0.0,
    }
}

pub fn verdicts(since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
    let arm = |c: &Counts| Arm {
        n: c.requests,
        hits: c.errors,
    };
    // A regression counts only when it shows for enough distinct users: it must be one with
    // the `min_users` − 1 heaviest users (by errors) of each version left out. So one user who
    // fails on both versions (a bot, one user's bad input) cannot make one, however many other
    // users meet an error or two. Left out whole, with their requests: a bot's successful
    // requests left in would dilute the rate and hide a regression of everyone else. And of
    // both versions alike: a bot failing on stable would otherwise hide a worse canary.
    //
    // Heavy users who are not left out (a busy client that rarely fails, more busy users than
    // are left out, split unevenly) still move a rate counted per request; the variance with
    // users as the unit widens the range by as much, so they cannot make a regression or hide
    // one with confidence either.
    let k = usize::try_from(t.min_users.saturating_sub(1)).unwrap_or(usize::MAX);
    let few = Verdict::FewUsers {
        needed: t.min_users,
    };
    let (canary, stable) = (&since.canary, &since.stable);
    let whole = PerPool::from_fn(|p| since[p].clusters.as_ref().map(|c| c.whole(Kind::Errors)));
    let mut errors = guard::errors(arm(canary), arm(stable), clustered(&whole), t);
    // Worked out at every look, so that status shows how near the guard is to acting.
    let errors_left_out = (k > 0 && canary.requests > 0 && stable.requests > 0)
        .then(|| {
            let spread = PerPool::from_fn(|p| {
                since[p]
                    .clusters
                    .as_ref()
                    .map(|c| c.without_heaviest(Kind::Errors, k))
            });
            let pools = PerPool::from_fn(|p| spread[p].map(|s| s.arm));
            let pools = PerPool {
                canary: pools.canary?,
                stable: pools.stable?,
            };
            let (difference, verdict) =
                guard::errors(pools.canary, pools.stable, clustered(&spread), t);
            Some((
                LeftOut {
                    users: k,
                    pools,
                    difference,
                },
                verdict,
            ))
        })
        .flatten();
    let without = errors_left_out.map(|(_, v)| v);
    // What counting requests, not users, would call: said when a few users make it so.
    let per_request = guard::errors(arm(canary), arm(stable), 0.0, t).1;
    match (errors.1, without) {
        (Verdict::NotEnoughData { .. }, _) | (_, None) => {}
        // Also when the whole comparison shows none: busy users failing on both versions,
        // more of them on stable, hid a regression of everyone else.
        (_, Some(Verdict::Regressed)) => errors.1 = Verdict::Regressed,
        (Verdict::Regressed, Some(_)) => errors.1 = few,
        // Nor is the canary better on the strength of a few users (a bot failing on stable).
        (Verdict::Improved, Some(v)) if v != Verdict::Improved => errors.1 = Verdict::Ok,
        (_, Some(_)) if per_request == Verdict::Regressed => errors.1 = few,
        _ => {}
    }
    let errors_left_out = errors_left_out.map(|(l, _)| l);
    let (latency, slow_left_out) = latency(since, k, t);
    Verdicts {
        errors,
        latency,
        errors_left_out,
        slow_left_out,
    }
}

/// The latency check over `since`, with the canary's slow share judged with users as the unit
/// of its variance and, with `k` > 0, its `k` heaviest users (by slow answers) left out: the
/// call rests on that, as the errors' does.
fn latency(
    since: &PerPool<Counts>,
    k: usize,
    t: &Thresholds,
) -> (LatencyCheck, Option<SlowLeftOut>) {
    let canary = &since.canary;
    let mut latency = guard::latency(&canary.latency, &since.stable.latency, t);
    let per_request = latency.verdict;
    let (Some(micros), Some(cells)) = (latency.slow_micros, canary.clusters.as_deref()) else {
        return (latency, None);
    };
    if matches!(per_request, Verdict::NotEnoughData { .. }) {
        return (latency, None);
    }
    let whole = Arm {
        n: histogram::total(&canary.latency),
        hits: histogram::count_above(&canary.latency, micros),
    };
    let all = cells.whole(Kind::Slow);
    let share = guard::slow_sequence(whole, all.variance, t);
    latency.slow_share = Some(share);
    let mut left_out = None;
    let decided = if k > 0 {
        // The cells count slow answers by the threshold in force when they came; the
        // histogram, by today's: what the heaviest had is taken from the histogram's figures.
        let kept = cells.without_heaviest(Kind::Slow, k);
        let canary = Arm {
            n: whole.n.saturating_sub(all.arm.n.saturating_sub(kept.arm.n)),
            hits: whole
                .hits
                .saturating_sub(all.arm.hits.saturating_sub(kept.arm.hits)),
        };
        let share = guard::slow_sequence(canary, kept.variance, t);
        left_out = Some(SlowLeftOut {
            users: k,
            canary,
            share,
        });
        share
    } else {
        share
    };
    // As for errors, what remains must still have `min_requests`.
    let enough = left_out.is_none_or(|l| l.canary.n >= t.min_requests);
    latency.verdict = if enough && decided.low > guard::SLOW_SHARE_LIMIT {
        Verdict::Regressed
    } else if per_request == Verdict::Regressed && k > 0 {
        Verdict::FewUsers {
            needed: t.min_users,
        }
    } else if per_request == Verdict::Improved {
        Verdict::Improved
    } else {
        Verdict::Ok
    };
    (latency, left_out)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

impl Verdicts {
    /// The figures that made the guard act, as the log, status and page show them.
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
                // The figures the call rested on: without each version's heaviest users.
                Some(l) if l.users > 0 => format!(
                    "error rate {} on canary vs {} on stable over {} and {} requests; without each version's {} heaviest user{} {} vs {} ({}) over {} and {} requests",
                    pct(rate(canary)),
                    pct(rate(stable)),
                    canary.requests,
                    stable.requests,
                    l.users,
                    if l.users == 1 { "" } else { "s" },
                    pct(l.pools.canary.rate()),
                    pct(l.pools.stable.rate()),
                    range(l.difference),
                    l.pools.canary.n,
                    l.pools.stable.n
                ),
                _ => format!(
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
            let p99 = |p: Option<guard::Percentiles>| p.map_or(0.0, |p| p.p99 / 1000.0);
            let share = latency.slow_share.unwrap_or(Interval {
                estimate: 0.0,
                low: 0.0,
                high: 0.0,
            });
            parts.push(format!(
            "p99 {:.1} ms on canary vs {:.1} ms on stable; {} of canary requests slower than {:.1} ms (range {} to {}, limit 1%)",
            p99(latency.canary),
            p99(latency.stable),
            pct(share.estimate),
            latency.slow_micros.unwrap_or(0.0) / 1000.0,
            pct(share.low),
            pct(share.high)
        ));
            if let Some(l) = self.slow_left_out {
                parts.push(format!(
                    "without its {} users with the most slow answers {} (range {} to {}) over {} requests",
                    l.users,
                    pct(l.share.estimate),
                    pct(l.share.low),
                    pct(l.share.high),
                    l.canary.n
                ));
            }
        }
        parts.join("; ")
    }
}
