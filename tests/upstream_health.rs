//! Upstreams fail and recover: retries, passive ejection, active checks, the canary fallback.

mod support;

use support::{Backend, Client, Proxy, replace_file};

fn dead_addr() -> std::net::SocketAddr {
    support::dead_port().forever()
}

fn yaml(stable: &[String], canary: &[String], percent: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools:\n  stable: [{}]\n  canary: [{}]\nrollout: {{id: h, percent: {percent}}}\nmetrics: {{listen: 127.0.0.1:0}}\n{extra}",
        stable.join(", "),
        canary.join(", ")
    )
}

/// Whether every answer is a 200 from the upstream named `name`.
fn all_from(answers: &[(u16, String)], name: &str) -> bool {
    answers.iter().all(|(s, body)| *s == 200 && body == name)
}

async fn bodies(proxy: &Proxy, n: usize, path: &str) -> Vec<(u16, String)> {
    let client = Client::http1();
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("h-{i}");
        let r = client.get(&proxy.url(path), &[("x-user-id", &id)]).await;
        out.push((r.status.as_u16(), r.body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_upstream_then_ejected() {
    let alive = Backend::start("alive").await;
    let dead = dead_addr().to_string();
    let proxy = Proxy::start(&yaml(
        &[dead.clone(), alive.addr.to_string()],
        &[alive.addr.to_string()],
        "0",
        "",
    ));
    let got = bodies(&proxy, 40, "/").await;
    assert!(all_from(&got, "alive"), "{got:?}");
    let line = proxy.wait_log("upstream ejected");
    assert!(line.contains(&dead), "{line}");
    assert!(proxy.metric("ramp_retries_total").await >= 5.0);
    assert!(
        proxy
            .metric("ramp_upstream_ejections_total{pool=\"stable\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_upstream_until_a_probe_succeeds() {
    let (good, bad) = (Backend::start("good").await, Backend::start("bad").await);
    bad.set_unhealthy(true);
    let extra = "passive_health: {eject_after: 3, backoff: 300ms}\nhealth: {path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 1000, healthy_after: 1}\n";
    let stable = [good.addr.to_string(), bad.addr.to_string()];
    let proxy = Proxy::start(&yaml(&stable, &[good.addr.to_string()], "0", extra));
    let got = bodies(&proxy, 30, "/").await;
    let errors = got.iter().filter(|(s, _)| *s == 503).count();
    assert!(
        (3..=4).contains(&errors),
        "{errors} answers from the bad upstream before its ejection: {got:?}"
    );
    proxy.wait_log("upstream ejected");
    let seen_bad = bad.seen().iter().filter(|s| s.uri == "/").count();
    let after = bodies(&proxy, 20, "/").await;
    assert!(all_from(&after, "good"), "{after:?}");
    assert_eq!(
        bad.seen().iter().filter(|s| s.uri == "/").count(),
        seen_bad,
        "an ejected upstream got requests"
    );
    // It recovers: the next probe of /healthz after the backoff brings it back.
    bad.set_unhealthy(false);
    proxy.wait_log("upstream reinstated");
    let back = bodies(&proxy, 20, "/").await;
    assert!(back.iter().any(|(_, b)| b == "bad"), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_an_upstream_out_and_bring_it_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let extra = "health: {path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2}\n";
    let proxy = Proxy::start(&yaml(
        &[a.addr.to_string(), b.addr.to_string()],
        &[a.addr.to_string()],
        "0",
        extra,
    ));
    let available = |want: f64| {
        let proxy = &proxy;
        async move {
            let series = "ramp_upstreams_available{pool=\"stable\"}";
            for _ in 0..50 {
                if proxy.metric(series).await == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("{series} never {want}: {}", proxy.metrics().await);
        }
    };
    available(2.0).await;
    b.set_unhealthy(true);
    proxy.wait_log("upstream failed its health checks");
    let out = bodies(&proxy, 20, "/").await;
    assert!(out.iter().all(|(_, body)| body == "a"), "{out:?}");
    available(1.0).await;
    b.set_unhealthy(false);
    proxy.wait_log("upstream passed its health checks");
    let back = bodies(&proxy, 20, "/").await;
    assert!(back.iter().any(|(_, body)| body == "b"), "{back:?}");
    available(2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_users_fall_back_to_stable_when_no_canary_upstream_is_healthy() {
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let extra = "health: {interval: 100ms, timeout: 300ms, unhealthy_after: 1, healthy_after: 1}\nadmin: {socket: admin.sock}\n";
    let proxy = Proxy::start(&yaml(
        &[stable.addr.to_string()],
        &[canary.addr.to_string()],
        "100",
        extra,
    ));
    assert!(
        bodies(&proxy, 5, "/")
            .await
            .iter()
            .all(|(_, b)| b == "canary")
    );
    canary.kill();
    proxy.wait_log("upstream failed its health checks");
    let served = bodies(&proxy, 20, "/").await;
    assert!(all_from(&served, "stable"), "{served:?}");
    assert!(proxy.metric("ramp_canary_fallback_total").await >= 20.0);
    let lines = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("canary pool has no healthy upstream"))
        .count();
    assert_eq!(lines, 1, "logged once per transition, not per request");
    assert!(
        proxy
            .metric("ramp_responses_total{pool=\"stable\",class=\"2xx\"}")
            .await
            >= 20.0
    );
    // Status says so, beside the pools' configured sizes.
    let addr = proxy.metrics_addr();
    let reply = support::raw(
        addr,
        b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        reply.contains(
            r#""upstreams":{"stable":1,"canary":1},"upstreams_available":{"stable":1,"canary":0}"#
        ),
        "{reply}"
    );
    let (code, out, err) = proxy.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("upstreams   stable 1, canary 0 of 1 available (canary down"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_back_while_the_whole_pool_is_ejected_takes_every_request_at_once() {
    let (a, b_port) = (dead_addr(), support::dead_port());
    let b = b_port.addr;
    let canary = Backend::start("canary").await;
    let extra = "passive_health: {eject_after: 1, backoff: 1m, max_backoff: 1m}\n";
    let proxy = Proxy::start(&yaml(
        &[a.to_string(), b.to_string()],
        &[canary.addr.to_string()],
        "0",
        extra,
    ));
    // Both stable upstreams down: both ejected for a minute.
    let down = bodies(&proxy, 4, "/").await;
    assert!(down.iter().all(|(s, _)| *s == 502), "{down:?}");
    // One comes back, its ejection still running: requests that find the other one refused go
    // to it, and its first answer ends its ejection.
    drop(b_port);
    let _back = Backend::start_at("stable", b).await;
    let answers = bodies(&proxy, 12, "/").await;
    assert!(all_from(&answers, "stable"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_of_several_dead_upstreams_costs_no_request_with_fallback_on() {
    let stable = Backend::start("stable").await;
    let dead: Vec<String> = (0..3).map(|_| dead_addr().to_string()).collect();
    // Not ejected before the fifth refusal each: the retry must not go to another dead one.
    let extra = "passive_health: {eject_after: 5, backoff: 30s}\n";
    let proxy = Proxy::start(&yaml(&[stable.addr.to_string()], &dead, "100", extra));
    let answers = bodies(&proxy, 12, "/").await;
    assert!(all_from(&answers, "stable"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_upstream_s_requests_go_to_a_live_one_while_stable_is_down() {
    let live = Backend::start("canary").await;
    let (dead_stable, dead_canary) = (dead_addr().to_string(), dead_addr().to_string());
    let extra = "passive_health: {eject_after: 1, backoff: 1m}\n";
    let proxy = Proxy::start(&yaml(
        std::slice::from_ref(&dead_stable),
        &[dead_canary, live.addr.to_string()],
        "50",
        extra,
    ));
    // Users the rollout "h" puts on each side at 50%.
    let salt = ramp::routing::bucket::salt("h");
    let side = |canary: bool| {
        (0..)
            .map(|i| format!("side-{canary}-{i}"))
            .filter(|u| (ramp::routing::bucket(&salt, u.as_bytes()) < 500_000) == canary)
            .take(8)
            .collect::<Vec<_>>()
    };
    // Stable is down (its redeploy): its users' requests eject it.
    let client = Client::http1();
    for u in side(false).iter().take(2) {
        let r = client.get(&proxy.url("/"), &[("x-user-id", u)]).await;
        assert_eq!(r.status.as_u16(), 502);
    }
    // A canary request refused by the dead canary upstream goes to the live one, not to a stable
    // pool that cannot answer.
    for u in side(true) {
        let r = client.get(&proxy.url("/"), &[("x-user-id", &u)]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "canary"), "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_canary_request_reaches_a_live_canary_upstream_past_a_stable_not_yet_known_dead()
{
    let live = Backend::start("canary").await;
    let (dead_stable, dead_canary) = (dead_addr().to_string(), dead_addr().to_string());
    // Neither dead upstream is ejected before its fifth refusal: both still count as healthy.
    let extra = "passive_health: {eject_after: 5, backoff: 30s}\n";
    let proxy = Proxy::start(&yaml(
        &[dead_stable],
        &[dead_canary, live.addr.to_string()],
        "100",
        extra,
    ));
    // Every other request first finds the dead canary upstream, then stable refuses its retry
    // too: the live canary upstream answers it.
    let answers = bodies(&proxy, 8, "/").await;
    assert!(all_from(&answers, "canary"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_canary_request_goes_to_stable_once_then_to_a_live_canary_upstream() {
    let live = Backend::start("canary").await;
    let stable: Vec<String> = (0..3).map(|_| dead_addr().to_string()).collect();
    let dead_canary = dead_addr().to_string();
    let extra = "passive_health: {eject_after: 5, backoff: 30s}\n";
    let proxy = Proxy::start(&yaml(
        &stable,
        &[dead_canary, live.addr.to_string()],
        "100",
        extra,
    ));
    // Not one stable upstream after another while the live canary upstream waits.
    let answers = bodies(&proxy, 8, "/").await;
    assert!(all_from(&answers, "canary"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_connection_could_be_made_for_tries_three_upstreams() {
    let dead: Vec<String> = (0..4).map(|_| dead_addr().to_string()).collect();
    let canary = Backend::start("canary").await;
    let extra = "passive_health: {eject_after: 5, backoff: 30s}\n";
    let proxy = Proxy::start(&yaml(&dead, &[canary.addr.to_string()], "0", extra));
    let answers = bodies(&proxy, 1, "/").await;
    assert_eq!(answers[0].0, 502, "{answers:?}");
    let connect = "ramp_upstream_errors_total{pool=\"stable\",kind=\"connect\"}";
    assert_eq!(proxy.metric(connect).await, 3.0);
    assert_eq!(proxy.metric("ramp_retries_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_user_on_a_refusing_stable_goes_back_to_a_canary_upstream_still_ejected() {
    let (stable, canary_port) = (dead_addr(), support::dead_port());
    let canary = canary_port.addr;
    let extra = "passive_health: {eject_after: 1, backoff: 1m}\n";
    let proxy = Proxy::start(&yaml(
        &[stable.to_string()],
        &[canary.to_string()],
        "100",
        extra,
    ));
    // Both down: both ejected for a minute.
    let down = bodies(&proxy, 1, "/").await;
    assert_eq!(down[0].0, 502, "{down:?}");
    // The canary comes back, its ejection still running; stable is still down. Its users are
    // sent to stable (no healthy canary upstream), which refuses: the canary answers.
    drop(canary_port);
    let _back = Backend::start_at("canary", canary).await;
    let answers = bodies(&proxy, 4, "/").await;
    assert!(all_from(&answers, "canary"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_requests_retried_on_stable_are_spread_over_its_upstreams() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let live = Backend::start("canary").await;
    let extra = "passive_health: {eject_after: 1000}\n";
    let proxy = Proxy::start(&yaml(
        &[a.addr.to_string(), b.addr.to_string()],
        &[dead_addr().to_string(), live.addr.to_string()],
        "100",
        extra,
    ));
    // Half the requests find the dead canary upstream and are retried on stable.
    let answers = bodies(&proxy, 40, "/").await;
    let from = |name: &str| answers.iter().filter(|(_, b)| b == name).count();
    assert_eq!(from("canary"), 20, "{answers:?}");
    assert!(from("a") >= 5 && from("b") >= 5, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_refused_then_closed_without_an_answer_still_gets_a_third_upstream() {
    let closer = support::RawUpstream::start(b"", true).await;
    let live = Backend::start("stable").await;
    let extra = "passive_health: {eject_after: 50}\n";
    let proxy = Proxy::start(&yaml(
        &[
            dead_addr().to_string(),
            closer.addr.to_string(),
            live.addr.to_string(),
        ],
        &[live.addr.to_string()],
        "0",
        extra,
    ));
    // Whichever upstream each starts at: refused, closed without an answer, answered.
    let answers = bodies(&proxy, 9, "/").await;
    assert!(all_from(&answers, "stable"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comparison_says_when_the_canary_pool_is_down_and_its_users_are_on_stable() {
    let stable = Backend::start("stable").await;
    let dead = dead_addr().to_string();
    let extra = format!(
        "passive_health: {{eject_after: 1, backoff: 1m}}\nanalysis: {{goals: [{{name: bought, path: /done}}]}}\n{}",
        support::CONTROL
    );
    let proxy = Proxy::start(&yaml(
        &[stable.addr.to_string()],
        std::slice::from_ref(&dead),
        "50",
        &extra,
    ));
    let answers = bodies(&proxy, 20, "/").await;
    assert!(all_from(&answers, "stable"), "{answers:?}");
    let down = |t: &serde_json::Value| {
        t.as_str()
            .is_some_and(|t| t.contains("the canary pool has no healthy upstream"))
    };
    let st = proxy.wait_status("the comparison says why no canary figures come", |v| {
        down(&v["analysis"]["errors"]["text"])
    });
    assert_eq!(
        st["analysis"]["errors"]["verdict"], "not_enough_data",
        "{st}"
    );
    // Every row says so, a goal's too, rather than count requests that cannot come.
    let goal = &st["analysis"]["goals"][0];
    assert!(down(&goal["text"]), "{goal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_canary_unavailable_error_canary_users_get_503_and_a_dead_stable_pool_is_still_tried()
{
    let stable = Backend::start("stable").await;
    let dead = dead_addr().to_string();
    let extra = "canary_unavailable: error\npassive_health: {eject_after: 1, backoff: 1m}\n";
    let proxy = Proxy::start(&yaml(
        &[stable.addr.to_string()],
        std::slice::from_ref(&dead),
        "100",
        extra,
    ));
    let first = bodies(&proxy, 1, "/").await;
    assert_eq!(
        first[0].0, 502,
        "the first attempt finds the canary down: {first:?}"
    );
    let then = bodies(&proxy, 5, "/").await;
    assert!(
        then.iter()
            .all(|(s, b)| *s == 503 && b == "Service Unavailable\n"),
        "{then:?}"
    );

    let proxy = Proxy::start(&yaml(
        std::slice::from_ref(&dead),
        &[stable.addr.to_string()],
        "0",
        extra,
    ));
    bodies(&proxy, 1, "/").await;
    proxy.wait_log("upstream ejected");
    // Stable has nowhere else to send its users: its only upstream is tried anyway (panic
    // routing), and refuses.
    let then = bodies(&proxy, 5, "/").await;
    assert!(then.iter().all(|(s, _)| *s == 502), "{then:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_s_errors_never_eject_the_only_upstream() {
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let extra = "passive_health: {eject_after: 2, backoff: 1m}
";
    let proxy = Proxy::start(&yaml(
        &[stable.addr.to_string()],
        &[canary.addr.to_string()],
        "0",
        extra,
    ));
    // One bad endpoint answering 500: not a gateway failure, not counted.
    let got = bodies(&proxy, 10, "/status/500").await;
    assert!(got.iter().all(|(s, _)| *s == 500), "{got:?}");
    // 502s are counted, but the last healthy upstream of a pool is never ejected for them.
    let got = bodies(&proxy, 10, "/status/502").await;
    assert!(got.iter().all(|(s, _)| *s == 502), "{got:?}");
    let after = bodies(&proxy, 10, "/").await;
    assert!(all_from(&after, "stable"), "the site stays up: {after:?}");
    assert!(!proxy.logs().iter().any(|l| l.contains("upstream ejected")));
    // Configured otherwise, 500 counts too (and still never ejects the last one).
    let proxy = Proxy::start(&yaml(
        &[stable.addr.to_string(), canary.addr.to_string()],
        &[canary.addr.to_string()],
        "0",
        "passive_health: {eject_after: 2, backoff: 1m, failure_statuses: [5xx]}
",
    ));
    bodies(&proxy, 8, "/status/500").await;
    let line = proxy.wait_log("upstream ejected");
    assert!(line.contains("\"stable\""), "{line}");
    let after = bodies(&proxy, 6, "/").await;
    assert!(after.iter().all(|(s, _)| *s == 200), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_s_only_upstream_is_ejected_when_its_users_can_fall_back() {
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    canary.set_unhealthy(true);
    let extra = "passive_health: {eject_after: 3, backoff: 1m}\n";
    let pools = ([stable.addr.to_string()], [canary.addr.to_string()]);
    // Everyone on the canary, which answers 503: after three, its users are served by stable.
    let proxy = Proxy::start(&yaml(&pools.0, &pools.1, "100", extra));
    let got = bodies(&proxy, 30, "/").await;
    let errors = got.iter().filter(|(s, _)| *s == 503).count();
    assert!(
        (3..=4).contains(&errors),
        "{errors} failed answers before the canary's ejection: {got:?}"
    );
    assert!(
        got[errors..]
            .iter()
            .all(|(s, b)| *s == 200 && b == "stable"),
        "{got:?}"
    );
    let line = proxy.wait_log("upstream ejected");
    assert!(line.contains("\"canary\""), "{line}");
    // Without a fallback, ejecting it would turn its errors into an outage: it stays in.
    let extra = format!("{extra}canary_unavailable: error\n");
    let proxy = Proxy::start(&yaml(&pools.0, &pools.1, "100", &extra));
    let got = bodies(&proxy, 12, "/").await;
    assert!(
        got.iter().all(|(s, b)| *s == 503 && b != "stable"),
        "{got:?}"
    );
    assert!(!proxy.logs().iter().any(|l| l.contains("upstream ejected")));
}

fn count_logs(proxy: &Proxy, needle: &str) -> usize {
    proxy.logs().iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_or_removes_the_active_checks_takes_effect_at_once() {
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    canary.set_unhealthy(true);
    let checks = |interval: &str| {
        format!(
            "health: {{path: /healthz, interval: {interval}, timeout: 500ms, unhealthy_after: 1, healthy_after: 1}}\n"
        )
    };
    let pools = ([stable.addr.to_string()], [canary.addr.to_string()]);
    let proxy = Proxy::start(&yaml(&pools.0, &pools.1, "100", &checks("1h")));
    proxy.wait_log("upstream failed its health checks");
    let got = bodies(&proxy, 4, "/").await;
    assert!(got.iter().all(|(_, b)| b == "stable"), "{got:?}");
    // Fixed, and checked every 100 ms from now on: back without waiting out the hour.
    canary.set_unhealthy(false);
    replace_file(
        &proxy.config_path,
        &yaml(&pools.0, &pools.1, "100", &checks("100ms")),
    );
    proxy.wait_log("upstream passed its health checks");
    // Down again; then the checks are taken out of the file: nothing would ever probe it back,
    // so it is up again (passive health still watches it).
    canary.set_unhealthy(true);
    support::eventually("down again", || {
        count_logs(&proxy, "upstream failed its health checks") == 2
    })
    .await;
    replace_file(&proxy.config_path, &yaml(&pools.0, &pools.1, "100", ""));
    proxy.wait_log("upstream back in: active health checks are off now");
    canary.set_unhealthy(false);
    let got = bodies(&proxy, 4, "/").await;
    assert!(got.iter().all(|(_, b)| b == "canary"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_no_healthy_upstream_spreads_its_requests_over_all_of_them() {
    let (a, b, canary) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("canary").await,
    );
    a.set_unhealthy(true);
    b.set_unhealthy(true);
    let extra = "health: {path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 1}\n";
    let proxy = Proxy::start(&yaml(
        &[a.addr.to_string(), b.addr.to_string()],
        &[canary.addr.to_string()],
        "0",
        extra,
    ));
    support::eventually("both down", || {
        count_logs(&proxy, "upstream failed its health checks") == 2
    })
    .await;
    let got = bodies(&proxy, 20, "/").await;
    assert!(got.iter().all(|(s, _)| *s == 503), "{got:?}");
    let served = |x: &Backend| x.seen().iter().filter(|s| s.uri == "/").count();
    assert!(
        served(&a) >= 5 && served(&b) >= 5,
        "a got {}, b got {}",
        served(&a),
        served(&b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_most_of_a_pool_is_ejected_requests_go_to_all_of_it() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let all = [a.addr.to_string(), b.addr.to_string(), c.addr.to_string()];
    let extra = "passive_health: {eject_after: 1, backoff: 1m}
";
    let proxy = Proxy::start(&yaml(&all, &[c.addr.to_string()], "0", extra));
    // a and b answer 503 once each: ejected; c stays.
    a.set_unhealthy(true);
    b.set_unhealthy(true);
    bodies(&proxy, 6, "/").await;
    assert_eq!(
        proxy
            .logs()
            .iter()
            .filter(|l| l.contains("upstream ejected"))
            .count(),
        2
    );
    a.set_unhealthy(false);
    b.set_unhealthy(false);
    let before = (a.seen().len(), b.seen().len());
    // One healthy of three is below the 50% panic threshold: all three share the traffic, until
    // the first ejected one to answer is back (two of three healthy: the panic is over).
    let got = bodies(&proxy, 30, "/").await;
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert!(
        a.seen().len() > before.0 || b.seen().len() > before.1,
        "panic routing"
    );
    let back = |logs: Vec<String>| {
        logs.iter()
            .filter(|l| l.contains("upstream reinstated: it answered a request"))
            .count()
    };
    assert_eq!(back(proxy.logs()), 1, "{:?}", proxy.logs());
    // With the threshold off, only the healthy one serves.
    let proxy = Proxy::start(&yaml(
        &all,
        &[c.addr.to_string()],
        "0",
        "passive_health: {eject_after: 1, backoff: 1m, panic_threshold: 0}
",
    ));
    a.set_unhealthy(true);
    b.set_unhealthy(true);
    bodies(&proxy, 6, "/").await;
    a.set_unhealthy(false);
    b.set_unhealthy(false);
    let got = bodies(&proxy, 12, "/").await;
    assert!(all_from(&got, "c"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_costs_no_request_with_fallback_on() {
    let stable = Backend::start("stable").await;
    let dead = dead_addr().to_string();
    let proxy = Proxy::start(&yaml(&[stable.addr.to_string()], &[dead], "50", ""));
    let got = bodies(&proxy, 400, "/").await;
    let failed: Vec<_> = got.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(proxy.metric("ramp_canary_fallback_total").await >= 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_logs_a_line_a_second_not_a_line_a_request() {
    // Every request fails while the pools are down: one line per request would fill the log (or
    // its disk) during exactly the incident someone is reading it for.
    let dead = dead_addr().to_string();
    let proxy = Proxy::start(&yaml(
        std::slice::from_ref(&dead),
        std::slice::from_ref(&dead),
        "0",
        "passive_health: {eject_after: 1000}\n",
    ));
    let started = std::time::Instant::now();
    let got = bodies(&proxy, 300, "/").await;
    assert!(got.iter().all(|(s, _)| *s == 502), "{got:?}");
    let seconds = started.elapsed().as_secs() as usize;
    proxy.wait_log("upstream request failed");
    let lines: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("upstream request failed"))
        .collect();
    assert!(
        (1..=seconds + 2).contains(&lines.len()),
        "{} lines in {seconds} s",
        lines.len()
    );
    // Each line counts the failures it stands for.
    assert!(
        lines.iter().skip(1).all(|l| l.contains("unlogged")),
        "{lines:?}"
    );
}
