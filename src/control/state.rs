//! The runtime rollout state and its transitions. Pure: the caller passes the time; the
//! controller persists and publishes what comes out.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::config::{Plan, RolloutPlan};
use crate::routing::BUCKETS;
use crate::routing::State;

use super::command::Source;
use super::schedule::{Schedule, Timing};

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutState {
    /// The rollout id in force (the hash salt).
    pub id: String,
    pub state: State,
    /// Parts per million on canary.
    pub ppm: u32,
    /// Position in the plan's steps, when following them.
    pub schedule: Option<Schedule>,
    /// The plan the configuration file gave most recently.
    pub plan: RolloutPlan,
    /// The file's plan changed while halted or rolled back; it applies on `resume`.
    pub plan_pending: bool,
    /// The pending plan carries a new rollout id: `resume` (or a bare `start`) begins it.
    pub pending_rollout: bool,
    /// Rolled back from completed: `resume` completes it again (unless the file gave a new plan
    /// meanwhile, which then applies).
    pub completed_before: bool,
    pub changed_at: SystemTime,
    pub changed_by: Source,
    /// Orders states: set at each change made here to one more than the state it changed, or to
    /// the wall clock in milliseconds if that is later (a hybrid logical clock); kept as it is
    /// when taken from the fleet or written back. Unlike etcd's revisions, it does not start
    /// again when etcd's data is wiped or restored, and unlike `changed_at` a clock running
    /// ahead cannot put a change before one made on top of it.
    pub generation: u64,
    /// While halted or rolled back: who stopped it, and when — kept through later changes that
    /// leave it stopped (a file edit), so that status still says who stopped it.
    pub stopped: Option<Stopped>,
}

/// Who halted or rolled back the rollout in force, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    pub at: SystemTime,
    pub by: Source,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the rollout is {}: `resume` it before changing the percent", said(*.0))]
    NotRunning(State),
    #[error("{}", cannot_halt(*.0))]
    CannotHalt(State),
    #[error("the rollout is completed: `start` a new rollout or `rollback`")]
    Completed,
}

/// Why a rollout in `state` cannot be halted, and what changes it.
fn cannot_halt(state: State) -> String {
    match state {
        State::RolledBack => "the rollout is rolled back, everyone on stable, which a halt would not add to: `resume`, `promote` or `start` change it".to_owned(),
        State::Completed => {
            "the rollout is completed, everyone on canary: `rollback` or `start` change it".to_owned()
        }
        other => format!("the rollout is {}", said(other)),
    }
}

/// A state in words (`rolled back`, where the wire says `rolled_back`).
fn said(state: State) -> &'static str {
    match state {
        State::RolledBack => "rolled back",
        other => other.as_str(),
    }
}

/// What a reloaded file did to the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileEffect {
    Unchanged,
    /// A new rollout id in the file: a fresh rollout began.
    NewRollout,
    /// A new percent or steps, applied now.
    Applied,
    /// A new percent or steps while halted or rolled back: kept for `resume`.
    Pending,
    /// A new percent or steps after completion: recorded, nothing changes.
    Ignored,
}

impl RolloutState {
    /// A fresh rollout following the file's plan.
    pub fn fresh(plan: RolloutPlan, now: Instant, by: Source) -> Self {
        let mut s = RolloutState {
            id: plan.id.clone(),
            state: State::Running,
            ppm: 0,
            schedule: None,
            plan,
            plan_pending: false,
            pending_rollout: false,
            completed_before: false,
            changed_at: SystemTime::now(),
            changed_by: by,
            generation: 0,
            stopped: None,
        };
        s.follow_plan(now);
        s
    }

