//! The layout of a log-linear latency histogram: which bucket a duration falls in, what a bucket
//! spans, and quantiles read back from bucket counts.
//!
//! Durations are whole microseconds. Values 0..16 each have their own bucket; above that every
//! power of two is split into 16 equal sub-buckets (the HDR histogram layout), up to 2^28 µs
//! (about 268 s). Everything from 2^28 µs up shares the last bucket. A bucket above 16 µs is at
//! most 1/16 of its lower bound wide, so reporting its midpoint is off by at most 1/32 (3.125%)
//! of the true value.
//!
//! This module is pure index arithmetic over a `&[u64]` of counts indexed by bucket; the storage
//! (atomic counters, windows) lives elsewhere. A counts slice may be shorter than [`BUCKETS`]:
//! the missing buckets count as empty.

/// log2 of the number of sub-buckets per power of two.
const SUB_BITS: u32 = 4;

/// Sub-buckets per power of two; also the count of the exact buckets 0..16.
const SUB: u64 = 1 << SUB_BITS;

/// Values at or above 2^`TOP_BITS` µs all go to the last bucket.
const TOP_BITS: u32 = 28;

/// The smallest value of the last, open-ended bucket: 2^28 µs, about 268 s.
pub const OVERFLOW_MICROS: u64 = 1 << TOP_BITS;

/// Number of buckets: 16 exact ones, 16 per power of two from 2^4 to 2^28, and the last one.
pub const BUCKETS: usize = (SUB + (TOP_BITS - SUB_BITS) as u64 * SUB + 1) as usize;

/// The bucket of a duration in µs. Branch-free: a `min`, a `leading_zeros` and a few shifts,
/// cheap enough to run on every request.
pub fn index(micros: u64) -> usize {
    let v = micros.min(OVERFLOW_MICROS);
    // The exponent of the top bit, treating values below 16 as if their top bit were bit 4 so
    // that they land on themselves with a shift of 0.
    let shift = 63 - (v | SUB).leading_zeros() - SUB_BITS;
    ((u64::from(shift) << SUB_BITS) + (v >> shift)) as usize
}

/// The smallest value in bucket `i` (µs). Indexes past the end mean the last bucket.
pub fn lower(i: usize) -> u64 {
    let i = i.min(BUCKETS - 1) as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = (i >> SUB_BITS) - 1;
    ((i & (SUB - 1)) | SUB) << shift
}

/// One past the largest value in bucket `i` (µs, exclusive). The last bucket has no end; it
/// reports `u64::MAX`.
pub fn upper(i: usize) -> u64 {
    if i >= BUCKETS - 1 {
        u64::MAX
    } else {
        lower(i + 1)
    }
}

/// The value reported for bucket `i` (µs): the value itself for the one-wide buckets below 32,
/// the middle of the span above that, and 2^28 (a floor, not a midpoint) for the last bucket.
pub fn midpoint(i: usize) -> f64 {
    let lo = lower(i);
    let hi = upper(i);
    if i >= BUCKETS - 1 || hi - lo == 1 {
        lo as f64
    } else {
        (lo as f64 + hi as f64) / 2.0
    }
}

/// The total of the counts (saturating, so absurd input cannot overflow).
pub fn total(counts: &[u64]) -> u64 {
    counts.iter().fold(0u64, |n, &c| n.saturating_add(c))
}

/// The rank (1-based) of the q-quantile among `n` values: ceil(q·n), kept within 1..=n.
/// `q` outside 0..=1 is clamped; NaN is treated as 0.
pub fn rank(n: u64, q: f64) -> u64 {
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// The ranks (1-based, within 1..=n) bounding a distribution-free confidence interval for the
/// q-quantile: floor(n·q − z·s) and ceil(n·q + z·s) with s = sqrt(n·q·(1 − q)), the normal
/// approximation to the binomial count of values below the quantile. Negative or NaN `z` is 0.
pub fn rank_interval(n: u64, q: f64, z: f64) -> (u64, u64) {
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let z = if z.is_nan() { 0.0 } else { z.max(0.0) };
    let nf = n as f64;
    let spread = z * (nf * q * (1.0 - q)).sqrt();
    let top = n.max(1);
    let low = ((nf * q - spread).floor().max(1.0) as u64).clamp(1, top);
    let high = ((nf * q + spread).ceil().max(1.0) as u64).clamp(1, top);
    (low, high)
}

/// The bucket holding the value of rank `rank` (1-based) in sorted order, or None when there are
/// fewer than `rank` values (or `rank` is 0).
pub fn bucket_of_rank(counts: &[u64], rank: u64) -> Option<usize> {
    if rank == 0 {
        return None;
    }
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen = seen.saturating_add(c);
        if seen >= rank {
            return Some(i.min(BUCKETS - 1));
        }
    }
    None
}

