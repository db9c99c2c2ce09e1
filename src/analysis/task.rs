//! The analysis task: once a second it drains what the request path recorded, keeps the counts
//! (since the comparison began, at the current step, over the window, since start-up), computes
//! the comparison, publishes it, tells the schedule whether it may advance, and — when the guard
//! is configured and a metric regressed with confidence — asks for the guard's action.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

use crate::config::{Config, GuardAction};
use crate::routing::{PerPool, Rollout, State};
use crate::snapshot::Current;

use super::counts::{Converted, Counts, Recorder};
use super::guard::Verdict;
use super::reference::Reference;
use super::view::{self, AnalysisView, Inputs};
use super::window::Window;

/// What the analysis shares with the rest of ramp.
#[derive(Debug, Default)]
pub struct Analysis {
    /// The request path's side.
    pub recorder: Recorder,
    view: ArcSwapOption<AnalysisView>,
    /// Why a schedule may not advance now; `None` when it may.
    hold: Mutex<Option<String>>,
    /// Latency histograms since start-up, for Prometheus.
    lifetime: Mutex<PerPool<Box<[u64]>>>,
    /// Counts the comparison's fresh starts (a resume, a new rollout), told by the controller as
    /// it makes them: a halt and a resume within the task's second would otherwise go unseen.
    restarts: std::sync::atomic::AtomicU64,
    /// `restarts` as the view in `view` saw it.
    view_restarts: std::sync::atomic::AtomicU64,
}

/// The guard's request: apply `action` to `rollout`, for `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub action: GuardAction,
    pub rollout: Arc<str>,
    pub reason: String,
}

impl Analysis {
    pub fn new() -> Analysis {
        Analysis::default()
    }

