use super::*;
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
    assert_eq!(cells.whole().arm, Arm { n: 51, hits: 48 });
    let without = cells.without_heaviest(1);
    assert_eq!((without.arm, without.left_out), (Arm { n: 3, hits: 0 }, 1));
    // Others' errors: the heaviest is left out with all of its own, however many others have
    // one (the cells are exact, whatever the number of users).
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
    assert_eq!(cells.whole().arm, Arm { n: 181, hits: 178 });
    assert_eq!(cells.without_heaviest(1).arm, Arm { n: 123, hits: 120 });
    assert_eq!(
        since.stable.clusters.as_ref().map(|c| c.whole().arm),
        Some(Arm::default())
    );
    // Counts without cells (a window's slot, the step's) add none.
    let mut slot = Counts::default();
    slot.add(&since.canary);
    assert!(slot.clusters.is_none());
    assert_eq!(slot.errors, 178);
}

#[test]
fn the_heaviest_slow_users_are_known_with_their_counts() {
    let r = Recorder::default();
    r.slow_over(Some(5_000.0));
    let mut since = PerPool::<Counts>::default();
    let mut tick = PerPool::<Counts>::default();
    // One user's many slow answers, second after second, are one user.
    for _ in 0..3 {
        for _ in 0..15 {
            r.record(PoolName::Canary, false, 9_000, Some(42), None);
        }
        r.record(PoolName::Canary, false, 1_000, Some(7), None);
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    }
    assert_eq!(since.canary.slow_users.len(), 1);
    assert_eq!(since.canary.slow_users.heaviest(1).count, 45);
    // Others' add users; the heaviest stays known among many (Space-Saving).
    for second in 0..10 {
        for u in 0..12 {
            let user = Some(1_000 + second * 12 + u);
            r.record(PoolName::Canary, false, 9_000, user, None);
        }
        r.record(PoolName::Canary, false, 9_000, Some(42), None);
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    }
    assert_eq!(since.canary.slow_users.len(), 32);
    // The heaviest's own 55, and what a newcomer inherits at most.
    let top = since.canary.slow_users.heaviest(1).count;
    assert!((55..=55 + 120 / 32 + 1).contains(&top), "{top}");
    assert!(since.canary.slow_users.heaviest(ERROR_USERS).count <= 175);
    assert!(since.stable.slow_users.is_empty());
}

#[test]
fn a_heavy_user_s_requests_are_known_in_the_seconds_it_has_a_slow_answer() {
    let r = Recorder::default();
    r.slow_over(Some(5_000.0));
    let mut since = PerPool::<Counts>::default();
    let mut tick = PerPool::<Counts>::default();
    let mut drain = |r: &Recorder, since: &mut PerPool<Counts>| {
        r.drain(&mut tick);
        since.canary.add(&tick.canary);
    };
    let micros = |slow: bool| if slow { 9_000 } else { 1_000 };
    // 5 slow answers and 10 fast ones a second, for 3 seconds.
    for _ in 0..3 {
        for n in 0..15 {
            r.record(PoolName::Canary, false, micros(n < 5), Some(42), None);
        }
        drain(&r, &mut since);
    }
    // A second without a slow answer: its requests are not known as the user's.
    for _ in 0..15 {
        r.record(PoolName::Canary, false, 1_000, Some(42), None);
    }
    drain(&r, &mut since);
    let heavy = since.canary.slow_users.heaviest(1);
    assert_eq!((heavy.count, heavy.requests), (15, 45));
    // Past its share of a second (20), a user's requests count by chance, and so are estimated:
    // 100 answers count for about 20 × (1 + ln 5) ≈ 52, and never fewer than its slow answers.
    for n in 0..100 {
        r.record(PoolName::Canary, false, micros(n % 2 == 0), Some(43), None);
    }
    drain(&r, &mut since);
    let flood = since.canary.slow_users.heaviest(1);
    assert!((18..=40).contains(&flood.count), "{flood:?}");
    assert_eq!(flood.requests, 52);
    assert_eq!(since.canary.slow_users.heaviest(2).requests, 52 + 45);
}

#[test]
fn busy_users_stay_kept_among_many_users_with_a_slow_answer_each_second() {
    let r = Recorder::default();
    r.slow_over(Some(5_000.0));
    let mut tick = PerPool::<Counts>::default();
    let mut judged = Counts::judged();
    let mut small = Counts::default();
    for second in 0..200u64 {
        // 14 users a second with one slow answer each, and three busy users with one slow
        // answer in four seconds.
        for k in 0..14 {
            let user = Some(1_000 + second * 14 + k);
            r.record(PoolName::Stable, false, 9_000, user, None);
        }
        for busy in 1..=3u64 {
            for n in 0..5 {
                let slow = n == 0 && second % 4 == busy;
                let micros = if slow { 9_000 } else { 1_000 };
                r.record(PoolName::Stable, false, micros, Some(busy), None);
            }
        }
        r.drain(&mut tick);
        judged.add(&tick.stable);
        small.add(&tick.stable);
    }
    let mut busy = judged.slow_users.heaviest_users(3);
    busy.sort_unstable();
    assert_eq!(busy, vec![1, 2, 3]);
    // With 32 kept, the lightest count rises faster than theirs: they are pushed out again and
    // again, and never known as the heaviest.
    let mut kept = small.slow_users.heaviest_users(3);
    kept.sort_unstable();
    assert_ne!(kept, vec![1, 2, 3]);
}
