//! Distinct users, counted approximately in fixed memory: a HyperLogLog (Flajolet, Fusy,
//! Gandouet, Meunier 2007) of 4,096 one-byte registers, fed by the hash routing computes anyway,
//! so no id is ever kept. Relative standard error 1.04 / √4096 ≈ 1.6%.

use std::sync::atomic::{AtomicU8, Ordering};

const P: u32 = 12;

/// Registers per sketch.
pub const REGISTERS: usize = 1 << P;

/// The estimate's relative standard error.
pub const REL_ERROR: f64 = 1.04 / 64.0;

/// A random key of this process, mixed into every hash before it is placed. The assignment hash
/// is public (anyone who knows the rollout id can compute it), so without a key a client could
/// pick ids whose ranks are high and make a few thousand requests look like millions of users.
static KEY: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);

/// Register index and rank of a user hash. The hash is keyed and mixed first (it also decided
/// the pool, which conditions its low bits).
#[inline]
fn place(hash: u64) -> (usize, u8) {
    let h = (hash ^ *KEY)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17);
    let index = (h >> (64 - P)) as usize;
    let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
    (index, rank)
}

/// The sketch the request path writes: one atomic max per request, and usually not even that
/// (a register rarely grows once the count is large).
#[derive(Debug)]
pub struct AtomicUsers {
    registers: Box<[AtomicU8]>,
}

impl Default for AtomicUsers {
    fn default() -> Self {
        AtomicUsers {
            registers: (0..REGISTERS).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl AtomicUsers {
    #[inline]
    pub fn add(&self, hash: u64) {
        let (index, rank) = place(hash);
        let r = &self.registers[index];
        if r.load(Ordering::Relaxed) < rank {
            r.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// Moves what was added since the last drain into `into` (and clears it here).
    pub fn drain_into(&self, into: &mut Users) {
        for (mine, theirs) in self.registers.iter().zip(into.registers.iter_mut()) {
            if mine.load(Ordering::Relaxed) != 0 {
                *theirs = (*theirs).max(mine.swap(0, Ordering::Relaxed));
            }
        }
    }
}

/// 2^-r, exactly (a rank is at most 65 - P, far inside f64's exponent range), built from the
/// exponent bits: the estimate sums 4,096 of these.
#[inline]
fn inverse_power(r: u8) -> f64 {
    f64::from_bits((1023 - u64::from(r)) << 52)
}

/// A sketch the analysis task merges and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    registers: Box<[u8]>,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            registers: vec![0; REGISTERS].into_boxed_slice(),
        }
    }
}

impl Users {
    /// Adds one user (for tests and tools; the request path uses [`AtomicUsers`]).
    pub fn add(&mut self, hash: u64) {
        let (index, rank) = place(hash);
        self.registers[index] = self.registers[index].max(rank);
    }

    /// The union with `other`.
    pub fn merge(&mut self, other: &Users) {
        for (a, b) in self.registers.iter_mut().zip(other.registers.iter()) {
            *a = (*a).max(*b);
        }
    }

    pub fn clear(&mut self) {
        self.registers.fill(0);
    }

    /// The estimated number of distinct users.
    pub fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let (mut sum, mut zeros) = (0.0, 0usize);
        for &r in self.registers.iter() {
            sum += inverse_power(r);
            zeros += usize::from(r == 0);
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            // Few users: linear counting is exact-ish where HyperLogLog is biased.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_powers_are_exact() {
        for r in 0..=64u8 {
            assert_eq!(inverse_power(r), 2f64.powi(-i32::from(r)), "rank {r}");
        }
    }

    #[test]
    fn estimates_are_within_a_few_standard_errors() {
        for n in [0u64, 1, 10, 1_000, 20_000, 300_000] {
            let atomic = AtomicUsers::default();
            for i in 0..n {
                // Stand-ins for assignment hashes: xxh3 of distinct ids.
                atomic.add(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
            }
            let mut users = Users::default();
            atomic.drain_into(&mut users);
            let est = users.estimate();
            let tolerance = (n as f64 * 4.0 * REL_ERROR).max(1.0);
            assert!(
                (est - n as f64).abs() <= tolerance,
                "{n} users estimated {est}"
            );
            let mut again = Users::default();
            atomic.drain_into(&mut again);
            assert_eq!(again.estimate(), 0.0, "drained");
        }
    }

    #[test]
    fn ids_picked_for_high_ranks_without_the_key_count_as_what_they_are() {
        // What a client who knows the public hash would send: of 400,000 ids, the one with the
        // highest rank per register as placed without a key.
        let unkeyed = |hash: u64| {
            let h = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
            (
                (h >> (64 - P)) as usize,
                ((h << P) | (1 << (P - 1))).leading_zeros(),
            )
        };
        let mut best = vec![(0u32, 0u64); REGISTERS];
        for i in 0..400_000u64 {
            let hash = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            let (index, rank) = unkeyed(hash);
            if rank >= best[index].0 {
                best[index] = (rank, hash);
            }
        }
        let mut crafted = Users::default();
        for (_, hash) in &best {
            crafted.add(*hash);
        }
        let est = crafted.estimate();
        assert!(
            (est - REGISTERS as f64).abs() < REGISTERS as f64 * 4.0 * REL_ERROR,
            "{REGISTERS} ids estimated {est}"
        );
    }

    #[test]
    fn merging_counts_the_union() {
        let (mut a, mut b) = (Users::default(), Users::default());
        for i in 0..10_000u64 {
            a.add(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
            b.add(xxhash_rust::xxh3::xxh3_64(&(i + 5_000).to_le_bytes()));
        }
        a.merge(&b);
        let est = a.estimate();
        assert!((est - 15_000.0).abs() < 15_000.0 * 4.0 * REL_ERROR, "{est}");
    }
}
