//! The comparison as people and programs read it: serialisable figures per pool, the difference of
//! each metric (canary − stable) with its confidence range, a verdict per metric, the
//! sample-ratio check, the guard's standing, and the series the page draws.

use serde::{Deserialize, Serialize};

use crate::config::{Analysis as Settings, Guard};
use crate::routing::{PerPool, PoolName};

use super::counts::{Converted, Counts};
use super::guard::{self, Few, Thresholds, Verdict};
use super::histogram;
use super::stats::{self, Arm, Interval};
use super::users::REL_ERROR;
use super::window::Window;

/// An estimate with its confidence range (canary − stable, or one rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl From<Interval> for Range {
    fn from(i: Interval) -> Range {
        Range {
            estimate: i.estimate,
            low: i.low,
            high: i.high,
        }
    }
}

/// A verdict as the wire shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictView {
    /// `ok`, `regressed`, `improved`, or `not_enough_data`.
    pub verdict: String,
    /// Requests still needed (per pool, the emptier one), when not enough data.
    pub more: Option<u64>,
    /// For a person: "ok", "not enough data: 120 more requests on the version with fewer", ...
    pub text: String,
}

impl From<Verdict> for VerdictView {
    fn from(v: Verdict) -> VerdictView {
        let (verdict, more, text) = match v {
            // Not "fine": no regression beyond the margin is shown, which a wide range also is.
            Verdict::Ok => ("ok", None, "no regression shown".to_owned()),
            Verdict::Regressed => ("regressed", None, "regressed".to_owned()),
            Verdict::Improved => ("improved", None, "improved".to_owned()),
            Verdict::NotEnoughData { more } => (
                "not_enough_data",
                Some(more),
                format!("not enough data: {more} more requests on the version with fewer"),
            ),
            Verdict::FewUsers { needed, why } => (
                "not_enough_data",
                None,
                few_text(needed, why, Measure::Errors),
            ),
        };
        VerdictView {
            verdict: verdict.to_owned(),
            more,
            text,
        }
    }
}

/// What a verdict is about, for its text.
#[derive(Clone, Copy)]
enum Measure {
    Errors,
    Slow,
}

/// The text of [`Verdict::FewUsers`]: why the regression counted per request is not the
/// guard's call.
fn few_text(needed: u64, why: Few, measure: Measure) -> String {
    let (whose, worse, what) = match measure {
        Measure::Errors => ("each version's", "worse", "errors"),
        // Only the canary's slow share is judged.
        Measure::Slow => ("the canary's", "slower", "slow answers"),
    };
    match why {
        Few::Busy => format!(
            "too few users: without {whose} busy users (far more requests than a user's usual), the canary is not {worse} than the margin; only with them is it"
        ),
        Few::Users => format!(
            "too few users: without {whose} busy users (far more requests than a user's usual) the canary is {worse} than the margin, but its {what} come from fewer than {needed} users, or too few requests remain (the guard acts on what {needed} or more users meet)"
        ),
        Few::Spread => format!(
            "not shown across users yet: counted per request the canary is {worse} than the margin, but its {what} are spread unevenly across users, and with users as the unit the range still reaches the margin (more users will tell)"
        ),
    }
}

/// One pool's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolFigures {
    /// Since the comparison began (the rollout's start, its last resume, or its share's last
    /// change).
    pub requests: u64,
    /// Answers past their user's share of a second, or without a user id: in no figure here but
    /// the users.
    #[serde(default)]
    pub uncounted: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    /// Distinct users (estimate, ±1.6%).
    pub users: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Over the sliding window.
    pub window_requests: u64,
    pub window_error_rate: Option<f64>,
    pub window_users: f64,
    pub window_p99_ms: Option<f64>,
}

/// The error-rate comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorsView {
    /// canary − stable error rate, with its confidence sequence.
    pub difference: Option<Range>,
    /// The same with each version's busy users left out: a regression call rests on it.
    #[serde(default)]
    pub without_heaviest: Option<WithoutHeaviest>,
    #[serde(flatten)]
    pub verdict: VerdictView,
}

/// The error rates with each version's busy users left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WithoutHeaviest {
    /// Users (cells) left out of each version.
    pub users: PerPool<usize>,
    pub requests: PerPool<u64>,
    pub error_rate: PerPool<Option<f64>>,
    /// canary − stable, with its confidence sequence.
    pub difference: Range,
}

