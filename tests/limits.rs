//! Limits that protect everyone else: slow heads, connection counts, HTTP/2 stream floods.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Backend, Client, Proxy, config};

/// Reads until the server closes the connection (or `limit` passes); true when it closed.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return start.elapsed() < limit,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_gets_the_connection_closed() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "limits:\n  header_read_timeout: 500ms\n",
    ));
    // Half a head, then silence.
    let mut slow = std::net::TcpStream::connect(proxy.addr).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write");
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "the slow client kept its connection"
    );
    // A connection that never sends anything is closed too.
    let mut silent = std::net::TcpStream::connect(proxy.addr).expect("connect");
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
    // A keep-alive connection idle after its answer is closed; one in use is not.
    let mut idle = std::net::TcpStream::connect(proxy.addr).expect("connect");
    idle.write_all(b"GET /slow/1200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = vec![0u8; 4096];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = idle
        .read(&mut buf)
        .expect("an answer after 1.2 s: a request in progress is not cut");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(10)));
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_the_longest_idle_connection_makes_room_and_busy_ones_are_kept() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "limits:\n  max_connections: 2\n  header_read_timeout: 60s\nmetrics: {listen: '127.0.0.1:0'}\n",
    ));
    let addr = proxy.addr;
    let answer = |s: &mut std::net::TcpStream, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let connect = move |timeout: Duration| {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s
    };
    tokio::task::spawn_blocking(move || {
        let mut first = connect(Duration::from_secs(10));
        let mut second = connect(Duration::from_secs(10));
        assert!(answer(&mut first, "/").starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(answer(&mut second, "/").starts_with("HTTP/1.1 200"));
        // Both idle; a third client is served at once, and the longest-idle (first) is closed.
        let mut third = connect(Duration::from_secs(10));
        assert!(
            answer(&mut third, "/").starts_with("HTTP/1.1 200"),
            "not admitted"
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            first.read(&mut buf).unwrap_or(0),
            0,
            "the longest-idle one was closed"
        );
        assert!(
            answer(&mut second, "/").starts_with("HTTP/1.1 200"),
            "second harmed"
        );
        // Both open connections busy: a newcomer waits, and no busy request is cut.
        let slow =
            |mut s: std::net::TcpStream| std::thread::spawn(move || answer(&mut s, "/slow/1500"));
        let (a, b) = (slow(second), slow(third));
        std::thread::sleep(Duration::from_millis(300));
        let mut fourth = connect(Duration::from_secs(10));
        let waited = answer(&mut fourth, "/");
        for t in [a, b] {
            assert!(
                t.join().expect("slow").starts_with("HTTP/1.1 200"),
                "a busy request was cut"
            );
        }
        assert!(waited.starts_with("HTTP/1.1 200"), "{waited}");
    })
    .await
    .expect("clients");
    // The wait is said, and counted.
    proxy.wait_log("every connection under limits.max_connections is busy");
    assert_eq!(proxy.metric("ramp_connections_waited_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_per_connection_are_bounded_by_the_setting() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "limits:\n  h2_max_concurrent_streams: 8\n",
    ));
    let client = Client::http2();
    // One request first, so the client has the server's SETTINGS (streams sent before them
    // beyond the limit are refused, which is the limit working too).
    assert_eq!(client.get(&proxy.url("/"), &[]).await.status, 200);
    let url = proxy.url("/slow/300");
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (client, url) = (client.clone(), url.clone());
        all.spawn(async move { client.get(&url, &[]).await.status });
    }
    while let Some(status) = all.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    assert!(
        b.max_in_flight() <= 8,
        "{} requests at once on one connection",
        b.max_in_flight()
    );
    assert!(b.max_in_flight() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: l\npercent: 0", ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut opened = 0;
    for _ in 0..20_000 {
        let req = http::Request::get(proxy.url("/slow/2000"))
            .body(())
            .expect("req");
        h2 = match h2.ready().await {
            Ok(h) => h,
            Err(_) => break,
        };
        match h2.send_request(req, true) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    eprintln!(
        "rapid reset: opened {opened}, connection ended: {ended:?}, upstream saw {}",
        b.seen().len()
    );
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the flooding connection was not cut off: {ended:?}"
    );
    assert!(
        opened < 20_000,
        "20000 reset streams on one connection went unchallenged"
    );
    // Upstream requests of reset streams are cancelled, not piled up.
    assert!(
        b.seen().len() < opened.max(1),
        "{} of {opened} reached the upstream",
        b.seen().len()
    );
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200, "others are still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_resetting_streams_after_they_went_upstream_gets_a_goaway() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "metrics: {listen: '127.0.0.1:0'}\n",
    ));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    // Batches of 20 streams, each reset once its request has reached the upstream (past the
    // rapid-reset guard, which counts streams reset before they are served).
    let (mut reset, mut refused) = (0, false);
    'flood: for _ in 0..15 {
        let mut streams = Vec::new();
        for _ in 0..20 {
            let req = http::Request::get(proxy.url("/slow/10000"))
                .body(())
                .expect("req");
            h2 = match h2.ready().await {
                Ok(h) => h,
                Err(_) => {
                    refused = true;
                    break 'flood;
                }
            };
            match h2.send_request(req, true) {
                Ok((_resp, stream)) => streams.push(stream),
                Err(_) => {
                    refused = true;
                    break 'flood;
                }
            }
        }
        let before = b.seen().len();
        support::eventually("the batch reaches the upstream", || {
            b.seen().len() >= before + streams.len() || driver.is_finished()
        })
        .await;
        for mut s in streams {
            s.send_reset(h2::Reason::CANCEL);
            reset += 1;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        refused || matches!(ended, Ok(Ok(_))),
        "after {reset} streams reset upstream, the connection is still open: {ended:?}"
    );
    assert!(
        (100..=140).contains(&reset),
        "a GOAWAY after {reset} resets"
    );
    proxy.wait_log("its connection gets a GOAWAY");
    assert!(
        proxy
            .metric("ramp_abandoned_requests_total{pool=\"stable\"}")
            .await
            >= 100.0
    );
    let r = Client::http2().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200, "others are still served");
}

