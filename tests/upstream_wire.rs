//! ramp's own HTTP/1.1 client side, as users see it: every way an upstream may frame an answer,
//! interim answers, an answer that arrives before an upload is done, uploads of unknown length,
//! and pooled connections the upstream closed while they were idle.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{Backend, Client, Proxy, RawUpstream, on_one_connection, single, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw_exchange(addr: std::net::SocketAddr, requests: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || on_one_connection(addr, requests, Duration::from_secs(2)))
        .await
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_arrive_whole_and_their_connection_is_used_again() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n7\r\n world\n\r\n0\r\nX-Trailer: dropped\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let client = Client::http1();
    for _ in 0..3 {
        let r = client.get(&proxy.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello world\n"));
        assert!(r.headers.get("x-trailer").is_none());
    }
    assert_eq!(up.heads().len(), 3);
    assert_eq!(up.connections(), 1, "the upstream connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ended_by_closing_arrives_whole_and_the_client_keeps_its_connection() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes",
        true,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let out = raw_exchange(
        proxy.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert_eq!(out.matches("until the upstream closes").count(), 2, "{out}");
    assert_eq!(up.connections(), 2, "such a connection is never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_not_passed_on() {
    let up = RawUpstream::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.ends_with("final"), "{out}");
    assert!(!out.contains("103") && !out.contains("style.css"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_answer_is_cut_off_not_ended_and_its_connection_dropped() {
    let broken = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(broken.addr, ""));
    for _ in 0..2 {
        let out = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            !out.contains("abc") && !out.ends_with("0\r\n\r\n"),
            "a broken body must not look complete: {out:?}"
        );
    }
    assert_eq!(broken.heads().len(), 2);
    assert_eq!(
        broken.connections(),
        2,
        "the broken connection was not reused"
    );
}

/// An upstream that answers one request per connection, keep-alive in appearance, and closes the
/// connection `after` its answer — as servers do with idle keep-alive connections.
async fn closing_upstream(
    answer_after: Duration,
    after: Duration,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(answer_after).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(after).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_used() {
    let (addr, _task) = closing_upstream(Duration::ZERO, Duration::from_millis(20)).await;
    let proxy = Proxy::start(&single(addr, "metrics: {listen: 127.0.0.1:0}\n"));
    let client = Client::http1();
    for _ in 0..4 {
        let r = client.get(&proxy.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
        // Long enough for the upstream's close to arrive before the next request.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        proxy.metric("ramp_retries_total").await,
        0.0,
        "a closed pooled connection was written to"
    );
}

/// ramp's connections to `port` as `ss` lists them, by TCP state (hex, as the kernel writes it:
/// "01" established, "08" CLOSE-WAIT...), TIME-WAIT left out: it holds no descriptor.
fn connections_to(port: u16) -> Vec<String> {
    let mut states = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && cols.get(3) != Some(&"06") {
                states.push(cols.get(3).copied().unwrap_or_default().to_owned());
            }
        }
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_are_let_go_without_waiting_for_a_request() {
    // It answers a connection's one request after 300 ms, so that the four requests below are
    // all in flight at once, each on a connection of its own (one of them reusing another's,
    // which the upstream never answers twice, would fail it), however slow the machine.
    let (addr, _task) =
        closing_upstream(Duration::from_millis(300), Duration::from_millis(20)).await;
    let proxy = Proxy::start(&single(addr, ""));
    // Four requests at once: four connections to the upstream, pooled after their answers.
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move { Client::http1().get(&url, &[]).await })
        })
        .collect();
    for r in requests {
        let r = r.await.expect("request");
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    }
    // The upstream closes each after 20 ms; nothing more is asked of ramp.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = connections_to(addr.port());
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ramp still holds connections the upstream closed (TCP states {left:?}; 08 is CLOSE-WAIT)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_before_it_ends_gets_that_answer() {
    // Refuses every upload at once, reading none of it, then closes.
    let up = RawUpstream::start(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
        true,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = s.try_clone().expect("clone");
        let body_len = 16 * 1024 * 1024;
        let upload = std::thread::spawn(move || {
            let head =
                format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n");
            let _ = writer.write_all(head.as_bytes());
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..body_len / block.len() {
                if writer.write_all(&block).is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let _ = upload.join();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("client");
    assert_eq!(status_of(&out), 413, "{out:?}");
    assert!(out.ends_with("too large"), "{out:?}");
}

/// The length an HTTP/2 upload declares, and the block it is sent in.
const UPLOAD: usize = 4 * 1024 * 1024;
const BLOCK: usize = 16 * 1024;

/// An HTTP/2 upload of [`UPLOAD`] bytes to an upstream that gives `answer` on the head and
/// closes: its first block is sent, then its answer read whole. Gives the stream to go on
/// uploading on, the answer's status and body (and what must outlive the stream).
async fn http2_upload_answered_early(
    answer: &'static [u8],
) -> (
    (RawUpstream, Proxy),
    h2::SendStream<bytes::Bytes>,
    u16,
    String,
) {
    let up = RawUpstream::start(answer, true).await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = http::Request::post(proxy.url("/up"))
        .header("content-length", UPLOAD)
        .body(())
        .expect("req");
    let (resp, mut upload) = h2.send_request(req, false).expect("send");
    upload
        .send_data(bytes::Bytes::from(vec![b'x'; BLOCK]), false)
        .expect("first data");
    // The answer arrives while the upload is under way, and whole.
    let resp = resp.await.expect("response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk.expect("answer body"));
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    ((up, proxy), upload, status, text)
}

/// Sends the rest of the upload after its first block, as curl does, until it is all sent or the
/// stream is stopped: how many bytes went, and whether it was stopped (`None`: all sent) with the
/// reset's reason where the client saw it (a stream already closed when the client looks may not
/// say).
async fn upload_the_rest(
    upload: &mut h2::SendStream<bytes::Bytes>,
) -> (usize, Option<Option<h2::Reason>>) {
    let mut sent = BLOCK;
    while sent < UPLOAD {
        upload.reserve_capacity(BLOCK);
        let granted = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::poll_fn(|cx| upload.poll_capacity(cx)),
        )
        .await
        .expect("the upload was neither read nor stopped");
        match granted {
            Some(Ok(n)) => {
                let n = n.min(UPLOAD - sent);
                sent += n;
                if let Err(e) = upload.send_data(bytes::Bytes::from(vec![b'x'; n]), sent == UPLOAD)
                {
                    return (sent, Some(e.reason()));
                }
            }
            Some(Err(e)) => return (sent, Some(e.reason())),
            // The stream is closed: by a reset, or because the upload ended.
            None => {
                let reset = futures_util::future::poll_fn(|cx| upload.poll_reset(cx));
                let reset = tokio::time::timeout(Duration::from_secs(5), reset).await;
                return (sent, Some(reset.ok().and_then(Result::ok)));
            }
        }
    }
    (sent, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_answered_before_it_ends_gets_that_answer_and_may_finish() {
    let (_running, mut upload, status, text) = http2_upload_answered_early(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
    )
    .await;
    assert_eq!((status, text.as_str()), (413, "too large"));

    // Like curl, the client sends the rest: the stream is not reset under it.
    let (sent, stopped) = upload_the_rest(&mut upload).await;
    assert_eq!(stopped, None, "reset after {sent} of {UPLOAD} bytes");
    assert_eq!(sent, UPLOAD);
    // Nothing cut the stream short once it ended either.
    let reset = tokio::time::timeout(
        Duration::from_millis(500),
        futures_util::future::poll_fn(|cx| upload.poll_reset(cx)),
    )
    .await;
    assert!(reset.is_err(), "stream reset: {reset:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_that_succeeded_before_it_ends_is_told_to_stop_sending() {
    // A success leaves the client no reason to stop: it is told to (curl, which never reads once
    // its send window is used up, would otherwise wait for ever).
    let (_running, mut upload, status, text) = http2_upload_answered_early(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    // The client goes on uploading, as curl does, until it is stopped.
    let (sent, stopped) = upload_the_rest(&mut upload).await;
    assert!(
        stopped.is_some_and(|reason| reason.is_none_or(|r| r == h2::Reason::NO_ERROR)),
        "{sent} of {UPLOAD} bytes sent, stopped: {stopped:?}"
    );
    assert!(sent < UPLOAD, "{sent} of {UPLOAD} bytes sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_of_unknown_length_reaches_the_upstream_whole_and_chunked() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&support::config(&[&b], &[&b], "id: w\npercent: 0", ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let req = http::Request::post(proxy.url("/upload"))
        .body(())
        .expect("req");
    let (resp, mut stream) = h2.send_request(req, false).expect("send");
    for i in 0..3u8 {
        stream.reserve_capacity(100_000);
        stream
            .send_data(bytes::Bytes::from(vec![b'a' + i; 100_000]), i == 2)
            .expect("data");
    }
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&text), "300000");
    let seen = b.last();
    assert_eq!(seen.body_bytes, 300_000);
    assert_eq!(
        seen.headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );

    // A POST with no body and no length: the upstream is told its length is 0.
    let req = http::Request::post(proxy.url("/upload"))
        .body(())
        .expect("req");
    let (resp, _) = h2.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
    assert_eq!(
        b.last().headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
}

/// An upstream that answers as soon as it has a request's head, then echoes the body back as a
/// chunked answer while it reads it (as echo and transcoding servers do), up to its length.
async fn echoing_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let end = loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let Some(mut left) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                else {
                    return;
                };
                let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                let mut pending = got.split_off(end);
                while left > 0 {
                    if pending.is_empty() {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    let take = pending.len().min(left);
                    let chunk: Vec<u8> = pending.drain(..take).collect();
                    left -= take;
                    let mut out = format!("{take:x}\r\n").into_bytes();
                    out.extend_from_slice(&chunk);
                    out.extend_from_slice(b"\r\n");
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_while_it_reads_the_upload_gets_all_of_it() {
    let up = echoing_upstream().await;
    let proxy = Proxy::start(&single(up, ""));
    let addr = proxy.addr;
    // Larger than every socket buffer on the way: the upstream must have answered before ramp
    // could have sent it all.
    let size = 4 * 1024 * 1024;
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut writer = s.try_clone().expect("clone");
        let upload = std::thread::spawn(move || {
            let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
            writer.write_all(head.as_bytes()).expect("head");
            for i in 0..size / 1024 {
                writer
                    .write_all(&[b'a' + (i % 26) as u8; 1024])
                    .expect("body");
            }
        });
        // Reads the chunked answer to its last chunk and counts the body.
        let mut out = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while !out.ends_with(b"\r\n0\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        upload.join().expect("upload");
        out
    })
    .await
    .expect("client");
    let text = String::from_utf8_lossy(&echoed);
    assert_eq!(status_of(&text), 200);
    // The body, as the client sees it after dechunking: every byte of the upload, in order.
    let end = echoed
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    let mut rest = &echoed[end..];
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("size line");
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..line]).expect("hex"), 16)
            .expect("size");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&rest[line + 2..line + 2 + n]);
        rest = &rest[line + 2 + n + 2..];
    }
    assert_eq!(body.len(), size, "the upload came back cut short");
    assert!(
        body.chunks(1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == b'a' + (i % 26) as u8)),
        "the upload came back out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_takes_none_of_an_upload_gets_a_504_not_a_hang() {
    // Accepts, reads nothing, answers nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = listener.local_addr().expect("addr");
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    let proxy = Proxy::start(&single(
        up,
        "limits: {body_idle_timeout: 1s}\nupstream: {response_timeout: 1h}\n",
    ));
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut writer = s.try_clone().expect("clone");
        let size = 64 * 1024 * 1024;
        std::thread::spawn(move || {
            let head = format!("PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
            let _ = writer.write_all(head.as_bytes());
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..size / block.len() {
                if writer.write_all(&block).is_err() {
                    break;
                }
            }
        });
        let mut out = vec![0u8; 4096];
        let n = s.read(&mut out).unwrap_or(0);
        String::from_utf8_lossy(&out[..n]).into_owned()
    })
    .await
    .expect("client");
    assert_eq!(status_of(&out), 504, "{out:?}");
    drop(proxy);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_pooled_connections_closed_by_a_restarted_upstream_are_never_used() {
    // Answers after a pause (so that many connections are open at once), then closes each
    // connection a little later, as an upstream does when it restarts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            });
        }
    });
    let proxy = Proxy::start(&single(up, "metrics: {listen: 127.0.0.1:0}\n"));
    let addr = proxy.addr;
    // 300 requests at once leave 300 idle connections in the pool.
    let fill: Vec<_> = (0..300)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                on_one_connection(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(10),
                )
            })
        })
        .collect();
    for f in fill {
        assert_eq!(status_of(&f.await.expect("client")), 200);
    }
    // Every one of them is closed by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A POST is never retried once written: a dead connection taken for a live one shows as 502.
    let out = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out:?}");
    assert_eq!(proxy.metric("ramp_retries_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_lengths_reach_an_http2_client_as_one_and_a_204_with_none() {
    let twice = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(twice.addr, ""));
    let client = Client::http2();
    let r = client.get(&proxy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["2"]);

    let empty = RawUpstream::start(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(empty.addr, ""));
    let r = client.get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status.as_u16(), 204);
    assert!(r.headers.get("content-length").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_a_coding_ramp_does_not_undo_is_a_502_not_a_garbled_body() {
    // gzip under chunked: passed on with only the chunks undone, the body would reach the client
    // still compressed with nothing saying so.
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&out), 502, "{out:?}");
    let http2 = Client::http2().try_get(&proxy.url("/"), &[]).await;
    assert_eq!(http2.map(|r| r.status.as_u16()), Ok(502));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fields_padded_with_whitespace_are_400_and_cookies_count_as_one_field() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&support::config(&[&b], &[&b], "id: pad\npercent: 0", ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let mut status = async |req: http::Request<()>| {
        let (resp, _) = h2.send_request(req, true).expect("send");
        resp.await.expect("response").status().as_u16()
    };
    // An HTTP/1.1 upstream would read " ww" as "ww": another user, another pool.
    for value in [" ww", "ww\t", "ww "] {
        let req = http::Request::get(proxy.url("/pad"))
            .header("x-user-id", value)
            .body(())
            .expect("req");
        assert_eq!(status(req).await, 400, "{value:?}");
    }
    // 150 cookies, one field each as HTTP/2 clients send them, against the default 100 fields.
    let mut req = http::Request::get(proxy.url("/cookies"));
    for i in 0..150 {
        req = req.header("cookie", format!("c{i}=v"));
    }
    assert_eq!(status(req.body(()).expect("req")).await, 200);
    let seen = b.last();
    assert_eq!(seen.uri, "/cookies");
    let cookie = seen.headers["cookie"].to_str().expect("ascii");
    // Theirs, after the id ramp minted for this newcomer.
    assert!(cookie.starts_with("uid="), "{cookie}");
    assert_eq!(cookie.split("; ").count(), 151, "{cookie}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_sees_an_answer_cut_short_as_a_reset_not_an_end() {
    // The upstream dies mid-body. The HTTP/1.0 client's answer is framed by its close, so a plain
    // close would look like the whole answer.
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        true,
    )
    .await;
    let proxy = Proxy::start(&single(up.addr, ""));
    let addr = proxy.addr;
    let read = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
        let mut out = Vec::new();
        let ended = s.read_to_end(&mut out);
        (
            ended.map_err(|e| e.kind()),
            String::from_utf8_lossy(&out).into_owned(),
        )
    })
    .await
    .expect("client");
    assert_eq!(
        read.0.err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the cut answer ended like a whole one: {:?}",
        read.1
    );
}
