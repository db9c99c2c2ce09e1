//! The reply as `ramp ctl` shows it to a person: a small table for status, one line otherwise.

use std::time::Duration;

use crate::routing::State;

use crate::analysis::AnalysisView;
use crate::analysis::view::Range;

use crate::control::reply::{BucketInfo, Decoded, ScheduleStatus, Status};
use crate::control::state::FileEffect;

/// A percent as people write it: 5, 2.5, 0.01.
fn pct(p: f64) -> String {
    format!("{}%", (p * 10_000.0).round() / 10_000.0)
}

fn duration(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0) as u64)).to_string()
}

fn schedule(s: &ScheduleStatus) -> String {
    let at = s.percent.map_or_else(|| "-".to_owned(), pct);
    let mut out = format!("step {} of {} at {at}", s.step, s.steps);
    match (s.next_percent, s.next_in_secs) {
        (None, _) => out.push_str(", last step"),
        (Some(next), Some(secs)) if s.paused => out.push_str(&format!(
            ", next {} {} after resume",
            pct(next),
            duration(secs)
        )),
        (Some(next), Some(secs)) => {
            out.push_str(&format!(", next {} in {}", pct(next), duration(secs)))
        }
        (Some(next), None) => out.push_str(&format!(", next {}", pct(next))),
    }
    if let Some(why) = &s.held {
        out.push_str(&format!("; held: {why}"));
    }
    out
}

fn bucket(b: &BucketInfo) -> String {
    let rollout = match b.state {
        State::RolledBack => format!(
            "rollout {} rolled back from {}: everyone on stable",
            b.rollout,
            pct(b.percent)
        ),
        State::Completed => format!("rollout {} completed: everyone on canary", b.rollout),
        State::Running | State::Halted => format!(
            "rollout {} at {}, {}",
            b.rollout,
            pct(b.percent),
            b.state.as_str()
        ),
    };
    format!(
        "{}: bucket {}, pool {} ({rollout})",
        b.user,
        b.bucket,
        b.pool.as_str()
    )
}

/// The share users get now, and the plan's when that differs.
fn percent(s: &Status) -> String {
    match s.state {
        State::RolledBack => "0% now (rolled back)".to_owned(),
        State::Completed => "100% now (completed)".to_owned(),
        State::Running | State::Halted => pct(s.effective_percent),
    }
}

/// How many of the last changes the status table lists (the JSON has them all).
const CHANGES_SHOWN: usize = 3;