/// One HTTP/2 frame: its 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_heeds_no_goaway_and_resets_on_is_closed() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: l\npercent: 0", ""));
    let addr = proxy.addr;
    let b = std::sync::Arc::new(b);
    let upstream = std::sync::Arc::clone(&b);
    // A raw client that never answers a PING (hyper's graceful close waits for that answer
    // before its final GOAWAY), so the first GOAWAY stops none of its streams.
    let (reset, closed) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(4, 0, 0, &[]));
        wire.extend(frame(4, 1, 0, &[]));
        s.write_all(&wire).expect("preface");
        let mut reader = s.try_clone().expect("clone");
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen_end = std::sync::Arc::clone(&ended);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while matches!(reader.read(&mut buf), Ok(1..)) {}
            seen_end.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // GET /slow/10000, Host x: indexed :method GET and :scheme http, literal :path and
        // :authority (not indexed).
        let path = b"/slow/10000";
        let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).expect("short")];
        block.extend_from_slice(path);
        block.extend_from_slice(&[0x01, 1, b'x']);
        let (mut stream, mut reset) = (1u32, 0);
        for _ in 0..30 {
            if ended.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let before = upstream.seen().len();
            let first = stream;
            let mut batch = Vec::new();
            for _ in 0..20 {
                batch.extend(frame(1, 0x5, stream, &block));
                stream += 2;
            }
            if s.write_all(&batch).is_err() {
                break;
            }
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while upstream.seen().len() < before + 20
                && std::time::Instant::now() < end
                && !ended.load(std::sync::atomic::Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut resets = Vec::new();
            for id in (first..stream).step_by(2) {
                resets.extend(frame(3, 0, id, &8u32.to_be_bytes()));
            }
            if s.write_all(&resets).is_err() {
                break;
            }
            reset += 20;
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !ended.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        (reset, ended.load(std::sync::atomic::Ordering::SeqCst))
    })
    .await
    .expect("client");
    assert!(closed, "the connection is still open after {reset} resets");
    assert!(reset <= 260, "closed only after {reset} resets");
    proxy.wait_log("went on resetting streams after its GOAWAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_a_goaway() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "limits:\n  h2_idle_timeout: 500ms\n",
    ));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get(proxy.url("/")).body(()).expect("req");
    let (resp, _) = h2.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
    // A stream in progress keeps it open past the idle limit.
    h2 = h2.ready().await.expect("ready");
    let req = http::Request::get(proxy.url("/slow/1000"))
        .body(())
        .expect("req");
    let (resp, _) = h2.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("slow response").status(), 200);
    // Then, idle, the server ends the connection cleanly.
    let t0 = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    eprintln!("h2 idle ended after {:?}: {ended:?}", t0.elapsed());
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_upstream_max_connections_a_request_gets_503_and_no_upstream_is_blamed() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: cap\npercent: 0",
        "upstream:\n  max_connections: 1\nmetrics: {listen: '127.0.0.1:0'}\n",
    ));
    // One request holds the only upstream connection for a while...
    let slow = {
        let url = proxy.url("/slow/1500");
        tokio::spawn(async move { Client::http1().get(&url, &[]).await })
    };
    support::eventually("the slow request reaches the upstream", || {
        b.in_flight() == 1
    })
    .await;
    // ...so others that need a connection of their own are refused at once by ramp itself.
    for _ in 0..8 {
        let r = Client::http1().get(&proxy.url("/"), &[]).await;
        assert_eq!(r.status.as_u16(), 503, "{}", r.body);
    }
    assert_eq!(slow.await.expect("slow").status.as_u16(), 200);
    // The upstream was not charged for ramp's own limit: not ejected, no upstream error.
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
    let text = proxy.metrics().await;
    let value = |series: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    for series in [
        "ramp_upstream_ejections_total{pool=\"stable\"}",
        "ramp_upstream_errors_total{pool=\"stable\",kind=\"connect\"}",
        // Nor its answers: the 503s are ramp's own, not the pool's.
        "ramp_responses_total{pool=\"stable\",class=\"5xx\"}",
    ] {
        assert_eq!(value(series), 0.0, "{series}: {text}");
    }
    assert_eq!(
        value("ramp_responses_total{pool=\"stable\",class=\"2xx\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(value("ramp_rejected_requests_total"), 8.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_one_upstream_do_not_keep_another_from_connecting_at_the_cap() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&config(
        &[&s],
        &[&c],
        "id: crowd\npercent: 50",
        "sticky: {header: x-user-id}\nupstream:\n  max_connections: 4\n",
    ));
    let client = Client::http1();
    let mut ids = (Vec::new(), Vec::new());
    for i in 0.. {
        let id = format!("u{i}");
        let r = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
        match r.body.as_str() {
            "canary" if ids.0.len() < 4 => ids.0.push(id),
            "stable" if ids.1.is_empty() => ids.1.push(id),
            _ => {}
        }
        if ids.0.len() == 4 && !ids.1.is_empty() {
            break;
        }
    }
    // Four canary users at once take every place; their connections then go idle.
    let slow: Vec<_> = ids
        .0
        .iter()
        .map(|id| {
            let (url, id) = (proxy.url("/slow/300"), id.clone());
            tokio::spawn(async move {
                support::Client::http1()
                    .get(&url, &[("x-user-id", &id)])
                    .await
            })
        })
        .collect();
    for r in slow {
        assert_eq!(r.await.expect("slow").status.as_u16(), 200);
    }
    // A stable user still gets a connection to stable.
    let r = client
        .get(&proxy.url("/"), &[("x-user-id", &ids.1[0])])
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
}

