//! Steady traffic while things go wrong around it: an upstream dies, the config is reloaded
//! again and again, operators hammer the admin socket. Bounded in time and count.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::{Backend, CONTROL, Client, Proxy, config};

/// 16 keep-alive clients sending requests with distinct user ids until stopped. A request whose
/// client read `after` as true before sending counts in the "after" tallies.
struct Load {
    after: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ok_before: Arc<AtomicUsize>,
    ok_after: Arc<AtomicUsize>,
    failed_before: Arc<AtomicUsize>,
    failed_after: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

use std::sync::Mutex;

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let mut l = Load {
            after: Arc::default(),
            stop: Arc::default(),
            ok_before: Arc::default(),
            ok_after: Arc::default(),
            failed_before: Arc::default(),
            failed_after: Arc::default(),
            tasks: tokio::task::JoinSet::new(),
        };
        for lane in 0..16 {
            let url = proxy.url("/");
            let (after, stop) = (Arc::clone(&l.after), Arc::clone(&l.stop));
            let (okb, oka, fb, fa) = (
                Arc::clone(&l.ok_before),
                Arc::clone(&l.ok_after),
                Arc::clone(&l.failed_before),
                Arc::clone(&l.failed_after),
            );
            l.tasks.spawn(async move {
                let client = Client::http1();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = format!("f-{lane}-{n}");
                    let started_after = after.load(Ordering::SeqCst);
                    let r = client.try_get(&url, &[("x-user-id", &id)]).await;
                    let ok = matches!(&r, Ok(r) if r.status == 200);
                    match (ok, started_after) {
                        (true, false) => okb.fetch_add(1, Ordering::SeqCst),
                        (true, true) => oka.fetch_add(1, Ordering::SeqCst),
                        (false, false) => fb.fetch_add(1, Ordering::SeqCst),
                        (false, true) => {
                            fa.lock().expect("lock").push(format!("{r:?}"));
                            0
                        }
                    };
                }
            });
        }
        l
    }

    async fn wait_ok(&self, counter: &AtomicUsize, n: usize) {
        for _ in 0..2000 {
            if counter.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "traffic stalled at {} of {n}",
            counter.load(Ordering::SeqCst)
        );
    }

    async fn finish(mut self) -> Self {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(r) = self.tasks.join_next().await {
            r.expect("load task");
        }
        self
    }
}

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
    let load = Load::start(&proxy);
    load.wait_ok(&load.ok_before, 1000).await;
    b.kill();
    load.after.store(true, Ordering::SeqCst);
    load.wait_ok(&load.ok_after, 3000).await;
    let load = load.finish().await;
    let failed_after = load.failed_after.lock().expect("lock").clone();
    assert!(
        failed_after.is_empty(),
        "{} requests sent after the kill failed: {:?}",
        failed_after.len(),
        &failed_after[..failed_after.len().min(3)]
    );
    let in_flight_failures = load.failed_before.load(Ordering::SeqCst);
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
    let load = Load::start(&proxy);
    load.after.store(true, Ordering::SeqCst);
    load.wait_ok(&load.ok_after, 500).await;
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
    let load = load.finish().await;
    let failed = load.failed_after.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(load.ok_after.load(Ordering::SeqCst) >= 500);
}