fn status(s: &Status, changed: Option<bool>) -> String {
    let mut rows = vec![
        ("rollout", s.rollout.clone()),
        ("state", s.state.as_str().to_owned()),
        ("percent", percent(s)),
        ("schedule", s.schedule.as_ref().map_or("-".into(), schedule)),
        (
            "changed",
            format!(
                "{} by {}",
                s.changed_at.as_deref().unwrap_or("-"),
                s.changed_by
            ),
        ),
        (
            "reload",
            match &s.last_reload_error {
                None => "ok".into(),
                // Each problem on a line of its own, under the first; the config in force stays.
                Some(e) => format!(
                    "error (the running config stays): {}",
                    e.replace('\n', "\n            ")
                ),
            },
        ),
    ];
    if let Some(st) = &s.stopped {
        let what = match s.state {
            State::RolledBack => "rolled back",
            _ => "halted",
        };
        rows.insert(
            5,
            (
                "stopped",
                format!("{what} {} by {}", st.at.as_deref().unwrap_or("-"), st.by),
            ),
        );
    }
    if let Some(f) = &s.state_file {
        let note = match &s.state_file_error {
            None => String::new(),
            Some(e) => format!(" (error: {e})"),
        };
        rows.push(("state file", format!("{f}{note}")));
    }
    if let Some(f) = &s.fleet {
        let mut v = format!("{} as {}: ", f.key, f.instance);
        if f.connected {
            v.push_str(&format!("etcd connected (revision {})", f.revision));
        } else {
            v.push_str("etcd unreachable: changes other than halt and rollback are refused");
        }
        if let Some(e) = &f.error {
            v.push_str(&format!(" (error: {e})"));
        }
        if let Some(p) = &f.pending {
            v.push_str(&format!(
                "; the {p} made here is still to be written to etcd"
            ));
        }
        rows.push(("fleet", v));
    }
    if let Some(up) = &s.upstreams_available {
        let pool = |name: &str, of: usize, up: usize| match (of, up) {
            (of, up) if of == up => format!("{name} {of}"),
            (of, up) => format!("{name} {up} of {of} available"),
        };
        let mut v = format!(
            "{}, {}",
            pool("stable", s.upstreams.stable, up.stable),
            pool("canary", s.upstreams.canary, up.canary)
        );
        if up.stable == 0 && s.upstreams.stable > 0 {
            v.push_str(" (stable down: each request still tries one of its upstreams)");
        }
        if up.canary == 0 && s.upstreams.canary > 0 {
            v.push_str(" (canary down: its users are on stable, or get 503 with canary_unavailable: error)");
        }
        rows.push(("upstreams", v));
    }
    if s.file_plan_pending {
        rows.push((
            "file plan",
            format!(
                "changed while {}; resume applies it",
                s.state.as_str().replace('_', " ")
            ),
        ));
    }
    if let Some(r) = &s.on_resume {
        let mut v = match r.state {
            State::Completed => "completes the rollout again: 100%".to_owned(),
            _ if r.rollout != s.rollout => {
                format!("starts rollout {} at {}", r.rollout, pct(r.percent))
            }
            _ => format!("goes to {}", pct(r.percent)),
        };
        if let (Some(step), Some(steps)) = (r.step, r.steps) {
            v.push_str(&format!(", step {step} of {steps}"));
        }
        rows.push(("resume", v));
    }
    if !s.restart_required.is_empty() {
        rows.push((
            "restart",
            format!("needed for: {}", s.restart_required.join(", ")),
        ));
    }
    // The last few changes: a file edit made after a halt or rollback is the last change, and
    // would otherwise hide who halted.
    for (i, c) in s.changes.iter().take(CHANGES_SHOWN).enumerate() {
        let rollout = match &c.from_rollout {
            Some(from) => format!(" (rollout {from} → {})", c.rollout),
            None => String::new(),
        };
        rows.push((
            if i == 0 { "changes" } else { "" },
            format!(
                "{} {} by {}: {} {} → {} {}{rollout}",
                c.at.as_deref().unwrap_or("-"),
                c.command,
                c.by,
                c.from_state.as_str(),
                pct(c.from_percent),
                c.to_state.as_str(),
                pct(c.to_percent)
            ),
        ));
    }
    if changed == Some(false) {
        rows.push(("note", "nothing changed".into()));
    }
    let mut out: String = rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect();
    if let Some(a) = &s.analysis {
        out.push('\n');
        let schedule_runs = s
            .schedule
            .as_ref()
            .is_some_and(|sc| !sc.paused && sc.next_percent.is_some());
        out.push_str(&analysis(a, schedule_runs));
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn points(r: &Range) -> String {
    format!(
        "{:+.2} pts ({:+.2} to {:+.2})",
        r.estimate * 100.0,
        r.low * 100.0,
        r.high * 100.0
    )
}

fn millis(r: &Range) -> String {
    format!("{:+.1} ms ({:+.1} to {:+.1})", r.estimate, r.low, r.high)
}

/// Canary and stable side by side, as `ramp ctl status` prints them; `schedule_runs`: a
/// schedule with a next step is in force and its clock runs, so what would hold that step
/// holds it now.
fn analysis(a: &AnalysisView, schedule_runs: bool) -> String {
    let (s, c) = (&a.pools.stable, &a.pools.canary);
    let rate = |x: f64| format!("{:.2}%", x * 100.0);
    let ms = |x: f64| format!("{x:.1} ms");
    let mut rows: Vec<[String; 5]> = vec![[
        "requests".into(),
        s.requests.to_string(),
        c.requests.to_string(),
        String::new(),
        String::new(),
    ]];
    if s.uncounted + c.uncounted > 0 {
        // Answers past their user's share of a second, or without a user id.
        rows.push([
            "not counted".into(),
            s.uncounted.to_string(),
            c.uncounted.to_string(),
            String::new(),
            "past a user's share of a second, or without an id".into(),
        ]);
    }
    rows.extend([
        [
            "users".into(),
            format!("{}", s.users),
            format!("{}", c.users),
            String::new(),
            String::new(),
        ],
        [
            "error rate".into(),
            opt(s.error_rate, rate),
            opt(c.error_rate, rate),
            a.errors.difference.as_ref().map_or("-".into(), points),
            a.errors.verdict.text.clone(),
        ],
    ]);
    if let Some(w) = &a.errors.without_heaviest {
        // What the verdict rests on: how near the guard is to acting.
        rows.push([
            "without busy".into(),
            opt(w.error_rate.stable, rate),
            opt(w.error_rate.canary, rate),
            points(&w.difference),
            format!(
                "the verdict rests on this row: busy users left out, {} on stable and {} on canary",
                w.users.stable, w.users.canary
            ),
        ]);
    }
    for (name, sv, cv, d) in [
        ("p50", s.p50_ms, c.p50_ms, &a.latency.p50_ms),
        ("p95", s.p95_ms, c.p95_ms, &a.latency.p95_ms),
        ("p99", s.p99_ms, c.p99_ms, &a.latency.p99_ms),
    ] {
        let verdict = match name {
            "p99" => a.latency.verdict.text.clone(),
            _ => String::new(),
        };
        rows.push([
            name.into(),
            opt(sv, ms),
            opt(cv, ms),
            d.as_ref().map_or("-".into(), millis),
            verdict,
        ]);
    }
    if let (Some(w), Some(slow)) = (&a.latency.without_busy, a.latency.slow_ms) {
        // The latency verdict rests on this: the canary's share of slow answers.
        let r = &w.slow_share;
        rows.push([
            "slow".into(),
            format!("> {slow:.1} ms"),
            rate(r.estimate),
            format!("range {} to {}", rate(r.low), rate(r.high)),
            format!(
                "the verdict rests on this row: the canary's share of answers slower than that (set from stable's p99 {}, {}), limit 1%; busy users left out, {} on stable and {} on canary{}",
                w.stable_p99_secs.map_or("since the comparison began".to_owned(), |s| format!("over its last {s} s")),
                opt(w.stable_p99_ms, ms),
                w.users.stable,
                w.users.canary,
                w.counted_secs.map_or(String::new(), |s| format!(
                    "; the canary's {} answers of the last {s} s, counted afresh when stable's p99 moved more than 1.5x",
                    w.requests
                )),
            ),
        ]);
    }
    for g in &a.goals {
        rows.push([
            g.name.clone(),
            opt(g.converted_share.stable, rate),
            opt(g.converted_share.canary, rate),
            g.difference.as_ref().map_or("-".into(), points),
            g.verdict.text.clone(),
        ]);
    }
    let mut out = format!(
        "compared since {} (the rollout's start, its last resume or change of percent, or ramp's own start)\n{:<11} {:>10} {:>10}  {:<32} {}\n",
        a.since, "", "stable", "canary", "canary - stable", "verdict"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<11} {:>10} {:>10}  {:<32} {}\n",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    if let Some(sr) = &a.sample_ratio {
        out.push_str(&format!(
            "{:<11} {} (canary has {:.2}% of users, {:.2}% expected, p = {:.4})\n",
            "split",
            if sr.mismatch {
                "SAMPLE RATIO MISMATCH: the split or the measurement is broken"
            } else {
                "ok"
            },
            sr.observed * 100.0,
            sr.expected * 100.0,
            sr.p_value
        ));
    }
    let g = &a.guard;
    let increase = if g.min_p99_increase_ms > 0.0 {
        format!(" and {} ms more", g.min_p99_increase_ms)
    } else {
        String::new()
    };
    let margins = format!(
        "the error rate is {:.2} points over stable's, or more than 1% of canary answers slower than {}x stable's p99{increase}; {} requests a side and a regression shown for {} canary users first",
        g.max_error_rate_increase.unwrap_or(0.0) * 100.0,
        g.max_p99_ratio.unwrap_or(0.0),
        g.min_requests,
        g.min_users,
    );
    let (label, mut line) = if g.enabled {
        (
            "guard",
            format!("{} when {margins}", g.action.as_deref().unwrap_or("-")),
        )
    } else {
        ("margins", format!("no guard acts; verdicts call {margins}"))
    };
    if g.require_data {
        line.push_str("; a schedule step waits for that much data");
    }
    if let Some(acted) = &g.acted {
        line.push_str(&format!("; {acted}"));
    }
    if let Some(why) = &g.holding_schedule {
        line.push_str(&if schedule_runs {
            format!("; holds the schedule: {why}")
        } else {
            format!("; a schedule would wait: {why}")
        });
    }
    out.push_str(&format!("{label:<11} {line}\n"));
    out
}

/// The reply as a person reads it: a small table for status, one line otherwise.
pub fn human(reply: &Decoded) -> String {
    match reply {
        Decoded::Error(e) => format!("error: {e}"),
        Decoded::InEffect(e) => format!("not saved: {e}"),
        Decoded::Bucket(b) => bucket(b),
        Decoded::Status {
            status: s,
            changed,
            reload,
            applied,
        } => match reload {
            Some(effect) => format!(
                "reload      {}; {}\n{}",
                reload_effect(*effect),
                match applied.as_deref() {
                    // The file's changes may all wait for a restart: said first, not only in
                    // the `restart` row below.
                    Some([]) | None if !s.restart_required.is_empty() => format!(
                        "no setting changed live; a restart is needed for: {}",
                        s.restart_required.join(", ")
                    ),
                    Some([]) | None => "no setting changed".to_owned(),
                    Some(names) => format!("changed: {}", names.join(", ")),
                },
                status(s, *changed)
            ),
            None => status(s, *changed),
        },
    }
}

/// What a reloaded file did to the rollout, in words.
fn reload_effect(effect: FileEffect) -> &'static str {
    match effect {
        FileEffect::Unchanged => "the rollout as it was",
        FileEffect::NewRollout => "a new rollout began (the file's new id)",
        FileEffect::Applied => "the file's percent or steps apply",
        FileEffect::Pending => "the file's percent or steps wait for `resume`",
        FileEffect::Ignored => {
            "the rollout is completed: the file's new plan is not applied (a `start` begins it)"
        }
    }
}
