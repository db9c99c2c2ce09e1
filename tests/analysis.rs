//! Canary and stable compared by the running binary: the guard rolls back a canary that fails
//! and from then on no request reaches it; an A/A split is left alone; goals, distinct users and
//! the sample-ratio check show in status and in Prometheus; a schedule waits for data; a client's
//! slow upload is not the upstream's latency, a request its client gave up on still counts, and
//! one client's flood counts for its share of a second.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use support::{Backend, CONTROL, Client, Proxy, config, single};

/// Sends `n` requests over 16 keep-alive lanes, user ids `{prefix}-{i}` (each id used
/// `repeat` times); gives how many answers each body got.
async fn traffic(
    proxy: &Proxy,
    n: usize,
    prefix: &str,
    repeat: usize,
    path: &str,
) -> (usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let canary = Arc::new(AtomicUsize::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (next, canary) = (Arc::clone(&next), Arc::clone(&canary));
        let url = proxy.url(path);
        let prefix = prefix.to_owned();
        lanes.spawn(async move {
            let client = Client::http1();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let id = format!("{prefix}-{}", i / repeat);
                let r = client
                    .try_get(&url, &[("x-user-id", &id)])
                    .await
                    .expect("an answer");
                if r.body == "canary" {
                    canary.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    while let Some(r) = lanes.join_next().await {
        r.expect("lane");
    }
    let c = canary.load(Ordering::SeqCst);
    (n - c, c)
}

fn yaml(s: &Backend, c: &Backend, rollout: &str, extra: &str) -> String {
    config(
        &[s],
        &[c],
        rollout,
        &format!(
            "sticky:\n  header: x-user-id\nmetrics: {{listen: '127.0.0.1:0'}}\n{CONTROL}{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rolls_back_a_failing_canary_and_no_request_reaches_it_after() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    s.set_failing(1);
    c.set_failing(30);
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: bad\npercent: 50\nguard: {action: rollback}",
        "",
    ));
    traffic(&proxy, 1_500, "u", 1, "/").await;
    let st = proxy.wait_status("the guard acts", |v| v["state"] == "rolled_back");
    assert_eq!(st["source"], "guard", "{st}");
    let by = st["changed_by"].as_str().expect("by");
    assert!(
        by.starts_with("guard (error rate"),
        "the figures that triggered it: {by}"
    );
    assert_eq!(st["analysis"]["errors"]["verdict"], "regressed");
    assert!(
        st["analysis"]["guard"]["acted"]
            .as_str()
            .is_some_and(|a| a.starts_with("rolled back"))
    );
    assert_eq!(st["changes"][0]["source"], "guard");
    proxy.wait_log("the guard acts");
    assert_eq!(
        proxy
            .metric("ramp_guard_actions_total{action=\"rollback\"}")
            .await,
        1.0
    );
    // From then on, no request reaches the canary...
    let next_look = |proxy: &Proxy| {
        let at = proxy.admin("status")["analysis"]["at"].clone();
        proxy.wait_status("the analysis looks again", |v| v["analysis"]["at"] != at)["analysis"]
            .clone()
    };
    next_look(&proxy);
    let frozen = next_look(&proxy);
    let before = c.seen().len();
    let (_, canary) = traffic(&proxy, 1_000, "after", 1, "/").await;
    assert_eq!(canary, 0);
    assert_eq!(
        c.seen().len(),
        before,
        "a request reached the canary after the rollback"
    );
    // ...and the comparison stands as it was: stable's answers alone, from a later time, neither
    // count nor move the verdict the guard acted on.
    let later = next_look(&proxy);
    assert_eq!(
        later["pools"]["stable"]["requests"], frozen["pools"]["stable"]["requests"],
        "{later}"
    );
    assert_eq!(later["errors"]["verdict"], "regressed", "{later}");
    // The rollback was persisted like any change.
    let text = std::fs::read_to_string(proxy.state_file()).expect("state file");
    assert!(
        text.contains("\"rolled_back\"") && text.contains("\"guard\""),
        "{text}"
    );
    // Who stopped it survives a file edit made since and a restart, when the changes listed
    // and the analysis's own note of its action are gone.
    let edited = std::fs::read_to_string(&proxy.config_path)
        .expect("config")
        .replace("percent: 50", "percent: 60");
    support::replace_file(&proxy.config_path, &edited);
    proxy.wait_status("the edit is read", |v| v["source"] == "file");
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(st["state"], "rolled_back", "{st}");
    assert_eq!(st["source"], "file", "{st}");
    assert!(st["changes"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert_eq!(st["stopped"]["source"], "guard", "{st}");
    assert!(
        st["stopped"]["by"].as_str().is_some_and(|b| b == by),
        "{st}"
    );
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("stopped     rolled back ") && out.contains(by),
        "{out}"
    );
    // Running again, nobody has stopped it.
    assert_eq!(proxy.admin("resume")["ok"], true);
    assert!(proxy.admin("status")["stopped"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a_a_split_with_two_percent_errors_on_both_sides_is_left_alone() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    s.set_failing(2);
    c.set_failing(2);
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: aa\npercent: 50\nguard: {action: rollback}",
        "",
    ));
    let (stable, canary) = traffic(&proxy, 10_000, "aa", 1, "/").await;
    assert!(stable > 4_000 && canary > 4_000, "{stable} {canary}");
    // Let the analysis look at everything.
    let st = proxy.wait_status("the analysis sees every request", |v| {
        let p = &v["analysis"]["pools"];
        p["stable"]["requests"].as_u64().unwrap_or(0)
            + p["canary"]["requests"].as_u64().unwrap_or(0)
            >= 10_000
    });
    assert_eq!(st["state"], "running", "{st}");
    assert_ne!(st["analysis"]["errors"]["verdict"], "regressed", "{st}");
    assert!(st["analysis"]["guard"]["acted"].is_null());
    assert!(!proxy.logs().iter().any(|l| l.contains("the guard acts")));
    // The figures are the counters: both sides at 2%.
    for pool in ["stable", "canary"] {
        let rate = st["analysis"]["pools"][pool]["error_rate"]
            .as_f64()
            .expect("rate");
        assert!((rate - 0.02).abs() < 0.005, "{pool}: {rate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_goals_and_the_split_check_show_in_status_and_prometheus() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: ab\npercent: 20",
        "analysis:\n  goals:\n    - {name: purchase, path: /checkout/done, status: 2xx}\n    - {name: never, method: POST, path: /checkout/done}\n",
    ));
    // 400 users, 3 requests each to the goal path.
    traffic(&proxy, 1_200, "shopper", 3, "/checkout/done").await;
    let st = proxy.wait_status("the analysis sees every request", |v| {
        v["analysis"]["pools"]["stable"]["requests"]
            .as_u64()
            .unwrap_or(0)
            + v["analysis"]["pools"]["canary"]["requests"]
                .as_u64()
                .unwrap_or(0)
            == 1_200
    });
    let a = &st["analysis"];
    let users = |p: &str| a["pools"][p]["users"].as_f64().expect("users");
    let total = users("stable") + users("canary");
    assert!(
        (total - 400.0).abs() <= 12.0,
        "400 distinct users, estimated {total}"
    );
    let purchase = &a["goals"][0];
    assert_eq!(purchase["name"], "purchase");
    let conversions = |p: &str| purchase["conversions"][p].as_u64().expect("conversions");
    assert_eq!(conversions("stable") + conversions("canary"), 1_200);
    assert_eq!(purchase["per_request"]["canary"].as_f64(), Some(1.0));
    // Every user converted: the verdict's share of users converting is all of them.
    for pool in ["stable", "canary"] {
        assert_eq!(
            purchase["converted"][pool].as_f64(),
            a["pools"][pool]["users"].as_f64(),
            "{purchase}"
        );
        assert_eq!(purchase["converted_share"][pool].as_f64(), Some(1.0));
    }
    assert_eq!(
        a["goals"][1]["conversions"]["canary"], 0,
        "GET is not the POST goal"
    );
    let srm = &a["sample_ratio"];
    assert_eq!(srm["mismatch"], false, "{srm}");
    let metrics = proxy.metrics().await;
    for series in [
        "ramp_request_duration_seconds_bucket{pool=\"stable\",le=\"+Inf\"}",
        "ramp_users{pool=\"canary\"}",
        "ramp_goal_total{pool=\"canary\",goal=\"purchase\"}",
        "ramp_guard_verdict{metric=\"errors\"}",
        "ramp_ids_minted_total",
        "ramp_open_connections",
        "ramp_upstream_errors_total{pool=\"canary\",kind=\"connect\"}",
        "ramp_config_reloads_total{result=\"ok\"}",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    let count = |pool: &str| {
        proxy_metric(
            &metrics,
            &format!("ramp_request_duration_seconds_count{{pool=\"{pool}\"}}"),
        )
    };
    assert_eq!(count("stable") + count("canary"), 1_200.0);
    // A new rollout is never shown the old one's comparison, not even in the reply to `start`.
    let started = proxy.admin("start fresh 5");
    assert_eq!(started["ok"], true, "{started}");
    let shown = &started["analysis"];
    assert!(
        shown.is_null()
            || (shown["rollout"] == "fresh" && shown["pools"]["stable"]["requests"] == 0),
        "{shown}"
    );
    let st = proxy.wait_status("the new rollout's comparison", |v| {
        v["analysis"]["rollout"] == "fresh"
    });
    assert_eq!(st["analysis"]["pools"]["stable"]["requests"], 0, "{st}");
}

fn proxy_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_split_is_flagged_loudly() {
    // The canary refuses every connection: its users are served by stable, so the pool that
    // answers them is not the pool the split gave them.
    let s = Backend::start("stable").await;
    let dead = support::dead_port().forever();
    let text = format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{}'], canary: ['{dead}']}}\nrollout:\n  id: srm\n  steps: [{{percent: 50, hold: 1s}}, {{percent: 100}}]\n  guard: {{action: halt, min_requests: 100, require_data: true}}\n{CONTROL}",
        s.addr
    );
    let proxy = Proxy::start(&text);
    traffic(&proxy, 600, "split", 1, "/").await;
    let st = proxy.wait_status("the split check runs", |v| {
        !v["analysis"]["sample_ratio"].is_null()
    });
    assert_eq!(st["analysis"]["sample_ratio"]["mismatch"], true, "{st}");
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("SAMPLE RATIO MISMATCH"), "{out}");
    // Nor does the schedule raise exposure on a split it cannot trust.
    let st = proxy.wait_status("the schedule is held by the split check", |v| {
        v["schedule"]["held"]
            .as_str()
            .is_some_and(|h| h.contains("the split check failed"))
    });
    assert_eq!(st["percent"].as_f64(), Some(50.0), "{st}");
    let guard_line = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("guard "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{out}"))
    };
    let (_, out, _) = proxy.ctl(&["status"]);
    let line = guard_line(&out);
    assert!(
        line.contains("halt when the error rate is ")
            && line.contains("holds the schedule: the split check failed"),
        "{line}"
    );
    // Halted, the schedule's clock stops: nothing is held, a schedule would wait.
    assert_eq!(proxy.admin("halt")["ok"], true);
    let (_, out, _) = proxy.ctl(&["status"]);
    let line = guard_line(&out);
    assert!(
        line.contains("a schedule would wait: the split check failed")
            && !line.contains("holds the schedule"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_waits_for_data_when_the_guard_requires_it() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: wait\nsteps:\n  - {percent: 50, hold: 1s}\n  - {percent: 100}\nguard: {action: halt, min_requests: 100, require_data: true}",
        "",
    ));
    let st = proxy.wait_status("the hold is over but the step waits", |v| {
        v["schedule"]["held"]
            .as_str()
            .is_some_and(|h| h.contains("waiting for data"))
    });
    assert_eq!(st["percent"].as_f64(), Some(50.0));
    traffic(&proxy, 400, "data", 1, "/").await;
    let st = proxy.wait_status("the schedule moves on", |v| v["state"] == "completed");
    assert_eq!(st["changed_by"], "schedule");
    let _: Value = st;
}

/// The stable pool's figure `what` in status, once it has counted `n` requests.
fn stable_after(proxy: &Proxy, n: u64, what: &str) -> Value {
    let st = proxy.wait_status("the request is counted", |v| {
        v["analysis"]["pools"]["stable"]["requests"].as_u64() == Some(n)
    });
    st["analysis"]["pools"]["stable"][what].clone()
}

/// Sends `head` and `first` at once, `rest` 1.5 s later (or, if `None`, ends the upload there:
/// `shutdown` closes the write side, else the connection is reset); the answer's text.
fn upload_slowly(
    addr: std::net::SocketAddr,
    head_and_first: &'static [u8],
    rest: Option<&'static [u8]>,
    shutdown: bool,
) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.write_all(head_and_first).expect("head");
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    match rest {
        Some(rest) => c.write_all(rest).expect("rest"),
        None if shutdown => c.shutdown(std::net::Shutdown::Write).expect("shutdown"),
        None => {
            // A reset, not an orderly close.
            c.set_nonblocking(true).expect("nonblocking");
            let _rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            let _enter = _rt.enter();
            let c = tokio::net::TcpStream::from_std(c).expect("tokio stream");
            c.set_zero_linger().expect("linger");
            return String::new();
        }
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_the_client_s_time_not_the_upstream_s_latency() {
    let s = Backend::start("stable").await;
    let proxy = Proxy::start(&single(s.addr, CONTROL));
    let addr = proxy.addr;
    let blocking = |f: Box<dyn FnOnce() -> String + Send>| tokio::task::spawn_blocking(f);
    // Uploads whose last part comes 1.5 s after the head; the upstream answers once it has it.
    let sized = blocking(Box::new(move || {
        upload_slowly(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\na",
            Some(b"b"),
            false,
        )
    }));
    let chunked = blocking(Box::new(move || {
        upload_slowly(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
            Some(b"0\r\n\r\n"),
            false,
        )
    }));
    // Uploads the client breaks off: a 400 or nothing, and no pool's doing.
    let closed = blocking(Box::new(move || {
        upload_slowly(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde",
            None,
            true,
        )
    }));
    let reset = blocking(Box::new(move || {
        upload_slowly(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde",
            None,
            false,
        )
    }));
    // HTTP/2: the whole declared body, 1.5 s after the head, and no END_STREAM after it.
    let h2 = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::post(format!("http://{addr}/upload"))
            .header("content-length", "2")
            .body(())
            .expect("request");
        let (answer, mut stream) = client.send_request(req, false).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        stream
            .send_data(bytes::Bytes::from_static(b"ab"), false)
            .expect("data");
        let status = answer.await.expect("answer").status();
        (status, stream)
    });
    for (name, done) in [("sized", sized), ("chunked", chunked)] {
        let reply = done.await.expect("client");
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
    }
    let closed = closed.await.expect("client");
    assert!(closed.starts_with("HTTP/1.1 400"), "{closed}");
    reset.await.expect("client");
    let (status, _open) = h2.await.expect("h2 client");
    assert_eq!(status, 200);
    // Three answered uploads counted, none with its upload time; the broken ones not at all.
    let p99 = stable_after(&proxy, 3, "p99_ms").as_f64().expect("p99");
    assert!(
        p99 < 500.0,
        "an upload's 1.5 s counted as latency: p99 {p99} ms"
    );
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    stable_after(&proxy, 4, "requests");
}

/// An upstream that takes requests and never answers.
async fn hung_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = hung.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = hung.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_client_gave_up_on_counts_with_the_time_it_waited() {
    use tokio::io::AsyncWriteExt;
    let proxy = Proxy::start(&single(hung_upstream().await, CONTROL));
    let give_up_after = |ms: u64| {
        let addr = proxy.addr;
        async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("request");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    };
    // Clients that give up at once say nothing of the upstream: not counted (else anyone could
    // add "successes" by the thousand).
    let quick: Vec<_> = (0..20).map(|_| tokio::spawn(give_up_after(50))).collect();
    for q in quick {
        q.await.expect("client");
    }
    // One that waited 1.5 s before giving up, as impatient clients and their timeouts do.
    give_up_after(1_500).await;
    let p50 = stable_after(&proxy, 1, "p50_ms").as_f64().expect("p50");
    assert!(
        p50 >= 1_400.0,
        "counted, but not with the time it waited: {p50} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_s_prometheus_counter_keeps_counting_across_an_edit_of_the_goals() {
    let s = Backend::start("stable").await;
    let goals = |list: &str| {
        single(
            s.addr,
            &format!("metrics: {{listen: '127.0.0.1:0'}}\n{CONTROL}analysis:\n  goals:\n{list}"),
        )
    };
    let purchase = "    - {name: purchase, path: /checkout/done}\n";
    let proxy = Proxy::start(&goals(purchase));
    let series = "ramp_goal_total{pool=\"stable\",goal=\"purchase\"}";
    let url = proxy.url("/checkout/done");
    let convert = |n: usize| {
        let url = url.clone();
        async move {
            for _ in 0..n {
                assert_eq!(Client::http1().get(&url, &[]).await.status, 200);
            }
        }
    };
    let proxy = &proxy;
    let counted = |want: f64| async move {
        for _ in 0..100 {
            if proxy.metric(series).await == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "{series} never reached {want}: {}",
            proxy.metric(series).await
        );
    };
    convert(3).await;
    counted(3.0).await;
    // A goal added ahead of it: the edit is reloaded, and the counter goes on from 3.
    std::fs::write(
        &proxy.config_path,
        goals(&format!(
            "    - {{name: signup, path: /signup}}\n{purchase}"
        )),
    )
    .expect("edit");
    proxy.wait_status("the edit is in force", |v| {
        v["analysis"]["goals"][0]["name"] == "signup"
    });
    convert(4).await;
    counted(7.0).await;
    let conversions = |v: &Value| v["analysis"]["goals"][1]["conversions"]["stable"].as_u64();
    proxy.wait_status("four in status", |v| conversions(v) == Some(4));
    // The goal redefined under its name: its conversions in status begin again, as the old
    // path's were not the new goal's; the Prometheus counter goes on.
    std::fs::write(
        &proxy.config_path,
        goals("    - {name: signup, path: /signup}\n    - {name: purchase, path: /paid}\n"),
    )
    .expect("edit");
    proxy.wait_status("the redefinition is in force", |v| {
        conversions(v) == Some(0)
    });
    for _ in 0..2 {
        assert_eq!(
            Client::http1().get(&proxy.url("/paid"), &[]).await.status,
            200
        );
    }
    counted(9.0).await;
    proxy.wait_status("the new path counts", |v| conversions(v) == Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_and_a_resume_or_a_start_of_the_same_rollout_start_a_fresh_comparison() {
    let s = Backend::start("stable").await;
    let proxy = Proxy::start(&single(s.addr, CONTROL));
    for _ in 0..10 {
        assert_eq!(Client::http1().get(&proxy.url("/"), &[]).await.status, 200);
    }
    stable_after(&proxy, 10, "requests");
    // Typed one after the other: the analysis, which looks once a second, may never see the halt.
    assert_eq!(proxy.admin("halt")["ok"], true);
    assert_eq!(proxy.admin("resume")["ok"], true);
    stable_after(&proxy, 0, "requests");
    // `start` of the rollout in force (its id, a percent) is a fresh rollout too.
    for _ in 0..10 {
        assert_eq!(Client::http1().get(&proxy.url("/"), &[]).await.status, 200);
    }
    stable_after(&proxy, 10, "requests");
    let stamp = || {
        let text = std::fs::read_to_string(proxy.state_file()).expect("state file");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["changed_at_unix_ms"].as_u64().expect("changed_at")
    };
    let before = stamp();
    let r = proxy.admin("start edge 0");
    assert_eq!(r["ok"], true);
    assert!(
        r["analysis"].is_null(),
        "the reply shows the comparison from before the start: {r}"
    );
    // The evidence gathered so far is gone: the reply, the changes and the log say so, though
    // the rollout itself is as it was.
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["changes"][0]["command"], "start", "{r}");
    assert_eq!(r["changes"][0]["source"], "admin", "{r}");
    assert_eq!(r["source"], "admin", "who changed it last: {r}");
    assert!(stamp() > before, "the start is the last change, saved");
    proxy.wait_log("its comparison begins again");
    stable_after(&proxy, 0, "requests");
    let (code, out, _) = proxy.ctl(&["start", "edge", "0"]);
    assert_eq!(code, 0);
    assert!(!out.contains("nothing changed"), "{out}");
}

/// A canary upstream that answers "canary" on keep-alive connections, but closes the connection
/// without a word when the path is `/crash` — a process that dies on some requests.
async fn crashing_canary() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    support::raw_upstream(|mut conn| async move {
        let mut buf = Vec::new();
        while let Some(head) = support::next_head(&mut conn, &mut buf).await {
            if head.starts_with("GET /crash ") {
                return;
            }
            if head.starts_with("GET /crash-late ") {
                tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary";
            if conn.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_crashes_on_some_requests_shows_though_stable_serves_them_again() {
    let s = Backend::start("stable").await;
    let canary = crashing_canary().await;
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools: {{stable: ['{}'], canary: ['{canary}']}}\nrollout: {{id: crash, percent: 100}}\nsticky: {{header: x-user-id}}\nmetrics: {{listen: '127.0.0.1:0'}}\n{CONTROL}",
        s.addr
    ));
    let client = Client::http1();
    for i in 0..10 {
        let id = format!("u{i}");
        let ok = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
        assert_eq!((ok.status.as_u16(), ok.body.as_str()), (200, "canary"));
        // The canary dies on this one; stable answers it again, and the user sees nothing.
        let saved = client
            .get(&proxy.url("/crash"), &[("x-user-id", &id)])
            .await;
        assert_eq!(
            (saved.status.as_u16(), saved.body.as_str()),
            (200, "stable")
        );
    }
    // It hangs on this one before it dies: stable's answer is as fast as ever, and the time
    // the canary took is not charged to stable.
    for i in 0..3 {
        let saved = client
            .get(
                &proxy.url("/crash-late"),
                &[("x-user-id", &format!("u{i}"))],
            )
            .await;
        assert_eq!(saved.body, "stable");
    }
    // The comparison still sees a canary that failed half its requests.
    let st = proxy.wait_status("the canary's failures are counted", |v| {
        v["analysis"]["pools"]["canary"]["requests"].as_u64() == Some(23)
    });
    let canary = &st["analysis"]["pools"]["canary"];
    assert_eq!(canary["errors"], 13, "{st}");
    let stable = &st["analysis"]["pools"]["stable"];
    assert_eq!(stable["errors"], 0, "{st}");
    assert_eq!(stable["requests"], 13, "{st}");
    let p99 = stable["p99_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(p99 < 400.0, "stable's p99 {p99} ms: {st}");
    let text = proxy.metrics().await;
    assert_eq!(
        proxy_metric(
            &text,
            "ramp_upstream_errors_total{pool=\"canary\",kind=\"reset\"}"
        ),
        13.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answer_cut_off_mid_body_is_an_error_and_a_client_hanging_up_is_not() {
    use std::io::{Read, Write};
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: cut\npercent: 100", ""));
    // The canary sends its head and part of the body, then drops the connection.
    for i in 0..5 {
        let r = Client::http1()
            .try_get(&proxy.url("/reset"), &[("x-user-id", &format!("u{i}"))])
            .await;
        assert!(r.is_err(), "a whole answer: {r:?}");
    }
    // A client that reads the start of a long answer and goes away broke nothing upstream.
    for _ in 0..3 {
        let mut raw = std::net::TcpStream::connect(proxy.addr).expect("connect");
        raw.write_all(b"GET /download/50000000 HTTP/1.1\r\nHost: x\r\nX-User-Id: v\r\n\r\n")
            .expect("request");
        let mut buf = [0u8; 4096];
        assert!(raw.read(&mut buf).expect("head") > 0);
    }
    let st = proxy.wait_status("every answer is counted", |v| {
        v["analysis"]["pools"]["canary"]["requests"].as_u64() == Some(8)
    });
    // Give a late error from the downloads time to show, if it were (wrongly) counted.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let st2 = proxy.admin("status");
    assert_eq!(
        st2["analysis"]["pools"]["canary"]["errors"], 5,
        "{st}\n{st2}"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        proxy_metric(
            &text,
            "ramp_upstream_errors_total{pool=\"canary\",kind=\"reset\"}"
        ),
        5.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_check_after_a_lowered_percent_counts_only_users_routed_at_it() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: lowered\npercent: 50", ""));
    // Users at 50%, the percent lowered at once, before the analysis's second has ended.
    traffic(&proxy, 1_500, "before", 1, "/").await;
    assert_eq!(proxy.admin("set 5")["ok"], true);
    proxy.wait_status("the comparison restarts at the new share", |v| {
        v["analysis"]["pools"]["stable"]["requests"] == 0
    });
    let (_, canary) = traffic(&proxy, 2_000, "after", 1, "/").await;
    assert!(
        canary < 200,
        "{canary} of 2,000 new users on the canary at 5%"
    );
    let st = proxy.wait_status("the new users are counted", |v| {
        let users = &v["analysis"]["sample_ratio"]["users"];
        users["stable"].as_f64().unwrap_or(0.0) + users["canary"].as_f64().unwrap_or(0.0) >= 1_800.0
    });
    let check = &st["analysis"]["sample_ratio"];
    assert_eq!(check["mismatch"], false, "{st}");
    let observed = check["observed"].as_f64().expect("observed");
    assert!(observed < 0.08, "{observed}: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_both_versions_after_a_raise_does_not_halt_a_healthy_canary() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: raised\npercent: 10\nguard: {action: halt, min_requests: 100}",
        "",
    ));
    // A quiet hour at 10%: no errors on either version.
    traffic(&proxy, 1_000, "early", 1, "/").await;
    proxy.wait_status("the quiet hour is counted", |v| compared(v) == 1_000);
    assert_eq!(proxy.admin("set 50")["ok"], true);
    proxy.wait_status("the comparison restarts at the new share", |v| {
        v["analysis"]["pools"]["stable"]["requests"] == 0
    });
    // Then a dependency both versions use fails: every answer is a 500, on both. Pooled with the
    // quiet hour, the canary's side (mostly from after the raise) would look far worse.
    traffic(&proxy, 400, "late", 1, "/status/500").await;
    let st = proxy.wait_status("the outage is counted", |v| compared(v) == 400);
    assert_ne!(st["analysis"]["errors"]["verdict"], "regressed", "{st}");
    // Given the time to act, the guard does not.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let st = proxy.admin("status");
    assert_eq!(st["state"], "running", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_s_errors_on_the_canary_do_not_roll_a_healthy_canary_back() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: one\npercent: 50\nguard: {action: rollback, min_requests: 100}",
        "",
    ));
    // Both versions answer 500 to the same bad input; ordinary users meet none.
    traffic(&proxy, 600, "u", 1, "/").await;
    // One client with an id on the canary sends that input, over and over.
    let client = Client::http1();
    let id = canary_ids(&proxy, &client, "bot", 1).await.remove(0);
    for _ in 0..80 {
        let r = client
            .get(&proxy.url("/status/500"), &[("x-user-id", &id)])
            .await;
        assert_eq!(r.status.as_u16(), 500);
    }
    // A few other users meet an error each, as users of any version do now and then: the canary
    // has errors from more than `min_users` users, but nearly all are the one client's.
    for other in canary_ids(&proxy, &client, "other", 6).await {
        let r = client
            .get(&proxy.url("/status/500"), &[("x-user-id", &other)])
            .await;
        assert_eq!(r.status.as_u16(), 500);
    }
    // Each second, the first 20 of them count; the rest are one user's flood.
    let st = proxy.wait_status("the errors are counted", |v| {
        let canary = &v["analysis"]["pools"]["canary"];
        let errors = canary["errors"].as_u64().unwrap_or(0);
        errors > 6 && errors + canary["uncounted"].as_u64().unwrap_or(0) == 86
    });
    let errors = &st["analysis"]["errors"];
    assert_eq!(errors["verdict"], "not_enough_data", "{st}");
    assert!(
        errors["text"]
            .as_str()
            .is_some_and(|t| t.contains("too few users: without each version's busy users (far more requests than a user's usual), the canary is not worse than the margin")),
        "{st}"
    );
    // Given the time to act, the guard does not.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    assert_eq!(proxy.admin("status")["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_s_slow_requests_on_the_canary_do_not_roll_a_healthy_canary_back() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: slow-one\npercent: 50\nguard: {action: rollback, min_requests: 100}",
        "",
    ));
    traffic(&proxy, 600, "u", 1, "/").await;
    proxy.wait_status("the latency check has a threshold", |v| {
        v["analysis"]["latency"]["slow_ms"].is_number()
    });
    // Let the analysis hand its threshold to the request path.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    // One client on the canary asks for a report that is slow on both versions, again and again.
    let client = Client::http1();
    let id = canary_ids(&proxy, &client, "reporter", 1).await.remove(0);
    let before = proxy.admin("status")["analysis"]["pools"]["canary"]["requests"]
        .as_u64()
        .unwrap_or(0);
    for _ in 0..40 {
        client
            .get(&proxy.url("/slow/200"), &[("x-user-id", &id)])
            .await;
    }
    let st = proxy.wait_status("the slow requests are counted", |v| {
        v["analysis"]["pools"]["canary"]["requests"].as_u64() >= Some(before + 40)
    });
    let latency = &st["analysis"]["latency"];
    assert_eq!(latency["verdict"], "not_enough_data", "{st}");
    assert!(
        latency["text"]
            .as_str()
            .is_some_and(|t| t.contains("too few users: without the canary's busy users (far more requests than a user's usual), the canary is not slower than the margin")),
        "{st}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    assert_eq!(proxy.admin("status")["state"], "running");
}

/// Requests both pools have in the comparison now.
fn compared(status: &Value) -> u64 {
    let pools = &status["analysis"]["pools"];
    pools["stable"]["requests"].as_u64().unwrap_or(0)
        + pools["canary"]["requests"].as_u64().unwrap_or(0)
}

/// `n` user ids (`prefix-0`, `prefix-1`, ...) that the proxy sends to the canary, found by asking.
async fn canary_ids(proxy: &Proxy, client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0.. {
        let candidate = format!("{prefix}-{i}");
        let r = client
            .get(&proxy.url("/"), &[("x-user-id", &candidate)])
            .await;
        if r.body == "canary" {
            ids.push(candidate);
            if ids.len() == n {
                break;
            }
        }
    }
    ids
}

/// A canary upstream that answers "canary" after `ms` milliseconds: a slower version.
async fn slow_canary(ms: u64) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    support::raw_upstream(move |mut conn| async move {
        let mut buf = Vec::new();
        while support::next_head(&mut conn, &mut buf).await.is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary";
            if conn.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_halts_a_canary_that_is_slower_for_everyone() {
    let s = Backend::start("stable").await;
    let canary = slow_canary(40).await;
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools: {{stable: ['{}'], canary: ['{canary}']}}\nrollout:\n  id: slower\n  percent: 50\n  guard: {{action: halt, min_requests: 100}}\nsticky: {{header: x-user-id}}\n{CONTROL}",
        s.addr
    ));
    traffic(&proxy, 1_200, "u", 1, "/").await;
    let st = proxy.wait_status("the guard acts", |v| v["state"] == "halted");
    assert_eq!(st["source"], "guard", "{st}");
    assert_eq!(st["analysis"]["latency"]["verdict"], "regressed", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stable_client_with_slow_answers_does_not_hide_a_slower_canary() {
    let s = Backend::start("stable").await;
    let canary = slow_canary(40).await;
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools: {{stable: ['{}'], canary: ['{canary}']}}\nrollout:\n  id: slower-beside-a-report\n  percent: 50\n  guard: {{action: halt, min_requests: 100}}\nsticky: {{header: x-user-id}}\n{CONTROL}",
        s.addr
    ));
    // A client on stable asking for a report that takes 200 ms, again and again, from three
    // connections: far more of stable's slow answers than its p99 allows. Counted per request,
    // stable's p99 is the report's, and a canary 40 ms slower for everyone reads as faster.
    let client = Client::http1();
    let mut reporter = None;
    for i in 0.. {
        let id = format!("reporter-{i}");
        let r = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
        if r.body == "stable" {
            reporter = Some(id);
            break;
        }
    }
    let reporter = reporter.expect("an id on stable");
    let mut reports = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (url, id) = (proxy.url("/slow/200"), reporter.clone());
        reports.spawn(async move {
            let client = Client::http1();
            loop {
                client.get(&url, &[("x-user-id", &id)]).await;
            }
        });
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // New users keep coming until the guard acts (or 20 rounds): a canary answer counts as slow
    // only by a threshold in force when it came, and the first is set from stable's answers a
    // moment after they begin, so on a fast run a single burst can end before it.
    for round in 0..20 {
        traffic(&proxy, 300, &format!("u{round}-"), 1, "/").await;
        if proxy.admin("status")["state"] == "halted" {
            break;
        }
    }
    let st = proxy.wait_status("the guard acts", |v| v["state"] == "halted");
    reports.abort_all();
    assert_eq!(st["source"], "guard", "{st}");
    let latency = &st["analysis"]["latency"];
    assert_eq!(latency["verdict"], "regressed", "{st}");
    // Everyone's p99 on stable is the report's; the one "slow" is set from is without it.
    assert!(
        st["analysis"]["pools"]["stable"]["p99_ms"].as_f64() > Some(150.0),
        "{st}"
    );
    let without = &latency["without_busy"];
    assert_eq!(without["users"]["stable"], 1, "{st}");
    assert!(without["stable_p99_ms"].as_f64() < Some(40.0), "{st}");
    // The reason leads with what the call rested on.
    assert!(
        st["analysis"]["guard"]["acted"].as_str().is_some_and(
            |a| a.starts_with("halted: without busy users (0 on canary, 1 on stable) ")
        ),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_canary_within_the_guard_s_least_increase_is_left_alone() {
    let s = Backend::start("stable").await;
    let canary = slow_canary(40).await;
    // The same canary as above, 40 ms slower for everyone, with a floor of 100 ms.
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools: {{stable: ['{}'], canary: ['{canary}']}}\nrollout:\n  id: slower\n  percent: 50\n  guard: {{action: halt, min_requests: 100, min_p99_increase: 100ms}}\nsticky: {{header: x-user-id}}\n{CONTROL}",
        s.addr
    ));
    traffic(&proxy, 1_200, "u", 1, "/").await;
    let st = proxy.wait_status("both pools counted", |v| {
        let p = &v["analysis"]["pools"];
        p["canary"]["requests"].as_u64() >= Some(300)
            && p["stable"]["requests"].as_u64() >= Some(300)
    });
    assert_eq!(st["state"], "running", "{st}");
    let latency = &st["analysis"]["latency"];
    assert_eq!(latency["verdict"], "ok", "{st}");
    assert!(
        latency["slow_ms"].as_f64().is_some_and(|ms| ms >= 100.0),
        "{st}"
    );
}

/// Every answer the comparison saw in both pools: counted, or left out.
fn answers(status: &Value) -> u64 {
    let p = &status["analysis"]["pools"];
    ["stable", "canary"]
        .iter()
        .map(|pool| {
            p[pool]["requests"].as_u64().unwrap_or(0) + p[pool]["uncounted"].as_u64().unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_s_flood_counts_for_its_share_of_a_second() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: flood\npercent: 0", ""));
    // 100 users once each, and one client 400 times as fast as it can.
    traffic(&proxy, 100, "user", 1, "/").await;
    traffic(&proxy, 400, "flood", 400, "/").await;
    // All on stable (percent 0).
    let st = proxy.wait_status("every answer is counted or left out", |v| answers(v) == 500);
    let stable = &st["analysis"]["pools"]["stable"];
    let left_out = stable["uncounted"].as_u64().unwrap_or(0);
    // 400 answers within a second or two: all but 20 a second are left out, none of the users'.
    assert!(left_out > 0, "{st}");
    assert!(stable["requests"].as_u64() >= Some(120), "{st}");
    // 101 users, estimated: 101 ids in the sketch's 4,096 registers share one in about 1.2
    // pairs on average, and the estimate comes from the registers taken (a CI run read 96 when
    // about six pairs shared one, a chance of about 1 in 500; ten, below 92, about 1 in 10^6).
    let users = stable["users"].as_f64().unwrap_or(0.0);
    assert!((92.0..=110.0).contains(&users), "{st}");
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("not counted"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(&left_out.to_string()), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_s_last_requests_still_count_when_they_are_the_ones_that_fail() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: pages\npercent: 50", ""));
    // Each user loads a page: 36 assets, then 4 API calls, which the canary fails.
    let client = Client::http1();
    let mut failed = 0;
    for u in 0..40 {
        let id = format!("page-user-{u}");
        let mut on_canary = false;
        for _ in 0..36 {
            let r = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
            on_canary = r.body == "canary";
        }
        let api = if on_canary { "/status/500" } else { "/" };
        for _ in 0..4 {
            let r = client.get(&proxy.url(api), &[("x-user-id", &id)]).await;
            failed += usize::from(r.status == 500);
        }
    }
    assert!(failed > 0, "some users are on the canary");
    let st = proxy.wait_status("every answer is counted or left out", |v| {
        answers(v) == 40 * 40
    });
    // Past a user's first 20 answers of a second, the n-th counts with a chance of 20/n: the
    // failing calls at the end of each page show, not only those who came first.
    let canary = &st["analysis"]["pools"]["canary"];
    let errors = canary["errors"].as_u64().unwrap_or(0);
    assert!(
        errors * 4 >= failed as u64,
        "{errors} of {failed} failures counted: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_requests_without_an_id_are_none_of_the_comparison_s() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: anon\npercent: 50", "").replace(
        "sticky:\n  header: x-user-id\n",
        "sticky:\n  header: x-user-id\n  assign: false\n",
    ));
    // Without an id they all go to stable, by rule rather than at random: a flood of them must
    // not pull stable's figures.
    traffic(&proxy, 40, "user", 1, "/").await;
    let client = Client::http1();
    for _ in 0..300 {
        assert_eq!(client.get(&proxy.url("/"), &[]).await.body, "stable");
    }
    let st = proxy.wait_status("every answer is counted or left out", |v| answers(v) == 340);
    let p = &st["analysis"]["pools"];
    assert_eq!(p["stable"]["uncounted"], 300, "{st}");
    let counted = p["stable"]["requests"].as_u64().unwrap_or(0)
        + p["canary"]["requests"].as_u64().unwrap_or(0);
    assert_eq!(counted, 40, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_what_counts_as_an_error_starts_the_comparison_again() {
    let s = Backend::start("stable").await;
    s.set_failing(50);
    let proxy = Proxy::start(&single(s.addr, CONTROL));
    for _ in 0..20 {
        Client::http1().get(&proxy.url("/"), &[]).await;
    }
    assert_eq!(stable_after(&proxy, 20, "errors"), 10);
    // 500 is no longer an error: the 10 counted by the old definition go, not to be mixed with
    // the answers counted by the new one.
    let edited = std::fs::read_to_string(&proxy.config_path).expect("config")
        + "analysis: {error_statuses: [502]}\n";
    support::replace_file(&proxy.config_path, &edited);
    proxy.wait_log("config reloaded");
    stable_after(&proxy, 0, "requests");
    for _ in 0..20 {
        Client::http1().get(&proxy.url("/"), &[]).await;
    }
    assert_eq!(stable_after(&proxy, 20, "errors"), 0);
}
