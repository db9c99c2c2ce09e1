//! The error and latency verdicts, with the canary's heaviest users left out of a regression,
//! and the reason the guard gives when it acts on one.

use crate::routing::PerPool;

use crate::analysis::counts::{Counts, Heaviest};
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

/// `whole` with `heavy` left out: their errors (or slow answers), and their requests.
fn leave_out(whole: Arm, heavy: Heaviest) -> Arm {
    Arm {
        n: whole.n.saturating_sub(heavy.requests),
        hits: whole.hits.saturating_sub(heavy.count),
    }
}

pub fn verdicts(since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
    let arm = |c: &Counts| Arm {
        n: c.requests,
        hits: c.errors,
    };
    // A regression counts only when it shows for enough distinct users: it must still be one
    // with the `min_users` − 1 heaviest users (by errors) of each version left out. So one user
    // who fails on both versions (a bot, one user's bad input) cannot make one, however many
    // other users meet an error or two. Left out whole, with their requests: a bot's successful
    // requests left in would dilute the rate and hide a regression of everyone else. And of
    // both versions alike: heavy users whose rate is not everyone else's (a busy client that
    // rarely fails, a batch job that often does, on either version) would otherwise be in one
    // side's figures and not in the other's, and tip the comparison either way.
    let k = usize::try_from(t.min_users.saturating_sub(1)).unwrap_or(usize::MAX);
    let few = Verdict::FewUsers {
        needed: t.min_users,
    };
    let (canary, stable) = (&since.canary, &since.stable);
    let mut errors = guard::errors(arm(canary), arm(stable), t);
    // Worked out at every look, so that status shows how near the guard is to acting.
    let errors_left_out = (k > 0 && canary.requests > 0 && stable.requests > 0).then(|| {
        let trimmed =
            PerPool::from_fn(|p| leave_out(arm(&since[p]), since[p].error_users.heaviest(k)));
        let (difference, verdict) = guard::errors(trimmed.canary, trimmed.stable, t);
        (
            LeftOut {
                users: k,
                pools: trimmed,
                difference,
            },
            verdict,
        )
    });
    let without = errors_left_out.map(|(_, v)| v);
    match errors.1 {
        Verdict::Regressed if without.is_some_and(|v| v != Verdict::Regressed) => {
            errors.1 = few;
        }
        // Nor is the canary better on the strength of a few users (a bot failing on stable).
        Verdict::Improved if without.is_some_and(|v| v != Verdict::Improved) => {
            errors.1 = Verdict::Ok;
        }
        _ => {}
    }
    let errors_left_out = errors_left_out.map(|(l, _)| l);
    let mut latency = guard::latency(&canary.latency, &since.stable.latency, t);
    if latency.verdict == Verdict::Regressed
        && let Some(micros) = latency.slow_micros
    {
        let whole = Arm {
            n: histogram::total(&canary.latency),
            hits: histogram::count_above(&canary.latency, micros),
        };
        let trimmed = leave_out(whole, canary.slow_users.heaviest(k));
        if guard::slow_sequence(trimmed, t).low <= guard::SLOW_SHARE_LIMIT {
            latency.verdict = few;
        }
    }
    Verdicts {
        errors,
        latency,
        errors_left_out,
    }
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
        }
        parts.join("; ")
    }
}
