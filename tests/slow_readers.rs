//! Clients that stop reading what they asked for: ramp's memory stays bounded by the number of
//! streams, not by what upstreams send, and a download that makes no progress for
//! `body_idle_timeout` is ended (and its upstream request with it).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{Backend, Proxy, config, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_download_nobody_reads_is_ended_after_the_body_idle_limit() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: s\npercent: 0",
        "limits: {body_idle_timeout: 1s, header_read_timeout: 60s}\n",
    ));
    let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
    // A first request answered, then a pause: the connection has been idle a while (its
    // watchdog waits for the long header limit) when the download that stalls begins.
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    while !first.ends_with(b"stable") {
        let n = s.read(&mut buf).expect("the first answer");
        assert!(n > 0, "closed before the first answer");
        first.extend_from_slice(&buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"GET /download/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    // The client reads nothing; the upstream keeps the download going until ramp gives up.
    eventually("the download reaches the upstream", || {
        b.seen()
            .iter()
            .any(|r| r.uri.path().starts_with("/download/"))
    })
    .await;
    eventually("ramp ends the stalled download", || {
        b.downloads_ended() == 1
    })
    .await;
    // What was already on its way arrives, then the connection ends: far short of 200 MB.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        got += n;
    }
    assert!(got < 100_000_000, "{got} bytes: the download was not ended");
}

/// Resident memory of `pid` now, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_read_nothing_hold_little_memory() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: s\npercent: 0",
        "limits: {body_idle_timeout: 5m, h2_max_concurrent_streams: 100}\nupstream: {connect_timeout: 20s}\n",
    ));
    let before = rss_kib(proxy.pid());
    let (connections, streams) = (10, 100);
    let (mut clients, mut responses) = (Vec::new(), Vec::new());
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..streams {
            client = client.ready().await.expect("ready");
            let req = http::Request::get(format!("http://{}/download/50000000", proxy.addr))
                .body(())
                .expect("request");
            let (resp, _) = client.send_request(req, true).expect("send");
            responses.push(resp);
        }
        clients.push(client);
    }
    let mut bodies = Vec::new();
    for resp in responses {
        let resp = resp.await.expect("response head");
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body()); // never read
    }
    // Let the upstreams fill every buffer there is, until memory stops growing.
    let mut last = rss_kib(proxy.pid());
    let mut steady = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(proxy.pid());
        steady = if now <= last + 512 { steady + 1 } else { 0 };
        last = last.max(now);
        if steady >= 5 {
            break;
        }
    }
    let grown = last.saturating_sub(before);
    let per_stream = grown / (connections * streams) as u64;
    eprintln!(
        "{} streams: RSS grew {grown} KiB, {per_stream} KiB per stream",
        connections * streams
    );
    assert!(
        per_stream <= 100,
        "{per_stream} KiB per unread stream ({grown} KiB in all)"
    );
    drop((bodies, clients));
}

/// An upstream that answers a request's head at once and sends the body only once the whole
/// upload is in (as HTTP allows): "got N".
async fn answers_before_the_upload() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::raw_upstream(|mut conn| async move {
        let mut buf = Vec::new();
        let Some(head) = support::next_head(&mut conn, &mut buf).await else {
            return;
        };
        let length: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(str::to_owned))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let text = format!("got {length}");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len());
        if conn.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let (mut body, mut chunk) = (buf.len(), [0u8; 4096]);
        while body < length {
            match conn.read(&mut chunk).await {
                Ok(n) if n > 0 => body += n,
                _ => return,
            }
        }
        let _ = conn.write_all(text.as_bytes()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_waiting_for_a_moving_upload_is_not_taken_for_a_stalled_reader() {
    let up = answers_before_the_upload().await;
    let proxy = Proxy::start(&support::single(up, "limits:\n  body_idle_timeout: 1s\n"));
    let addr = proxy.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The answer is read as it comes, as a browser would.
        let mut reader = c.try_clone().expect("clone");
        let read = std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&text).ends_with("got 6") {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        });
        c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
            .expect("head");
        // One byte every 0.6 s: the upload keeps moving, for 3.6 s in all — over three times
        // the body idle limit, with the answer's head out and its body waiting for the upload.
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(600));
            if c.write_all(b"z").is_err() {
                break;
            }
        }
        read.join().expect("reader")
    })
    .await
    .expect("client");
    assert!(answer.ends_with("got 6"), "cut short: {answer:?}");
}
