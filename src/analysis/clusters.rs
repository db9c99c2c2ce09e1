//! Each pool's requests, errors and slow answers per cell of users since the comparison began.
//! A user's answers all fall in one cell (its hash, keyed per process, picks it), so the cells
//! make users, not requests, the unit of the comparison:
//!
//! - its variance: a few heavy users (a busy client, a bot) add to the variance of a pool's rate
//!   as much as they move it, where counted per request they would move it with a range as
//!   narrow as if their requests were as many users' ([`Spread::variance`]);
//! - leaving out each version's heaviest users: the cells with the most errors (or slow
//!   answers), whole, with every request since the comparison began
//!   ([`Clusters::without_heaviest`]), exact whatever the number of users.

use crate::analysis::stats::Arm;

/// Cells users are counted in. At 4,096, a pool of 100,000 users has about 24 in a cell, and
/// leaving out 4 cells leaves out a tenth of a percent of its users beside the heavy ones.
pub const CELLS: usize = 4_096;

/// The cells with the most hits of each kind known at every moment: the most a comparison
/// leaves out.
const TOP: usize = crate::analysis::counts::ERROR_USERS;

/// The cells with the most requests known at every moment: those whose weight in the variance
/// is worked out exactly (see [`Spread::variance`]).
const BUSIEST: usize = 16;

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
    hits: [u64; 2],
}

/// Per cell: counted requests, errors and slow answers, with the sums the variance needs kept
/// as cells grow, so that a look costs the same whatever the traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Clusters {
    cells: Box<[Cell]>,
    /// Per kind.
    sums: [Sums; 2],
    /// Per kind, the [`TOP`] cells with the most hits (of those with any), most first. Cells
    /// only grow (until cleared), so a cell's rank changes only when it does: the lists stay
    /// exact.
    top: [Vec<usize>; 2],
    /// The [`BUSIEST`] cells with the most requests, most first; exact likewise.
    busiest: Vec<usize>,
}

/// Over some cells, for one kind of hits e: Σn, Σe, Σn², Σe², Σn·e, and how many have requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    n: u128,
    e: u128,
    nn: u128,
    ee: u128,
    ne: u128,
    groups: u64,
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
        }
    }
}