/// The q-quantile in µs: the midpoint of the bucket holding rank ceil(q·n). None when empty.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let n = total(counts);
    if n == 0 {
        return None;
    }
    bucket_of_rank(counts, rank(n, q)).map(midpoint)
}

/// A confidence interval for the q-quantile in µs, from order statistics (see
/// [`rank_interval`]; `z` = 2.576 gives about 99% for a fixed sample size): from the lower bound
/// of the bucket holding the low rank to the (exclusive) upper bound of the bucket holding the
/// high rank, so bucketing only ever widens it. The last bucket's upper bound is infinite.
/// None when empty.
pub fn quantile_interval(counts: &[u64], q: f64, z: f64) -> Option<(f64, f64)> {
    let n = total(counts);
    if n == 0 {
        return None;
    }
    let (low, high) = rank_interval(n, q, z);
    let low = bucket_of_rank(counts, low)?;
    let high = bucket_of_rank(counts, high)?;
    Some((lower(low) as f64, upper_bound(high)))
}

/// The upper bound of bucket `i` as a float, infinite for the open-ended last bucket.
pub fn upper_bound(i: usize) -> f64 {
    if i >= BUCKETS - 1 {
        f64::INFINITY
    } else {
        upper(i) as f64
    }
}

/// The first bucket whose every value is at or above `micros`: its lower bound is ≥ the
/// threshold. [`BUCKETS`] when there is none (a threshold above 2^28 µs, or NaN); 0 for a
/// threshold at or below 0.
pub fn first_at_or_above(micros: f64) -> usize {
    if micros.is_nan() || micros > OVERFLOW_MICROS as f64 {
        return BUCKETS;
    }
    if micros <= 0.0 {
        return 0;
    }
    // Durations are whole microseconds: "at least 12.3 µs" is "at least 13 µs".
    let at_least = micros.ceil() as u64;
    let i = index(at_least);
    if lower(i) < at_least { i + 1 } else { i }
}

/// Requests at or above `micros`, counting only buckets that lie wholly at or above it (lower
/// bound ≥ threshold). The bucket that straddles the threshold is left out, so the count rounds
/// DOWN: it may miss a few requests just above the threshold, never counts one below it, and
/// so never pushes a comparison toward an alarm. A threshold above 2^28 µs (or NaN) counts
/// nothing, since the last bucket cannot tell how far above 2^28 its values are.
pub fn count_above(counts: &[u64], micros: f64) -> u64 {
    count_from(counts, first_at_or_above(micros))
}