/// The latency comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyView {
    /// canary − stable, ms, each with a distribution-free 99% range.
    pub p50_ms: Option<Range>,
    pub p95_ms: Option<Range>,
    pub p99_ms: Option<Range>,
    /// canary p99 / stable p99.
    pub p99_ratio: Option<f64>,
    /// "Slow": `max_p99_ratio` × stable's p99 (without stable's busy users), ms.
    pub slow_ms: Option<f64>,
    /// The share of canary requests slower than that, with its confidence sequence.
    pub slow_share: Option<Range>,
    /// The same without each version's busy users: what the guard's call rests on (a
    /// regression when the canary's slow share is above 1% with confidence).
    pub without_busy: Option<SlowWithoutBusy>,
    #[serde(flatten)]
    pub verdict: VerdictView,
}

/// The latency comparison without each version's busy users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowWithoutBusy {
    /// Users (cells) left out of each version.
    pub users: PerPool<usize>,
    /// Stable's p99 without its busy users, ms: what "slow" is set from...
    pub stable_p99_ms: Option<f64>,
    /// ...over its last this many seconds (about a minute, longer while stable has fewer than
    /// 2,000 answers in it); None: since the comparison began.
    #[serde(default)]
    pub stable_p99_secs: Option<u64>,
    /// Canary requests without its busy users...
    pub requests: u64,
    /// ...counted over the last this many seconds, since stable's p99 moved more than 1.5× and
    /// the slow answers were counted afresh by the new threshold; None: since the comparison
    /// began.
    #[serde(default)]
    pub counted_secs: Option<u64>,
    /// Their share slower than `slow_ms`, with its confidence sequence.
    pub slow_share: Range,
}

/// One goal's comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalView {
    pub name: String,
    pub conversions: PerPool<u64>,
    /// Conversions per request.
    pub per_request: PerPool<Option<f64>>,
    /// Conversions per distinct user.
    pub per_user: PerPool<Option<f64>>,
    /// Distinct users who converted (estimated).
    pub converted: PerPool<u64>,
    /// The share of users who converted: what the verdict compares, since users (not requests)
    /// are what the split draws, and one user's many requests or conversions weigh as one.
    pub converted_share: PerPool<Option<f64>>,
    /// canary − stable share of users who converted, with its confidence sequence.
    pub difference: Option<Range>,
    /// canary − stable conversions per user.
    pub per_user_difference: Option<f64>,
    #[serde(flatten)]
    pub verdict: VerdictView,
}

/// Is the share of users on canary what the percent says?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRatioView {
    pub expected: f64,
    pub observed: f64,
    pub users: PerPool<f64>,
    pub p_value: f64,
    /// The split or the measurement is broken.
    pub mismatch: bool,
}

/// Where the guard stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardView {
    pub enabled: bool,
    /// `halt` or `rollback`.
    pub action: Option<String>,
    /// The margins the verdicts use, the guard's or (without one) the defaults.
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    /// A slow answer is also this much slower than stable's p99.
    #[serde(default)]
    pub min_p99_increase_ms: f64,
    pub min_requests: u64,
    /// Distinct canary users a regression must show for.
    #[serde(default)]
    pub min_users: u64,
    pub require_data: bool,
    /// What the guard did in this comparison, with the figures.
    pub acted: Option<String>,
    /// Why a schedule may not advance now, if it may not.
    pub holding_schedule: Option<String>,
}

/// The window's slots, for the charts (one entry per slot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub slot_secs: i64,
    /// Slot starts, seconds since the Unix epoch.
    pub t: Vec<i64>,
    pub requests: PerPool<Vec<u64>>,
    pub error_rate: PerPool<Vec<Option<f64>>>,
    pub p99_ms: PerPool<Vec<Option<f64>>>,
    pub users: PerPool<Vec<f64>>,
    /// The guard's canary − stable error difference as each slot closed.
    pub error_difference: Vec<Option<Range>>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisView {
    /// The rollout these counts belong to.
    #[serde(default)]
    pub rollout: String,
    /// When this was computed (RFC 3339).
    pub at: String,
    /// When the comparison's counts began (the rollout's start, its last resume, or its share's
    /// last change).
    pub since: String,
    pub window_secs: u64,
    pub pools: PerPool<PoolFigures>,
    pub errors: ErrorsView,
    pub latency: LatencyView,
    pub goals: Vec<GoalView>,
    /// Only while running at a share strictly between 0 and 100%.
    pub sample_ratio: Option<SampleRatioView>,
    pub guard: GuardView,
    /// Present on the page's JSON; left out of `ramp ctl status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
}

fn ms(micros: f64) -> f64 {
    (micros / 10.0).round() / 100.0
}

fn rate(hits: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| hits as f64 / n as f64)
}

