//! Each pool's requests, errors and slow answers per cell of users since the comparison began.
//! A user's answers all fall in one cell (its hash, keyed per process, picks it), so the cells
//! make users, not requests, the unit of the comparison:
//!
//! - its variance: a few heavy users (a busy client, a bot) add to the variance of a pool's rate
//!   as much as they move it, where counted per request they would move it with a range as
//!   narrow as if their requests were as many users' ([`Spread::variance`]);
//! - leaving out each version's busy users: the cells with far more requests than a user's
//!   usual, whole, with every request since the comparison began ([`Clusters::without_busy`]),
//!   chosen by their requests, never by their errors, so that leaving them out leans neither
//!   way.

use crate::analysis::stats::Arm;

/// Cells users are counted in. At 4,096, a pool of 100,000 users has about 24 in a cell, and
/// leaving out 4 cells leaves out a tenth of a percent of its users beside the heavy ones.
pub const CELLS: usize = 4_096;

/// The cells with the most requests known at every moment: those whose weight in the variance
/// is worked out exactly (see [`Spread::variance`]), and the most a comparison leaves out.
const BUSIEST: usize = 16;

/// The cells with the most requests whose latencies are counted apart, so that the busy ones'
/// can be taken out of their pool's ([`Clusters::latency_without_busy`]). The [`BUSIEST`] are
/// the first of them.
pub const TRACKED: usize = 64;

/// A cell is busy when it has more than this many times the requests of the average cell
/// outside the [`BUSIEST`].
const BUSY: u128 = 8;

/// The most a busy cell's latencies counted are scaled up by, to stand for its answers from
/// before they were counted too: at most 4, so that a few answers counted are not taken as
/// many (from buckets where they may be other users').
pub const MAX_SCALE: f64 = 4.0;

/// What a cell counts of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Errors = 0,
    /// Answers slower than the latency check's threshold at the time.
    Slow = 1,
}

/// One cell: counted requests, and its errors and slow answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cell {
    n: u64,
    /// Requests since its slow answers were last forgotten ([`Clusters::clear_slow`]): the
    /// slow share's, which a recount starts afresh as it does the slow answers (else the share
    /// showed 0% slow beside everyone's 100%, and a halt came later).
    slow_n: u64,
    hits: [u64; 2],
}

impl Cell {
    /// Its requests as counted for `kind` (an index of [`Kind`]).
    fn requests(&self, kind: usize) -> u64 {
        if kind == Kind::Slow as usize {
            self.slow_n
        } else {
            self.n
        }
    }
}

/// Per cell: counted requests, errors and slow answers, with the sums the variance needs kept
/// as cells grow, so that a look costs the same whatever the traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Clusters {
    cells: Box<[Cell]>,
    /// Per kind.
    sums: [Sums; 2],
    /// The [`TRACKED`] cells with the most requests, most first (the first [`BUSIEST`] of them
    /// are the busiest). Cells only grow (until cleared), so a cell's rank changes only when it
    /// does: the list stays exact.
    busiest: Vec<usize>,
    /// Latencies of cells among the busiest, counted from the second after each became one of
    /// them (the recorder counts the latencies of the cells it is told to:
    /// [`Clusters::busiest`]): what leaving a busy cell out takes from its pool's latencies
    /// ([`Clusters::latency_without_busy`]).
    latency: Vec<Tracked>,
}

/// The latencies of one cell counted apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub cell: usize,
    /// The cell's requests before its latencies were counted: with the cell's requests since,
    /// how much of its answers they stand for; and which time it was counted apart (a cell
    /// that left the busiest and came back starts again from nothing).
    pub before: u64,
    /// Counts per bucket (see [`histogram`](super::histogram)).
    pub counts: Box<[u64]>,
}

/// Over some cells, for one kind of hits e: Σn, Σe, Σn², Σe², Σn·e, how many have requests and
/// how many have hits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    n: u128,
    e: u128,
    nn: u128,
    ee: u128,
    ne: u128,
    groups: u64,
    hit_groups: u64,
}

impl Sums {
    fn of(n: u64, e: u64) -> Sums {
        let (n, e) = (u128::from(n), u128::from(e));
        Sums {
            n,
            e,
            nn: n * n,
            ee: e * e,
            ne: n * e,
            groups: u64::from(n > 0),
            hit_groups: u64::from(e > 0),
        }
    }

