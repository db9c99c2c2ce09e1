//! What the latency check's "slow" threshold is set from: stable's latencies without its busy
//! users over about its last minute, not since the comparison began.
//!
//! Over the whole comparison, a short burst weighed in stable's p99 until stable had about a
//! hundred times as many answers: a tester's 656 requests from ever-new ids in two seconds, 381
//! of them timing out at an overloaded upstream, made the threshold 1.5 s, and a canary 100 ms
//! slower for everyone was not halted for the rest of the run (about 20 minutes at 30 stable
//! requests a second) and read as improved. Over the last minute, the burst leaves the
//! reference a minute after it ends.
//!
//! An incident that slows both versions still raises the threshold as it starts, and the slow
//! answers counted before are forgotten ([`follow_threshold`]): a healthy canary is not halted
//! for it. Each canary answer is judged by the threshold in force when it came, so stable's
//! minute is the one the canary's answer is compared with; and when the threshold falls far
//! (the burst or the incident has left the minute), the answers counted by the higher one are
//! forgotten too, so that they do not dilute what comes after.

use std::collections::VecDeque;

use crate::analysis::clusters::{Clusters, MAX_SCALE, Tracked};
use crate::analysis::counts::Counts;
use crate::analysis::guard::Thresholds;
use crate::analysis::histogram;
use crate::analysis::view::{Verdicts, follow_threshold, verdicts_over};
use crate::routing::PerPool;

/// The reference spans at least this many looks (seconds)...
pub const RECENT_LOOKS: u64 = 60;

/// ...and at least this many of stable's answers without its busy users (its p99 then rests
/// on the 20 slowest), looking back further while it has fewer, up to [`KEPT`] × [`EVERY`]
/// looks. Short of them even then (stable under about 3 answers a second), the reference is the
/// whole comparison's.
pub const RECENT_ANSWERS: u64 = 2_000;

/// Stable's latencies are noted every this many looks...
const EVERY: u64 = 10;

/// ...and this many stretches between notes are kept (10 minutes): 3.2 KB each.
const KEPT: usize = 60;

/// Stable's latencies since the comparison began as the last note saw them: everyone's, and
/// those of each cell counted apart.
#[derive(Debug, Clone)]
struct Note {
    look: u64,
    all: Box<[u64]>,
    tracked: Vec<Tracked>,
    /// Each cell's requests.
    requests: Box<[u64]>,
}

/// Stable's answers without its busy users between two notes.
#[derive(Debug, Clone)]
struct Stretch {
    looks: u64,
    latency: Box<[u64]>,
}

/// The slow threshold's reference, and the ones the cells' slow answers were counted by: the
/// analysis task keeps one per comparison and looks through it once a second.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    looks: u64,
    last: Option<Note>,
    /// Oldest first.
    stretches: VecDeque<Stretch>,
    /// The lowest and highest slow thresholds the cells' slow answers were counted by (µs).
    counted_with: Option<(f64, f64)>,
    /// The look at which they were last counted afresh, if ever.
    recounted_at: Option<u64>,
}

/// Stable's recent latencies without its busy users, and the looks they span.
pub struct Recent {
    pub latency: Box<[u64]>,
    pub looks: u64,
}

impl Reference {
    /// For a comparison that starts afresh.
    pub fn clear(&mut self) {
        *self = Reference::default();
    }

    /// One look (once a second), after the second's counts were added to `since`: the verdicts,
    /// the slow threshold among them set from stable's recent latencies, after the cells' slow
    /// answers were forgotten if it rose or fell far from the ones they were counted by.
    pub fn look(&mut self, since: &mut PerPool<Counts>, t: &Thresholds) -> Verdicts {
        self.looks += 1;
        let mut v = self.verdicts(since, t);
        // Judged again without the slow answers a far higher threshold forgot: counted by the
        // one from before an incident that slows both versions, the canary's answers of its
        // first second halted a healthy canary.
        if follow_threshold(since, &mut self.counted_with, v.latency.slow_micros) {
            self.recounted_at = Some(self.looks);
            v = self.verdicts(since, t);
        }
        if self.looks.is_multiple_of(EVERY) {
            self.note(&since.stable);
        }
        v
    }

    /// The verdicts as the last look would see `since` now.
    pub fn verdicts(&self, since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
        let mut v = verdicts_over(since, self.recent(&since.stable).as_ref(), t);
        if let (Some(at), Some(left_out)) = (self.recounted_at, v.slow_left_out.as_mut()) {
            left_out.counted_looks = Some(self.looks - at);
        }
        v
    }

