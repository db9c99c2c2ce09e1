//! What an HTTP/1.1 client notices of ramp's own server side: pipelined requests answered in
//! order, `Expect: 100-continue`, HEAD answers that keep the connection usable (ramp's own
//! included, and over HTTP/2), keep-alive after a pause, and a client that hangs up abandoning
//! its request upstream.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::{Backend, Client, Proxy, RawUpstream, config, raw_reply, single};

async fn start() -> (Backend, Proxy) {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: h1\npercent: 0", ""));
    (b, proxy)
}

/// Reads from `s` until `text` has arrived (or the connection closes, or 10 s pass).
fn read_until(s: &mut TcpStream, text: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(text) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    let requests = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
        GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_reply(addr, requests).await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 4, "{reply}");
    // Each upload's answer (the length the upstream received) comes in its place.
    let bodies: Vec<&str> = reply
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.split_once("\r\n\r\n").map_or("", |(_, body)| body))
        .collect();
    assert_eq!(bodies, ["stable", "5", "5", "stable"], "{reply}");
    let uris: Vec<String> = b.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(uris, ["/first", "/upload", "/upload", "/last"]);
    assert_eq!(
        b.seen().iter().map(|s| s.body_bytes).collect::<Vec<_>>(),
        [0, 5, 5, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_go_ahead_before_the_body_is_sent() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    let (interim, last) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
            .expect("head");
        let interim = read_until(&mut s, "\r\n\r\n");
        s.write_all(b"data").expect("body");
        (interim, read_until(&mut s, "\r\n\r\n4"))
    })
    .await
    .expect("client");
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(last.starts_with("HTTP/1.1 200 OK"), "{last}");
    assert!(last.ends_with("\r\n\r\n4"), "{last}");
    assert_eq!(b.last().body_bytes, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_to_an_unreachable_upstream_is_answered_before_the_body_is_sent() {
    // A port nothing listens on: the request is answered without its body.
    let closed = support::dead_port().forever();
    let proxy = Proxy::start(&single(closed, ""));
    let addr = proxy.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"PUT /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
            .expect("head");
        // Like a client that waits for the go-ahead: the first thing back is the answer.
        read_until(&mut s, "\r\n\r\n")
    })
    .await
    .expect("client");
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_keeps_its_length_and_the_connection_goes_on() {
    let (_b, proxy) = start().await;
    let addr = proxy.addr;
    let reply = raw_reply(addr, b"HEAD /download/100 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let (head, rest) = reply.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("content-length: 100"), "{head}");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK"),
        "no body after a HEAD answer: {rest}"
    );
    assert!(rest.ends_with("stable"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramps_own_answer_to_head_says_the_length_a_get_gets() {
    // No upstream listens: ramp answers 502 itself.
    let gone = support::dead_port().forever();
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools:\n  stable: [{gone}]\n  canary: [{gone}]\nrollout:\n  id: h1\n  percent: 0\n"
    ));
    let reply = raw_reply(
        proxy.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let length = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(str::to_owned)
    };
    let (head, rest) = reply.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 502 "), "{reply}");
    let (get_head, get_body) = rest.split_once("\r\n\r\n").expect("the GET's answer");
    assert!(
        get_head.starts_with("HTTP/1.1 502 "),
        "no body after the HEAD answer: {rest}"
    );
    assert_eq!(length(head), Some(get_body.len().to_string()), "{reply}");
    assert_eq!(length(head), length(get_head), "{reply}");

    // Over HTTP/2 too: the answer ends with its head (a body would be a protocol error).
    let h2 = Client::http2();
    let r = h2
        .send(Method::HEAD, &proxy.url("/"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, "", "no body in an answer to HEAD");
    assert_eq!(
        r.headers.get("content-length").map(|v| v.as_bytes()),
        Some(get_body.len().to_string().as_bytes())
    );
    assert_eq!(h2.get(&proxy.url("/"), &[]).await.body, get_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_is_served_again_after_a_pause() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    let replies = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut replies = Vec::new();
        for path in ["/one", "/two"] {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("write");
            replies.push(read_until(&mut s, "stable"));
            std::thread::sleep(Duration::from_millis(300));
        }
        replies
    })
    .await
    .expect("client");
    for reply in &replies {
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(!reply.contains("connection: close"), "{reply}");
    }
    let peers: Vec<_> = b.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(peers, ["/one", "/two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_abandons_its_request_upstream() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    for request in [
        &b"GET /slow/20000 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /slow/20000 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let s = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(request).expect("write");
            s
        })
        .await
        .expect("client");
        let since = Instant::now();
        while b.in_flight() == 0 {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(s);
        // The upstream's request ends long before its 20 s answer would.
        while b.in_flight() != 0 {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "the upstream request outlived its client"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_upstream_reaches_the_client_as_far_as_it_came() {
    // Promises 10 bytes, sends 3, and closes.
    let up = RawUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true).await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    // The next request is already waiting when the answer is cut.
    let reply = raw_reply(
        addr,
        b"GET /short HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
    // The upstream's fields go on as it wrote them.
    assert!(reply.contains("\r\nContent-Length: 10\r\n"), "{reply:?}");
    assert!(
        reply.ends_with("\r\n\r\nabc"),
        "the 3 bytes, then the close (so the client sees 7 missing): {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_that_asks_for_keep_alive_is_served_on_one_connection() {
    let (b, proxy) = start().await;
    let addr = proxy.addr;
    // ApacheBench's `-k`: HTTP/1.0 with `Connection: keep-alive`, the next request sent once the
    // answer is in; then a request without it, after which the connection closes.
    let replies = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut replies = Vec::new();
        for path in ["/one", "/two"] {
            s.write_all(
                format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
            )
            .expect("write");
            replies.push(read_until(&mut s, "stable"));
        }
        s.write_all(b"GET /three HTTP/1.0\r\n\r\n").expect("write");
        let mut last = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.read_to_string(&mut last).expect("read to the close");
        replies.push(last);
        replies
    })
    .await
    .expect("client");
    for reply in &replies[..2] {
        assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\r\nconnection: keep-alive\r\n"), "{reply}");
    }
    assert!(
        replies[2].starts_with("HTTP/1.0 200 OK\r\n"),
        "{}",
        replies[2]
    );
    assert!(!replies[2].contains("onnection"), "{}", replies[2]);
    assert!(replies[2].ends_with("stable"), "closed after the answer");
    let uris: Vec<String> = b.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_answer_of_unknown_length_ends_with_the_connection_even_when_kept_alive() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let reply = raw_reply(addr, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply:?}");
    assert!(!reply.contains("keep-alive"), "{reply:?}");
    assert!(
        reply.ends_with("\r\n\r\nabc"),
        "the body, then the close: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_early_upstream_is_read_to_its_end_so_the_client_gets_the_answer() {
    // The upstream refuses the upload from its head and closes, as one with a body limit does.
    let up = RawUpstream::start(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        true,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    // A client that sends its whole body before it reads (far more than the socket buffers
    // hold). Closed at once, ramp's side would reset the connection under it: the send fails
    // with a broken pipe, and the answer can be lost.
    let (sent, reply) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let size = 32 << 20;
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
        s.write_all(head.as_bytes()).expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        (sent, read_until(&mut s, "\r\n\r\n"))
    })
    .await
    .expect("client");
    assert_eq!(sent, 32 << 20, "the whole body went out without a reset");
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply:?}");
    assert!(reply.contains("connection: close"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_length_field_is_named_in_connection_still_says_its_length() {
    // Content-Length named as hop-by-hop: the field is dropped, but the answer must still be
    // framed, or the next answer on the connection would read as part of its body.
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let reply = raw_reply(addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let answers: Vec<&str> = reply.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 2, "{reply:?}");
    for a in answers {
        let (head, body) = a.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("content-length: 2"), "{reply:?}");
        assert_eq!(body, "ok", "{reply:?}");
    }
}