    fn plus(self, o: Sums) -> Sums {
        Sums {
            n: self.n + o.n,
            e: self.e + o.e,
            nn: self.nn + o.nn,
            ee: self.ee + o.ee,
            ne: self.ne + o.ne,
            groups: self.groups + o.groups,
            hit_groups: self.hit_groups + o.hit_groups,
        }
    }

    fn minus(self, o: Sums) -> Sums {
        Sums {
            n: self.n.saturating_sub(o.n),
            e: self.e.saturating_sub(o.e),
            nn: self.nn.saturating_sub(o.nn),
            ee: self.ee.saturating_sub(o.ee),
            ne: self.ne.saturating_sub(o.ne),
            groups: self.groups.saturating_sub(o.groups),
            hit_groups: self.hit_groups.saturating_sub(o.hit_groups),
        }
    }
}

impl Default for Clusters {
    fn default() -> Self {
        Clusters {
            cells: vec![Cell::default(); CELLS].into_boxed_slice(),
            sums: [Sums::default(); 2],
            busiest: Vec::with_capacity(TRACKED + 1),
            latency: Vec::new(),
        }
    }
}

/// A pool's requests and hits of one kind over some cells, and the variance of its rate with
/// cells as the unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub arm: Arm,
    /// The cluster-robust variance of hits / requests over the G cells with requests, cell k
    /// with n_k requests and e_k hits of N and E:
    ///
    ///   G/(G − 1) · Σ (e_k − p̂·n_k)² / (N − n_k)²,   p̂ = E/N
    ///
    /// Each term is the square of how far leaving cell k out moves the rate (the jackknife's
    /// leave-one-out), so a heavy user adds the square of how far it moves the rate, however
    /// large its share. The delta method's N² in place of (N − n_k)² is the same for light
    /// cells, but gives a user with half the requests only half its move, and a client on
    /// stable that never failed then still halted a healthy canary in 2% of simulated holds.
    /// (N − n_k)² is used for the [`BUSIEST`] cells, N² for the rest, so that a look costs the
    /// same whatever the number of cells. With one request per user it is about p̂(1 − p̂)/N,
    /// the variance counted per request. Infinite with fewer than two cells.
    pub variance: f64,
    /// Cells left out.
    pub left_out: usize,
    /// Cells with hits, of those kept: about the users who met one.
    pub hit_cells: u64,
    /// Over the cells kept: Σn², Σn·e, Σe² (for a variance at another rate).
    pub squares: [f64; 3],
}

impl Spread {
    /// Σ (e_k − p·n_k)² over the cells kept: how far they stray from the rate `p`.
    pub fn deviation(&self, p: f64) -> f64 {
        let [nn, ne, ee] = self.squares;
        (ee - 2.0 * p * ne + p * p * nn).max(0.0)
    }
}

/// Puts `cell` in its place in `list` (the `most` cells with the highest `key`, highest first),
/// after its key grew. Stable: among equals, the one that got there first stays ahead. O(1) for
/// a cell below the last of a full list (most of them), O(`most`) at worst.
fn place(list: &mut Vec<usize>, most: usize, cell: usize, key: impl Fn(usize) -> u64) {
    let k = key(cell);
    // Every cell in the list has a key at least the last's: one below it is not in the list.
    let below = |last: usize| key(last) > k || (key(last) == k && !list.contains(&cell));
    if list.len() >= most && list.last().is_some_and(|&last| below(last)) {
        return;
    }
    let mut at = match list.iter().position(|&c| c == cell) {
        Some(at) => at,
        None => {
            list.push(cell);
            list.len() - 1
        }
    };
    while at > 0 && key(list[at - 1]) < k {
        list.swap(at - 1, at);
        at -= 1;
    }
    list.truncate(most);
}

impl Clusters {
    /// Adds `requests` and `hits` (errors, slow answers) to `cell`.
    pub(super) fn add_cell(&mut self, cell: usize, requests: u64, hits: [u64; 2]) {
        let Some(c) = self.cells.get_mut(cell) else {
            return;
        };
        let before = *c;
        c.n += requests;
        c.slow_n += requests;
        c.hits[0] += hits[0];
        c.hits[1] += hits[1];
        let after = *c;
        for kind in 0..2 {
            self.sums[kind] = self.sums[kind]
                .minus(Sums::of(before.requests(kind), before.hits[kind]))
                .plus(Sums::of(after.requests(kind), after.hits[kind]));
        }
        let cells = &self.cells;
        if requests > 0 {
            place(&mut self.busiest, TRACKED, cell, |i| cells[i].n);
        }
    }

