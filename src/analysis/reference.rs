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

/// ...and this many notes are kept (10 minutes): 6.4 KB each.
const KEPT: usize = 60;

/// Stable's latencies since the comparison began, as one look saw them.
#[derive(Debug, Clone)]
struct Note {
    look: u64,
    /// Everyone's.
    all: Box<[u64]>,
    /// Without the busy users as that look told them.
    kept: Box<[u64]>,
}

/// The slow threshold's reference, and the one the cells' slow answers were counted by: the
/// analysis task keeps one per comparison and looks through it once a second.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    looks: u64,
    notes: VecDeque<Note>,
    /// The lowest and highest slow thresholds the cells' slow answers were counted by (µs).
    counted_with: Option<(f64, f64)>,
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
    /// answers were forgotten if it rose far above the one they were counted by.
    pub fn look(&mut self, since: &mut PerPool<Counts>, t: &Thresholds) -> Verdicts {
        self.looks += 1;
        let (all, kept) = stable(since);
        let mut v = self.judge(since, &all, &kept, t);
        // Judged again without the slow answers a far higher threshold forgot: counted by the
        // one from before an incident that slows both versions, the canary's answers of its
        // first second halted a healthy canary.
        if follow_threshold(since, &mut self.counted_with, v.latency.slow_micros) {
            v = self.judge(since, &all, &kept, t);
        }
        if self.looks.is_multiple_of(EVERY) {
            if self.notes.len() >= KEPT {
                self.notes.pop_front();
            }
            self.notes.push_back(Note {
                look: self.looks,
                all,
                kept,
            });
        }
        v
    }

    /// The verdicts as the last look would see `since` now.
    #[cfg(test)]
    pub fn verdicts(&self, since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
        let (all, kept) = stable(since);
        self.judge(since, &all, &kept, t)
    }

    fn judge(
        &self,
        since: &PerPool<Counts>,
        all: &[u64],
        kept: &[u64],
        t: &Thresholds,
    ) -> Verdicts {
        verdicts_over(since, self.recent(all, kept).as_ref(), t)
    }

    /// Stable's latencies without its busy users since the newest note at least
    /// [`RECENT_LOOKS`] old that leaves [`RECENT_ANSWERS`] of them; None when none does.
    ///
    /// Per bucket, at most everyone's answers since that note: a user no longer busy (the usual
    /// user's requests grew past an eighth of its) is in `kept` now with all its answers, and
    /// was not then; without the bound its answers of minutes ago came back as those of the
    /// last minute.
    fn recent(&self, all: &[u64], kept: &[u64]) -> Option<Recent> {
        self.notes
            .iter()
            .rev()
            .filter(|n| self.looks - n.look >= RECENT_LOOKS)
            .map(|n| Recent {
                latency: kept
                    .iter()
                    .zip(n.kept.iter())
                    .zip(all.iter().zip(n.all.iter()))
                    .map(|((k, nk), (a, na))| k.saturating_sub(*nk).min(a.saturating_sub(*na)))
                    .collect(),
                looks: self.looks - n.look,
            })
            .find(|r| histogram::total(&r.latency) >= RECENT_ANSWERS)
    }
}

