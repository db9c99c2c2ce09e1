use super::*;
use crate::analysis::counts::Recorder;
use crate::analysis::looks::Looks;

/// `users` users a side, each making three requests; in each pool, the users whose number
/// `converts` accepts convert once. `extra` adds one canary user's requests (`GETs`) and
/// conversions.
fn goal_verdict(
    converts: impl Fn(PoolName, u64) -> bool,
    extra_requests: u64,
    extra_conversions: u64,
) -> GoalView {
    let r = Recorder::default();
    for pool in PoolName::BOTH {
        for u in 0..200u64 {
            let user = (u + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (pool as u64);
            for _ in 0..3 {
                r.record(pool, false, 1_000, Some(user), None);
            }
            if converts(pool, u) {
                r.record(pool, false, 1_000, Some(user), Some(0));
            }
        }
    }
    let heavy = Some(0xDEAD_BEEF);
    for _ in 0..extra_requests {
        r.record(PoolName::Canary, false, 1_000, heavy, None);
    }
    for _ in 0..extra_conversions {
        r.record(PoolName::Canary, false, 1_000, heavy, Some(0));
    }
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut converted = PerPool::<Converted>::default();
    r.drain(&mut since);
    r.drain_converted(&mut converted);
    goal("purchase", 0, &since, &converted, &thresholds(None))
}

#[test]
fn one_user_s_many_requests_or_conversions_do_not_decide_a_goal() {
    let every_tenth = |_: PoolName, u: u64| u.is_multiple_of(10);
    let same = goal_verdict(every_tenth, 0, 0);
    assert_eq!(same.verdict.verdict, "ok", "{same:?}");
    // One canary user's 3,000 requests made the conversions per request drop by a third.
    let diluted = goal_verdict(every_tenth, 3_000, 0);
    assert_eq!(diluted.verdict.verdict, "ok", "{diluted:?}");
    // One canary user's 300 purchases made them triple.
    let inflated = goal_verdict(every_tenth, 0, 300);
    assert_eq!(inflated.verdict.verdict, "ok", "{inflated:?}");
    // Counted per request, that user's purchases count for their share of a second: about
    // 20 × (1 + ln 15) ≈ 74 of 300.
    let conversions = inflated.conversions.canary;
    assert!((20 + 40..=20 + 120).contains(&conversions), "{conversions}");
    // 21 users converted; the sketch (keyed at random per process) may merge a pair.
    assert!(
        (19..=22).contains(&inflated.converted.canary),
        "{inflated:?}"
    );
}

#[test]
fn a_goal_fewer_users_reach_on_canary_regresses() {
    // 40% of stable's users convert, 5% of canary's.
    let worse = |p: PoolName, u: u64| match p {
        PoolName::Stable => u % 5 < 2,
        PoolName::Canary => u.is_multiple_of(20),
    };
    let v = goal_verdict(worse, 0, 0);
    assert_eq!(v.verdict.verdict, "regressed", "{v:?}");
    let d = v.difference.expect("a difference");
    assert!(d.high < 0.0 && (d.estimate + 0.35).abs() < 0.03, "{d:?}");
    let flipped = |p: PoolName| match p {
        PoolName::Stable => PoolName::Canary,
        PoolName::Canary => PoolName::Stable,
    };
    let better = goal_verdict(|p, u| worse(flipped(p), u), 0, 0);
    assert_eq!(better.verdict.verdict, "improved", "{better:?}");
}

#[test]
fn a_bot_failing_on_the_canary_does_not_hide_a_regression_of_everyone_else() {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    let bot = Some(0xB07);
    for second in 0..130u64 {
        // A bot on the canary whose every request fails, on both versions (20 a second count).
        for _ in 0..20 {
            r.record(PoolName::Canary, true, 1_000, bot, None);
        }
        // Everyone else: 6.25% errors on the canary, 1% on stable.
        for k in 0..8 {
            let i = second * 8 + k;
            r.record(PoolName::Canary, i % 16 == 0, 1_000, Some(10_000 + i), None);
        }
        for k in 0..30 {
            let i = second * 30 + k;
            r.record(
                PoolName::Stable,
                i % 100 == 0,
                1_000,
                Some(1_000_000 + i),
                None,
            );
        }
        r.drain(&mut tick);
        for pool in PoolName::BOTH {
            since[pool].add(&tick[pool]);
        }
    }
    assert!(since.canary.errors > 2_600, "{}", since.canary.errors);
    let errors = verdicts(&since, &thresholds(None)).errors.1;
    // Left out with its errors, the bot's requests do not count as successes.
    assert_eq!(errors, Verdict::Regressed);
}

/// `seconds` of a bot on the canary whose requests fail half the time (20 a second), beside
/// everyone else's: 8 canary requests a second failing at `canary_every`, 30 stable ones at 1%.
fn half_failing_bot(seconds: u64, canary_every: u64) -> PerPool<Counts> {
    bot_beside(seconds, canary_every, |_, n| n % 2 == 0)
}

/// `seconds` of a bot on the canary (20 requests a second, the n-th of second s failing when
/// `fails(s, n)`), beside everyone else's: 8 canary requests a second failing at `canary_every`,
/// 30 stable ones at 1%. Drained once a second, as the analysis task does.
fn bot_beside(
    seconds: u64,
    canary_every: u64,
    fails: impl Fn(u64, u64) -> bool,
) -> PerPool<Counts> {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    for second in 0..seconds {
        for n in 0..20 {
            r.record(PoolName::Canary, fails(second, n), 1_000, Some(0xB07), None);
        }
        for k in 0..8 {
            let i = second * 8 + k;
            let error = i % canary_every == 0;
            r.record(PoolName::Canary, error, 1_000, Some(10_000 + i), None);
        }
        for k in 0..30 {
            let i = second * 30 + k;
            let error = i % 100 == 0;
            r.record(PoolName::Stable, error, 1_000, Some(1_000_000 + i), None);
        }
        r.drain(&mut tick);
        for pool in PoolName::BOTH {
            since[pool].add(&tick[pool]);
        }
    }
    since
}

#[test]
fn a_bot_failing_in_bursts_is_left_out_whole() {
    // Every request of one second in five fails; none of the others do. Its requests in the
    // seconds without an error are in its cell too, so its 80 successes in every five
    // seconds do not dilute everyone else's 6.25% (against stable's 1%) to 2.1%.
    let since = bot_beside(300, 16, |second, _| second % 5 == 0);
    let v = verdicts(&since, &thresholds(None));
    assert_eq!(v.errors.1, Verdict::Regressed);
    let left_out = v.errors_left_out.expect("the heaviest users were left out");
    assert!(
        (2_300..=2_400).contains(&left_out.pools.canary.n),
        "the bot's 6,000 requests gone: {left_out:?}"
    );
}

#[test]
fn a_bot_failing_part_of_its_requests_is_left_out_whole() {
    // Everyone else: 6.25% errors on the canary against 1% on stable. With only the bot's
    // errors left out, its successes diluted that to 2.8%, within the margin.
    let since = half_failing_bot(300, 16);
    let v = verdicts(&since, &thresholds(None));
    assert_eq!(v.errors.1, Verdict::Regressed);
    let left_out = v.errors_left_out.expect("the heaviest users were left out");
    let (users, trimmed) = (left_out.users, left_out.pools.canary);
    assert!(users.canary >= 1);
    // The bot's 6,000 requests are gone, and the rest's 2,400 (less the few of the other
    // heaviest) are left.
    assert!((2_300..=2_400).contains(&trimmed.n), "{trimmed:?}");
    // A healthy canary (1% for everyone else) beside the same bot is not called regressed.
    let healthy = verdicts(&half_failing_bot(300, 100), &thresholds(None));
    assert_ne!(healthy.errors.1, Verdict::Regressed);
}

#[test]
fn the_reason_quotes_the_rates_without_the_heaviest_users() {
    let since = half_failing_bot(300, 16);
    let reason = verdicts(&since, &thresholds(None)).reason(&since);
    // First what the call rested on: 150 of everyone else's 2,400 requests failed, 6.25%, a
    // little less with other users who share the bot's cell left out too; then everyone's.
    let (without, whole) = reason
        .strip_prefix("error rate without busy users (1 on canary, 0 on stable) ")
        .and_then(|r| r.split_once("; everyone's "))
        .expect("the figures without them, then everyone's");
    // "6.14% on canary vs 0.92% on stable (+5.22 points, range ...) over 2393 and 8989
    // requests": the difference and range are those the call rested on.
    let number = |s: &str| s.trim_start_matches('+').parse::<f64>().ok();
    let mut words = without.split(['%', ' ', '(']).filter(|w| !w.is_empty());
    let canary = words.next().and_then(number);
    assert_eq!(
        (words.next(), words.next(), words.next()),
        (Some("on"), Some("canary"), Some("vs")),
        "{reason}"
    );
    let stable = words.next().and_then(number);
    assert_eq!(
        (words.next(), words.next()),
        (Some("on"), Some("stable")),
        "{reason}"
    );
    let difference = words.next().and_then(number);
    assert!(
        canary.is_some_and(|r| (5.0..=6.25).contains(&r)),
        "{reason}"
    );
    assert!(stable.is_some_and(|r| (0.9..=1.0).contains(&r)), "{reason}");
    assert!(
        difference
            .is_some_and(|d| (canary.unwrap_or(0.0) - stable.unwrap_or(0.0) - d).abs() < 0.02),
        "{reason}"
    );
    // Everyone's: 3,000 of the bot's 6,000 requests failed beside them, 37.50% over 8,400 (one
    // answer may be left out, when another user's falls in the bot's cell of the per-user
    // share, keyed at random, in some second).
    let canary = whole
        .split_once("% vs 1.00% over ")
        .and_then(|(rate, rest)| Some((rate.parse::<f64>().ok()?, rest)));
    assert!(
        canary
            .is_some_and(|(rate, rest)| (37.4..=37.6).contains(&rate)
                && rest.ends_with(" and 9000 requests")),
        "{whole}"
    );
}

/// Whether the i-th request of a group fails at `rate` (spread evenly, deterministic).
fn fails(i: u64, rate: f64) -> bool {
    ((i + 1) as f64 * rate).floor() > (i as f64 * rate).floor()
}

/// `seconds` of traffic a second: `light` requests of each pool from ever new users, failing
/// at each pool's `light_rate`; three heavy users a pool, `heavy` requests a second each,
/// failing at `heavy_rate` on both; and a canary bot's `bot` requests a second, all failing.
fn heavy_users(
    seconds: u64,
    light: u64,
    light_rate: PerPool<f64>,
    heavy: u64,
    heavy_rate: f64,
    bot: u64,
) -> PerPool<Counts> {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    for second in 0..seconds {
        for pool in PoolName::BOTH {
            let base = pool as u64 * 1_000_000_000;
            for k in 0..light {
                let i = second * light + k;
                let user = Some(base + 1_000 + i);
                r.record(pool, fails(i, light_rate[pool]), 1_000, user, None);
            }
            for h in 0..3 {
                for k in 0..heavy {
                    let error = fails(second * heavy + k, heavy_rate);
                    r.record(pool, error, 1_000, Some(base + h), None);
                }
            }
        }
        for _ in 0..bot {
            r.record(PoolName::Canary, true, 1_000, Some(0xB07), None);
        }
        r.drain(&mut tick);
        for pool in PoolName::BOTH {
            since[pool].add(&tick[pool]);
        }
    }
    since
}

#[test]
fn busy_users_who_rarely_fail_and_a_bot_do_not_make_a_healthy_canary_regress() {
    // 15% for everyone on both versions, 2% for three busy users of each, and a failing bot on
    // the canary: the canary without its heaviest users (the bot and its busy ones) was
    // compared with stable with its busy ones, and halted.
    let since = heavy_users(60, 20, PerPool::from_fn(|_| 0.15), 8, 0.02, 10);
    let v = verdicts(&since, &thresholds(None));
    let left_out = v
        .errors_left_out
        .expect("a regression before they were left out");
    assert_ne!(v.errors.1, Verdict::Regressed, "{left_out:?}");
}

#[test]
fn busy_users_who_often_fail_on_both_do_not_hide_a_regression_of_everyone_else() {
    // Everyone else: 1% on stable, 6% on the canary; three busy users of each fail 10% on both.
    // Without the canary's busy users only, the canary (6%) was compared with stable with its
    // own (4%), within the margin (2 points), and the regression was missed.
    let rates = PerPool {
        stable: 0.01,
        canary: 0.06,
    };
    let since = heavy_users(300, 30, rates, 5, 0.10, 0);
    let v = verdicts(&since, &thresholds(None));
    assert_eq!(v.errors.1, Verdict::Regressed, "{:?}", v.errors_left_out);
}

#[test]
fn a_bot_failing_on_stable_does_not_hide_a_worse_canary() {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    for second in 0..300u64 {
        // A bot on stable whose every request fails; everyone else: 1% on stable, 6.25% on the
        // canary.
        for _ in 0..20 {
            r.record(PoolName::Stable, true, 1_000, Some(0xB07), None);
        }
        for k in 0..30 {
            let i = second * 30 + k;
            r.record(
                PoolName::Stable,
                fails(i, 0.01),
                1_000,
                Some(1_000_000 + i),
                None,
            );
        }
        for k in 0..8 {
            let i = second * 8 + k;
            r.record(PoolName::Canary, i % 16 == 0, 1_000, Some(10_000 + i), None);
        }
        r.drain(&mut tick);
        for pool in PoolName::BOTH {
            since[pool].add(&tick[pool]);
        }
    }
    let v = verdicts(&since, &thresholds(None));
    // Beside the bot's failures the canary looks far better (37% on stable); the bot alone
    // makes that so, and the range says it cannot tell. Without it, the canary is worse.
    assert!(v.errors.0.estimate < -0.3, "{:?}", v.errors.0);
    assert!(v.errors.0.high > 0.0, "{:?}", v.errors.0);
    assert_eq!(v.errors.1, Verdict::Regressed);
    let without = v.errors_left_out.expect("shown at every look");
    assert!(without.difference.low > 0.01, "{without:?}");
}

/// `seconds` of 30 light requests a second on each pool from ever new users, stable's latencies
/// spread over 1-2 ms and the canary's `slower` times those, beside `busy` users on each pool,
/// 10 requests a second each, all taking 10 ms (slow on either version). Each second, as the
/// analysis task does, the slow threshold goes to the request path, and the busiest cells to
/// count the latencies of.
fn slow_mix(seconds: u64, slower: f64, busy: PerPool<u64>) -> Verdicts {
    slow_mix_tracked(seconds, slower, busy, true)
}

/// [`slow_mix`], with the busiest cells' latencies counted apart only if `track`.
fn slow_mix_tracked(seconds: u64, slower: f64, busy: PerPool<u64>, track: bool) -> Verdicts {
    let mut looks = Looks::new(track);
    for second in 0..seconds {
        let r = &looks.r;
        for pool in PoolName::BOTH {
            let factor = if pool == PoolName::Canary {
                slower
            } else {
                1.0
            };
            for k in 0..30u64 {
                let i = second * 30 + k;
                let micros = (1_000.0 + (i * 7_919 % 1_000) as f64) * factor;
                let user = Some(pool as u64 * 1_000_000_000 + 1_000 + i);
                r.record(pool, false, micros as u64, user, None);
            }
            for b in 0..busy[pool] {
                for _ in 0..10 {
                    let user = pool as u64 * 1_000_000_000 + 0xB05E + b;
                    r.record(pool, false, 10_000, Some(user), None);
                }
            }
        }
        looks.look();
    }
    looks.verdicts()
}

#[test]
fn busy_users_slow_on_both_versions_do_not_make_a_healthy_canary_slow() {
    // Five busy users on the canary whose every answer is slow. Counted per request, 62% of the
    // canary's answers are slow; the busy users are left out, all five, and what remains is as
    // fast as stable.
    let v = slow_mix(
        200,
        1.0,
        PerPool {
            canary: 5,
            stable: 0,
        },
    );
    assert_ne!(
        v.latency.verdict,
        Verdict::Regressed,
        "{:?}",
        v.slow_left_out
    );
    let left_out = v.slow_left_out.expect("a threshold");
    assert_eq!(left_out.users.canary, 5, "{left_out:?}");
    assert!(left_out.share.estimate < 0.02, "{left_out:?}");
}

#[test]
fn an_a_a_split_with_busy_users_slow_on_both_sides_is_called_no_slower() {
    // Four slow busy users on each version, everyone else alike: the canary is as slow as
    // stable with them and without them. It read "too few users: ... only with them is it",
    // its canary's busy users judged against stable's reference without its own.
    let v = slow_mix(
        200,
        1.0,
        PerPool {
            canary: 4,
            stable: 4,
        },
    );
    assert_eq!(v.latency.verdict, Verdict::Ok, "{:?}", v.slow_left_out);
}

#[test]
fn a_slower_canary_is_caught_beside_busy_users_slow_on_both() {
    // Every light user's answers take twice as long on the canary: half of them are over 1.5 ×
    // stable's p99.
    let v = slow_mix(
        200,
        2.0,
        PerPool {
            canary: 3,
            stable: 0,
        },
    );
    assert_eq!(
        v.latency.verdict,
        Verdict::Regressed,
        "{:?}",
        v.slow_left_out
    );
    let left_out = v
        .slow_left_out
        .expect("a threshold, and users to leave out");
    // The three busy users are gone, with their 6,000 requests (a light user or two may share
    // their cells).
    assert!((5_950..=6_000).contains(&left_out.canary.n), "{left_out:?}");
    assert!(
        v.reason(&Default::default())
            .starts_with("without busy users (3 on canary, 0 on stable) ")
    );
}

#[test]
fn a_busy_stable_user_with_slow_answers_does_not_hide_a_slower_canary() {
    // One busy stable user (an exporter, a report) whose every answer takes 10 ms: a quarter of
    // stable's answers, and stable's p99 with them is 10 ms, over twice what the canary's
    // slowest light answers take. Its answers are left out of the p99 "slow" is set from.
    let v = slow_mix(
        200,
        2.0,
        PerPool {
            canary: 0,
            stable: 1,
        },
    );
    assert_eq!(
        v.latency.verdict,
        Verdict::Regressed,
        "{:?}",
        v.slow_left_out
    );
    let left_out = v.slow_left_out.expect("a threshold");
    assert_eq!(left_out.users.stable, 1, "{left_out:?}");
    let reference = left_out.stable_p99.expect("a p99");
    assert!((1_900.0..2_100.0).contains(&reference), "{left_out:?}");
    // Everyone's p99 on stable, as shown, is the busy user's.
    let shown = v.latency.stable.map(|p| p.p99);
    assert!(shown.is_some_and(|p| p > 9_000.0), "{shown:?}");
    // And a healthy canary beside the same busy user is not called slower.
    let healthy = slow_mix(
        200,
        1.0,
        PerPool {
            canary: 0,
            stable: 1,
        },
    );
    assert_ne!(healthy.latency.verdict, Verdict::Regressed);
    // Without the busy user's latencies counted apart (the analysis never told which cells to
    // count), its answers stay in stable's p99, and the slower canary is not caught: what the
    // counting is for.
    let untracked = slow_mix_tracked(
        200,
        2.0,
        PerPool {
            canary: 0,
            stable: 1,
        },
        false,
    );
    assert_ne!(untracked.latency.verdict, Verdict::Regressed);
}

/// `users` canary users making 5 requests a second each for 5 seconds, the first `failing` of
/// them failing every time; stable: 1% errors from 30 ever new users a second.
fn ordinary_users_failing(users: u64, failing: u64) -> Verdicts {
    let r = Recorder::default();
    let mut since = PerPool::from_fn(|_| Counts::judged());
    let mut tick = PerPool::from_fn(|_| Counts::judged());
    for second in 0..5u64 {
        for u in 0..users {
            for _ in 0..5 {
                r.record(PoolName::Canary, u < failing, 1_000, Some(10_000 + u), None);
            }
        }
        for k in 0..30 * users / 6 {
            let i = second * 30 * users / 6 + k;
            r.record(
                PoolName::Stable,
                i.is_multiple_of(100),
                1_000,
                Some(1 << 40 | i),
                None,
            );
        }
        r.drain(&mut tick);
        for pool in PoolName::BOTH {
            since[pool].add(&tick[pool]);
        }
    }
    verdicts(&since, &thresholds(None))
}

#[test]
fn errors_spread_unevenly_across_ordinary_users_are_not_called_too_few_users() {
    // 6 of 60 canary users fail every time: 10% of its requests against stable's 1%, clearly
    // worse counted per request. With users as the unit, 6 of 60 do not tell yet; none of
    // them is busy and they are more than `min_users`, so the reason is neither.
    let v = ordinary_users_failing(60, 6);
    let Verdict::FewUsers { why, .. } = v.errors.1 else {
        panic!("{:?}", v.errors);
    };
    assert_eq!(why, Few::Spread);
    let text = VerdictView::from(v.errors.1).text;
    assert!(text.starts_with("not shown across users yet"), "{text}");
    assert!(!text.contains("too few users"), "{text}");
    // Five times the users, failing in the same proportion, tell.
    assert_eq!(ordinary_users_failing(300, 30).errors.1, Verdict::Regressed);
}

#[test]
fn errors_of_fewer_users_than_min_users_are_called_too_few_users_not_uneven() {
    // 4 of 14 canary users fail every time, fewer than `min_users` (5): the range with users
    // as the unit is wide because there are so few, which the text must say, not "spread
    // unevenly" (a canary whose every user failed every request read so).
    let v = ordinary_users_failing(14, 4);
    let Verdict::FewUsers { why, .. } = v.errors.1 else {
        panic!("{:?}", v.errors);
    };
    assert_eq!(why, Few::Users);
    let text = VerdictView::from(v.errors.1).text;
    assert!(text.starts_with("too few users"), "{text}");
}

/// `seconds` of `users` canary users making 2 requests a second each, the first `slow` of them
/// always answered in 10 ms, the others as fast as stable's 30 ever new users a second.
fn ordinary_users_slow(seconds: u64, users: u64, slow: u64) -> Verdicts {
    let mut looks = Looks::new(false);
    let fast = |i: u64| 1_000 + i * 7_919 % 1_000;
    for second in 0..seconds {
        let r = &looks.r;
        for k in 0..30u64 {
            let i = second * 30 + k;
            r.record(PoolName::Stable, false, fast(i), Some(1 << 40 | i), None);
        }
        for u in 0..users {
            for n in 0..2 {
                let micros = if u < slow { 10_000 } else { fast(u + n) };
                r.record(PoolName::Canary, false, micros, Some(10_000 + u), None);
            }
        }
        looks.look();
    }
    looks.verdicts()
}

#[test]
fn slow_answers_spread_unevenly_across_ordinary_users_are_not_called_too_few_users() {
    let v = ordinary_users_slow(20, 60, 6);
    let Verdict::FewUsers { why, .. } = v.latency.verdict else {
        panic!("{:?} {:?}", v.latency, v.slow_left_out);
    };
    assert_eq!(why, Few::Spread);
    assert_eq!(
        ordinary_users_slow(20, 300, 30).latency.verdict,
        Verdict::Regressed
    );
}

#[test]
fn a_recount_starts_the_slow_share_afresh_with_its_requests() {
    // Stable's answers take 1–2 ms for 10 s, then 3–6 ms: the threshold rises past 1.5× the one
    // the canary's slow answers were counted by, and they are counted afresh. Every canary
    // answer takes 20 ms, slow by either threshold.
    let mut looks = Looks::new(false);
    let mut first = None;
    for second in 0..20u64 {
        let factor = if second < 10 { 1 } else { 3 };
        for k in 0..30u64 {
            let i = second * 30 + k;
            let micros = (1_000 + i * 7_919 % 1_000) * factor;
            let r = &looks.r;
            r.record(PoolName::Stable, false, micros, Some(1 << 40 | i), None);
            r.record(PoolName::Canary, false, 20_000, Some(1 << 41 | i), None);
        }
        first = first.or(looks.look().latency.slow_micros);
    }
    let v = looks.verdicts();
    let (first, now) = (first.unwrap_or(0.0), v.latency.slow_micros.unwrap_or(0.0));
    assert!(now > 1.5 * first && now < 20_000.0, "{first} {now}");
    let left_out = v.slow_left_out.expect("a threshold");
    let left = left_out.canary;
    // Every answer counted since the recount is slow: a share of the requests of all 20 s
    // read about half.
    assert!(left.n > 0 && left.hits == left.n, "{left:?}");
    assert!(left.n < 10 * 30, "{left:?}");
    // And the operator is told over how many seconds they were counted: those since the
    // recount, each of 30 canary answers.
    let secs = left_out.counted_looks.expect("a recount");
    assert!((1..10).contains(&secs), "{secs}");
    assert_eq!(left.n, secs * 30, "{left:?}");
}