/// Requests in bucket `from` and every bucket above it.
pub fn count_from(counts: &[u64], from: usize) -> u64 {
    counts.get(from..).map_or(0, |tail| {
        tail.iter().fold(0u64, |n, &c| n.saturating_add(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<u64> {
        let mut v: Vec<u64> = (0..2_000).collect();
        for b in 0..64 {
            let p = 1u64 << b;
            v.extend([p - 1, p, p + 1, p + p / 3]);
        }
        v.extend([u64::MAX, u64::MAX - 1, OVERFLOW_MICROS - 1, OVERFLOW_MICROS]);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x >> (x % 40));
        }
        v
    }

    #[test]
    fn buckets_hold_their_values() {
        assert_eq!(BUCKETS, 401);
        for v in values() {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(lower(i) <= v, "{v} -> {i} lower {}", lower(i));
            if i < BUCKETS - 1 {
                assert!(v < upper(i), "{v} -> {i} upper {}", upper(i));
            }
        }
        for v in [0, 15] {
            assert_eq!(index(v), v as usize);
        }
        assert_eq!(
            (index(16), index(17), index(31), index(32)),
            (16, 17, 31, 32)
        );
        assert_eq!(index(33), 32, "above 32 buckets are two wide");
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(index(OVERFLOW_MICROS), BUCKETS - 1);
        assert_eq!(index(OVERFLOW_MICROS - 1), BUCKETS - 2);
    }

    #[test]
    fn buckets_tile_the_line() {
        assert_eq!(lower(0), 0);
        for i in 0..BUCKETS - 1 {
            assert_eq!(upper(i), lower(i + 1));
            assert!(lower(i) < upper(i));
            assert_eq!(index(lower(i)), i);
            assert_eq!(index(upper(i) - 1), i);
        }
        assert_eq!(lower(BUCKETS - 1), OVERFLOW_MICROS);
        assert_eq!(upper(BUCKETS - 1), u64::MAX);
        assert_eq!(lower(10_000), OVERFLOW_MICROS);
    }

    #[test]
    fn midpoint_is_within_five_percent() {
        let mut worst = 0.0f64;
        for v in values() {
            if !(16..OVERFLOW_MICROS).contains(&v) {
                continue;
            }
            let err = (midpoint(index(v)) - v as f64).abs() / v as f64;
            worst = worst.max(err);
        }
        assert!(worst <= 0.05, "worst relative error {worst}");
        assert!(worst <= 1.0 / 30.0, "expected about 1/32, got {worst}");
        for v in 0..32u64 {
            assert_eq!(midpoint(index(v)), v as f64);
        }
    }

    #[test]
    fn quantiles_of_known_data() {
        let mut counts = vec![0u64; BUCKETS];
        for v in 1..=100u64 {
            counts[index(v * 1000)] += 1; // 1 ms .. 100 ms
        }
        let near = |got: Option<f64>, want: f64| {
            let got = got.expect("non-empty");
            assert!((got - want).abs() / want <= 1.0 / 32.0, "{got} vs {want}");
        };
        near(quantile(&counts, 0.5), 50_000.0);
        near(quantile(&counts, 0.99), 99_000.0);
        near(quantile(&counts, 1.0), 100_000.0);
        near(quantile(&counts, 0.0), 1_000.0);
        assert_eq!(quantile(&[0; 10], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
        let (lo, hi) = quantile_interval(&counts, 0.5, 1.96).expect("non-empty");
        assert!(lo <= 40_000.0 && hi >= 60_000.0 && lo < 50_000.0 && hi > 50_000.0);
        assert_eq!(quantile_interval(&[], 0.5, 1.96), None);
        // A short slice is a histogram whose remaining buckets are empty.
        assert_eq!(quantile(&[0, 0, 5], 0.5), Some(2.0));
    }

    #[test]
    fn rank_interval_brackets_the_rank() {
        assert_eq!(rank(100, 0.99), 99);
        assert_eq!(rank(0, 0.5), 1);
        assert_eq!(rank(10, f64::NAN), 1);
        let (lo, hi) = rank_interval(10_000, 0.99, 2.576);
        assert_eq!((lo, hi), (9_874, 9_926));
        let (lo, hi) = rank_interval(100_000, 0.5, 1.96);
        assert_eq!((lo, hi), (49_690, 50_310));
        assert_eq!(rank_interval(5, 0.5, 0.0), (2, 3));
    }

    #[test]
    fn count_above_rounds_down() {
        let mut counts = vec![0u64; BUCKETS];
        counts[index(1000)] = 7; // bucket [992, 1024)
        counts[index(2000)] = 5; // bucket [1984, 2048)
        assert_eq!(count_above(&counts, 992.0), 12);
        assert_eq!(
            count_above(&counts, 993.0),
            5,
            "the straddled bucket is not counted"
        );
        assert_eq!(count_above(&counts, 1024.0), 5);
        assert_eq!(count_above(&counts, 0.0), 12);
        assert_eq!(count_above(&counts, f64::NAN), 0);
        assert_eq!(count_above(&counts, 1e30), 0);
        assert_eq!(count_above(&counts[..10], 5.0), 0);
        assert_eq!(first_at_or_above(16.5), 17);
        assert_eq!(first_at_or_above(OVERFLOW_MICROS as f64), BUCKETS - 1);
    }
}
