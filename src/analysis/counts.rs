//! What is counted per pool: on the request path in atomics ([`Recorder`]), drained once a second
//! by the analysis task into plain [`Counts`]. Fixed memory whatever the traffic: a latency
//! histogram, a distinct-user sketch, and a few counters; nothing per user, path or id.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::MAX_GOALS;
use crate::routing::{PerPool, PoolName};

use super::clusters::{CELLS, Clusters, TRACKED};
use super::histogram::{self, BUCKETS};
use super::users::{AtomicUsers, Users};

/// The most distinct users with errors (or slow answers) a regression may be asked to show in
/// (`guard.min_users`): enough to tell one client's doing (a bot, an attacker, one user's bad
/// input) from what many users meet.
pub const ERROR_USERS: usize = 8;

/// Cells of the per-user share: a user's answers in one second are counted in a cell its hash
/// (keyed) picks; the same cells count each pool's requests, errors and slow answers per cell
/// ([`Clusters`]).
const SHARE_CELLS: usize = CELLS;

/// Answers one user counts for in a second at least, whatever the traffic: a page and its first
/// assets (past it, some of the rest: see [`Cells::counts`]).
pub const SHARE_FLOOR: u32 = 20;

/// Past the floor, one user's share is this fraction of the pool's answers in the last second:
/// 1/512, eight times a cell's average load, so that users who share a cell are not cut short.
const SHARE_OF_POOL: u64 = 512;

/// A random key of this process, mixed into every hash before it picks a cell: the assignment
/// hash is public, and a client who could pick ids sharing a cell with other users' could cut
/// those users' answers out of the comparison. Fixed in unit tests, whose users would otherwise
/// share a cell in one run of some hundreds, and count differently.
static SHARE_KEY: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    if cfg!(test) {
        0x005E_ED0F_CE11
    } else {
        rand::random()
    }
});

/// The cell of a user's hash (of its low 48 bits).
#[inline]
fn share_cell(user: u64) -> usize {
    (((user & USER_BITS) ^ *SHARE_KEY).wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 52) as usize
        % SHARE_CELLS
}

/// The bits of a user's hash that pick its cell.
const USER_BITS: u64 = (1 << 48) - 1;

/// How many of `seen` answers in one second counted, with `share` counting whole (the rest by
/// chance: the n-th with a chance of share/n; see [`Cells::counts`]), expected.
fn counted_of(seen: u32, share: u32) -> u64 {
    if seen <= share || share == 0 {
        return u64::from(seen);
    }
    let (seen, share) = (f64::from(seen), f64::from(share));
    (share * (1.0 + (seen / share).ln())).round() as u64
}

/// Per goal, the distinct users who converted (a sketch each): the goal's verdict compares the
/// share of users who converted, so that one user's many requests or conversions weigh as one.
pub type Converted = [Users; MAX_GOALS];

/// One pool's figures over some span.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// The requests, errors and slow answers (slower than the latency check's threshold at the
    /// time) per cell of users, in the counts the verdicts judge (see [`Counts::judged`]); None
    /// elsewhere.
    pub clusters: Option<Box<Clusters>>,
    /// Requests per latency bucket (see [`histogram`]).
    pub latency: Box<[u64]>,
    pub users: Users,
    /// Conversions per configured goal.
    pub goals: [u64; MAX_GOALS],
    /// Answers past their user's share of a second, or without a user id (see
    /// [`Recorder::record`]): in none of the figures above but the distinct users and the goals'
    /// converted users.
    pub uncounted: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            requests: 0,
            errors: 0,
            clusters: None,
            latency: vec![0; BUCKETS].into_boxed_slice(),
            users: Users::default(),
            goals: [0; MAX_GOALS],
            uncounted: 0,
        }
    }
}

