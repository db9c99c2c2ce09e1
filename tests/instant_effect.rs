//! A halt or rollback is live before the command replies: under concurrent load, no request
//! sent after the reply reaches where it must not.

mod support;

use support::load::{Ids, Load};
use support::{Backend, CONTROL, Proxy, config};

async fn run(command: &str, newcomers: bool) {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        "id: instant\npercent: 50",
        &format!("sticky:\n  header: x-user-id\n{CONTROL}"),
    ));
    let ids = if newcomers { Ids::None } else { Ids::Distinct };
    let load = Load::start(proxy.url("/"), 16, ids);
    load.wait("traffic on the canary", |t| t.before.canary() >= 200)
        .await;
    let socket = proxy.socket();
    let line = command.to_owned();
    let reply = tokio::task::spawn_blocking(move || support::admin_at(&socket, &line))
        .await
        .expect("admin");
    assert_eq!(reply["ok"], true, "{reply}");
    load.mark_after();
    load.wait("2,000 requests after the reply", |t| t.after.ok() >= 2_000)
        .await;
    let tally = load.finish().await;
    assert_eq!(tally.before.failed().len() + tally.after.failed().len(), 0);
    assert_eq!(
        tally.after.canary(),
        0,
        "canary answers to requests sent after `{command}` replied (of {})",
        tally.after.ok()
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
