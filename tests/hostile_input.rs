//! Clients and upstreams that break the rules. Each case is refused or contained, and the proxy
//! keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{Backend, Client, Proxy, config, raw, raw_reply, status_of};

async fn start() -> (Backend, Proxy) {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: hostile\npercent: 0", ""));
    (b, proxy)
}

async fn still_serves(proxy: &Proxy) {
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let (b, proxy) = start().await;
    // Transfer-Encoding wins (RFC 9112 §6.3): the body is the empty chunked body, the bytes after
    // it are never read as a request, and the connection closes after one answer.
    for attack in [
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let reply = raw(proxy.addr, attack.as_bytes());
        assert_eq!(
            reply.matches("HTTP/1.1 ").count(),
            1,
            "one answer, then the connection closes: {reply}"
        );
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    still_serves(&proxy).await;
    let seen = b.seen();
    assert!(
        seen.iter().all(|s| s.uri != "/smuggled"),
        "a smuggled request reached the upstream: {seen:?}"
    );
    for s in seen.iter().filter(|s| s.uri.path().len() == 2) {
        assert!(
            s.headers.get("content-length").is_none_or(|v| v == "0"),
            "{s:?}"
        );
        assert_eq!(s.body_bytes, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_or_invalid_content_length_is_400() {
    let (b, proxy) = start().await;
    for lengths in [
        "Content-Length: 3\r\nContent-Length: 4",
        "Content-Length: abc",
        "Content-Length: -1",
        "Content-Length: 1,2",
        "Content-Length: +3",
        "Content-Length: 3 3",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\n{lengths}\r\n\r\nabcd");
        let reply = raw(proxy.addr, req.as_bytes());
        assert_eq!(status_of(&reply), 400, "{lengths:?}: {reply}");
    }
    assert!(b.seen().is_empty());
    // The same length twice is one length (RFC 9112 §6.3): exactly those bytes are the body.
    let reply = raw(proxy.addr, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcGET /smuggled HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("\r\n\r\n3"), "{reply}");
    assert!(b.seen().iter().all(|s| s.uri != "/smuggled"));
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_lines_are_400() {
    let (b, proxy) = start().await;
    for head in [
        "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  continued\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-Bare: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-Space : y\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@x\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let reply = raw(proxy.addr, head.as_bytes());
        assert_eq!(status_of(&reply), 400, "{head:?}: {reply}");
    }
    assert!(b.seen().is_empty());
    // HTTP/1.0 may leave Host out.
    let reply = raw(proxy.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&reply), 200, "{reply}");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_targets_and_headers_are_414_and_431() {
    let (b, proxy) = start().await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    assert_eq!(status_of(&raw(proxy.addr, long_uri.as_bytes())), 414);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_eq!(status_of(&raw(proxy.addr, big_header.as_bytes())), 431);
    let many = (0..200)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect::<String>();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(status_of(&raw(proxy.addr, many.as_bytes())), 431);
    // A 1 MB cookie: refused, not buffered whole, not a crash.
    let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: uid=");
    let _ = s.write_all(&vec![b'c'; 1 << 20]);
    let _ = s.write_all(b"\r\n\r\n");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(status_of(&String::from_utf8_lossy(&reply)), 431);
    assert!(b.seen().is_empty());
    assert!(
        proxy.peak_rss_kib() < 64 * 1024,
        "peak memory {} KiB",
        proxy.peak_rss_kib()
    );
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_response_reaches_the_client_as_an_aborted_response() {
    let (_b, proxy) = start().await;
    let reply = raw(proxy.addr, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&reply), 200, "{reply}");
    let (head, body) = reply.split_once("\r\n\r\n").expect("head");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    assert!(
        body.len() < 100_000,
        "the client must not get a complete-looking body"
    );
    // A client that checks framing sees an error, not a short success.
    let err = Client::http1().try_get(&proxy.url("/reset"), &[]).await;
    assert!(err.is_err(), "{err:?}");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_speaks_garbage_is_a_502() {
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = garbage.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = garbage.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02garbage\r\n\r\n")
                    .await;
            });
        }
    });
    let good = Backend::start("good").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\npools:\n  stable: [{}]\n  canary: [{addr}]\nsticky: {{header: x-user-id}}\nrollout: {{id: g, percent: 100}}\n",
        good.addr
    );
    let proxy = Proxy::start(&yaml);
    let r = Client::http1()
        .get(&proxy.url("/"), &[("x-user-id", "u")])
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (502, "Bad Gateway\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_an_upload_cancels_the_upstream_request() {
    let (b, proxy) = start().await;
    still_serves(&proxy).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .expect("head");
    s.write_all(&[b'u'; 10_000]).await.expect("part");
    support::eventually("the upload reaches the upstream", || b.in_flight() == 1).await;
    drop(s);
    // The upstream sees its request body end in an error, not a complete request.
    let mut aborted = None;
    for _ in 0..100 {
        aborted = b.seen().into_iter().find(|s| s.uri == "/upload");
        if aborted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let aborted = aborted.expect("the upstream never finished the aborted upload");
    assert!(aborted.body_error, "{aborted:?}");
    assert!(aborted.body_bytes < 1_000_000);
    // That upstream connection is not used again.
    let r = Client::http1().get(&proxy.url("/after"), &[]).await;
    assert_eq!(r.status, 200);
    let after = b
        .seen()
        .into_iter()
        .find(|s| s.uri == "/after")
        .expect("after");
    assert_ne!(
        after.peer, aborted.peer,
        "the broken upstream connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_the_client_resets_never_reaches_the_upstream_as_complete() {
    // hyper ends a request body whose stream the client reset with NO_ERROR as if the client
    // had ended it; the upstream must not be sent the end of an upload nobody finished.
    let (b, proxy) = start().await;
    for (n, reason) in [h2::Reason::NO_ERROR, h2::Reason::CANCEL]
        .into_iter()
        .enumerate()
    {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let uri = format!("/upload?case={n}");
        let request = http::Request::post(proxy.url(&uri))
            .body(())
            .expect("request");
        let (_answer, mut stream) = h2.send_request(request, false).expect("send");
        stream
            .send_data(
                bytes::Bytes::from_static(b"first half of the upload"),
                false,
            )
            .expect("data");
        support::eventually("the upload reaches the upstream", || b.in_flight() == 1).await;
        stream.send_reset(reason);
        let mut seen = None;
        for _ in 0..100 {
            seen = b.seen().into_iter().find(|s| s.uri == uri.as_str());
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = seen.expect("the upstream never finished the reset upload");
        assert!(seen.body_error, "{reason:?}: {seen:?}");
        still_serves(&proxy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_reaches_the_upstream_in_one_reading_only() {
    // `010` is 10 to ramp, 8 to an upstream that reads a leading zero as octal: it goes up as
    // `10`. A length past what a signed 64-bit number holds is refused.
    let (b, proxy) = start().await;
    let reply = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 010\r\nConnection: close\r\n\r\n0123456789",
    );
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b
        .seen()
        .into_iter()
        .find(|s| s.uri == "/upload")
        .expect("seen");
    assert_eq!(
        (
            seen.headers["content-length"].to_str().ok(),
            seen.body_bytes
        ),
        (Some("10"), 10)
    );
    let reply = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n",
    );
    assert_eq!(status_of(&reply), 400, "{reply}");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_always_reaches_the_upstream_with_a_host() {
    let (b, proxy) = start().await;
    // Naming Host as a connection option must not strip it.
    let reply = raw(
        proxy.addr,
        b"GET /named HTTP/1.1\r\nHost: shop.example\r\nConnection: close, host\r\n\r\n",
    );
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b
        .seen()
        .into_iter()
        .find(|s| s.uri == "/named")
        .expect("seen");
    assert_eq!(seen.headers["host"], "shop.example");
    // HTTP/1.0 without Host: the upstream still gets one.
    let reply = raw(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b
        .seen()
        .into_iter()
        .find(|s| s.uri == "/old")
        .expect("seen");
    assert!(!seen.headers["host"].is_empty());
    // An empty Host (a target without an authority) is no different: ramp's own, never empty,
    // where an upstream would fall back to a name of its own.
    let reply = raw(
        proxy.addr,
        b"GET /empty HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&reply), 200, "{reply}");
    let empty = b
        .seen()
        .into_iter()
        .find(|s| s.uri == "/empty")
        .expect("seen");
    assert_eq!(empty.headers["host"], seen.headers["host"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_host_gets_the_same_one_from_either_pool() {
    // An answer that repeats the Host (an absolute redirect, a canonical link) must not name
    // the pool: the upstream's own address would.
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        "id: hosts\npercent: 50",
        "",
    ));
    for user in 0..40 {
        let request = format!("GET /u{user} HTTP/1.0\r\nCookie: uid=user-{user}\r\n\r\n");
        let reply = raw(proxy.addr, request.as_bytes());
        assert_eq!(status_of(&reply), 200, "{reply}");
    }
    let hosts = |b: &Backend| -> Vec<String> {
        b.seen()
            .iter()
            .map(|s| s.headers["host"].to_str().expect("text").to_owned())
            .collect()
    };
    let (on_stable, on_canary) = (hosts(&stable), hosts(&canary));
    assert!(
        !on_stable.is_empty() && !on_canary.is_empty(),
        "both pools served"
    );
    let listening = proxy.addr.to_string();
    for host in on_stable.iter().chain(&on_canary) {
        assert_eq!(host, &listening, "the Host is ramp's listen address");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_and_do_not_eject_the_upstream() {
    let b = Backend::start("stable").await;
    let extra = "limits: {body_idle_timeout: 300ms}\npassive_health: {eject_after: 2}\n";
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: hostile\npercent: 0", extra));
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("an answer");
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(status_of(&reply), 408, "{reply}");
    }
    still_serves(&proxy).await;
    assert!(
        !proxy.logs().iter().any(|l| l.contains("upstream ejected")),
        "a stalling client ejected a healthy upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_response_timeout() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: hostile\npercent: 0",
        "upstream: {response_timeout: 400ms}\n",
    ));
    let addr = proxy.addr;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
        )
        .expect("head");
        for piece in [b"ab", b"cd", b"ef"] {
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(piece).expect("piece");
        }
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .expect("upload");
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("\r\n\r\n6"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_line_feed_in_the_trailers_hides_no_request() {
    let (b, proxy) = start().await;
    // Read as a line end by a lenient parser in front, and not here, the LF would turn the next
    // request into trailer text: it is refused instead, at once.
    let addr = proxy.addr;
    for attack in [
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\n\n",
    ] {
        let reply = tokio::task::spawn_blocking(move || raw(addr, attack.as_bytes()))
            .await
            .expect("raw");
        // 400, or the upstream's own answer if it answered before the trailers came (the
        // connection closes after it either way).
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    still_serves(&proxy).await;
    assert!(b.seen().iter().all(|s| s.uri != "/hidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_or_authority_with_a_port_that_is_not_digits_is_400() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    let status = |request: String| async move {
        let reply = tokio::task::spawn_blocking(move || raw(addr, request.as_bytes()))
            .await
            .expect("raw");
        status_of(&reply)
    };
    for (host, expected) in [
        ("shop.example:8080", 200),
        ("[::1]:8080", 200),
        ("[::1]", 200),
        ("shop.example:abc", 400),
        ("[::1]x", 400),
        ("[::1", 400),
        ("a:1:2", 400),
        ("shop.example:65535", 200),
        ("shop.example:000080", 200),
        ("shop.example:65536", 400),
        ("[::1]:99999999999999999999", 400),
        ("shop.example:", 200),
        ("shop.example]", 400),
        (":80", 400),
        (":", 400),
    ] {
        let request = format!("GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(status(request).await, expected, "Host: {host}");
    }
    for target in [
        "http://evil.example:abc/",
        "http://:80/",
        "ftp://evil.example/x",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status(request).await, 400, "{target}");
    }
    // An absolute-form target with an empty path and a query: the upstream gets "/?x=1".
    let request = "GET http://shop.example?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(status(request.to_owned()).await, 200);
    let seen = b.last();
    assert_eq!(seen.uri, "/?x=1");
    assert_eq!(seen.headers["host"], "shop.example");
    // OPTIONS with an empty path asks about the server as a whole: the upstream gets "*"
    // (RFC 9112 §3.2.4); with a path, it asks about that path.
    for (target, expected) in [("http://shop.example", "*"), ("http://shop.example/", "/")] {
        let request = format!("OPTIONS {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status(request).await, 200, "{target}");
        let seen = b.last();
        assert_eq!(
            (seen.method.as_str(), seen.uri.to_string().as_str()),
            ("OPTIONS", expected)
        );
        assert_eq!(seen.headers["host"], "shop.example");
    }
    // It is checked as it came, as any absolute-form request is.
    for extra in ["", "Host: y\r\n"] {
        for target in ["http://u@shop.example", "http://shop.example"] {
            if target.contains('@') == extra.is_empty() {
                let request = format!(
                    "OPTIONS {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
                );
                assert_eq!(status(request).await, 400, "{target} {extra}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_with_a_body_goes_on_as_a_plain_request_with_its_body() {
    let (b, proxy) = start().await;
    let request =
        b"GET /upload HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Content-Length: 5\r\n\r\nhello";
    let reply = raw_reply(proxy.addr, request).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b.last();
    assert_eq!((seen.uri.path(), seen.body_bytes), ("/upload", 5));
    assert!(!seen.headers.contains_key("upgrade"));
}

/// An upstream with the common bug of sending a body with an answer that has none (to HEAD, 204,
/// 304), and with the worst timing: the stray body (itself shaped like an answer) reaches the
/// connection just as the next request does. Every other request gets its own answer, naming the
/// path; `/204` and `/304` get those statuses.
async fn head_body_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    support::raw_upstream(|mut conn| async move {
        let (mut buf, mut after_head) = (Vec::new(), false);
        while let Some(head) = support::next_head(&mut conn, &mut buf).await {
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let mut answer = Vec::new();
            if after_head {
                answer.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison");
            }
            let status = match path.as_str() {
                "/204" => "204 No Content",
                "/304" => "304 Not Modified",
                _ => "200 OK",
            };
            after_head = head.starts_with("HEAD ") || status != "200 OK";
            answer.extend_from_slice(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    path.len()
                )
                .as_bytes(),
            );
            if !after_head {
                answer.extend_from_slice(path.as_bytes());
            }
            if conn.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_an_upstream_sends_after_a_bodiless_answer_never_reaches_the_next_user() {
    let proxy = Proxy::start(&support::single(head_body_upstream().await, ""));
    let client = Client::http1();
    for i in 0..6 {
        let (method, path, status) = match i % 3 {
            0 => (http::Method::HEAD, "/h", 200),
            1 => (http::Method::GET, "/204", 204),
            _ => (http::Method::GET, "/304", 304),
        };
        let first = client
            .send(method, &proxy.url(path), &[], bytes::Bytes::new())
            .await;
        assert_eq!(first.status.as_u16(), status);
        let path = format!("/next-{i}");
        let next = client.get(&proxy.url(&path), &[]).await;
        assert_eq!(next.body, path, "another answer reached this user");
    }
}