impl Counts {
    /// Empty counts as the verdicts judge them: with the requests, errors and slow answers per
    /// cell of users.
    pub fn judged() -> Counts {
        Counts {
            clusters: Some(Box::default()),
            ..Counts::default()
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        if let (Some(a), Some(b)) = (self.clusters.as_mut(), other.clusters.as_ref()) {
            a.add(b);
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
        self.users.merge(&other.users);
        for (a, b) in self.goals.iter_mut().zip(other.goals.iter()) {
            *a += b;
        }
        self.uncounted += other.uncounted;
    }

    pub fn clear(&mut self) {
        self.requests = 0;
        self.errors = 0;
        if let Some(c) = self.clusters.as_mut() {
            c.clear();
        }
        self.latency.fill(0);
        self.users.clear();
        self.goals = [0; MAX_GOALS];
        self.uncounted = 0;
    }
}

#[derive(Debug)]
struct Cells {
    errors: AtomicU64,
    /// Failed attempts a retry answered elsewhere: requests (and errors) without a latency.
    failed: AtomicU64,
    latency: Box<[AtomicU64]>,
    users: AtomicUsers,
    goals: [AtomicU64; MAX_GOALS],
    converted: [AtomicUsers; MAX_GOALS],
    /// Per cell, the answers of the users in it this second.
    share: Box<[AtomicU32]>,
    /// Per cell, the errors of the users in it this second.
    cell_errors: Box<[AtomicU32]>,
    /// Per cell, the answers of the users in it this second slower than the latency check's
    /// threshold.
    cell_slow: Box<[AtomicU32]>,
    /// The most answers one cell counts this second.
    share_cap: AtomicU32,
    uncounted: AtomicU64,
    /// Per cell, the slot (1-based) its latencies are counted in as well, 0 for none: the
    /// busiest cells since the comparison began, as the analysis last told ([`Recorder::track`]).
    tracked: Box<[AtomicU8]>,
    /// The slots: [`TRACKED`] of them.
    slots: Box<[Slot]>,
}

/// The latencies of one tracked cell.
#[derive(Debug)]
struct Slot {
    /// The cell + 1; 0 when free.
    cell: AtomicUsize,
    latency: Box<[AtomicU64]>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            cell: AtomicUsize::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Slot {
    /// Empties the counts, into `into` if given (its length BUCKETS).
    fn take(&self, mut into: Option<&mut [u64]>) {
        for (i, n) in self.latency.iter().enumerate() {
            if n.load(Ordering::Relaxed) != 0 {
                let v = n.swap(0, Ordering::Relaxed);
                if let Some(into) = into.as_deref_mut() {
                    into[i] = v;
                }
            }
        }
    }
}

impl Cells {
    /// Whether `user`'s answer counts in the comparison. Past its share of this second, the
    /// n-th answer still counts with a chance of share/n: the later requests of a page (its API
    /// calls, which may be the ones that fail) are not left out altogether, and a flood of n a
    /// second counts for about share × (1 + ln(n / share)). An answer without a user id is none
    /// of the comparison's: it went to stable by rule, not at random (minting off). Gives the
    /// user's cell if it counts.
    #[inline]
    fn counts(&self, user: Option<u64>) -> Option<usize> {
        let Some(user) = user else {
            self.uncounted.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let cell = share_cell(user);
        let seen = self.share[cell].fetch_add(1, Ordering::Relaxed);
        let share = self.share_cap.load(Ordering::Relaxed);
        if seen < share || rand::random::<u32>() % seen.saturating_add(1) < share {
            return Some(cell);
        }
        self.uncounted.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A counted error of a user in `cell`.
    #[inline]
    fn error(&self, cell: usize) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.cell_errors[cell].fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            errors: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            users: AtomicUsers::default(),
            goals: std::array::from_fn(|_| AtomicU64::new(0)),
            converted: std::array::from_fn(|_| AtomicUsers::default()),
            share: (0..SHARE_CELLS).map(|_| AtomicU32::new(0)).collect(),
            cell_errors: (0..SHARE_CELLS).map(|_| AtomicU32::new(0)).collect(),
            cell_slow: (0..SHARE_CELLS).map(|_| AtomicU32::new(0)).collect(),
            share_cap: AtomicU32::new(SHARE_FLOOR),
            uncounted: AtomicU64::new(0),
            tracked: (0..SHARE_CELLS).map(|_| AtomicU8::new(0)).collect(),
            slots: (0..TRACKED).map(|_| Slot::default()).collect(),
        }
    }
}

/// The request path's side: a few relaxed atomic adds per answer, no lock, no allocation.
#[derive(Debug)]
pub struct Recorder {
    pools: PerPool<Cells>,
    /// The latency check's "slow" threshold, µs, as the analysis last set it (`u64::MAX`: none
    /// yet): an answer slower than this counts as slow in its user's cell.
    slow_over: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            pools: PerPool::default(),
            slow_over: AtomicU64::new(u64::MAX),
        }
    }
}

impl Recorder {
    /// One answer from `pool`: whether it counts as an error, its latency (head to head), the
    /// user's hash if it has an id, and the goal it converts, if any.
    ///
    /// One user's answers count whole up to [`SHARE_FLOOR`] a second, or 1/512 of the pool's
    /// answers in the last second if that is more, and past that share only by chance
    /// ([`Cells::counts`]). An answer left out still counts its user (as one of the distinct
    /// users, and as a goal's converted user) but not in the requests, errors, latencies and
    /// conversions: else one client's flood of fast answers on stable would pull stable's figures
    /// to its own, and the canary would look worse beside them. Gives whether it counted.
    #[inline]
    pub fn record(
        &self,
        pool: PoolName,
        error: bool,
        micros: u64,
        user: Option<u64>,
        goal: Option<usize>,
    ) -> bool {
        let c = &self.pools[pool];
        let goal = goal.filter(|&g| g < MAX_GOALS);
        if let Some(u) = user {
            c.users.add(u);
            if let Some(g) = goal {
                c.converted[g].add(u);
            }
        }
        let Some(cell) = c.counts(user) else {
            return false;
        };
        let bucket = histogram::index(micros);
        c.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let slot = c.tracked[cell].load(Ordering::Relaxed);
        if slot != 0
            && let Some(s) = c.slots.get(usize::from(slot) - 1)
        {
            s.latency[bucket].fetch_add(1, Ordering::Relaxed);
        }
        if error {
            c.error(cell);
        }
        if micros > self.slow_over.load(Ordering::Relaxed) {
            c.cell_slow[cell].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(g) = goal {
            c.goals[g].fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Sets the threshold above which an answer is slow (the latency check's, µs; `None`: none).
    pub fn slow_over(&self, micros: Option<f64>) {
        let v = micros
            .filter(|m| m.is_finite())
            .map_or(u64::MAX, |m| m as u64);
        self.slow_over.store(v, Ordering::Relaxed);
    }

    /// An attempt an upstream of `pool` failed (it refused the connection, or closed or reset it
    /// without an answer) that a retry answered elsewhere: the user did not see it, but it is a
    /// request `pool` failed, so it counts as one, and as an error (with no latency). Otherwise a
    /// canary that crashes on some requests would look flawless while stable serves them again.
    #[inline]
    pub fn failed_attempt(&self, pool: PoolName, user: Option<u64>) {
        let c = &self.pools[pool];
        if let Some(u) = user {
            c.users.add(u);
        }
        let Some(cell) = c.counts(user) else {
            return;
        };
        c.failed.fetch_add(1, Ordering::Relaxed);
        c.error(cell);
    }

    /// An answer from `pool`, recorded already and counted ([`Recorder::record`] said so), whose
    /// body the upstream broke off (cut short, reset, stalled, malformed): an error after all.
    #[inline]
    pub fn broken_body(&self, pool: PoolName, user: Option<u64>) {
        let c = &self.pools[pool];
        // Only an answer with a user id is counted (`record`).
        if let Some(u) = user {
            c.error(share_cell(u));
        }
    }

    /// Counts the latencies of `cells` of `pool` (at most [`TRACKED`]) apart from now on, and
    /// of no other cell: the busiest cells since the comparison began
    /// ([`Clusters::busiest`]), so that leaving one out takes its latencies too. A cell no
    /// longer told loses what was counted of it since the last drain.
    pub fn track(&self, pool: PoolName, cells: &[usize]) {
        let c = &self.pools[pool];
        let cells = &cells[..cells.len().min(TRACKED)];
        for slot in c.slots.iter() {
            let was = slot.cell.load(Ordering::Relaxed);
            if was != 0 && !cells.contains(&(was - 1)) {
                if let Some(t) = c.tracked.get(was - 1) {
                    t.store(0, Ordering::Relaxed);
                }
                slot.cell.store(0, Ordering::Relaxed);
                slot.take(None);
            }
        }
        for &cell in cells {
            let Some(t) = c.tracked.get(cell) else {
                continue;
            };
            if t.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let free = c
                .slots
                .iter()
                .position(|s| s.cell.load(Ordering::Relaxed) == 0);
            if let Some(i) = free {
                c.slots[i].cell.store(cell + 1, Ordering::Relaxed);
                // TRACKED ≤ 255: a slot number fits.
                t.store(i as u8 + 1, Ordering::Relaxed);
            }
        }
    }

    /// Adds the users who converted since the last drain to `into` (not cleared: it grows).
    pub fn drain_converted(&self, into: &mut PerPool<Converted>) {
        for pool in PoolName::BOTH {
            for (cell, users) in self.pools[pool].converted.iter().zip(into[pool].iter_mut()) {
                cell.drain_into(users);
            }
        }
    }

    /// Moves everything recorded since the last drain into `into` (cleared first).
    pub fn drain(&self, into: &mut PerPool<Counts>) {
        for pool in PoolName::BOTH {
            let (cells, counts) = (&self.pools[pool], &mut into[pool]);
            counts.clear();
            let mut requests = 0;
            for (cell, n) in cells.latency.iter().zip(counts.latency.iter_mut()) {
                if cell.load(Ordering::Relaxed) != 0 {
                    *n = cell.swap(0, Ordering::Relaxed);
                    requests += *n;
                }
            }
            counts.requests = requests + cells.failed.swap(0, Ordering::Relaxed);
            counts.errors = cells.errors.swap(0, Ordering::Relaxed);
            let share = cells.share_cap.load(Ordering::Relaxed);
            cells.users.drain_into(&mut counts.users);
            for (cell, n) in cells.goals.iter().zip(counts.goals.iter_mut()) {
                *n = cell.swap(0, Ordering::Relaxed);
            }
            counts.uncounted = cells.uncounted.swap(0, Ordering::Relaxed);
            // A new second of shares, the cap from what this one counted; its requests, errors
            // and slow answers per cell to the clusters.
            let per_cell = cells.cell_errors.iter().zip(cells.cell_slow.iter());
            for (i, (seen, (errors, slow))) in cells.share.iter().zip(per_cell).enumerate() {
                let seen = seen.swap(0, Ordering::Relaxed);
                let hits = [errors, slow].map(|h| u64::from(h.swap(0, Ordering::Relaxed)));
                if let Some(c) = counts.clusters.as_mut()
                    && (u64::from(seen) | hits[0] | hits[1]) != 0
                {
                    c.add_cell(i, counted_of(seen, share), hits);
                }
            }
            // The tracked cells' latencies.
            if let Some(c) = counts.clusters.as_mut() {
                let mut latency = vec![0; BUCKETS];
                for slot in cells.slots.iter() {
                    let cell = slot.cell.load(Ordering::Relaxed);
                    if cell != 0 {
                        latency.fill(0);
                        slot.take(Some(&mut latency));
                        if latency.iter().any(|&n| n != 0) {
                            c.add_latency(cell - 1, &latency);
                        }
                    }
                }
            }
            let answers = counts.requests + counts.uncounted;
            let cap = (answers / SHARE_OF_POOL).clamp(u64::from(SHARE_FLOOR), u64::from(u32::MAX));
            cells.share_cap.store(cap as u32, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
