use super::*;
use crate::analysis::clusters::Kind;
use crate::analysis::stats::Arm;

#[test]
fn what_is_recorded_is_drained_once() {
    let r = Recorder::default();
    r.record(PoolName::Canary, true, 1_500, Some(7), Some(1));
    r.record(PoolName::Canary, false, 40_000, Some(7), None);
    r.record(PoolName::Stable, false, 900, Some(8), None);
    let mut tick = PerPool::<Counts>::default();
    r.drain(&mut tick);
    assert_eq!((tick.canary.requests, tick.canary.errors), (2, 1));
    assert_eq!(tick.canary.goals[1], 1);
    assert_eq!(tick.stable.requests, 1);
    assert!((tick.canary.users.estimate() - 1.0).abs() < 0.01);
    assert_eq!(tick.canary.latency[histogram::index(40_000)], 1);
    r.drain(&mut tick);
    assert_eq!((tick.canary.requests, tick.stable.requests), (0, 0));
}

#[test]
fn one_user_s_flood_counts_for_its_share_of_a_second() {
    let r = Recorder::default();
    let mut tick = PerPool::<Counts>::default();
    // Stand-ins for assignment hashes: xxh3 of distinct ids.
    let user = |u: u64| xxhash_rust::xxh3::xxh3_64(&u.to_le_bytes());
    let flood = xxhash_rust::xxh3::xxh3_64(b"flood");
    // 1,000 users' answers at 200 ms, and one client's 100,000 at 1 ms.
    for u in 0..1_000u64 {
        r.record(PoolName::Stable, false, 200_000, Some(user(u)), None);
    }
    for _ in 0..100_000 {
        r.record(PoolName::Stable, false, 1_000, Some(flood), None);
    }
    r.drain(&mut tick);
    let s = &tick.stable;
    // Its first 20, then the n-th with a chance of 20/n: about 20 × (1 + ln 5,000) ≈ 190.
    assert!((1_100..=1_300).contains(&s.requests), "{}", s.requests);
    assert_eq!(s.requests + s.uncounted, 101_000);
    let median = histogram::quantile(&s.latency, 0.5).expect("a median");
    assert!(
        median > 150_000.0,
        "the users' latency, not the flood's: {median}"
    );
    assert!(
        (s.users.estimate() - 1_001.0).abs() < 40.0,
        "every user counted"
    );
    // The share grows with the pool's traffic: 1/512 of its answers in the last second.
    for u in 0..102_400u64 {
        r.record(PoolName::Stable, false, 1_000, Some(user(u)), None);
    }
    r.drain(&mut tick);
    for _ in 0..1_000 {
        r.record(PoolName::Stable, false, 1_000, Some(flood), None);
    }
    r.drain(&mut tick);
    // 200 × (1 + ln 5) ≈ 520.
    assert!(
        (420..=620).contains(&tick.stable.requests),
        "{}",
        tick.stable.requests
    );
}

#[test]
fn answers_without_a_user_id_are_none_of_the_comparison_s() {
    let r = Recorder::default();
    let mut tick = PerPool::<Counts>::default();
    for _ in 0..500 {
        assert!(!r.record(PoolName::Stable, false, 1_000, None, None));
    }
    assert!(r.record(PoolName::Stable, false, 1_000, Some(7), None));
    r.drain(&mut tick);
    assert_eq!((tick.stable.requests, tick.stable.uncounted), (1, 500));
}

#[test]
fn a_user_s_errors_and_requests_all_count_in_its_cell() {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    // One user's many errors, second after second, of every kind: answers that failed, a body
    // cut short, an attempt a retry answered elsewhere.
    for _ in 0..3 {
        for _ in 0..14 {
            r.record(PoolName::Canary, true, 1_000, Some(42), None);
        }
        r.record(PoolName::Canary, false, 1_000, Some(42), None);
        r.broken_body(PoolName::Canary, Some(42));
        r.failed_attempt(PoolName::Canary, Some(42));
        r.record(PoolName::Canary, false, 1_000, Some(7), None);
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    }
    assert_eq!((since.canary.requests, since.canary.errors), (51, 48));
    let cells = since
        .canary
        .clusters
        .as_ref()
        .expect("judged counts have cells");
    assert_eq!(cells.whole(Kind::Errors).arm, Arm { n: 51, hits: 48 });
    // Two users: too few to tell a busy one from the usual.
    assert_eq!(cells.without_busy(Kind::Errors).left_out, 0);
    // Among others with one request each, it is busy: left out with all of its own, however
    // many others have an error (the cells are exact, whatever the number of users).
    for second in 0..10 {
        for u in 0..12 {
            let user = Some(1_000 + second * 12 + u);
            r.record(PoolName::Canary, true, 1_000, user, None);
        }
        r.record(PoolName::Canary, true, 1_000, Some(42), None);
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    }
    let cells = since
        .canary
        .clusters
        .as_ref()
        .expect("judged counts have cells");
    assert_eq!(cells.whole(Kind::Errors).arm, Arm { n: 181, hits: 178 });
    assert_eq!(
        cells.without_busy(Kind::Errors).arm,
        Arm { n: 123, hits: 120 }
    );
    assert_eq!(
        since
            .stable
            .clusters
            .as_ref()
            .map(|c| c.whole(Kind::Errors).arm),
        Some(Arm::default())
    );
    // Counts without cells (a window's slot, the step's) add none.
    let mut slot = Counts::default();
    slot.add(&since.canary);
    assert!(slot.clusters.is_none());
    assert_eq!(slot.errors, 178);
}

