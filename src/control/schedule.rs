//! Where a staged rollout stands in its `steps`, and how long until the next one.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Step;

/// The clock of the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Running: the next step begins at this instant.
    Until(Instant),
    /// Halted or rolled back: this much of the hold is left.
    Paused(Duration),
    /// The last step: nothing comes after it.
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Index into the plan's steps.
    pub step: usize,
    pub timing: Timing,
}

impl Schedule {
    /// Step `step` of `steps`, its hold starting `now`.
    pub fn at(steps: &[Step], step: usize, now: Instant) -> Schedule {
        let last = step + 1 >= steps.len();
        let timing = match steps.get(step).and_then(|s| s.hold) {
            Some(hold) if !last => Timing::Until(now + hold),
            _ => Timing::Final,
        };
        Schedule { step, timing }
    }

    /// Stops the clock.
    pub fn pause(&mut self, now: Instant) {
        if let Timing::Until(at) = self.timing {
            self.timing = Timing::Paused(at.saturating_duration_since(now));
        }
    }

    /// Starts the clock again with the time that was left.
    pub fn unpause(&mut self, now: Instant) {
        if let Timing::Paused(left) = self.timing {
            self.timing = Timing::Until(now + left);
        }
    }

    /// Time left in the current step (`None` on the last step).
    pub fn left(&self, now: Instant) -> Option<Duration> {
        match self.timing {
            Timing::Until(at) => Some(at.saturating_duration_since(now)),
            Timing::Paused(left) => Some(left),
            Timing::Final => None,
        }
    }

    /// Where a changed step list picks up a rollout now at `ppm` on step `self.step`: the same
    /// step if it still has the same percent (keeping the time left, capped by the new hold),
    /// otherwise the last step at or below `ppm` (or the first), with a full hold.
    pub fn rebase(old: Option<Schedule>, steps: &[Step], ppm: u32, now: Instant) -> Schedule {
        if let Some(old) = old
            && steps.get(old.step).is_some_and(|s| s.ppm == ppm)
        {
            let fresh = Schedule::at(steps, old.step, now);
            let timing = match (old.timing, fresh.timing) {
                (Timing::Until(a), Timing::Until(b)) => Timing::Until(a.min(b)),
                (Timing::Paused(l), Timing::Until(b)) => {
                    Timing::Paused(l.min(b.saturating_duration_since(now)))
                }
                (_, fresh) => fresh,
            };
            return Schedule {
                step: old.step,
                timing,
            };
        }
        let step = steps.iter().rposition(|s| s.ppm <= ppm).unwrap_or(0);
        Schedule::at(steps, step, now)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// 0.01% for 10 minutes, 5% for an hour, then 100%.
    pub(crate) fn steps() -> Vec<Step> {
        let m = |n: u64| Some(Duration::from_secs(60 * n));
        vec![
            Step {
                ppm: 100,
                hold: m(10),
            },
            Step {
                ppm: 50_000,
                hold: m(60),
            },
            Step {
                ppm: 1_000_000,
                hold: None,
            },
        ]
    }

    #[test]
    fn the_last_step_has_no_clock() {
        let now = Instant::now();
        assert_eq!(
            Schedule::at(&steps(), 0, now).timing,
            Timing::Until(now + Duration::from_secs(600))
        );
        assert_eq!(Schedule::at(&steps(), 2, now).timing, Timing::Final);
    }

    #[test]
    fn pausing_keeps_the_time_left() {
        let now = Instant::now();
        let mut s = Schedule::at(&steps(), 1, now);
        s.pause(now + Duration::from_secs(600));
        assert_eq!(s.timing, Timing::Paused(Duration::from_secs(3000)));
        let later = now + Duration::from_secs(86_400);
        s.unpause(later);
        assert_eq!(s.left(later), Some(Duration::from_secs(3000)));
    }

    #[test]
    fn rebasing_keeps_the_position_when_the_step_is_unchanged() {
        let now = Instant::now();
        let old = Schedule::at(&steps(), 1, now - Duration::from_secs(1200));
        let s = Schedule::rebase(Some(old), &steps(), 50_000, now);
        assert_eq!(s.step, 1);
        assert_eq!(s.left(now), Some(Duration::from_secs(2400)));
        // A percent between steps lands on the step below it, with a full hold.
        let s = Schedule::rebase(None, &steps(), 70_000, now);
        assert_eq!((s.step, s.left(now)), (1, Some(Duration::from_secs(3600))));
        let s = Schedule::rebase(None, &steps(), 0, now);
        assert_eq!(s.step, 0);
    }
}
