//! An operator drives the rollout with `ramp ctl`: every command, every state, and what users
//! then get.

mod support;

use ramp::routing::{self, PoolName};
use ramp::routing::{Rollout, State};
use serde_json::Value;
use support::{Backend, CONTROL, Client, Proxy, config, ramp};

const STICKY: &str = "sticky:\n  header: x-user-id\n  cookie: uid\n";

async fn start(percent: &str) -> (Backend, Backend, Proxy) {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        &format!("id: ops\npercent: {percent}"),
        &format!("{STICKY}{CONTROL}"),
    ));
    (stable, canary, proxy)
}

async fn pools(proxy: &Proxy, users: &[String]) -> Vec<String> {
    let client = Client::http1();
    let mut out = Vec::new();
    for u in users {
        out.push(client.get(&proxy.url("/"), &[("x-user-id", u)]).await.body);
    }
    out
}

/// Newcomers (no id): the pool of the first answer, and of a second request with their cookie.
async fn newcomers(proxy: &Proxy, n: usize) -> Vec<(String, String)> {
    let client = Client::http1();
    let mut out = Vec::new();
    for _ in 0..n {
        let first = client.get(&proxy.url("/"), &[]).await;
        let cookie = first.cookies()[0]
            .split(';')
            .next()
            .expect("pair")
            .to_owned();
        let again = client.get(&proxy.url("/"), &[("cookie", &cookie)]).await;
        out.push((first.body, again.body));
    }
    out
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("op-{i}")).collect()
}

fn expected(rollout: &str, ppm: u32, users: &[String]) -> Vec<String> {
    let r = Rollout::new(rollout, ppm, State::Running);
    users
        .iter()
        .map(|u| match routing::assign(&r, u.as_bytes()) {
            PoolName::Stable => "stable".to_owned(),
            PoolName::Canary => "canary".to_owned(),
        })
        .collect()
}

fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_rollout() {
    let (_s, _c, proxy) = start("5").await;
    let s = proxy.admin("status");
    assert_eq!(ok(&s)["rollout"], "ops");
    assert_eq!(s["state"], "running");
    assert_eq!(s["percent"].as_f64(), Some(5.0));
    assert_eq!(s["schedule"], Value::Null);
    assert_eq!(s["last_reload_error"], Value::Null);
    assert_eq!(s["changed_by"], "startup");
    assert!(
        s["changed_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    // The reply is one JSON object on one line with "ok" first.
    let raw = {
        use std::io::{BufRead, BufReader, Write};
        let mut c = std::os::unix::net::UnixStream::connect(proxy.socket()).expect("connect");
        c.write_all(b"status\n").expect("write");
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).expect("read");
        line
    };
    assert!(raw.starts_with("{\"ok\":true,"), "{raw}");
    assert!(
        raw.ends_with("}\n") && raw.matches('\n').count() == 1,
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_moves_the_share_and_is_live_when_it_replies() {
    let (_s, _c, proxy) = start("5").await;
    let people = users(300);
    for (percent, ppm) in [
        ("100", 1_000_000),
        ("0", 0),
        ("37.5", 375_000),
        ("0.0001", 1),
    ] {
        let r = proxy.admin(&format!("set {percent}"));
        assert_eq!(ok(&r)["percent"].as_f64(), Some(ppm as f64 / 10_000.0));
        assert_eq!(
            r["changed_by"]
                .as_str()
                .map(|s| s.starts_with("admin (uid ")),
            Some(true),
            "{r}"
        );
        assert_eq!(
            pools(&proxy, &people).await,
            expected("ops", ppm, &people),
            "at {percent}%"
        );
    }
    let again = proxy.admin("set 0.0001");
    assert_eq!(ok(&again)["changed"], Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_keeps_canary_users_and_sends_every_newcomer_to_stable() {
    let (_s, _c, proxy) = start("50").await;
    let people = users(200);
    let before = pools(&proxy, &people).await;
    assert!(before.iter().any(|p| p == "canary"));
    let r = proxy.admin("halt");
    assert_eq!(ok(&r)["state"], "halted");
    assert_eq!(
        r["percent"].as_f64(),
        Some(50.0),
        "the percent is frozen, not reset"
    );
    assert_eq!(
        pools(&proxy, &people).await,
        before,
        "users already placed stay where they were"
    );
    for (first, again) in newcomers(&proxy, 60).await {
        assert_eq!((first.as_str(), again.as_str()), ("stable", "stable"));
    }
    let refused = proxy.admin("set 10");
    assert_eq!(refused["ok"], Value::Bool(false));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("halted")),
        "{refused}"
    );
    assert_eq!(ok(&proxy.admin("halt"))["changed"], Value::Bool(false));

    let r = proxy.admin("resume");
    assert_eq!(ok(&r)["state"], "running");
    let fresh = newcomers(&proxy, 60).await;
    assert!(
        fresh.iter().any(|(p, _)| p == "canary"),
        "after resume newcomers reach the canary again"
    );
    assert!(fresh.iter().all(|(a, b)| a == b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_sends_everyone_to_stable_until_resume() {
    let (_s, _c, proxy) = start("50").await;
    let people = users(200);
    let before = pools(&proxy, &people).await;
    assert_eq!(ok(&proxy.admin("rollback"))["state"], "rolled_back");
    assert!(pools(&proxy, &people).await.iter().all(|p| p == "stable"));
    assert!(
        newcomers(&proxy, 20)
            .await
            .iter()
            .all(|(a, b)| a == "stable" && b == "stable")
    );
    let refused = proxy.admin("halt");
    assert_eq!(refused["ok"], Value::Bool(false), "{refused}");
    assert_eq!(ok(&proxy.admin("resume"))["state"], "running");
    assert_eq!(
        pools(&proxy, &people).await,
        before,
        "resume restores the same groups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_sends_everyone_to_canary_and_completes() {
    let (_s, _c, proxy) = start("1").await;
    let r = proxy.admin("promote");
    assert_eq!(ok(&r)["state"], "completed");
    assert_eq!(r["percent"].as_f64(), Some(100.0));
    assert!(
        pools(&proxy, &users(100))
            .await
            .iter()
            .all(|p| p == "canary")
    );
    assert!(
        newcomers(&proxy, 10)
            .await
            .iter()
            .all(|(a, b)| a == "canary" && b == "canary")
    );
    assert_eq!(proxy.admin("set 5")["ok"], Value::Bool(false));
    assert_eq!(proxy.admin("resume")["ok"], Value::Bool(false));
    assert_eq!(ok(&proxy.admin("rollback"))["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_draws_a_new_group_and_clears_a_rollback() {
    let (_s, _c, proxy) = start("50").await;
    let people = users(300);
    proxy.admin("rollback");
    let r = proxy.admin("start ops-take-2 30");
    assert_eq!(ok(&r)["rollout"], "ops-take-2");
    assert_eq!(
        (r["state"].as_str(), r["percent"].as_f64()),
        (Some("running"), Some(30.0))
    );
    let got = pools(&proxy, &people).await;
    assert_eq!(got, expected("ops-take-2", 300_000, &people));
    assert_ne!(
        got,
        expected("ops", 300_000, &people),
        "a new id must draw a different group"
    );
    // Without a percent, a new rollout starts at the file's plan.
    let r = proxy.admin("start ops-take-3");
    assert_eq!(ok(&r)["percent"].as_f64(), Some(50.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_answers_with_the_data_planes_function() {
    let (_s, _c, proxy) = start("5").await;
    let r = proxy.admin("bucket alice");
    let salt = routing::bucket::salt("ops");
    assert_eq!(
        ok(&r)["bucket"].as_u64(),
        Some(u64::from(routing::bucket(&salt, b"alice")))
    );
    assert_eq!(
        r["pool"],
        expected("ops", 50_000, &["alice".to_owned()])[0].as_str()
    );
    let body = pools(&proxy, &["alice".to_owned()]).await;
    assert_eq!(r["pool"], body[0].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_ctl_prints_a_table_or_json_and_fails_loudly() {
    let (_s, _c, proxy) = start("5").await;
    let (code, out, err) = proxy.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["rollout", "ops"]),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["percent", "5%"]),
        "{out}"
    );
    let (code, out, _) = proxy.ctl(&["--json", "set", "2.5"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["percent"].as_f64(), Some(2.5));
    let (code, out, _) = proxy.ctl(&["set", "250"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("error: bad percent \"250\""), "{out}");
    let (code, out, _) = proxy.ctl(&["bucket", "alice"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("alice: bucket "), "{out}");
    // --config finds the socket in the file.
    let cfg = proxy.config_path.to_str().expect("utf-8");
    let (code, out, _) = ramp(&["ctl", "--config", cfg, "status"]);
    assert_eq!(code, 0, "{out}");
    // No server: a clear message and a failing exit code.
    let (code, _, err) = ramp(&["ctl", "--socket", "/nonexistent/admin.sock", "status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to /nonexistent/admin.sock"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_logged_with_who_from_and_to() {
    let (_s, _c, proxy) = start("5").await;
    proxy.admin("set 7");
    let line = proxy.wait_log("rollout changed");
    let v: Value = serde_json::from_str(&line).expect("json log");
    let f = &v["fields"];
    assert_eq!(f["source"], "admin");
    assert!(
        f["by"]
            .as_str()
            .is_some_and(|b| b.contains("uid 0") && b.contains("pid ")),
        "{line}"
    );
    assert_eq!(
        (f["from_percent"].as_f64(), f["to_percent"].as_f64()),
        (Some(5.0), Some(7.0))
    );
    assert_eq!(
        (f["from_state"].as_str(), f["to_state"].as_str()),
        (Some("running"), Some("running"))
    );
}