/// Stable's latencies since the comparison began: everyone's, and without its busy users.
fn stable(since: &PerPool<Counts>) -> (Box<[u64]>, Box<[u64]>) {
    let s = &since.stable;
    let kept = match s.clusters.as_deref() {
        Some(c) => c.latency_without_busy(&s.latency).0,
        None => s.latency.clone(),
    };
    (s.latency.clone(), kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::guard::Verdict;
    use crate::analysis::looks::Looks;
    use crate::routing::PoolName::{self, Canary, Stable};

    /// 1–2 ms, spread by `i`.
    fn fast(i: u64) -> u64 {
        1_000 + i * 7_919 % 1_000
    }

    /// `seconds` looks of 30 ever new users a second on each version, each answer taking
    /// `micros(pool, second, i)`; `extra(second)` more stable answers from ever new users that
    /// second, each `micros(Stable, second, i)` of its own. The looks whose verdict was
    /// Regressed.
    fn hold(
        seconds: u64,
        extra: impl Fn(u64) -> u64,
        micros: impl Fn(PoolName, u64, u64) -> u64,
    ) -> (Looks, Vec<u64>) {
        let mut looks = Looks::new(true);
        let mut regressed = Vec::new();
        let mut user = 0u64;
        for second in 0..seconds {
            for pool in [Stable, Canary] {
                let n = 30 + if pool == Stable { extra(second) } else { 0 };
                for i in 0..n {
                    user += 1;
                    let took = micros(pool, second, i);
                    looks.r.record(pool, false, took, Some(user), None);
                }
            }
            if looks.look().latency.verdict == Verdict::Regressed {
                regressed.push(second);
            }
        }
        (looks, regressed)
    }

    #[test]
    fn a_burst_of_slow_stable_answers_from_many_ids_leaves_the_reference_within_minutes() {
        // A hostile tester's: 656 stable requests from ever-new ids in two seconds, 381 of them
        // timing out after a second at an overloaded upstream. From 40 s on, every canary
        // answer is 100 ms slower. Over the whole comparison the burst held stable's p99 at
        // 1 s for about 20 minutes, and the canary read as improved.
        let (looks, regressed) = hold(
            300,
            |second| if (10..12).contains(&second) { 328 } else { 0 },
            |pool, second, i| match pool {
                Stable if (10..12).contains(&second) && (30..30 + 190).contains(&i) => 1_000_000,
                Canary if second >= 40 => fast(i) + 100_000,
                _ => fast(i + second),
            },
        );
        // No alarm before the regression, and a halt within about two minutes of it: the
        // burst leaves the reference once stable has 2,000 answers after it.
        let first = regressed.first().copied();
        assert!(first.is_some_and(|s| (40..160).contains(&s)), "{first:?}");
        let v = looks.verdicts();
        let left = v.slow_left_out.expect("a threshold");
        let p99 = left.stable_p99.unwrap_or(f64::INFINITY);
        assert!(p99 < 3_000.0, "stable's p99 {p99} µs");
        assert!(
            left.reference_looks.is_some_and(|s| s >= RECENT_LOOKS),
            "{left:?}"
        );
    }

    #[test]
    fn incidents_slowing_both_versions_do_not_halt_a_healthy_canary_nor_hide_a_later_regression() {
        // Both versions 10× slower for 20 s early in the comparison (stable's p99 over it
        // all) and for 60 s later (over its last minute); from 330 s every canary answer is
        // 20 ms slower: not slower than the incidents' answers, which stable's p99 over the
        // whole comparison still holds.
        let incident = |second: u64| (20..40).contains(&second) || (150..210).contains(&second);
        let (_, regressed) = hold(
            420,
            |_| 0,
            |pool, second, i| {
                let base = fast(i + second) * if incident(second) { 10 } else { 1 };
                base + if pool == Canary && second >= 330 {
                    20_000
                } else {
                    0
                }
            },
        );
        let first = regressed.first().copied();
        assert!(first.is_some_and(|s| (330..360).contains(&s)), "{first:?}");
    }

    #[test]
    fn a_user_no_longer_busy_does_not_bring_its_old_answers_back_as_recent_ones() {
        // Then, a bot's 1,000 answers of 1 s were left out of stable's (it was busy); now it is
        // not, and they are in `kept` again. Since then, 2,000 answers of 1 ms, none slower.
        let b = |micros: u64| histogram::index(micros);
        let mut then_all = vec![0u64; histogram::BUCKETS];
        then_all[b(1_000_000)] = 1_000;
        then_all[b(1_000)] = 500;
        let mut then_kept = then_all.clone();
        then_kept[b(1_000_000)] = 0;
        let mut now_all = then_all.clone();
        now_all[b(1_000)] += 2_000;
        let r = Reference {
            looks: 100,
            notes: VecDeque::from([Note {
                look: 30,
                all: then_all.into(),
                kept: then_kept.into(),
            }]),
            counted_with: None,
        };
        let recent = r.recent(&now_all, &now_all).expect("2,000 answers since");
        assert_eq!(recent.looks, 70);
        assert_eq!(histogram::total(&recent.latency), 2_000);
        assert_eq!(recent.latency[b(1_000_000)], 0);
    }
}
