//! For tests: the analysis task's looks, once a second as `task.rs` takes them, over answers
//! recorded as the request path records them.

use crate::analysis::counts::{Counts, Recorder};
use crate::analysis::guard::Thresholds;
use crate::analysis::reference::Reference;
use crate::analysis::view::{Verdicts, thresholds};
use crate::routing::{PerPool, PoolName};

/// What was recorded is drained into `since` at each look, the recorder is told which cells to
/// count the latencies of (if `track`) and the new slow threshold, and the slow answers are
/// recounted if it rose.
pub struct Looks {
    pub r: Recorder,
    pub since: PerPool<Counts>,
    tick: PerPool<Counts>,
    reference: Reference,
    t: Thresholds,
    track: bool,
}

impl Looks {
    pub fn new(track: bool) -> Looks {
        Looks {
            r: Recorder::default(),
            since: PerPool::from_fn(|_| Counts::judged()),
            tick: PerPool::from_fn(|_| Counts::judged()),
            reference: Reference::default(),
            t: thresholds(None),
            track,
        }
    }

    /// One look: the verdicts the guard would act on.
    pub fn look(&mut self) -> Verdicts {
        self.r.drain(&mut self.tick);
        for pool in PoolName::BOTH {
            self.since[pool].add(&self.tick[pool]);
            if let Some(c) = self.since[pool].clusters.as_deref().filter(|_| self.track) {
                self.r.track(pool, c.busiest());
            }
        }
        let v = self.reference.look(&mut self.since, &self.t);
        self.r.slow_over(v.latency.slow_micros);
        v
    }

    /// The verdicts as the last look would see the counts now.
    pub fn verdicts(&self) -> Verdicts {
        self.reference.verdicts(&self.since, &self.t)
    }
}
