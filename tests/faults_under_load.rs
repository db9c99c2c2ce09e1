//! Steady traffic while things go wrong around it: an upstream dies, the config is reloaded
//! again and again, operators hammer the admin socket. Bounded in time and count.

mod support;

use support::load::{Ids, Load};
use support::{Backend, CONTROL, Proxy, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_stable_upstreams_fails_only_requests_in_flight_on_it() {
    let (a, b, c) = (
        Backend::start("stable").await,
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&config(
        &[&a, &b],
        &[&c],
        "id: kill\npercent: 0",
        "sticky:\n  header: x-user-id\n",
    ));
    let load = Load::start(proxy.url("/"), 16, Ids::Distinct);
    load.wait("1,000 answers", |t| t.before.ok() >= 1000).await;
    b.kill();
    load.mark_after();
    load.wait("3,000 answers after the kill", |t| t.after.ok() >= 3000)
        .await;
    let tally = load.finish().await;
    let failed_after = tally.after.failed();
    assert!(
        failed_after.is_empty(),
        "{} requests sent after the kill failed: {:?}",
        failed_after.len(),
        &failed_after[..failed_after.len().min(3)]
    );
    let in_flight_failures = tally.before.failed().len();
    assert!(
        in_flight_failures <= 16,
        "{in_flight_failures} failures: more than the 16 requests that can be in flight"
    );
    assert!(
        a.seen().len() > 3000,
        "the surviving upstream took the traffic"
    );
    let ejected = proxy.wait_log("upstream ejected");
    assert!(ejected.contains(&b.addr.to_string()), "{ejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_and_two_hundred_admin_commands_fail_no_request() {
    let (a, b, c) = (
        Backend::start("stable").await,
        Backend::start("stable-2").await,
        Backend::start("canary").await,
    );
    let extra = format!("sticky:\n  header: x-user-id\n{CONTROL}");
    let proxy = Proxy::start(&config(&[&a], &[&c], "id: churn\npercent: 10", &extra));
    let load = Load::start(proxy.url("/"), 16, Ids::Distinct);
    load.mark_after();
    load.wait("500 answers", |t| t.after.ok() >= 500).await;
    let (path, socket) = (proxy.config_path.clone(), proxy.socket());
    let yamls = [
        config(&[&a], &[&c], "id: churn\npercent: 10", &extra),
        config(&[&a, &b], &[&c], "id: churn\npercent: 20", &extra),
        config(&[&b], &[&c, &a], "id: churn\npercent: 5", &extra),
    ];
    let churn = tokio::task::spawn_blocking(move || {
        for i in 0..100 {
            support::replace_file(&path, &yamls[i % yamls.len()]);
            let r = support::admin_at(&socket, "reload");
            assert_eq!(r["ok"], true, "{r}");
            for cmd in ["status", if i % 2 == 0 { "halt" } else { "resume" }] {
                let r = support::admin_at(&socket, cmd);
                assert_eq!(r["ok"], true, "{cmd}: {r}");
            }
        }
    });
    churn.await.expect("churn");
    let tally = load.finish().await;
    let failed = tally.after.failed();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(tally.after.ok() >= 500);
}