    /// Adds latencies of `cell` (counts per bucket), of requests already added to the cell.
    pub(super) fn add_latency(&mut self, cell: usize, counts: &[u64]) {
        self.add_latency_since(cell, counts, 0);
    }

    /// Adds latencies of `cell`; if they are the first, the cell had `before` requests then.
    fn add_latency_since(&mut self, cell: usize, counts: &[u64], before: u64) {
        let at = match self.latency.iter().position(|t| t.cell == cell) {
            Some(at) => at,
            None => {
                self.latency.push(Tracked {
                    cell,
                    before,
                    counts: vec![0; counts.len()].into_boxed_slice(),
                });
                self.latency.len() - 1
            }
        };
        let mine = &mut self.latency[at].counts;
        for (a, b) in mine.iter_mut().zip(counts) {
            *a += b;
        }
    }

    /// Adds `other`'s cells, and its latencies of the cells among the busiest after that (a
    /// cell that fell out of them is no longer counted, and what it had is dropped).
    pub(super) fn add(&mut self, other: &Clusters) {
        for (i, c) in other.cells.iter().enumerate() {
            // Field by field, not `!= Cell::default()`: a look goes through every cell.
            if c.n | c.slow_n | c.hits[0] | c.hits[1] != 0 {
                self.add_cell(i, c.n, c.hits);
            }
        }
        for t in &other.latency {
            // The cell's requests before these latencies (if they are its first counted).
            let before = match (self.cells.get(t.cell), other.cells.get(t.cell)) {
                (Some(mine), Some(theirs)) => mine.n.saturating_sub(theirs.n) + t.before,
                _ => 0,
            };
            self.add_latency_since(t.cell, &t.counts, before);
        }
        let busiest = &self.busiest;
        self.latency.retain(|t| busiest.contains(&t.cell));
    }

    /// Forgets every cell's slow answers (counted by a threshold that no longer holds), and the
    /// requests they were counted of: the slow share starts afresh.
    pub(super) fn clear_slow(&mut self) {
        for c in self.cells.iter_mut() {
            c.hits[Kind::Slow as usize] = 0;
            c.slow_n = 0;
        }
        self.sums[Kind::Slow as usize] = Sums::default();
    }

    pub(super) fn clear(&mut self) {
        self.cells.fill(Cell::default());
        self.sums = [Sums::default(); 2];
        self.busiest.clear();
        self.latency.clear();
    }

    /// The [`TRACKED`] cells with the most requests, most first: those whose latencies are to be
    /// counted apart.
    pub fn busiest(&self) -> &[usize] {
        &self.busiest
    }

    /// The [`BUSIEST`] cells with the most requests, most first.
    fn top(&self) -> &[usize] {
        &self.busiest[..self.busiest.len().min(BUSIEST)]
    }

    /// `all` (the pool's latency histogram) without the busy cells' latencies, and how many
    /// cells were left out: of the [`TRACKED`] with the most requests, every one with more
    /// than [`BUSY`] times the requests of the average cell outside the [`BUSIEST`]. Unlike the rates',
    /// however many there are: a reference taken without busy users leans neither way, and
    /// with none left out once 16 were busy, 16 busy clients on stable with fast answers pulled
    /// stable's p99 down to theirs and halted a healthy canary, and with slow ones hid a canary
    /// 100 ms slower for everyone. A busy cell's latencies from before they were counted (its
    /// first second or so) are taken as those counted since: left in, a busy client's first
    /// second of slow answers stayed in stable's p99 for minutes.
    pub fn latency_without_busy(&self, all: &[u64]) -> (Box<[u64]>, usize) {
        let mut kept: Box<[u64]> = all.into();
        for (t, scale) in self.busy_latencies() {
            for (a, b) in kept.iter_mut().zip(t.counts.iter()) {
                *a = a.saturating_sub((*b as f64 * scale).round() as u64);
            }
        }
        (kept, self.busy_of(&self.busiest).len())
    }

    /// Each cell's requests.
    pub fn requests_per_cell(&self) -> Box<[u64]> {
        self.cells.iter().map(|c| c.n).collect()
    }

    /// The latencies of every cell counted apart.
    pub fn tracked_latencies(&self) -> &[Tracked] {
        &self.latency
    }