    /// The comparison starts afresh (a resume, a new rollout, a new share).
    pub fn restart(&self) {
        self.restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The latest comparison (none before the first second has passed).
    pub fn view(&self) -> Option<Arc<AnalysisView>> {
        self.view.load_full()
    }

    /// The latest comparison if it began at the latest fresh start (none in the second after a
    /// restart, whose figures are still those before it).
    pub fn fresh_view(&self) -> Option<Arc<AnalysisView>> {
        use std::sync::atomic::Ordering::Relaxed;
        let view = self.view();
        (self.view_restarts.load(Relaxed) == self.restarts.load(Relaxed))
            .then_some(view)
            .flatten()
    }

    /// Why a schedule step must wait now, if it must: a metric regressed, or (with
    /// `guard.require_data`) the current step has too few requests on a side.
    pub fn hold(&self) -> Option<String> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Latency histograms since start-up, per pool (counts per bucket).
    pub fn lifetime(&self) -> PerPool<Box<[u64]>> {
        self.lifetime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Which rollout the counts belong to.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: Arc<str>,
    state: State,
    ppm: u32,
}

impl Seen {
    fn of(r: &Rollout) -> Seen {
        Seen {
            id: Arc::clone(&r.id),
            state: r.state,
            ppm: r.ppm,
        }
    }
}

/// The task's own counts.
struct Books {
    /// Since the rollout started, was last resumed or took its share: the comparison and the
    /// guard.
    since: PerPool<Counts>,
    /// Since then too: the users who converted, per goal.
    converted: PerPool<Converted>,
    since_at: SystemTime,
    /// At the current step (share and state): the sample-ratio check, `require_data`.
    step: PerPool<Counts>,
    window: Window,
    lifetime: PerPool<Counts>,
    tick: PerPool<Counts>,
    seen: Option<Seen>,
    /// The goals counted, as defined.
    goals: Vec<crate::config::Goal>,
    /// What the guard did since the comparison began.
    acted: Option<String>,
    /// [`Analysis::restart`]s seen.
    restarts: u64,
    /// What the slow threshold is set from, for `since`.
    reference: Reference,
    /// The answers counted as errors, as defined.
    error_statuses: crate::config::StatusSet,
}

impl Books {
    fn new(config: &Config) -> Books {
        Books {
            since: PerPool::from_fn(|_| Counts::judged()),
            converted: PerPool::default(),
            since_at: SystemTime::now(),
            step: PerPool::default(),
            window: Window::new(config.analysis.window),
            lifetime: PerPool::default(),
            tick: PerPool::from_fn(|_| Counts::judged()),
            seen: None,
            goals: config.analysis.goals.clone(),
            acted: None,
            restarts: 0,
            reference: Reference::default(),
            error_statuses: config.analysis.error_statuses,
        }
    }

    /// The comparison starts again: what the guard judges, from now on.
    fn afresh(&mut self) {
        self.since.stable.clear();
        self.since.canary.clear();
        self.reference.clear();
        self.converted = PerPool::default();
        self.since_at = SystemTime::now();
        self.acted = None;
    }

    /// Whether both pools serve users, so that their answers compare: not while everyone is on
    /// one side (rolled back, completed), when the other side's figures would go on from a later
    /// time alone and move the comparison with nothing compared.
    fn comparing(&self) -> bool {
        self.seen
            .as_ref()
            .is_none_or(|s| matches!(s.state, State::Running | State::Halted))
    }

    /// Starts counts afresh where the rollout changed: a new rollout resets everything; a resume
    /// or a new share restarts the comparison (so the guard judges what comes after it, and both
    /// pools' counts span the same time); a new share or state starts a new step.
    fn follow(&mut self, r: &Rollout, config: &Config, restarts: u64) {
        let now = Seen::of(r);
        let told = std::mem::replace(&mut self.restarts, restarts) != restarts;
        let clear = |c: &mut PerPool<Counts>| {
            c.stable.clear();
            c.canary.clear();
        };
        if let Some(before) = self.seen.take() {
            let new_rollout = before.id != now.id;
            // A resume is told by the controller (it may come and go within this second).
            if new_rollout || told || before.ppm != now.ppm {
                self.afresh();
            }
            if new_rollout {
                self.window.clear();
            }
            if new_rollout || before.ppm != now.ppm || before.state != now.state {
                clear(&mut self.step);
            }
        }
        self.seen = Some(now);
        let goals = &config.analysis.goals;
        if *goals != self.goals {
            // Goal indices moved, or a goal counts other requests now: old conversions would be
            // counted under the wrong name or for what the goal no longer is.
            for c in [&mut self.since, &mut self.step, &mut self.lifetime] {
                c.stable.goals = Default::default();
                c.canary.goals = Default::default();
            }
            self.converted = PerPool::default();
            self.window.clear();
            self.goals = goals.clone();
        }
        if config.analysis.error_statuses != self.error_statuses {
            // Errors by another definition from now on: counted with those by the old one, the
            // rates would be neither's.
            self.afresh();
            clear(&mut self.step);
            self.window.clear();
            self.error_statuses = config.analysis.error_statuses;
        }
        if self.window.shape() != Window::new(config.analysis.window).shape() {
            self.window = Window::new(config.analysis.window);
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Runs until the process ends, once a second.
pub async fn run(analysis: Arc<Analysis>, current: Arc<Current>, act: mpsc::Sender<Act>) {
    let mut books = Books::new(&current.load().config);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let snap = current.load();
        let (config, rollout) = (&snap.config, &snap.routing.rollout);
        let restarts = analysis.restarts.load(std::sync::atomic::Ordering::Relaxed);
        analysis.recorder.drain(&mut books.tick);
        analysis.recorder.drain_converted(&mut books.converted);
        let now = SystemTime::now();
        let unix = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let comparing = books.comparing();
        for pool in crate::routing::PoolName::BOTH {
            let tick = &books.tick[pool];
            if comparing {
                books.since[pool].add(tick);
            }
            books.step[pool].add(tick);
            books.lifetime[pool].add(tick);
        }
        books.window.add(unix, &books.tick);
        // After the second is counted: a change within it starts the counts afresh without the
        // answers routed before it (at the old share, or of the previous rollout). The few
        // routed after it in the same second are left out: better than counting the wrong ones.
        books.follow(rollout, config, restarts);
        // From now on, the latencies of each pool's busiest users are counted apart as well, so
        // that leaving them out takes their latencies too.
        for pool in crate::routing::PoolName::BOTH {
            if let Some(c) = books.since[pool].clusters.as_deref() {
                analysis.recorder.track(pool, c.busiest());
            }
        }
        let guard = config.guard.as_ref();
        let t = view::thresholds(guard);
        // (The cells' slow answers are counted afresh if the threshold rose far above the one
        // they were counted by.)
        let verdicts = books.reference.look(&mut books.since, &t);
        let (errors, latency) = (verdicts.errors, &verdicts.latency);
        // Answers slower than this from now on count as slow in their users' cells.
        analysis.recorder.slow_over(latency.slow_micros);
        // The difference's range is drawn once both sides have a few requests (before, it spans
        // everything and says nothing).
        let enough = books.since.canary.requests.min(books.since.stable.requests) >= 30;
        books.window.set_diff(enough.then_some(errors.0));
        let regressed = errors.1 == Verdict::Regressed || latency.verdict == Verdict::Regressed;
        if let Some(g) = guard
            && regressed
            && books.acted.is_none()
        {
            // A halt applies while running; a rollback while running or halted. Never after.
            let applies = match rollout.state {
                State::Running => true,
                State::Halted => g.action == GuardAction::Rollback,
                State::RolledBack | State::Completed => false,
            };
            if applies {
                let why = verdicts.reason(&books.since);
                let what = match g.action {
                    GuardAction::Halt => "halted",
                    GuardAction::Rollback => "rolled back",
                };
                books.acted = Some(format!("{what}: {why}"));
                let _ = act
                    .send(Act {
                        action: g.action,
                        rollout: Arc::clone(&rollout.id),
                        reason: why,
                    })
                    .await;
            }
        }
        let regressed =
            regressed.then(|| format!("a metric regressed: {}", verdicts.reason(&books.since)));
        let expected_share = (rollout.state == State::Running
            && rollout.ppm > 0
            && rollout.ppm < crate::routing::BUCKETS)
            .then(|| f64::from(rollout.ppm) / f64::from(crate::routing::BUCKETS));
        let mut view = view::compute(
            &books.since,
            &verdicts,
            &books.step,
            &books.window,
            Inputs {
                settings: &config.analysis,
                guard,
                converted: &books.converted,
                expected_share,
                rollout: rollout.id.to_string(),
                at: rfc3339(now),
                since: rfc3339(books.since_at),
                acted: books.acted.clone(),
            },
        );
        // Why a schedule may not advance: a regression; a split the check finds broken (canary
        // users served elsewhere, a canary that gets no one: exposure is not raised on figures
        // that cannot be trusted); with `require_data`, too few requests at this step.
        let split = view.sample_ratio.as_ref().filter(|s| s.mismatch).map(|s| {
            format!(
                "the split check failed: canary has {:.2}% of users, {:.2}% expected",
                s.observed * 100.0,
                s.expected * 100.0
            )
        });
        let hold = regressed.or(split).or_else(|| {
            guard.filter(|g| g.require_data).and_then(|g| {
                let short = |c: &Counts| g.min_requests.saturating_sub(c.requests);
                let more = short(&books.step.canary).max(short(&books.step.stable));
                (more > 0).then(|| format!("waiting for data at this step: {more} more requests on the version with fewer"))
            })
        });
        // A canary pool with no healthy upstream, its users served by stable: no new canary
        // figures will come until it is back, which "N more requests" would not say.
        let available = PerPool::from_fn(|p| {
            snap.pools[p]
                .upstreams()
                .iter()
                .filter(|u| u.health.is_available())
                .count()
        });
        for pool in crate::routing::PoolName::BOTH {
            metrics::gauge!("ramp_upstreams_available", "pool" => pool.as_str())
                .set(available[pool] as f64);
        }
        let canary_down = config.canary_unavailable == crate::config::CanaryUnavailable::Fallback
            && available.canary == 0;
        // Nor will they while every user is on one side, which "N more requests" would not say.
        let rollout = &snap.routing.rollout;
        let one_side = match rollout.state {
            State::RolledBack => {
                Some("everyone is on stable (rolled back): no canary answers come until a `resume`")
            }
            State::Completed => Some("everyone is on canary (completed): no stable answers come"),
            State::Running | State::Halted if rollout.ppm == 0 => {
                Some("the share is 0%: no user is on the canary")
            }
            State::Running | State::Halted if rollout.ppm >= crate::routing::BUCKETS => {
                Some("the share is 100%: no user is on stable")
            }
            State::Running | State::Halted => None,
        };
        let why = if canary_down {
            Some(
                "the canary pool has no healthy upstream, and its users are served by stable (canary_unavailable: fallback) until one is back",
            )
        } else {
            one_side
        };
        if let Some(why) = why {
            let goals = view.goals.iter_mut().map(|g| &mut g.verdict);
            for verdict in [&mut view.errors.verdict, &mut view.latency.verdict]
                .into_iter()
                .chain(goals)
            {
                if verdict.verdict == "not_enough_data" {
                    verdict.more = None;
                    verdict.text = format!("not enough data: {why}");
                }
            }
        }
        view.guard.holding_schedule.clone_from(&hold);
        publish_metrics(&view, &books, config);
        analysis.view.store(Some(Arc::new(view)));
        analysis
            .view_restarts
            .store(restarts, std::sync::atomic::Ordering::Relaxed);
        *analysis.hold.lock().unwrap_or_else(|e| e.into_inner()) = hold;
        *analysis.lifetime.lock().unwrap_or_else(|e| e.into_inner()) =
            PerPool::from_fn(|p| books.lifetime[p].latency.clone());
        drop(snap);
    }
}

/// The analysis's Prometheus series (once a second; the latency histogram is rendered from
/// [`Analysis::lifetime`] when scraped).
fn publish_metrics(view: &AnalysisView, books: &Books, config: &Config) {
    for (pool, figures) in view.pools.iter() {
        metrics::gauge!("ramp_users", "pool" => pool.as_str()).set(figures.window_users);
    }
    for (i, goal) in config.analysis.goals.iter().enumerate() {
        for pool in crate::routing::PoolName::BOTH {
            // Added second by second: the counts since start-up begin again when the goals are
            // edited, and a Prometheus counter must never go down.
            metrics::counter!("ramp_goal_total", "pool" => pool.as_str(), "goal" => goal.name.clone())
                .increment(books.tick[pool].goals[i]);
        }
    }
    let code = |v: &str| match v {
        "regressed" => 1.0,
        "improved" => -1.0,
        "not_enough_data" => 2.0,
        _ => 0.0,
    };
    metrics::gauge!("ramp_guard_verdict", "metric" => "errors")
        .set(code(&view.errors.verdict.verdict));
    metrics::gauge!("ramp_guard_verdict", "metric" => "latency")
        .set(code(&view.latency.verdict.verdict));
}
