//! What crosses the proxy when clients and upstreams speak less common HTTP: an HTTP/1.0
//! upstream, HTTP/2 cookies, CONNECT, odd targets and codings, trailers, an answer framed twice,
//! and the header limits.

mod support;

use std::time::Duration;

use support::{
    Backend, Client, Proxy, RawUpstream, config, on_one_connection, raw, raw_reply, single,
    status_of,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upstream_does_not_end_the_client_s_keep_alive_connection() {
    // Like Python's http.server: answers in HTTP/1.0, with no length, and closes.
    let up = RawUpstream::start(
        b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Type: text/plain\r\n\r\nfrom-1.0",
        true,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        on_one_connection(
            addr,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(3),
        )
    })
    .await
    .expect("client");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert_eq!(out.matches("from-1.0").count(), 2, "{out}");
    assert!(
        !out.contains("HTTP/1.0"),
        "answered in the client's version: {out}"
    );
    assert_eq!(
        up.heads().len(),
        2,
        "each request on a fresh upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookies_reach_an_http1_upstream_as_one_field() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: c\npercent: 0", ""));
    let h2 = Client::http2();
    let r = h2
        .get(
            &proxy.url("/"),
            &[("cookie", "a=1"), ("cookie", "uid=u-7"), ("cookie", "b=2")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = b.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0], "a=1; uid=u-7; b=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_odd_targets_and_codings_are_refused_with_the_right_status() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: t\npercent: 0", ""));
    let addr = proxy.addr;
    let cases: [(&[u8], u16); 7] = [
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
        ),
        // PRI is HTTP/2's preface, never a request (RFC 9113 §3.4).
        (b"PRI /x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: uid=u-1\r\n\r\n", 405),
        (b"GET abc HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    for (request, status) in cases {
        let reply = raw_reply(addr, request).await;
        assert_eq!(
            status_of(&reply),
            status,
            "{}: {reply}",
            String::from_utf8_lossy(request)
        );
    }
    let trace = Client::http2()
        .send(
            http::Method::TRACE,
            &proxy.url("/"),
            &[],
            Default::default(),
        )
        .await;
    assert_eq!(trace.status, 405, "TRACE over HTTP/2");
    let other = Client::http2()
        .get(&proxy.url("/"), &[("host", "other.example")])
        .await;
    assert_eq!(other.status, 400, "an HTTP/2 Host other than :authority");
    assert!(
        b.seen().is_empty(),
        "nothing refused reached the upstream: {:?}",
        b.seen()
    );
    // The same server named twice, in another case, is no conflict (RFC 9113 §8.3.1).
    let url = proxy.url("/");
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let same = Client::http2()
        .get(&url, &[("host", &authority.to_ascii_uppercase())])
        .await;
    assert_eq!(same.status, 200, "Host the same as :authority");
    // Plain chunked still flows.
    let reply = raw_reply(addr, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("\r\n\r\n5"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_the_field_announcing_them_are_not_forwarded() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let reply = raw_reply(addr, b"POST /x HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTrailer: x-sig\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nx-sig: 1\r\n\r\n").await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(!lower.contains("trailer:"), "{reply}");
    assert!(!lower.contains("x-checksum"), "{reply}");
    assert!(lower.contains("hello"), "{reply}");
    let head = up.heads().pop().expect("the upstream saw the request");
    assert!(!head.to_ascii_lowercase().contains("trailer:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_by_both_lengths_is_never_passed_on_short() {
    // Content-Length 3 and chunked "hello": chunked wins (RFC 9112 §6.3).
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        on_one_connection(
            addr,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(3),
        )
    })
    .await
    .expect("client");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("content-length: 3"),
        "{out}"
    );
    assert_eq!(
        out.matches("hello").count(),
        2,
        "whole bodies, no desync: {out}"
    );
    assert_eq!(
        up.heads().len(),
        2,
        "the twice-framed upstream connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_get_431_and_an_over_long_target_414() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: l\npercent: 0",
        "limits: {max_headers: 20}\n",
    ));
    let addr = proxy.addr;
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..25 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut few = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..15 {
        few.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    few.extend_from_slice(b"\r\n");
    for (request, status) in [
        (many, 431),
        (few, 200),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9_000)).into_bytes(),
            414,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(40_000)).into_bytes(),
            414,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
    ] {
        let len = request.len();
        let reply = tokio::task::spawn_blocking(move || raw(addr, &request))
            .await
            .expect("client");
        assert_eq!(
            status_of(&reply),
            status,
            "a request of {len} bytes: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_dies_mid_request_falls_back_to_stable() {
    let stable = Backend::start("stable").await;
    // Reads the request, then closes without a byte of an answer.
    let dying = RawUpstream::start(b"", true).await;
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{}'], canary: ['{}']}}\nrollout: {{id: die, percent: 100}}\n",
        stable.addr, dying.addr
    ));
    let client = Client::http1();
    for i in 0..5 {
        let r = client
            .get(&proxy.url("/"), &[("x-user-id", &format!("u{i}"))])
            .await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
    }
    assert!(!dying.heads().is_empty(), "the canary was tried first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_switches_protocols_unasked_gets_502() {
    let up = RawUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let reply = raw_reply(
        addr,
        b"GET /101 HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade, close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 502, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_http2_header_fields_get_431_too() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: h\npercent: 0",
        "limits: {max_headers: 50}\n",
    ));
    let names: Vec<String> = (0..80).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = Client::http2().get(&proxy.url("/"), &headers).await;
    assert_eq!(r.status, 431);
    let r = Client::http2().get(&proxy.url("/"), &headers[..20]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_takes_the_heads_http1_takes_and_counts_the_431s_it_gives() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: h\npercent: 0",
        "metrics: {listen: '127.0.0.1:0'}\n",
    ));
    // Within every limit by HTTP/1.1's count (90 fields of about 150 bytes: 13.4 KiB of the 16
    // KiB; a 6,000-byte target of the 8 KiB), though HPACK's count (32 more per field, the
    // target included) comes to 22 KiB.
    let names: Vec<String> = (0..90).map(|i| format!("x-h{i:02}")).collect();
    let value = "v".repeat(140);
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let path = format!("/{}", "p".repeat(6_000));
    let by_http1 = Client::http1().get(&proxy.url(&path), &fields).await;
    assert_eq!(by_http1.status, 200);
    let by_http2 = Client::http2().get(&proxy.url(&path), &fields).await;
    assert_eq!(by_http2.status, 200, "HTTP/2 refused what HTTP/1.1 took");
    // Over the bytes limit (60 fields of 300 bytes): 431 on both, each counted.
    let value = "v".repeat(300);
    let fields: Vec<(&str, &str)> = names[..60]
        .iter()
        .map(|n| (n.as_str(), value.as_str()))
        .collect();
    for client in [Client::http1(), Client::http2()] {
        assert_eq!(client.get(&proxy.url("/"), &fields).await.status, 431);
    }
    assert_eq!(proxy.metric("ramp_rejected_requests_total").await, 2.0);
}