/// The thresholds the verdicts use: the guard's when it is configured, the defaults otherwise
/// (verdicts are shown either way; only a configured guard acts on them).
pub fn thresholds(guard: Option<&Guard>) -> Thresholds {
    let mut t = Thresholds::default();
    if let Some(g) = guard {
        t.max_error_rate_increase = g.max_error_rate_increase;
        t.max_p99_ratio = g.max_p99_ratio;
        t.min_p99_increase_micros = g.min_p99_increase.as_secs_f64() * 1e6;
        t.min_requests = g.min_requests;
        t.min_users = g.min_users;
    }
    t
}

fn figures(since: &Counts, window: &Counts) -> PoolFigures {
    let p = guard::Percentiles::of(&since.latency);
    PoolFigures {
        requests: since.requests,
        uncounted: since.uncounted,
        errors: since.errors,
        error_rate: rate(since.errors, since.requests),
        // An estimate: never more users than requests.
        users: since.users.estimate().round().min(since.requests as f64),
        p50_ms: p.map(|p| ms(p.p50)),
        p95_ms: p.map(|p| ms(p.p95)),
        p99_ms: p.map(|p| ms(p.p99)),
        window_requests: window.requests,
        window_error_rate: rate(window.errors, window.requests),
        window_users: window.users.estimate().round().min(window.requests as f64),
        window_p99_ms: histogram::quantile(&window.latency, 0.99).map(ms),
    }
}

/// canary − stable of the q-quantile, ms, from each pool's distribution-free 99% range.
fn quantile_difference(since: &PerPool<Counts>, q: f64) -> Option<Range> {
    let c = histogram::quantile(&since.canary.latency, q)?;
    let s = histogram::quantile(&since.stable.latency, q)?;
    let (cl, ch) = histogram::quantile_interval(&since.canary.latency, q, guard::PERCENTILE_Z)?;
    let (sl, sh) = histogram::quantile_interval(&since.stable.latency, q, guard::PERCENTILE_Z)?;
    Some(Range {
        estimate: ms(c - s),
        low: ms(cl - sh),
        high: ms(ch - sl),
    })
}

fn goal(
    name: &str,
    i: usize,
    since: &PerPool<Counts>,
    converted: &PerPool<Converted>,
    t: &Thresholds,
) -> GoalView {
    let users = PerPool::from_fn(|p| since[p].users.estimate().round() as u64);
    // A user who converted made a request: never more converted than users.
    let converted = PerPool::from_fn(|p| (converted[p][i].estimate().round() as u64).min(users[p]));
    let arm = |p: PoolName| Arm {
        n: users[p],
        hits: converted[p],
    };
    let (canary, stable) = (arm(PoolName::Canary), arm(PoolName::Stable));
    let per_user =
        PerPool::from_fn(|p| (users[p] >= 1).then(|| since[p].goals[i] as f64 / users[p] as f64));
    let difference = (canary.n > 0 && stable.n > 0)
        .then(|| stats::diff_sequence_estimated(canary, stable, t.alpha, t.error_tau, REL_ERROR));
    let requests = since.canary.requests.min(since.stable.requests);
    // A goal is better when higher: its "regressed" is a confident drop below stable.
    let verdict = match (requests >= t.min_requests, difference) {
        (false, _) | (_, None) => Verdict::NotEnoughData {
            more: t
                .min_requests
                .saturating_sub(since.canary.requests)
                .max(t.min_requests.saturating_sub(since.stable.requests)),
        },
        (true, Some(d)) if d.high < 0.0 => Verdict::Regressed,
        (true, Some(d)) if d.low > 0.0 => Verdict::Improved,
        (true, Some(_)) => Verdict::Ok,
    };
    GoalView {
        name: name.to_owned(),
        conversions: PerPool::from_fn(|p| since[p].goals[i]),
        per_request: PerPool::from_fn(|p| rate(since[p].goals[i], since[p].requests)),
        per_user,
        converted,
        converted_share: PerPool::from_fn(|p| rate(converted[p], users[p])),
        difference: difference.map(Range::from),
        per_user_difference: per_user.canary.zip(per_user.stable).map(|(c, s)| c - s),
        verdict: verdict.into(),
    }
}

/// What `compute` needs besides the counts.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub guard: Option<&'a Guard>,
    /// The users who converted, per goal, over the same span as `since`.
    pub converted: &'a PerPool<Converted>,
    /// Canary share asked for, when running at a share strictly between 0 and 100%.
    pub expected_share: Option<f64>,
    pub rollout: String,
    pub at: String,
    pub since: String,
    pub acted: Option<String>,
}