/// A request body that sends one byte of the many its Content-Length announces, then nothing.
struct Trickle(bool);

impl hyper::body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
            bytes::Bytes::from_static(b"x"),
        ))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_s_http2_streams_cannot_take_every_upstream_connection() {
    // Each stream uploads a byte now and then: never idle long enough to be cut, and each holds
    // an upstream connection. Nothing limited one client's share, so three connections of a
    // hundred streams took all two hundred places and everyone else got 503.
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: share\npercent: 0",
        "upstream:\n  max_connections: 200\n",
    ));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2");
        streams.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        for _ in 0..100 {
            let req = http::Request::post(format!("http://{}/upload", proxy.addr))
                .header("content-length", "1000")
                .body(Trickle(false))
                .expect("request");
            let sent = h2.send_request(req);
            streams.push(tokio::spawn(async move {
                let _ = sent.await;
            }));
        }
    }
    // Every upload the proxy let through has reached the upstream and holds a connection.
    support::settled(|| b.in_flight()).await;
    // Half the places freely, then eight at most per connection: 100 + 8 + 8.
    assert!(b.in_flight() <= 116, "{} upstream requests", b.in_flight());
    // Everyone else is still served, over HTTP/1.1 and HTTP/2 alike.
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
    // A browser-like HTTP/2 client past half: a long request (an event stream, a long poll)
    // does not hold up the page's other requests on the same connection.
    let h2 = Client::http2();
    let held = b.in_flight();
    let long = {
        let (h2, url) = (h2.clone(), proxy.url("/slow/5000"));
        tokio::spawn(async move { h2.get(&url, &[]).await })
    };
    support::eventually("the long request reaches the upstream", || {
        b.in_flight() > held
    })
    .await;
    let gets: Vec<_> = (0..5)
        .map(|i| {
            let (h2, url) = (h2.clone(), proxy.url(&format!("/g{i}")));
            tokio::spawn(async move { h2.get(&url, &[]).await })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.expect("get").status.as_u16(), 200);
    }
    assert!(!long.is_finished(), "the page waited for the long request");
    assert_eq!(long.await.expect("long").status.as_u16(), 200);
    // Eight long requests on one connection (event streams, long polls) hold its share: a ninth
    // waits, but not forever.
    let tabs = Client::http2();
    let held = b.in_flight();
    let longs: Vec<_> = (0..8)
        .map(|i| {
            let (tabs, url) = (tabs.clone(), proxy.url(&format!("/slow/30000?{i}")));
            tokio::spawn(async move { tabs.get(&url, &[]).await })
        })
        .collect();
    support::eventually("eight long requests reach the upstream", || {
        b.in_flight() >= held + 8
    })
    .await;
    let ninth = tabs.get(&proxy.url("/ninth"), &[]).await;
    assert_eq!(ninth.status.as_u16(), 503, "{}", ninth.body);
    for l in longs {
        l.abort();
    }
    for s in streams {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_do_not_hold_http2_clients_to_their_share() {
    // A burst leaves connections idle in the pool: they hold nothing, so an HTTP/2 client after
    // it is not held to eight at a time as if the proxy were crowded (for a minute, until they
    // aged out).
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: idle\npercent: 0",
        "upstream:\n  max_connections: 40\n",
    ));
    let burst: Vec<_> = (0..25)
        .map(|_| {
            let url = proxy.url("/slow/300");
            tokio::spawn(async move { Client::http1().get(&url, &[]).await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.expect("burst").status.as_u16(), 200);
    }
    support::eventually("the burst is over", || b.in_flight() == 0).await;
    let h2 = Client::http2();
    let page: Vec<_> = (0..16)
        .map(|i| {
            let (h2, url) = (h2.clone(), proxy.url(&format!("/slow/1500?{i}")));
            tokio::spawn(async move { h2.get(&url, &[]).await })
        })
        .collect();
    support::eventually("all sixteen at once", || b.in_flight() == 16).await;
    for r in page {
        assert_eq!(r.await.expect("page").status.as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_files_limit_http2_streams_leave_descriptors_for_others_and_halt() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start_with_open_files(
        &config(&[&b], &[&b], "id: l\npercent: 0", support::CONTROL),
        512,
    );
    proxy.wait_log(
        "upstream.max_connections is lowered to what the open files limit leaves room for",
    );
    // Ten HTTP/2 connections of 100 slow streams each: once past half of the upstream
    // connections the limit leaves, each connection's streams hold at most 8.
    let mut clients = Vec::new();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..100 {
            let h2 = h2.clone();
            let url = proxy.url("/slow/4000");
            all.spawn(async move {
                if let Ok(mut h2) = h2.ready().await {
                    let req = http::Request::get(url).body(()).expect("req");
                    if let Ok((resp, _)) = h2.send_request(req, true) {
                        let _ = resp.await;
                    }
                }
            });
        }
        clients.push(h2);
    }
    support::eventually("the streams reach the upstream", || b.in_flight() >= 64).await;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(fds() < 400, "{} descriptors open of 512", fds());
    // Another user gets an answer at once — served, or ramp's own 503 while every upstream
    // connection the limit leaves is held (not a wait for a descriptor) — and a halt answers.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        Client::http1().get(&proxy.url("/"), &[]),
    )
    .await
    .expect("an answer within 5 s");
    assert!(matches!(r.status.as_u16(), 200 | 503), "{}", r.status);
    let halt = support::admin_within(&proxy.socket(), "halt", Duration::from_secs(2));
    assert_eq!(halt["state"], "halted", "{halt}");
    all.abort_all();
}