    /// Ends a stretch: stable's answers since the last note, without its busy users.
    fn note(&mut self, stable: &Counts) {
        let latency = self.since_last(stable);
        let looks = self.looks - self.last.as_ref().map_or(0, |n| n.look);
        if self.stretches.len() >= KEPT {
            self.stretches.pop_front();
        }
        self.stretches.push_back(Stretch { looks, latency });
        let cells = stable.clusters.as_deref();
        self.last = Some(Note {
            look: self.looks,
            all: stable.latency.clone(),
            tracked: cells
                .map(|c| c.tracked_latencies().to_vec())
                .unwrap_or_default(),
            requests: cells.map(Clusters::requests_per_cell).unwrap_or_default(),
        });
    }

    /// Stable's answers since the last note (or the comparison's start) without the users busy
    /// now: everyone's since then, less each busy user's counted since then. Whether a user is
    /// busy is judged as each stretch ends, for that stretch: taking a user who turned busy out
    /// of the stretches before, when it was a user like any other, took its answers of minutes
    /// ago out of the last minute's (a hostile tester's twenty stable users asking for a 60 ms
    /// report, then sending fast requests: stable's p99 read 4.5 ms, not 60, and a healthy
    /// canary with 3% of its answers at 60 ms, as stable's, was halted).
    fn since_last(&self, stable: &Counts) -> Box<[u64]> {
        let last = self.last.as_ref();
        let mut kept: Box<[u64]> = match last {
            Some(n) => stable
                .latency
                .iter()
                .zip(n.all.iter())
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            None => stable.latency.clone(),
        };
        let Some(cells) = stable.clusters.as_deref() else {
            return kept;
        };
        let requests = cells.requests_per_cell();
        for (t, _) in cells.busy_latencies() {
            // Counted apart since the last note (the same time counted apart: `before` the
            // same), or since it began to be.
            let before = last.and_then(|n| {
                n.tracked
                    .iter()
                    .find(|b| b.cell == t.cell && b.before == t.before)
            });
            let was = |i: usize| before.map_or(0, |b| b.counts.get(i).copied().unwrap_or(0));
            let since: Vec<u64> = (0..t.counts.len())
                .map(|i| t.counts[i].saturating_sub(was(i)))
                .collect();
            if histogram::total(&since) == 0 {
                continue;
            }
            // Its answers in this stretch from before they were counted apart (counting begins
            // the second after a user is among the busiest) are taken as those counted since:
            // its requests in the stretch over those since counting began, at most 4 — 1 for a
            // user counted apart all through the stretch. (Its requests over those counted
            // since the comparison began took a user long known but newly busy as up to 4
            // times its answers in the stretch, and others' slow answers with them: stable's
            // p99 read 4 ms for a minute beside a real 60. Its requests over its answers
            // counted took a busy user whose requests a retry answered as many answers more
            // as it had failed attempts, which have no latency: beside a flaky stable server,
            // stable's p99 read 1.9 ms beside a real 60, and a healthy canary was halted.)
            let then = last
                .and_then(|n| n.requests.get(t.cell).copied())
                .unwrap_or(0);
            let now = requests.get(t.cell).copied().unwrap_or(0);
            let sent = now.saturating_sub(then);
            let counted = now.saturating_sub(then.max(t.before));
            let scale = if counted == 0 {
                1.0
            } else {
                (sent as f64 / counted as f64).clamp(1.0, MAX_SCALE)
            };
            for (k, n) in kept.iter_mut().zip(since) {
                *k = k.saturating_sub((n as f64 * scale).round() as u64);
            }
        }
        kept
    }

    /// Stable's latencies without its busy users over the newest stretches (and the answers
    /// since the last note) that span at least [`RECENT_LOOKS`] and hold [`RECENT_ANSWERS`];
    /// None when the stretches kept do not.
    fn recent(&self, stable: &Counts) -> Option<Recent> {
        let mut recent = Recent {
            latency: self.since_last(stable),
            looks: self.looks - self.last.as_ref().map_or(0, |n| n.look),
        };
        let enough =
            |r: &Recent| r.looks >= RECENT_LOOKS && histogram::total(&r.latency) >= RECENT_ANSWERS;
        for s in self.stretches.iter().rev() {
            if enough(&recent) {
                break;
            }
            for (a, b) in recent.latency.iter_mut().zip(s.latency.iter()) {
                *a = a.saturating_add(*b);
            }
            recent.looks += s.looks;
        }
        enough(&recent).then_some(recent)
    }
}

#[cfg(test)]
mod tests;