/// The comparison over `since`, with the `verdicts` the guard acted on at this look.
pub fn compute(
    since: &PerPool<Counts>,
    verdicts: &Verdicts,
    step: &PerPool<Counts>,
    window: &Window,
    inputs: Inputs<'_>,
) -> AnalysisView {
    let t = thresholds(inputs.guard);
    let Verdicts {
        errors: (diff, error_verdict),
        latency,
        errors_left_out,
        slow_left_out,
    } = *verdicts;
    let in_window = window.total();
    let pools = PerPool::from_fn(|p| figures(&since[p], &in_window[p]));
    let sample_ratio = inputs.expected_share.and_then(|expected| {
        let users = PerPool::from_fn(|p| step[p].users.estimate());
        let check = stats::sample_ratio(users.canary, users.stable, expected, REL_ERROR);
        (users.canary + users.stable >= stats::SAMPLE_RATIO_MIN_USERS).then_some(SampleRatioView {
            expected,
            observed: check.observed_share,
            users: PerPool::from_fn(|p| users[p].round()),
            p_value: check.p_value,
            mismatch: check.mismatch,
        })
    });
    let g = inputs.guard;
    AnalysisView {
        rollout: inputs.rollout,
        at: inputs.at,
        since: inputs.since,
        window_secs: inputs.settings.window.as_secs(),
        pools,
        errors: ErrorsView {
            difference: (since.canary.requests > 0 && since.stable.requests > 0)
                .then(|| diff.into()),
            without_heaviest: errors_left_out.map(|l| WithoutHeaviest {
                users: l.users,
                requests: PerPool::from_fn(|p| l.pools[p].n),
                error_rate: PerPool::from_fn(|p| rate(l.pools[p].hits, l.pools[p].n)),
                difference: l.difference.into(),
            }),
            verdict: error_verdict.into(),
        },
        latency: LatencyView {
            p50_ms: quantile_difference(since, 0.50),
            p95_ms: quantile_difference(since, 0.95),
            p99_ms: quantile_difference(since, 0.99),
            p99_ratio: latency.p99_ratio,
            slow_ms: latency.slow_micros.filter(|m| m.is_finite()).map(ms),
            slow_share: latency.slow_share.map(Range::from),
            without_busy: slow_left_out.map(|l| SlowWithoutBusy {
                users: l.users,
                stable_p99_ms: l.stable_p99.map(ms),
                stable_p99_secs: l.reference_looks,
                requests: l.canary.n,
                counted_secs: l.counted_looks,
                slow_share: l.share.into(),
            }),
            verdict: match latency.verdict {
                Verdict::FewUsers { needed, why } => VerdictView {
                    verdict: "not_enough_data".to_owned(),
                    more: None,
                    text: few_text(needed, why, Measure::Slow),
                },
                v => v.into(),
            },
        },
        goals: inputs
            .settings
            .goals
            .iter()
            .enumerate()
            .map(|(i, gl)| goal(&gl.name, i, since, inputs.converted, &t))
            .collect(),
        sample_ratio,
        guard: GuardView {
            enabled: g.is_some(),
            action: g.map(|g| match g.action {
                crate::config::GuardAction::Halt => "halt".to_owned(),
                crate::config::GuardAction::Rollback => "rollback".to_owned(),
            }),
            max_error_rate_increase: Some(t.max_error_rate_increase),
            max_p99_ratio: Some(t.max_p99_ratio),
            min_p99_increase_ms: t.min_p99_increase_micros / 1_000.0,
            min_requests: t.min_requests,
            min_users: t.min_users,
            require_data: g.is_some_and(|g| g.require_data),
            acted: inputs.acted,
            holding_schedule: None,
        },
        series: Some(series(window)),
    }
}

fn series(window: &Window) -> Series {
    let mut s = Series {
        slot_secs: window.slot_secs(),
        ..Series::default()
    };
    for slot in window.slots() {
        s.t.push(slot.start);
        let figures = slot.figures();
        for pool in PoolName::BOTH {
            let c = &slot.counts[pool];
            s.requests[pool].push(c.requests);
            s.error_rate[pool].push(rate(c.errors, c.requests));
            s.p99_ms[pool].push(figures[pool].p99_micros.map(ms));
            s.users[pool].push(figures[pool].users);
        }
        s.error_difference.push(slot.diff.map(Range::from));
    }
    s
}

mod verdicts;

pub use verdicts::{LeftOut, Verdicts, follow_threshold, verdicts, verdicts_over};

#[cfg(test)]
mod tests;