    /// When the schedule next needs attention.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.state, self.schedule) {
            (
                State::Running,
                Some(Schedule {
                    timing: Timing::Until(at),
                    ..
                }),
            ) => Some(at),
            _ => None,
        }
    }

    fn steps(&self) -> &[crate::config::Step] {
        match &self.plan.plan {
            Plan::Steps(steps) => steps,
            Plan::Percent(_) => &[],
        }
    }

    /// Moves to the file plan's percent, or its steps (keeping the position where it can).
    fn follow_plan(&mut self, now: Instant) {
        match &self.plan.plan {
            Plan::Percent(ppm) => {
                self.ppm = *ppm;
                self.schedule = None;
            }
            Plan::Steps(steps) => {
                let at = Schedule::rebase(self.schedule, steps, self.ppm, now);
                self.ppm = steps.get(at.step).map_or(0, |s| s.ppm);
                self.schedule = Some(at);
                self.complete_if_final();
            }
        }
        self.plan_pending = false;
        self.pending_rollout = false;
    }

    fn complete_if_final(&mut self) {
        if let Some(Schedule {
            timing: Timing::Final,
            ..
        }) = self.schedule
            && self.ppm == BUCKETS
        {
            self.state = State::Completed;
            self.schedule = None;
        }
    }

    pub fn set(&mut self, ppm: u32) -> Result<(), Refusal> {
        match self.state {
            State::Running => {
                self.ppm = ppm;
                // A manual percent takes over from the schedule.
                self.schedule = None;
                Ok(())
            }
            State::Completed => Err(Refusal::Completed),
            other => Err(Refusal::NotRunning(other)),
        }
    }

    pub fn halt(&mut self, now: Instant) -> Result<(), Refusal> {
        match self.state {
            State::Running => {
                self.state = State::Halted;
                if let Some(s) = &mut self.schedule {
                    s.pause(now);
                }
                Ok(())
            }
            State::Halted => Ok(()),
            other => Err(Refusal::CannotHalt(other)),
        }
    }

    pub fn resume(&mut self, now: Instant) -> Result<(), Refusal> {
        match self.state {
            State::Running => Ok(()),
            State::Completed => Err(Refusal::Completed),
            State::Halted | State::RolledBack => {
                self.state = State::Running;
                if self.pending_rollout {
                    self.start(None, None, now);
                } else if self.plan_pending {
                    self.follow_plan(now);
                } else if self.completed_before {
                    self.promote();
                } else if let Some(s) = &mut self.schedule {
                    s.unpause(now);
                }
                self.completed_before = false;
                Ok(())
            }
        }
    }

    pub fn rollback(&mut self, now: Instant) {
        if self.state != State::RolledBack {
            self.completed_before = self.state == State::Completed;
            self.state = State::RolledBack;
            if let Some(s) = &mut self.schedule {
                s.pause(now);
            }
        }
    }

    pub fn promote(&mut self) {
        self.state = State::Completed;
        self.ppm = BUCKETS;
        self.schedule = None;
        self.completed_before = false;
    }

    /// A new rollout: new salt, running, at `ppm` or else at the file plan's start. Without an
    /// id, the file's rollout (a new id the file gave while halted, say).
    pub fn start(&mut self, id: Option<String>, ppm: Option<u32>, now: Instant) {
        self.id = id.unwrap_or_else(|| self.plan.id.clone());
        self.state = State::Running;
        self.schedule = None;
        self.completed_before = false;
        self.ppm = 0;
        match ppm {
            Some(ppm) => {
                self.ppm = ppm;
                self.plan_pending = false;
                self.pending_rollout = false;
            }
            None => self.follow_plan(now),
        }
    }

    /// The file was (re)loaded with `plan`. A file edit never leaves a halt or a rollback: while
    /// halted or rolled back, a new plan (a new rollout id included) waits for `resume`.
    pub fn file_plan(&mut self, plan: RolloutPlan, now: Instant) -> FileEffect {
        if plan == self.plan {
            return FileEffect::Unchanged;
        }
        // A new rollout: an id the file did not give before, other than the one in force.
        let new_id = plan.id != self.plan.id && plan.id != self.id;
        self.plan = plan;
        if new_id {
            match self.state {
                State::Running | State::Completed => {
                    self.start(None, None, now);
                    return FileEffect::NewRollout;
                }
                State::Halted | State::RolledBack => {
                    self.plan_pending = true;
                    self.pending_rollout = true;
                    return FileEffect::Pending;
                }
            }
        }
        match self.state {
            State::Running => {
                self.follow_plan(now);
                FileEffect::Applied
            }
            State::Halted | State::RolledBack => {
                self.plan_pending = true;
                // The file names the rollout in force again: nothing new to start.
                self.pending_rollout = false;
                FileEffect::Pending
            }
            State::Completed => FileEffect::Ignored,
        }
    }

    /// A state read back (the state file, the fleet's store) made to hold what ramp itself
    /// keeps true, and what was changed, if anything. A hand-edited or damaged one could name a
    /// step whose percent is not the one routed (the schedule would then move users by a
    /// percent nobody set), a hold ending in the year 9999, or a clock running while halted.
    /// The percent routed never moves here, so no user changes version at a restart: a step at
    /// another percent stops the schedule, as `ramp ctl set` does; the time left is at most the
    /// step's hold; the clock runs while running and is paused otherwise.
    pub fn settle(&mut self, now: Instant) -> Option<String> {
        // Completed sends everyone to canary whatever the percent says: 100%, no schedule (a
        // completed rollout at 10% read "percent kept" while every user went to canary).
        if self.state == State::Completed && (self.ppm != BUCKETS || self.schedule.is_some()) {
            let was = self.ppm;
            self.ppm = BUCKETS;
            self.schedule = None;
            return Some(format!(
                "it is completed, which sends everyone to canary, at {}%: now at 100% with no schedule",
                crate::config::ppm_to_percent(was)
            ));
        }
        // A pending plan replaced the steps the position refers to; `resume` re-bases it.
        let old = self.schedule.filter(|_| !self.plan_pending)?;
        let step = self.steps().get(old.step).copied();
        if step.is_none_or(|s| s.ppm != self.ppm) {
            self.schedule = None;
            return Some(format!(
                "its schedule's step {} is not at the percent in force ({}%): the percent is kept and the schedule stopped, as after `ramp ctl set`",
                old.step + 1,
                crate::config::ppm_to_percent(self.ppm)
            ));
        }
        let mut settled = Schedule::at(self.steps(), old.step, now);
        if let (Timing::Until(full), Some(left)) = (settled.timing, old.left(now)) {
            settled.timing = Timing::Until(full.min(now + left));
        }
        if self.state != State::Running {
            settled.pause(now);
        }
        self.schedule = Some(settled);
        (settled.timing != old.timing).then(|| {
            format!(
                "its schedule's step {} had {} left, {}: now {}, as the step's hold allows",
                old.step + 1,
                secs(old.left(now)),
                match old.timing {
                    Timing::Until(_) => "running",
                    Timing::Paused(_) => "paused",
                    Timing::Final => "none",
                },
                secs(settled.left(now))
            )
        })
    }

    /// Moves to the next step if the hold has expired; true if it did.
    pub fn advance(&mut self, now: Instant) -> bool {
        let Some(at) = self.next_deadline() else {
            return false;
        };
        if at > now {
            return false;
        }
        let Some(current) = self.schedule else {
            return false;
        };
        let next = current.step + 1;
        let Some(step) = self.steps().get(next).copied() else {
            // A clock on the last step (a damaged or pending state): stop it, nothing to do.
            if let Some(s) = &mut self.schedule {
                s.timing = Timing::Final;
            }
            return false;
        };
        // The next hold starts now: after a long outage the schedule moves one step, not many.
        self.schedule = Some(Schedule::at(self.steps(), next, now));
        self.ppm = step.ppm;
        self.complete_if_final();
        true
    }
}

#[cfg(test)]
mod tests;

/// A time left, in whole seconds, for a log line.
fn secs(left: Option<std::time::Duration>) -> String {
    let d = std::time::Duration::from_secs(left.unwrap_or_default().as_secs());
    humantime::format_duration(d).to_string()
}
