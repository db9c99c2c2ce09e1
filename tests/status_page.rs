//! The status page in a real browser: headless Chromium loads `GET /` from the metrics listener
//! while traffic flows; the figures a person reads match the counters, the page updates without
//! a reload, and a screenshot is saved as target/status-page.png. Driven over the DevTools
//! protocol.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::load::{Ids, Load};
use support::{Backend, CONTROL, Client, Proxy, config};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Headless Chromium showing `url`, with the flags that keep it off the network.
    async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("/usr/bin/chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1600",
                &format!("--remote-debugging-port={port}"),
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // The page's DevTools endpoint.
        let mut target = None;
        for _ in 0..300 {
            if let Ok(r) = Client::http1()
                .try_get(&format!("http://127.0.0.1:{port}/json/list"), &[])
                .await
                && let Ok(list) = serde_json::from_str::<Value>(&r.body)
            {
                target = list
                    .as_array()
                    .and_then(|l| l.iter().find(|t| t["type"] == "page"))
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned));
                if target.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let target = target.expect("chromium's page target");
        let (ws, _) = tokio_tungstenite::connect_async(target.as_str())
            .await
            .expect("devtools");
        Browser {
            child,
            _profile: profile,
            ws,
            next: 0,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send");
        while let Some(Ok(m)) = self.ws.next().await {
            let Ok(text) = m.into_text() else { continue };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == id {
                return v["result"].clone();
            }
        }
        panic!("devtools closed");
    }

    /// The value of a JavaScript expression on the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn text(&mut self, id: &str) -> String {
        let v = self
            .eval(&format!(
                "(document.getElementById('{id}') || {{}}).textContent || ''"
            ))
            .await;
        v.as_str().unwrap_or_default().trim().to_owned()
    }

    /// Waits (up to 30 s) until `expression` is true.
    async fn until(&mut self, what: &str, expression: &str) {
        for _ in 0..300 {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed: {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_browser),
    ignore = "needs Chromium at /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)"
)]
async fn the_page_shows_the_counters_and_updates_live_in_a_real_browser() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    c.set_failing(10);
    let proxy = Proxy::start(&config(
        &[&s],
        &[&c],
        "id: page-demo\npercent: 30\nguard: {action: halt, max_error_rate_increase: 0.5}",
        &format!("sticky:\n  header: x-user-id\nmetrics: {{listen: '127.0.0.1:0'}}\n{CONTROL}"),
    ));
    let web = proxy.metrics_addr();
    let load = Load::start(proxy.url("/"), 4, Ids::Distinct);
    load.wait("some traffic", |t| t.before.ok() >= 300).await;

    let mut page = Browser::open(&format!("http://{web}/")).await;
    page.until("a first render", "document.body.dataset.ready === '1'")
        .await;
    assert_eq!(page.text("rollout").await, "page-demo");
    assert_eq!(page.text("state").await, "running");
    assert_eq!(page.text("percent").await, "30%");
    // Live: the figures grow while traffic flows, without a reload.
    let first: u64 = page
        .text("stable-requests")
        .await
        .parse()
        .expect("a number");
    let updated = page.text("updated").await;
    page.until(
        "more requests",
        &format!("Number(document.getElementById('stable-requests').textContent) > {first}"),
    )
    .await;
    assert_ne!(page.text("updated").await, updated);
    for chart in ["chart-errors", "chart-p99", "chart-diff", "chart-users"] {
        page.until(
            chart,
            &format!("!!document.querySelector('#{chart} path, #{chart} polyline')"),
        )
        .await;
    }
    // Stop the traffic; once the analysis has counted it all, the page shows the counters.
    let tally = load.finish().await;
    let sent = (tally.before.ok() + tally.before.failed().len()) as u64;
    let st = proxy.wait_status("every request counted", |v| {
        let p = &v["analysis"]["pools"];
        p["stable"]["requests"].as_u64().unwrap_or(0)
            + p["canary"]["requests"].as_u64().unwrap_or(0)
            == sent
    });
    let pools = &st["analysis"]["pools"];
    for (pool, field) in [
        ("stable", "requests"),
        ("canary", "requests"),
        ("stable", "errors"),
        ("canary", "errors"),
    ] {
        let want = pools[pool][field].as_u64().expect("counter").to_string();
        page.until(
            &format!("{pool} {field} = {want}"),
            &format!(
                "(document.getElementById('{pool}-{field}') || {{}}).textContent.trim() === '{want}'"
            ),
        )
        .await;
    }
    // The verdict in words ("ok" says only that no regression was shown).
    let verdict = st["analysis"]["errors"]["verdict"]
        .as_str()
        .expect("verdict");
    let words = match verdict {
        "ok" => "no regression shown".to_owned(),
        other => other.replace('_', " "),
    };
    assert_eq!(page.text("errors-verdict").await, words);
    // The error rates the verdict rests on, each version's busy users left out, have a row of
    // their own (the banner and the verdict would otherwise stand beside everyone's figures).
    let wb = &st["analysis"]["errors"]["without_heaviest"];
    assert!(wb.is_object(), "{st}");
    for pool in ["stable", "canary"] {
        let want = format!(
            "{:.2}%",
            wb["error_rate"][pool].as_f64().expect("rate") * 100.0
        );
        page.until(
            &format!("{pool} without busy users = {want}"),
            &format!(
                "!document.getElementById('errors-wb').hidden && document.getElementById('{pool}-rate-wb').textContent === '{want}'"
            ),
        )
        .await;
    }
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64_decode(shot["data"].as_str().expect("png data"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_browser),
    ignore = "needs Chromium at /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)"
)]
async fn after_a_restart_the_page_still_says_the_guard_halted_the_rollout() {
    let b = Backend::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The state a ramp whose guard halted the rollout left, then a file edit: the last change is
    // the file's, and the analysis that acted is gone with the process.
    support::write(
        dir.path(),
        "state.json",
        r#"{"version":2,"rollout":"page-guard","state":"halted","percent_ppm":300000,"schedule":null,
            "file_plan":{"id":"page-guard","percent_ppm":400000,"steps":null},"plan_pending":true,
            "changed_at_unix_ms":1796000000000,"changed_by":{"kind":"file"},"generation":1796000000000,
            "stopped_by":{"kind":"guard","reason":"error rate 12.0% vs 1.0% (+11.00 points)","rollout":"page-guard"},
            "stopped_at_unix_ms":1795999000000}"#,
    );
    let path = support::write(
        dir.path(),
        "ramp.yaml",
        &config(
            &[&b],
            &[&b],
            "id: page-guard\npercent: 40\nguard: {action: halt, require_data: true}",
            &format!("metrics: {{listen: '127.0.0.1:0'}}\n{CONTROL}"),
        ),
    );
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(
        (&st["state"], &st["source"]),
        (&json!("halted"), &json!("file")),
        "{st}"
    );
    let mut page = Browser::open(&format!("http://{}/", proxy.metrics_addr())).await;
    page.until("a first render", "document.body.dataset.ready === '1'")
        .await;
    page.until(
        "the guard's halt in the banner",
        "document.getElementById('alert').textContent.includes('The guard halted this rollout') && document.getElementById('alert').textContent.includes('+11.00 points')",
    )
    .await;
    assert!(
        page.text("changed")
            .await
            .contains("halted by guard (error rate"),
        "{}",
        page.text("changed").await
    );
    // Halted, with no schedule: the guard's wait for data holds nothing, it would hold a
    // schedule.
    page.until(
        "the guard line says what a schedule would wait for",
        "document.getElementById('guard').textContent.includes('a schedule would wait: waiting for data at this step')",
    )
    .await;
    assert!(
        !page.text("guard").await.contains("holding the schedule"),
        "{}",
        page.text("guard").await
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// `GET path` to the metrics listener with `host` as Host: the status code and the whole reply.
fn get_with_host(addr: std::net::SocketAddr, path: &str, host: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let reply = support::raw(addr, request.as_bytes());
    (support::status_of(&reply), reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_json_answer_no_other_site_s_name() {
    // DNS rebinding: a page on evil.example whose name then resolves to the listener's address is
    // same-origin with it, and would read the rollout id (the salt) from /api/status.
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: secret-salt\npercent: 5",
        "metrics: {listen: '127.0.0.1:0', allowed_hosts: [Ramp-A.internal.]}\n",
    ));
    let web = proxy.metrics_addr();
    let port = web.port();
    for path in ["/", "/api/status"] {
        let (status, reply) = get_with_host(web, path, &format!("evil.example:{port}"));
        assert_eq!(status, 403, "{path}: {reply}");
        assert!(!reply.contains("secret-salt"), "{reply}");
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            "ramp-a.internal".to_owned(),
            format!("RAMP-A.internal:{port}"),
        ] {
            let (status, reply) = get_with_host(web, path, &host);
            assert_eq!(status, 200, "{path} with Host {host}: {reply}");
        }
    }
    let (status, reply) = get_with_host(web, "/api/status", &format!("127.0.0.1:{port}"));
    assert_eq!(status, 200);
    assert!(reply.contains("secret-salt"), "{reply}");
    // No browser sends these, but something in front might read them otherwise: a port past
    // 65535, a user part, a second Host, a target naming another host than Host.
    for host in [
        "localhost:99999".to_owned(),
        format!("evil.example@127.0.0.1:{port}"),
        format!("[::1]x:{port}"),
    ] {
        let (status, reply) = get_with_host(web, "/api/status", &host);
        assert_eq!(status, 403, "Host {host}: {reply}");
    }
    for request in [
        "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET http://evil.example:{port}/api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let reply = support::raw(web, request.as_bytes());
        assert!(
            matches!(support::status_of(&reply), 400 | 403) && !reply.contains("secret-salt"),
            "{request}: {reply}"
        );
    }
    // Prometheus may scrape by any name: the counters show no salt.
    let (status, reply) = get_with_host(web, "/metrics", "evil.example");
    assert_eq!(status, 200, "{reply}");
    assert!(!reply.contains("secret-salt"), "{reply}");
    // Never framed by another site, never sniffed; a write is refused with what is allowed.
    let lower = get_with_host(web, "/", "127.0.0.1").1.to_ascii_lowercase();
    assert!(lower.contains("x-frame-options: deny"), "{lower}");
    assert!(lower.contains("x-content-type-options: nosniff"), "{lower}");
    let reply = support::raw(
        web,
        b"POST /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&reply), 405, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("allow: get, head"),
        "{reply}"
    );
}
