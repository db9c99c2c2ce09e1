//! A halt or rollback is live before the command replies: under concurrent load, no request
//! sent after the reply reaches where it must not.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::{Backend, CONTROL, Client, Proxy, config};

struct Load {
    after_reply: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    violations: Arc<AtomicUsize>,
    sent_after: Arc<AtomicUsize>,
    canary_before: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

/// 16 clients sending requests back to back; `newcomers` sends no id (else a random header id).
fn load(proxy: &Proxy, newcomers: bool) -> Load {
    let l = Load {
        after_reply: Arc::default(),
        stop: Arc::default(),
        violations: Arc::default(),
        sent_after: Arc::default(),
        canary_before: Arc::default(),
        tasks: tokio::task::JoinSet::new(),
    };
    let url = Arc::new(proxy.url("/"));
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (after, stop, bad, sent, before) = (
            Arc::clone(&l.after_reply),
            Arc::clone(&l.stop),
            Arc::clone(&l.violations),
            Arc::clone(&l.sent_after),
            Arc::clone(&l.canary_before),
        );
        let url = Arc::clone(&url);
        tasks.spawn(async move {
            let client = Client::http1();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("load-{lane}-{n}");
                let headers: Vec<(&str, &str)> = if newcomers {
                    vec![]
                } else {
                    vec![("x-user-id", &id)]
                };
                // Read the flag before sending: true means this request started after the reply.
                let started_after = after.load(Ordering::SeqCst);
                let r = client.get(&url, &headers).await;
                assert_eq!(r.status, 200);
                if started_after {
                    sent.fetch_add(1, Ordering::SeqCst);
                    if r.body == "canary" {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                } else if r.body == "canary" {
                    before.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    Load { tasks, ..l }
}

async fn run(command: &str, newcomers: bool) {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        "id: instant\npercent: 50",
        &format!("sticky:\n  header: x-user-id\n{CONTROL}"),
    ));
    let mut l = load(&proxy, newcomers);
    // Let traffic reach the canary first.
    while l.canary_before.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let socket = proxy.socket();
    let line = command.to_owned();
    let reply = tokio::task::spawn_blocking(move || support::admin_at(&socket, &line))
        .await
        .expect("admin");
    assert_eq!(reply["ok"], true, "{reply}");
    l.after_reply.store(true, Ordering::SeqCst);
    while l.sent_after.load(Ordering::SeqCst) < 2_000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    l.stop.store(true, Ordering::SeqCst);
    while let Some(r) = l.tasks.join_next().await {
        r.expect("load task");
    }
    assert_eq!(
        l.violations.load(Ordering::SeqCst),
        0,
        "canary answers to requests sent after `{command}` replied (of {})",
        l.sent_after.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rollback_replies_no_request_reaches_the_canary() {
    run("rollback", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_halt_replies_no_newcomer_reaches_the_canary() {
    run("halt", true).await;
}
