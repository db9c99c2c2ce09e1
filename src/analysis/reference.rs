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
            v = self.verdicts(since, t);
        }
        if self.looks.is_multiple_of(EVERY) {
            self.note(&since.stable);
        }
        v
    }

    /// The verdicts as the last look would see `since` now.
    pub fn verdicts(&self, since: &PerPool<Counts>, t: &Thresholds) -> Verdicts {
        verdicts_over(since, self.recent(&since.stable).as_ref(), t)
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
mod tests {
    use super::*;
    use crate::analysis::guard::Verdict;
    use crate::analysis::looks::Looks;
    use crate::routing::PoolName::{self, Canary, Stable};

    /// 1–2 ms, spread by `i`.
    fn fast(i: u64) -> u64 {
        1_000 + i * 7_919 % 1_000
    }

    /// Who sends a hold's requests: ever new users, or so many users a version and one bot.
    #[derive(Clone, Copy)]
    enum Who {
        EverNew,
        Users(u64),
    }

    /// `seconds` looks of 30 requests a second on each version (from `who`), each answer taking
    /// `micros(pool, second, i)`; `extra(second)` more stable answers that second (ever new
    /// users', or the bot's), each `micros(Stable, second, i)` of its own. The looks whose
    /// verdict was Regressed.
    fn hold(
        seconds: u64,
        who: Who,
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
                    let id = match who {
                        Who::EverNew => user,
                        Who::Users(_) if i >= 30 => u64::MAX,
                        Who::Users(users) => ((pool as u64) << 40) | (user % users),
                    };
                    let took = micros(pool, second, i);
                    looks.r.record(pool, false, took, Some(id), None);
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
            Who::EverNew,
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
            Who::EverNew,
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

    /// A second of 30 requests on each version from a thousand users a version, 3% of the
    /// answers taking 60 ms (the p99 is that) and the rest 1–2 ms.
    fn light_with_a_tail(looks: &Looks, second: u64) {
        for i in 0..30u64 {
            let n = second * 30 + i;
            let took = if n.is_multiple_of(33) {
                60_000
            } else {
                fast(n)
            };
            for pool in [Stable, Canary] {
                let user = ((pool as u64 + 1) << 40) | (n % 1_000);
                looks.r.record(pool, false, took, Some(user), None);
            }
        }
    }

    /// What a hold of light users with a tail showed.
    struct Tail {
        looks: Looks,
        /// The looks whose verdict was Regressed.
        regressed: Vec<u64>,
        /// The lowest and highest slow thresholds from the hold's `from` on (µs; none counts as
        /// 0 for the lowest and as infinite for the highest).
        lowest: f64,
        highest: f64,
    }

    /// `seconds` looks of [`light_with_a_tail`], and `more(looks, second)` beside it.
    fn with_a_tail(seconds: u64, from: u64, more: impl Fn(&Looks, u64)) -> Tail {
        let mut t = Tail {
            looks: Looks::new(true),
            regressed: Vec::new(),
            lowest: f64::INFINITY,
            highest: 0.0,
        };
        for second in 0..seconds {
            light_with_a_tail(&t.looks, second);
            more(&t.looks, second);
            let v = t.looks.look();
            if v.latency.verdict == Verdict::Regressed {
                t.regressed.push(second);
            }
            if second >= from {
                let slow = v.latency.slow_micros;
                t.lowest = t.lowest.min(slow.unwrap_or(0.0));
                t.highest = t.highest.max(slow.unwrap_or(f64::INFINITY));
            }
        }
        t
    }

    #[test]
    fn stable_users_who_turn_busy_later_do_not_take_their_earlier_answers_out_of_the_reference() {
        // A hostile tester's: on both versions 3% of answers take 60 ms (stable's p99 is that).
        // Twenty stable users ask for a 60 ms report 2.5 times a second between them for two
        // minutes — ordinary users then — and then send 10 fast requests a second each for
        // 10 s, and are busy from then on. Taking their whole history out of the last minute's
        // answers took its 60 ms answers with it: stable's p99 read 4.5 ms, and the healthy
        // canary's 3% at 60 ms halted it.
        let t = with_a_tail(240, 0, |looks, second| {
            let twenty = |k: u64| Some((1 << 42) | (k % 20));
            if second < 120 {
                for r in 0..2 + second % 2 {
                    looks
                        .r
                        .record(Stable, false, 60_000, twenty(second * 5 / 2 + r), None);
                }
            } else if second < 130 {
                for k in 0..200 {
                    looks.r.record(Stable, false, fast(k), twenty(k), None);
                }
            }
        });
        assert_eq!(t.regressed, Vec::<u64>::new());
        let left = t.looks.verdicts().slow_left_out.expect("a threshold");
        assert!(left.users.stable > 0, "the twenty are busy: {left:?}");
        let p99 = left.stable_p99.unwrap_or(0.0);
        assert!(p99 > 50_000.0, "stable's p99 {p99} µs: {left:?}");
    }

    #[test]
    fn a_user_long_known_and_newly_busy_is_taken_out_as_much_as_it_sent() {
        // A hostile tester's: on both versions 3% of answers take 60 ms; 64 stable clients
        // send a fast request a second each; eight stable bots send a fast one every second or
        // two, and in turn, from 70 s, 50 requests a second for 9 s for a 60 ms report. Each
        // turns busy in its turn, long after it was first seen: its answers counted apart
        // were scaled by all its requests over those counted (up to 4 times), as if most of
        // its answers in the stretch had not been counted, and others' 60 ms answers went
        // with them. Stable's p99 over the last minute read 4 ms for a minute.
        let t = with_a_tail(180, 100, |looks, second| {
            for k in 0..64u64 {
                looks
                    .r
                    .record(Stable, false, fast(k), Some((1 << 42) | k), None);
            }
            for bot in 0..8u64 {
                let id = Some((1 << 43) | bot);
                let turn = 70 + bot * 10;
                if (turn..turn + 9).contains(&second) {
                    for _ in 0..50 {
                        looks.r.record(Stable, false, 60_000, id, None);
                    }
                } else if (second + bot) % 5 < 3 {
                    looks.r.record(Stable, false, fast(bot), id, None);
                }
            }
        });
        assert_eq!(t.regressed, Vec::<u64>::new());
        assert!(t.lowest > 60_000.0, "the threshold fell to {} µs", t.lowest);
    }

    #[test]
    fn a_busy_users_failed_attempts_do_not_take_others_answers_out_of_the_reference() {
        // A hostile tester's: on both versions 3% of answers take 60 ms; two stable clients
        // ask for a 60 ms report 20 times a second each, and one of stable's two servers
        // drops some connections, so about one of their requests in seven is a failed attempt
        // that a retry answers (a request without a latency). Their answers counted apart
        // were scaled by their requests in a stretch over those answers, as if a seventh of
        // their answers had come before they were counted apart, and others' 60 ms answers
        // went with the excess: stable's p99 over its last minute read 1.9 ms, and the
        // healthy canary's 3% at 60 ms halted it at 79 s.
        let t = with_a_tail(180, 30, |looks, second| {
            for k in 0..40u64 {
                let id = Some((1 << 44) | (k % 2));
                if (second * 40 + k).is_multiple_of(7) {
                    looks.r.failed_attempt(Stable, id);
                }
                looks.r.record(Stable, false, 60_000, id, None);
            }
        });
        assert_eq!(t.regressed, Vec::<u64>::new());
        assert!(t.lowest > 60_000.0, "the threshold fell to {} µs", t.lowest);
        let left = t.looks.verdicts().slow_left_out.expect("a threshold");
        assert!(left.users.stable > 0, "the two clients are busy: {left:?}");
    }

    #[test]
    fn new_busy_users_answers_from_before_they_were_busy_leave_the_reference_within_a_minute() {
        // A hostile tester's: 40 stable users, one more each second, each asking for a 200 ms
        // report 6 times a second for 10 s in every 40 (then one fast request each 5 s). Until
        // each has 8 times the usual user's requests (its first 2–3 s) it is an ordinary user,
        // and its 200 ms answers then stay in stable's stretches: enough, from 40 users in
        // 40 s, to make stable's p99 over its last minute 200 ms (a documented limit). Once no
        // new one comes, they leave the reference a minute later; the busy ones' later answers
        // never enter it.
        let t = with_a_tail(150, 110, |looks, second| {
            for k in (0..40u64).filter(|&k| k <= second) {
                let id = Some((1 << 45) | k);
                if (second - k) % 40 < 10 {
                    for _ in 0..6 {
                        looks.r.record(Stable, false, 200_000, id, None);
                    }
                } else if (second - k).is_multiple_of(5) {
                    looks.r.record(Stable, false, fast(k), id, None);
                }
            }
        });
        assert!(t.highest < 100_000.0, "the threshold {} µs", t.highest);
        let left = t.looks.verdicts().slow_left_out.expect("a threshold");
        assert!(left.users.stable >= 35, "the forty are busy: {left:?}");
    }

    #[test]
    fn a_user_no_longer_busy_does_not_bring_its_old_answers_back_as_recent_ones() {
        // A stable bot's 1,000 answers of a second in its first 5 s: busy, left out. Fifty
        // light users, 30 requests a second between them, pass its requests per user after
        // about 3 minutes, and it is busy no more; its answers are minutes old, and stay out
        // of the last minute's.
        let (looks, regressed) = hold(
            300,
            Who::Users(50),
            |second| if (5..10).contains(&second) { 200 } else { 0 },
            |pool, second, i| match pool {
                Stable if (5..10).contains(&second) && i >= 30 => 1_000_000,
                _ => fast(i + second),
            },
        );
        assert_eq!(regressed, Vec::<u64>::new());
        let left = looks.verdicts().slow_left_out.expect("a threshold");
        assert_eq!(left.users.stable, 0, "{left:?}");
        let p99 = left.stable_p99.unwrap_or(f64::INFINITY);
        assert!(p99 < 3_000.0, "stable's p99 {p99} µs: {left:?}");
    }
}