impl Default for Clusters {
    fn default() -> Self {
        Clusters {
            cells: vec![Cell::default(); CELLS].into_boxed_slice(),
            sums: [Sums::default(); 2],
            top: [Vec::with_capacity(TOP + 1), Vec::with_capacity(TOP + 1)],
            busiest: Vec::with_capacity(BUSIEST + 1),
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
}

/// Puts `cell` in its place in `list` (the `most` cells with the highest `key`, highest first),
/// after its key grew. Stable: among equals, the one that got there first stays ahead.
fn place(list: &mut Vec<usize>, most: usize, cell: usize, key: impl Fn(usize) -> u64) {
    if !list.contains(&cell) {
        if list.len() >= most && list.last().is_some_and(|&last| key(last) >= key(cell)) {
            return;
        }
        list.push(cell);
    }
    list.sort_by_key(|&i| std::cmp::Reverse(key(i)));
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
        c.hits[0] += hits[0];
        c.hits[1] += hits[1];
        let after = *c;
        for kind in 0..2 {
            self.sums[kind] = self.sums[kind]
                .minus(Sums::of(before.n, before.hits[kind]))
                .plus(Sums::of(after.n, after.hits[kind]));
        }
        let cells = &self.cells;
        for (kind, top) in self.top.iter_mut().enumerate() {
            if hits[kind] > 0 {
                place(top, TOP, cell, |i| cells[i].hits[kind]);
            }
        }
        if requests > 0 {
            place(&mut self.busiest, BUSIEST, cell, |i| cells[i].n);
        }
    }

    pub(super) fn add(&mut self, other: &Clusters) {
        for (i, c) in other.cells.iter().enumerate() {
            if *c != Cell::default() {
                self.add_cell(i, c.n, c.hits);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.cells.fill(Cell::default());
        self.sums = [Sums::default(); 2];
        for top in &mut self.top {
            top.clear();
        }
        self.busiest.clear();
    }

    /// All cells.
    pub fn whole(&self, kind: Kind) -> Spread {
        self.without_heaviest(kind, 0)
    }

    /// Without the `k` cells with the most hits of `kind` (of those with any; at most
    /// [`crate::analysis::ERROR_USERS`]): each version's heaviest users by errors (or slow
    /// answers) left out, with all their requests.
    pub fn without_heaviest(&self, kind: Kind, k: usize) -> Spread {
        let kind = kind as usize;
        let top = &self.top[kind];
        let left_out = &top[..k.min(top.len())];
        let sums = left_out.iter().fold(self.sums[kind], |s, &i| {
            s.minus(Sums::of(self.cells[i].n, self.cells[i].hits[kind]))
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
            for &i in self.busiest.iter().filter(|i| !left_out.contains(i)) {
                let c = &self.cells[i];
                let (cn, ce) = (c.n as f64, c.hits[kind] as f64);
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_user_gives_about_the_variance_per_request() {
        let mut c = Clusters::default();
        // 4,000 users, one request each, every 20th failing: 5%.
        for u in 0..4_000usize {
            c.add_cell(u, 1, [u64::from(u % 20 == 0), 0]);
        }
        let s = c.whole(Kind::Errors);
        assert_eq!(
            s.arm,
            Arm {
                n: 4_000,
                hits: 200
            }
        );
        let binomial = 0.05 * 0.95 / 4_000.0;
        assert!(
            (s.variance / binomial - 1.0).abs() < 0.01,
            "{} vs {binomial}",
            s.variance
        );
    }

    #[test]
    fn a_heavy_user_widens_the_variance_by_as_much_as_it_moves_the_rate() {
        let mut c = Clusters::default();
        for u in 0..4_000usize {
            c.add_cell(u, 1, [u64::from(u % 20 == 0), 0]);
        }
        // One client with 1,000 requests that all fail: the rate goes from 5% to 24%.
        c.add_cell(4_000, 1_000, [1_000, 0]);
        let s = c.whole(Kind::Errors);
        let rate = s.arm.rate();
        assert!((rate - 0.24).abs() < 0.001, "{rate}");
        // How far it moves the rate: 0.19, a standard deviation as large as the move it made.
        let sd = s.variance.sqrt();
        assert!((0.185..0.195).contains(&sd), "{sd}");
        // Left out, it is gone with its requests, and the variance is the plain one again.
        let without = c.without_heaviest(Kind::Errors, 1);
        assert_eq!(
            without.arm,
            Arm {
                n: 4_000,
                hits: 200
            }
        );
        assert_eq!(without.left_out, 1);
        assert!((without.variance / (0.05 * 0.95 / 4_000.0) - 1.0).abs() < 0.01);
    }

    #[test]
    fn the_cells_with_the_most_errors_are_left_out_and_only_cells_with_errors() {
        let mut c = Clusters::default();
        c.add_cell(7, 100, [3, 0]);
        c.add_cell(8, 50, [9, 0]);
        c.add_cell(9, 10_000, [0, 0]);
        c.add_cell(10, 20, [3, 0]);
        c.add_cell(4_095, 5, [1, 0]);
        // 9 errors first, then of the two with 3 the one that had them first.
        assert_eq!(
            c.without_heaviest(Kind::Errors, 2).arm,
            Arm { n: 10_025, hits: 4 }
        );
        // Cells grow: the other with 3 gains an error and passes it.
        c.add_cell(10, 1, [1, 0]);
        assert_eq!(
            c.without_heaviest(Kind::Errors, 2).arm,
            Arm { n: 10_105, hits: 4 }
        );
        c.add_cell(10, 0, [0, 0]);
        // Cell 9 has no error: never left out.
        let all = c.without_heaviest(Kind::Errors, 7);
        assert_eq!((all.arm, all.left_out), (Arm { n: 10_000, hits: 0 }, 4));
        // The sums kept as cells grew are those of the cells.
        let mut again = Clusters::default();
        again.add(&c);
        assert_eq!(again, c);
        assert!(all.variance.is_infinite(), "one cell left");
        c.clear();
        assert_eq!(c.whole(Kind::Errors).arm, Arm::default());
        assert!(c.whole(Kind::Errors).variance.is_infinite());
        // Slow answers are counted apart: their heaviest cells are theirs.
        c.add_cell(3, 10, [0, 8]);
        c.add_cell(5, 30, [1, 2]);
        assert_eq!(
            c.without_heaviest(Kind::Errors, 1).arm,
            Arm { n: 10, hits: 0 }
        );
        let slow = c.without_heaviest(Kind::Slow, 1);
        assert_eq!((slow.arm, slow.left_out), (Arm { n: 30, hits: 2 }, 1));
        assert_eq!(c.whole(Kind::Slow).arm, Arm { n: 40, hits: 10 });
        c.clear();
        // A cell past the end is ignored.
        c.add_cell(CELLS, 1, [1, 0]);
        assert_eq!(c.whole(Kind::Errors).arm, Arm::default());
    }
}