#[test]
fn a_user_s_slow_answers_count_in_its_cell() {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    // No threshold yet: nothing is slow.
    r.record(PoolName::Canary, false, 90_000, Some(42), None);
    r.slow_over(Some(5_000.0));
    for second in 0..3u64 {
        // One user with 5 slow answers and 10 fast ones a second; others with one answer each,
        // every fourth slow.
        for n in 0..15 {
            let micros = if n < 5 { 9_000 } else { 1_000 };
            r.record(PoolName::Canary, false, micros, Some(42), None);
        }
        for u in 0..8 {
            let micros = if u % 4 == 0 { 9_000 } else { 1_000 };
            r.record(
                PoolName::Canary,
                false,
                micros,
                Some(1_000 + second * 8 + u),
                None,
            );
        }
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    }
    let cells = since
        .canary
        .clusters
        .as_ref()
        .expect("judged counts have cells");
    assert_eq!(cells.whole(Kind::Slow).arm, Arm { n: 70, hits: 21 });
    // Left out whole: its 46 requests, 15 of them slow.
    let without = cells.without_busy(Kind::Slow);
    assert_eq!((without.arm, without.left_out), (Arm { n: 24, hits: 6 }, 1));
    // Slow answers are no errors.
    assert_eq!(cells.whole(Kind::Errors).arm, Arm { n: 70, hits: 0 });
    // Past its share of a second (20), a user's answers count by chance, and so are estimated:
    // 100 answers count for about 20 × (1 + ln 5) ≈ 52.
    for n in 0..100 {
        let micros = if n % 2 == 0 { 9_000 } else { 1_000 };
        r.record(PoolName::Canary, false, micros, Some(43), None);
    }
    r.drain(&mut tick);
    since.canary.add(&tick.canary);
    let cells = since
        .canary
        .clusters
        .as_ref()
        .expect("judged counts have cells");
    let flood = cells.without_busy(Kind::Slow);
    assert_eq!((flood.arm.n, flood.left_out), (24, 2), "{flood:?}");
}

#[test]
fn the_latencies_of_the_cells_told_are_counted_apart() {
    let r = Recorder::default();
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    let user = |u: u64| xxhash_rust::xxh3::xxh3_64(&u.to_le_bytes());
    let busy = xxhash_rust::xxh3::xxh3_64(b"busy");
    let cell = share_cell(busy);
    // A second: the busy user's 10 slow answers on each pool, beside 40 users' one fast answer
    // each on stable.
    let second = || {
        for u in 0..40 {
            if u < 10 {
                r.record(PoolName::Stable, false, 200_000, Some(busy), None);
                r.record(PoolName::Canary, false, 200_000, Some(busy), None);
            }
            r.record(PoolName::Stable, false, 1_000, Some(user(u)), None);
        }
    };
    r.track(PoolName::Stable, &[cell]);
    second();
    r.drain(&mut tick);
    let mut since = Counts::judged();
    since.add(&tick.stable);
    let clusters = since.clusters.as_deref().expect("cells");
    // Its cell is busy (10 requests, the usual cell's one): its 10 answers are taken out.
    let (kept, left_out) = clusters.latency_without_busy(&since.latency);
    assert_eq!(left_out, 1);
    assert_eq!(histogram::total(&since.latency), 50);
    assert_eq!(kept[histogram::index(200_000)], 0);
    assert_eq!(kept[histogram::index(1_000)], 40);
    // The canary's cell was not told: nothing counted apart there.
    let canary = tick.canary.clusters.as_deref().expect("cells");
    assert_eq!(
        canary.latency_without_busy(&tick.canary.latency).0,
        tick.canary.latency
    );
    // Untold, a cell's latencies are no longer counted apart.
    r.track(PoolName::Stable, &[]);
    second();
    r.drain(&mut tick);
    let mut again = Counts::judged();
    again.add(&tick.stable);
    let clusters = again.clusters.as_deref().expect("cells");
    let (kept, left_out) = clusters.latency_without_busy(&again.latency);
    assert_eq!((kept[histogram::index(200_000)], left_out), (10, 1));
}
