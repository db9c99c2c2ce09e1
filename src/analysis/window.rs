//! The sliding window: the last `analysis.window` of counts in slots of a few seconds (120 slots),
//! for the charts and the window figures. Fixed memory: the slots are reused.

use std::collections::VecDeque;
use std::time::Duration;

use crate::routing::PerPool;

use super::counts::Counts;
use super::histogram;
use super::stats::Interval;

/// Slots per window.
pub const SLOTS: usize = 120;

/// One slot: its start (seconds since the Unix epoch), what it counted, and the guard's error
/// difference as it stood when the slot closed.
#[derive(Debug, Clone)]
pub struct Slot {
    pub start: i64,
    pub counts: PerPool<Counts>,
    pub diff: Option<Interval>,
    /// The chart's figures, kept once the slot has closed (its counts no longer change).
    sealed: Option<PerPool<Figures>>,
}

/// What the chart shows of one pool in one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Distinct users (estimated; never more than the requests).
    pub users: f64,
    /// 99th percentile latency, microseconds.
    pub p99_micros: Option<f64>,
}

impl Slot {
    fn empty(start: i64) -> Slot {
        Slot {
            start,
            counts: PerPool::default(),
            diff: None,
            sealed: None,
        }
    }

    /// The chart's figures: computed for the open slot, kept for a closed one.
    pub fn figures(&self) -> PerPool<Figures> {
        self.sealed.unwrap_or_else(|| {
            PerPool::from_fn(|p| {
                let c = &self.counts[p];
                Figures {
                    users: c.users.estimate().round().min(c.requests as f64),
                    p99_micros: histogram::quantile(&c.latency, 0.99),
                }
            })
        })
    }
}

#[derive(Debug)]
pub struct Window {
    slot_secs: i64,
    /// How many slots make the window (at most [`SLOTS`]).
    kept: usize,
    slots: VecDeque<Slot>,
}

impl Window {
    /// A window of at most [`SLOTS`] slots of whole seconds that spans `window`, or a slot more
    /// where the slots do not divide it (11 minutes: 110 slots of 6 s).
    pub fn new(window: Duration) -> Window {
        let secs = window.as_secs().max(1);
        let slot_secs = secs.div_ceil(SLOTS as u64);
        Window {
            slot_secs: slot_secs as i64,
            kept: secs.div_ceil(slot_secs) as usize,
            slots: VecDeque::with_capacity(SLOTS + 1),
        }
    }

    pub fn slot_secs(&self) -> i64 {
        self.slot_secs
    }

    /// The slots' length and how many make the window.
    pub fn shape(&self) -> (i64, usize) {
        (self.slot_secs, self.kept)
    }

    /// Adds one second's `tick` at `now` (Unix seconds), opening new slots as time passes (empty
    /// ones for seconds nothing was added) and dropping those older than the window.
    pub fn add(&mut self, now: i64, tick: &PerPool<Counts>) {
        let start = now - now.rem_euclid(self.slot_secs);
        let behind = self.slots.back().is_none_or(|s| s.start < start);
        if behind {
            // Seconds with no tick at all (ramp was busy or stopped) leave gaps: fill them, so
            // the chart's time axis stays even, but never more than a window's worth.
            let mut next = self.slots.back().map_or(start, |s| {
                (s.start + self.slot_secs).max(start - self.slot_secs * self.kept as i64)
            });
            while next <= start {
                if let Some(last) = self.slots.back_mut()
                    && last.sealed.is_none()
                {
                    last.sealed = Some(last.figures());
                }
                let slot = match self.slots.len() {
                    n if n >= self.kept => {
                        let mut old = self.slots.pop_front().unwrap_or_else(|| Slot::empty(next));
                        old.start = next;
                        old.counts.stable.clear();
                        old.counts.canary.clear();
                        old.diff = None;
                        old.sealed = None;
                        old
                    }
                    _ => Slot::empty(next),
                };
                self.slots.push_back(slot);
                next += self.slot_secs;
            }
        }
        if let Some(last) = self.slots.back_mut() {
            last.counts.stable.add(&tick.stable);
            last.counts.canary.add(&tick.canary);
        }
    }

    /// Records the guard's current error difference on the newest slot.
    pub fn set_diff(&mut self, diff: Option<Interval>) {
        if let Some(last) = self.slots.back_mut() {
            last.diff = diff;
        }
    }

    /// Everything in the window, merged.
    pub fn total(&self) -> PerPool<Counts> {
        let mut total = PerPool::<Counts>::default();
        for s in &self.slots {
            total.stable.add(&s.counts.stable);
            total.canary.add(&s.counts.canary);
        }
        total
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub fn clear(&mut self) {
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_its_last_slots_and_fills_gaps() {
        let mut w = Window::new(Duration::from_secs(600));
        assert_eq!(w.slot_secs(), 5);
        let mut tick = PerPool::<Counts>::default();
        tick.canary.requests = 1;
        for t in 1_000..1_010 {
            w.add(t, &tick);
        }
        // 1000..1004 and 1005..1009: two slots of five requests.
        let starts: Vec<i64> = w.slots().map(|s| s.start).collect();
        assert_eq!(starts, [1_000, 1_005]);
        assert_eq!(w.total().canary.requests, 10);
        // A long gap: the window slides, the old slots leave, the axis stays even.
        w.add(1_009 + 600 + 11, &tick);
        assert_eq!(w.slots().count(), SLOTS);
        assert_eq!(w.total().canary.requests, 1);
        let starts: Vec<i64> = w.slots().map(|s| s.start).collect();
        assert!(starts.windows(2).all(|p| p[1] - p[0] == 5), "{starts:?}");
    }

    #[test]
    fn a_window_spans_what_was_configured_not_120_slots_of_whole_seconds() {
        let mut tick = PerPool::<Counts>::default();
        tick.canary.requests = 1;
        // 10 s: ten slots of a second, not 120; 11 minutes: 110 slots of 6 s, not 120 of 5.
        for (window, slot, kept) in [(10, 1, 10), (660, 6, 110), (600, 5, 120), (3_600, 30, 120)] {
            let mut w = Window::new(Duration::from_secs(window));
            assert_eq!(w.shape(), (slot, kept), "{window} s");
            // From a start every slot length divides, to the end of a slot.
            for t in 0..2 * window as i64 {
                w.add(10_080_000 + t, &tick);
            }
            assert_eq!(w.slots().count(), kept, "{window} s");
            assert_eq!(w.total().canary.requests, window, "{window} s");
        }
    }

    #[test]
    fn a_closed_slot_keeps_the_figures_it_closed_with() {
        let mut w = Window::new(Duration::from_secs(600));
        let mut tick = PerPool::<Counts>::default();
        for (i, hash) in (0..50u64).enumerate() {
            tick.canary.requests = 1;
            tick.canary.latency[i % 20] = 1;
            tick.canary
                .users
                .add(hash.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            w.add(1_000, &tick);
            tick.canary.clear();
        }
        let open = w.slots().last().map(Slot::figures);
        w.add(1_005, &tick);
        let slots: Vec<&Slot> = w.slots().collect();
        assert_eq!(slots.len(), 2);
        assert!(slots[0].sealed.is_some());
        assert_eq!(Some(slots[0].figures()), open);
        let users = slots[0].figures().canary.users;
        assert!((45.0..=50.0).contains(&users), "{users}");
        assert!(slots[0].figures().canary.p99_micros.is_some());
        assert_eq!(slots[1].figures().canary.users, 0.0);
    }
}
