//! A user sends requests and lands on a pool: the share, stickiness, monotonicity, independence.

mod support;

use std::sync::Arc;

use ramp::routing::{self, PoolName};
use ramp::routing::{Rollout, State};
use support::{Backend, Client, Proxy, config};

/// Asks the proxy once per id (cookie `uid`), 32 at a time; gives the pool that answered each.
async fn pools_for(proxy: &Proxy, ids: &[String]) -> Vec<String> {
    let client = Client::http1();
    let url = Arc::new(proxy.url("/"));
    let mut tasks = tokio::task::JoinSet::new();
    for (lane, chunk) in ids.chunks(ids.len().div_ceil(32)).enumerate() {
        let (client, url, chunk) = (client.clone(), Arc::clone(&url), chunk.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for id in chunk {
                let r = client.get(&url, &[("cookie", &format!("uid={id}"))]).await;
                assert_eq!(r.status, 200, "{id}: {}", r.body);
                assert!(r.cookies().is_empty(), "a user with an id got a new cookie");
                out.push(r.body);
            }
            (lane, out)
        });
    }
    let mut lanes = tasks.join_all().await;
    lanes.sort_by_key(|(lane, _)| *lane);
    lanes.into_iter().flat_map(|(_, out)| out).collect()
}

fn ids(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn start(percent: &str, rollout: &str) -> (Backend, Backend, Proxy) {
    start_with_workers(percent, rollout, 1).await
}

/// One worker runs a single-threaded runtime, more a work-stealing one: both must split alike.
async fn start_with_workers(
    percent: &str,
    rollout: &str,
    workers: usize,
) -> (Backend, Backend, Proxy) {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let yaml = config(
        &[&stable],
        &[&canary],
        &format!("id: {rollout}\npercent: {percent}"),
        "",
    )
    .replace("workers: 1\n", &format!("workers: {workers}\n"));
    (stable, canary, Proxy::start(&yaml))
}

fn expected(rollout: &str, ppm: u32, id: &str) -> &'static str {
    let r = Rollout::new(rollout, ppm, State::Running);
    match routing::assign(&r, id.as_bytes()) {
        PoolName::Stable => "stable",
        PoolName::Canary => "canary",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_of_20000_users_land_on_canary_by_the_documented_hash_on_two_workers() {
    let (_s, _c, proxy) = start_with_workers("5", "checkout-v2", 2).await;
    let users = ids(20_000, "user-");
    let got = pools_for(&proxy, &users).await;
    let canary = got.iter().filter(|p| *p == "canary").count();
    let share = canary as f64 / users.len() as f64 * 100.0;
    assert!((4.5..=5.5).contains(&share), "canary share {share}%");
    for (id, pool) in users.iter().zip(&got) {
        assert_eq!(pool, expected("checkout-v2", 50_000, id), "user {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stays_on_the_same_pool_across_requests() {
    let (_s, _c, proxy) = start("50", "sticky-test").await;
    let users = ids(200, "u");
    let first = pools_for(&proxy, &users).await;
    for _ in 0..3 {
        assert_eq!(pools_for(&proxy, &users).await, first);
    }
    let canary = first.iter().filter(|p| *p == "canary").count();
    assert!((60..=140).contains(&canary), "{canary} of 200 at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percent_only_adds_canary_users() {
    let users = ids(5_000, "m-");
    let (_s1, _c1, at5) = start("5", "mono").await;
    let five = pools_for(&at5, &users).await;
    drop(at5);
    let (_s2, _c2, at10) = start("10", "mono").await;
    let ten = pools_for(&at10, &users).await;
    let mut added = 0;
    for ((id, a), b) in users.iter().zip(&five).zip(&ten) {
        if a == "canary" {
            assert_eq!(b, "canary", "{id} left the canary when the percent rose");
        } else if b == "canary" {
            added += 1;
        }
    }
    assert!(
        added > 100,
        "raising 5% -> 10% added only {added} of 5000 users"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_percent_sends_everyone_to_stable_and_100_to_canary() {
    let users = ids(1_000, "z-");
    let (_s, _c, zero) = start("0", "edges").await;
    assert!(pools_for(&zero, &users).await.iter().all(|p| p == "stable"));
    let (_s2, _c2, all) = start("100", "edges").await;
    assert!(pools_for(&all, &users).await.iter().all(|p| p == "canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundredth_of_a_percent_is_100_buckets_in_a_million() {
    // 0.01% -> users with bucket < 100. Find a few such ids and a few just above.
    let rollout = "tiny";
    let r = Rollout::new(rollout, 100, State::Running);
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for i in 0.. {
        let id = format!("t{i}");
        let b = routing::bucket(&r.salt, id.as_bytes());
        if b < 100 && inside.len() < 3 {
            inside.push(id);
        } else if (100..200).contains(&b) && outside.len() < 3 {
            outside.push(id);
        }
        if inside.len() == 3 && outside.len() == 3 {
            break;
        }
    }
    let (_s, _c, proxy) = start("0.01", rollout).await;
    assert_eq!(pools_for(&proxy, &inside).await, ["canary"; 3]);
    assert_eq!(pools_for(&proxy, &outside).await, ["stable"; 3]);
}

#[test]
fn two_rollout_ids_draw_independent_groups() {
    let a = Rollout::new("checkout-v2", 100_000, State::Running);
    let b = Rollout::new("search-v7", 100_000, State::Running);
    let users = ids(100_000, "i-");
    let (mut in_a, mut in_b, mut both) = (0, 0, 0);
    for id in &users {
        let ca = routing::assign(&a, id.as_bytes()) == PoolName::Canary;
        let cb = routing::assign(&b, id.as_bytes()) == PoolName::Canary;
        in_a += usize::from(ca);
        in_b += usize::from(cb);
        both += usize::from(ca && cb);
    }
    let pct = |n: usize| n as f64 / users.len() as f64 * 100.0;
    assert!((9.5..=10.5).contains(&pct(in_a)), "{}", pct(in_a));
    assert!((9.5..=10.5).contains(&pct(in_b)), "{}", pct(in_b));
    // Independent draws overlap on 10% x 10% = 1% of users.
    assert!((0.85..=1.15).contains(&pct(both)), "overlap {}%", pct(both));
}

/// Golden values, computed independently with Python's `xxhash` package:
/// `xxhash.xxh3_64_intdigest(rollout + b"\0" + user) % 1000000`. If one of these changes, every
/// user of every running rollout may change pool: do not update them, find what broke.
#[test]
fn buckets_match_an_independent_xxh3() {
    let long_rollout = "x".repeat(256);
    let long_user = "y".repeat(1024);
    let golden: [(&str, &str, u32); 10] = [
        ("checkout-v2", "user-1", 573_883),
        ("checkout-v2", "user-2", 822_188),
        ("checkout-v2", "alice", 990_868),
        ("checkout-v2", "QfA0PCnFnOWpVoovUEU8hg", 314_636),
        ("demo", "user-1", 704_311),
        ("demo", "user-2", 84_390),
        ("bench", "user42", 354_498),
        ("checkout-v3", "alice", 929_584),
        ("r", "éè", 474_823),
        (&long_rollout, &long_user, 482_701),
    ];
    for (rollout, user, bucket) in golden {
        let salt = routing::bucket::salt(rollout);
        assert_eq!(
            routing::bucket(&salt, user.as_bytes()),
            bucket,
            "{rollout}/{user}"
        );
    }
}
