//! What crosses ramp: headers (hop-by-hop, X-Forwarded-*, Host), streamed bodies, and the
//! answers when an upstream fails.

mod support;

use bytes::Bytes;
use http::Method;
use support::{Backend, Client, Proxy, config, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(extra: &str) -> (Backend, Proxy) {
    let stable = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&stable], &[&stable], "id: fw\npercent: 0", extra));
    (stable, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_before_x_forwarded_for_is_set() {
    let (stable, proxy) = start("").await;
    let request = "GET /path?q=1 HTTP/1.1\r\n\
        Host: shop.example:8443\r\n\
        Connection: close, x-forwarded-for, X-Custom-Hop\r\n\
        X-Custom-Hop: secret\r\n\
        X-Forwarded-For: 203.0.113.9\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        TE: trailers\r\n\
        Upgrade: websocket\r\n\
        X-End-To-End: kept\r\n\r\n";
    let reply = raw(proxy.addr, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = stable.last();
    for gone in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the upstream"
        );
    }
    // The client named X-Forwarded-For in Connection: its value is dropped, ramp's is set.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["host"], "shop.example:8443");
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.uri, "/path?q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fields_the_user_id_comes_in_reach_the_upstream_even_when_named_in_connection() {
    let (stable, proxy) = start("sticky: {header: x-user-id, cookie: uid}").await;
    let request = "GET / HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: cookie, x-user-id, host, x-custom-hop\r\n\
        Cookie: uid=abc; theme=dark\r\n\
        X-User-Id: u2\r\n\
        X-Custom-Hop: gone\r\n\r\n";
    let reply = raw(proxy.addr, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = stable.last();
    // ramp routed on these: the app sees the same user.
    assert_eq!(seen.headers["cookie"], "uid=abc; theme=dark");
    assert_eq!(seen.headers["x-user-id"], "u2");
    assert_eq!(seen.headers["host"], "shop.example");
    assert!(seen.headers.get("x-custom-hop").is_none());
    assert!(seen.headers.get("connection").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_that_pass_for_ramp_s_own_with_an_underscore_do_not_reach_the_upstream() {
    let (stable, proxy) = start("sticky: {header: x-user-id, cookie: uid}").await;
    // CGI, WSGI, Rack and PHP read `X-Forwarded_For` as `X-Forwarded-For`: a forged address, a
    // user other than the one ramp routed.
    let request = "GET / HTTP/1.1\r\n\
        Host: shop.example\r\n\
        X-User-Id: u2\r\n\
        X_User_Id: someone-else\r\n\
        X-Forwarded_For: 6.6.6.6\r\n\
        X_FORWARDED_PROTO: https\r\n\
        Content_Length: 40\r\n\
        Transfer_Encoding: chunked\r\n\
        X-App_Setting: kept\r\n\
        Connection: close\r\n\r\n";
    let reply = raw(proxy.addr, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = stable.last();
    let names: Vec<&str> = seen.headers.keys().map(|n| n.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains('_') && *n != "x-app_setting"),
        "{names:?}"
    );
    assert_eq!(seen.headers["x-app_setting"], "kept");
    assert_eq!(seen.headers["x-user-id"], "u2");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_header_named_with_underscores_has_its_dashed_lookalike_dropped() {
    let (stable, proxy) = start("sticky: {header: x_user_id}").await;
    let request = "GET / HTTP/1.1\r\n\
        Host: shop.example\r\n\
        x_user_id: alice\r\n\
        X-User-Id: mallory\r\n\
        Connection: close\r\n\r\n";
    let reply = raw(proxy.addr, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = stable.last();
    assert_eq!(seen.headers["x_user_id"], "alice");
    assert!(
        seen.headers.get("x-user-id").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_keeps_earlier_hops_and_appends_the_peer() {
    let (stable, proxy) = start("").await;
    let client = Client::http1();
    client
        .get(
            &proxy.url("/"),
            &[("x-forwarded-for", "198.51.100.1, 10.0.0.2")],
        )
        .await;
    assert_eq!(
        stable.last().headers["x-forwarded-for"],
        "198.51.100.1, 10.0.0.2, 127.0.0.1"
    );
    let r = client
        .get(&proxy.url("/"), &[("x-forwarded-proto", "https")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        stable.last().headers["x-forwarded-proto"],
        "http",
        "the client cannot claim TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_from_the_upstream_do_not_reach_the_client() {
    let (_stable, proxy) = start("").await;
    // HTTP/1.1 clients get the upstream's fields as written; HTTP/2 clients from a HeaderMap.
    for client in [Client::http1(), Client::http2()] {
        let r = client.get(&proxy.url("/hop"), &[]).await;
        assert_eq!(r.status, 200);
        for gone in ["x-secret-hop", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(
                r.headers.get(gone).is_none(),
                "{gone} reached the client: {:?}",
                r.headers
            );
        }
        assert_eq!(
            r.headers["x-app-version"], "stable",
            "end-to-end headers pass unless hidden"
        );
        assert_eq!(r.headers["content-length"], "6", "{:?}", r.headers);
        assert_eq!(
            r.headers.get_all("date").iter().count(),
            1,
            "{:?}",
            r.headers
        );
        assert!(
            r.headers
                .get_all("set-cookie")
                .iter()
                .any(|c| c.to_str().is_ok_and(|c| c.starts_with("uid="))),
            "ramp's own fields follow the upstream's: {:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_reach_the_upstream_as_http11_with_their_authority_as_host() {
    let (stable, proxy) = start("").await;
    let r = Client::http2().get(&proxy.url("/h2?x=y"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "stable");
    let seen = stable.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/h2?x=y");
    assert_eq!(seen.headers["host"], proxy.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_upload_and_download_stream_without_being_held_in_memory() {
    let (stable, proxy) = start("").await;
    const SIZE: usize = 50 * 1024 * 1024;
    // Warm up, then measure the peak resident size around the two transfers.
    Client::http1().get(&proxy.url("/"), &[]).await;
    let before = proxy.peak_rss_kib();

    // Upload: written in 64 KiB pieces on a raw connection, counted by the upstream.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    let piece = vec![b'u'; 64 * 1024];
    for _ in 0..SIZE / piece.len() {
        conn.write_all(&piece).await.expect("body");
    }
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with(&SIZE.to_string()), "{reply}");
    assert_eq!(stable.last().body_bytes, SIZE as u64);

    // Download: read piece by piece without keeping it.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!("GET /download/{SIZE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = conn.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > SIZE, "got {total} bytes (head + body)");

    let grown = proxy.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "ramp's peak memory grew by {grown} KiB for 50 MB bodies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_gives_502_and_a_slow_one_504() {
    // A port nothing listens on.
    let dead_addr = support::dead_port().forever();
    let slow = Backend::start("slow").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools:\n  stable: [{dead_addr}]\n  canary: [{}]\n\
         sticky: {{header: x-user-id}}\nrollout: {{id: errs, percent: 50}}\n\
         upstream: {{response_timeout: 300ms}}\n",
        slow.addr
    );
    let proxy = Proxy::start(&yaml);
    let client = Client::http1();
    let (mut got_502, mut got_504) = (false, false);
    for i in 0..40 {
        let id = format!("e{i}");
        let r = client
            .get(&proxy.url("/slow/3000"), &[("x-user-id", &id)])
            .await;
        match r.status.as_u16() {
            502 => {
                assert_eq!(r.body, "Bad Gateway\n");
                got_502 = true;
            }
            504 => {
                assert_eq!(r.body, "Gateway Timeout\n");
                got_504 = true;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
        if got_502 && got_504 {
            break;
        }
    }
    assert!(got_502 && got_504, "502: {got_502}, 504: {got_504}");
    // The proxy keeps serving after failures.
    let r = client.get(&proxy.url("/"), &[("x-user-id", "e-any")]).await;
    assert!(matches!(r.status.as_u16(), 200 | 502), "{}", r.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_bodies_pass_through() {
    let (stable, proxy) = start("").await;
    let client = Client::http1();
    let r = client
        .send(
            Method::PUT,
            &proxy.url("/upload"),
            &[],
            Bytes::from_static(b"hello"),
        )
        .await;
    assert_eq!(r.body, "5");
    let seen = stable.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.body_bytes, 5);
}