    /// The busy cells' latencies counted apart, as [`Clusters::latency_without_busy`] takes
    /// them out: per cell, its latencies and how many answers each stands for (its answers
    /// from before they were counted taken as those counted since, at most 4 times).
    pub fn busy_latencies(&self) -> Vec<(&Tracked, f64)> {
        let busy = self.busy_of(&self.busiest);
        self.latency
            .iter()
            .filter(|t| busy.contains(&t.cell))
            .map(|t| {
                let n = self.cells.get(t.cell).map_or(0, |c| c.n);
                // n / (n − before): all its requests over those whose latencies were counted.
                let scale = if n > t.before {
                    (n as f64 / (n - t.before) as f64).min(MAX_SCALE)
                } else {
                    1.0
                };
                (t, scale)
            })
            .collect()
    }

    /// All cells.
    pub fn whole(&self, kind: Kind) -> Spread {
        self.without(kind, &[])
    }

    /// Without the busy cells: of the [`BUSIEST`], those with more than [`BUSY`] times the
    /// requests of the average cell outside them — a bot, a busy client, a batch job, with all
    /// their requests. Chosen by requests, never by hits: leaving out the users with the most
    /// errors takes more of them from the version with more users, and at a 90% share that
    /// halted a healthy canary (three of thirty users who always fail were on stable, and all
    /// left out), and at 10% hid a regression for good.
    pub fn without_busy(&self, kind: Kind) -> Spread {
        self.without(kind, &self.busy())
    }

    /// The busy cells (see [`Clusters::without_busy`]); none when there is nothing to tell busy
    /// from usual by, or as many are busy as are known.
    fn busy(&self) -> Vec<usize> {
        let busy = self.busy_of(self.top());
        // As many busy cells as are known: there may be more, and leaving out some of them
        // only would tip the comparison as leaving out a few failing users did. So many busy
        // users are no outliers: none is left out, and the variance with users as the unit
        // takes them as they are.
        if busy.len() >= BUSIEST {
            return Vec::new();
        }
        busy
    }

    /// Of `candidates` (the first of the cells with the most requests), those with more than
    /// [`BUSY`] times the requests of the average cell outside the [`BUSIEST`].
    fn busy_of(&self, candidates: &[usize]) -> Vec<usize> {
        // All requests: the errors' sums count them all.
        let all = self.sums[0];
        let top = self.top();
        let n = top
            .iter()
            .map(|&i| u128::from(self.cells[i].n))
            .sum::<u128>();
        let rest = all.groups.saturating_sub(top.len() as u64);
        if rest == 0 {
            return Vec::new();
        }
        let usual = (all.n.saturating_sub(n) / u128::from(rest)).max(1);
        candidates
            .iter()
            .copied()
            .filter(|&i| u128::from(self.cells[i].n) > BUSY * usual)
            .collect()
    }

    /// Without the cells `left_out`.
    fn without(&self, kind: Kind, left_out: &[usize]) -> Spread {
        let kind = kind as usize;
        let sums = left_out.iter().fold(self.sums[kind], |s, &i| {
            s.minus(Sums::of(
                self.cells[i].requests(kind),
                self.cells[i].hits[kind],
            ))
        });
        // A hit past the requests counted (a cell past its share counts by chance) is none.
        let arm = Arm {
            n: u64::try_from(sums.n).unwrap_or(u64::MAX),
            hits: u64::try_from(sums.e.min(sums.n)).unwrap_or(u64::MAX),
        };
        let variance = if sums.groups < 2 || sums.n == 0 {
            f64::INFINITY
        } else {
            // Σ (e − p·n)² = Σe² − 2p·Σne + p²·Σn², with p = Σe/Σn.
            let (n, e) = (sums.n as f64, sums.e as f64);
            let p = e / n;
            let squares = sums.ee as f64 - 2.0 * p * sums.ne as f64 + p * p * sums.nn as f64;
            // The busiest cells' own terms, over (N − n_k)².
            let (mut theirs, mut moved) = (0.0, 0.0);
            for &i in self.top().iter().filter(|i| !left_out.contains(i)) {
                let c = &self.cells[i];
                let (cn, ce) = (c.requests(kind) as f64, c.hits[kind] as f64);
                let off = (ce - p * cn) * (ce - p * cn);
                theirs += off;
                moved += off / ((n - cn) * (n - cn));
            }
            let g = sums.groups as f64;
            g / (g - 1.0) * ((squares - theirs).max(0.0) / (n * n) + moved)
        };
        Spread {
            arm,
            variance,
            left_out: left_out.len(),
            hit_cells: sums.hit_groups,
            squares: [sums.nn as f64, sums.ne as f64, sums.ee as f64],
        }
    }
}

#[cfg(test)]
mod tests;
