//! WebSocket through ramp with a real client and server (tungstenite): the handshake is routed by
//! the user's sticky id, messages of 70 KB cross both ways, over HTTP/1.1 and over HTTP/2
//! (extended CONNECT), and a tunnel whose idle limit passes, or whose either side goes away,
//! leaves nothing open behind; a side that ends cleanly still gets the other's last bytes.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ramp::routing::{self, PoolName, Rollout, State};
use support::{Proxy, eventually};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A WebSocket server on 127.0.0.1:0: greets each connection with its name, then answers every
/// message with a message of the same length (binary, its bytes reversed); a plain request gets
/// a page with the name.
struct WsBackend {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl WsBackend {
    async fn start(name: &'static str) -> WsBackend {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// On `addr` (one that comes back where an earlier one was).
    async fn start_at(name: &'static str, addr: SocketAddr) -> WsBackend {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, c) = (Arc::clone(&open), Arc::clone(&conns));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let open = Arc::clone(&o);
                let conn = tokio::spawn(async move {
                    // A plain request (no upgrade) gets a plain page with the name.
                    let mut head = [0u8; 2048];
                    let n = stream.peek(&mut head).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                    if n > 0 && !head.contains("upgrade: websocket") {
                        let page = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                            name.len()
                        );
                        let mut stream = stream;
                        let _ =
                            tokio::io::AsyncWriteExt::write_all(&mut stream, page.as_bytes()).await;
                        return;
                    }
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    let _ = ws.send(Message::text(name)).await;
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() {
                            break;
                        }
                        let mut data = m.into_data().to_vec();
                        data.reverse();
                        if ws.send(Message::binary(data)).await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
                c.lock().expect("conns").push(conn.abort_handle());
            }
        });
        WsBackend {
            addr,
            open,
            task,
            conns,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Stops like a killed process: every connection drops at once.
    fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }
}

fn yaml(stable: &WsBackend, canary: &WsBackend, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: [{}], canary: [{}]}}\nrollout: {{id: ws, percent: 50}}\nmetrics: {{listen: 127.0.0.1:0}}\n{extra}",
        stable.addr, canary.addr
    )
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(proxy: &Proxy, user: &str) -> Ws {
    let mut req = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-user-id", user.parse().expect("header"));
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake through ramp");
    assert_eq!(resp.status(), 101);
    ws
}

/// The greeting, then a 70 KB message and its answer.
async fn exchange<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let greeting = ws.next().await.expect("greeting").expect("frame");
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(payload.clone()))
        .await
        .expect("send 70 KB");
    let answer = ws.next().await.expect("answer").expect("frame").into_data();
    let mut expected = payload;
    expected.reverse();
    assert_eq!(answer.len(), 70_000, "70 KB came back");
    assert!(answer[..] == expected[..], "the bytes crossed intact");
    greeting.into_text().expect("text").to_string()
}

fn pool_of(user: &str) -> &'static str {
    let r = Rollout::new("ws", 500_000, State::Running);
    match routing::assign(&r, user.as_bytes()) {
        PoolName::Stable => "stable",
        PoolName::Canary => "canary",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_s_socket_lands_on_the_user_s_version_and_70kb_cross_both_ways() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, ""));
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let user = format!("ws-user-{i}");
        for _ in 0..2 {
            let mut ws = connect(&proxy, &user).await;
            let version = exchange(&mut ws).await;
            assert_eq!(version, pool_of(&user), "{user} on the wrong version");
            seen.insert(version);
            ws.close(None).await.expect("close");
        }
    }
    assert_eq!(seen.len(), 2, "both versions served sockets");
    eventually("every tunnel closed", || s.open() + c.open() == 0).await;
    let bytes = proxy
        .metric("ramp_tunnel_bytes_total{pool=\"stable\",direction=\"to_client\"}")
        .await;
    assert!(bytes > 70_000.0, "tunnel bytes counted: {bytes}");
}

/// An HTTP/2 connection to ramp (prior knowledge).
async fn http2_client(
    proxy: &Proxy,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A WebSocket handshake over HTTP/2 (extended CONNECT, RFC 8441) of `user`.
fn extended_connect(
    proxy: &Proxy,
    user: &str,
) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat", proxy.addr))
        .header("sec-websocket-version", "13")
        .header("x-user-id", user)
        .body(http_body_util::Empty::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_reaches_an_http1_upstream() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, ""));
    let mut sender = http2_client(&proxy).await;
    for user in ["h2-alice", "h2-bob", "h2-carol"] {
        let resp = sender
            .send_request(extended_connect(&proxy, user))
            .await
            .expect("extended CONNECT");
        assert_eq!(resp.status(), 200, "{resp:?}");
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        let io = hyper::upgrade::on(resp).await.expect("upgraded stream");
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(io),
            Role::Client,
            None,
        )
        .await;
        assert_eq!(exchange(&mut ws).await, pool_of(user), "{user}");
        ws.close(None).await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_the_upstream_answers_200_without_switching_gets_502() {
    use http_body_util::{BodyExt, Empty};
    // Upstreams that are no WebSocket servers: a handshake gets their plain 200.
    let (s, c) = (
        support::Backend::start("stable").await,
        support::Backend::start("canary").await,
    );
    let proxy = Proxy::start(&support::config(
        &[&s],
        &[&c],
        "id: ws\npercent: 50",
        support::CONTROL,
    ));
    let mut sender = http2_client(&proxy).await;
    let resp = sender
        .send_request(extended_connect(&proxy, "h2-dave"))
        .await
        .expect("an answer, not a reset");
    assert_eq!(resp.status(), 502, "{resp:?}");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"Bad Gateway\n");
    // The connection still serves.
    let req = http::Request::builder()
        .uri(format!("http://{}/", proxy.addr))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    assert_eq!(sender.send_request(req).await.expect("GET").status(), 200);
    // The upstream did nothing wrong: neither pool is charged an error (else any client could
    // push the guard to roll back a healthy canary, one such request at a time).
    let count = |v: &serde_json::Value, what: &str| {
        ["stable", "canary"]
            .iter()
            .map(|p| v["analysis"]["pools"][p][what].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let st = proxy.wait_status("both requests counted", |v| count(v, "requests") == 2);
    assert_eq!(count(&st, "errors"), 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_whose_upstream_accepts_another_key_gets_502() {
    // ramp makes the key an HTTP/2 client never sends, so ramp checks the answer to it: an
    // upstream that switches with a wrong accept, or none, is not a WebSocket server.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for accept in ["Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", ""] {
        let upstream = support::raw_upstream(move |mut conn| async move {
            let mut buf = Vec::new();
            if support::next_head(&mut conn, &mut buf).await.is_some() {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n"
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.read(&mut [0u8; 64]).await;
            }
        })
        .await;
        let proxy = Proxy::start(&support::single(upstream, support::CONTROL));
        let mut sender = http2_client(&proxy).await;
        let resp = sender
            .send_request(extended_connect(&proxy, "h2-erin"))
            .await
            .expect("an answer, not a reset");
        assert_eq!(resp.status(), 502, "{accept:?}: {resp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_websocket_whose_upstream_accepts_another_key_gets_502_and_no_tunnel() {
    // An upstream that answers 101 without answering the client's key (it took the handshake
    // for something else) would get a raw tunnel: the client's next bytes would reach it as a
    // request ramp never saw (its own X-Forwarded-For, another user's id).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let got = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let seen = Arc::clone(&got);
    let upstream = support::raw_upstream(move |mut conn| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buf = Vec::new();
            if support::next_head(&mut conn, &mut buf).await.is_some() {
                let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let mut more = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut more).await {
                    seen.lock().expect("lock").extend_from_slice(&more[..n]);
                }
            }
        }
    })
    .await;
    let proxy = Proxy::start(&support::single(upstream, ""));
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("handshake");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let _ = client
        .write_all(b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.read(&mut [0u8; 4096])).await;
    let smuggled = String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
    assert!(!smuggled.contains("6.6.6.6"), "{smuggled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_its_limit() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "limits: {tunnel_idle_timeout: 700ms}\n"));
    let mut ws = connect(&proxy, "idle-user").await;
    exchange(&mut ws).await;
    assert_eq!(
        proxy
            .metric(&format!(
                "ramp_tunnels_open{{pool=\"{}\"}}",
                pool_of("idle-user")
            ))
            .await,
        1.0
    );
    // Nothing moves: the tunnel ends, and the client learns it.
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("the tunnel was not closed");
    assert!(
        !matches!(end, Some(Ok(Message::Binary(_) | Message::Text(_)))),
        "{end:?}"
    );
    eventually("the upstream side closed", || s.open() + c.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_either_side_goes_away_nothing_is_left_open() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, ""));
    // The client vanishes mid-tunnel (no close frame): the upstream connection ends too.
    let mut ws = connect(&proxy, "leaver").await;
    exchange(&mut ws).await;
    drop(ws);
    eventually("the upstream connection ended", || s.open() + c.open() == 0).await;
    // The upstream dies mid-tunnel: the client connection ends.
    let user = "stayer";
    let mut ws = connect(&proxy, user).await;
    exchange(&mut ws).await;
    match pool_of(user) {
        "stable" => s.kill(),
        _ => c.kill(),
    }
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("the client was not told");
    assert!(
        !matches!(end, Some(Ok(Message::Binary(_) | Message::Text(_)))),
        "{end:?}"
    );
    for pool in ["stable", "canary"] {
        let series = format!("ramp_tunnels_open{{pool=\"{pool}\"}}");
        for _ in 0..200 {
            if proxy.metric(&series).await == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(proxy.metric(&series).await, 0.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_tunnels_after_the_grace() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let mut proxy = Proxy::start(&yaml(&s, &c, "shutdown_grace: 2s\n"));
    let mut ws = connect(&proxy, "late").await;
    exchange(&mut ws).await;
    proxy.signal(15);
    // Within the grace the tunnel still carries messages.
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send during the grace");
    let m = ws.next().await.expect("answer").expect("frame");
    assert_eq!(m.into_data().to_vec(), vec![3u8, 2, 1]);
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the client was not told");
    assert!(
        !matches!(end, Some(Ok(Message::Binary(_) | Message::Text(_)))),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_user_s_socket_falls_back_to_stable_when_the_canary_is_down() {
    let s = WsBackend::start("stable").await;
    let dead = support::dead_port().forever();
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: [{}], canary: ['{dead}']}}\nrollout: {{id: ws, percent: 100}}\nmetrics: {{listen: 127.0.0.1:0}}\n",
        s.addr
    ));
    for i in 0..3 {
        let mut ws = connect(&proxy, &format!("everyone-on-canary-{i}")).await;
        assert_eq!(exchange(&mut ws).await, "stable");
        ws.close(None).await.expect("close");
    }
    assert!(proxy.metric("ramp_canary_fallback_total").await >= 3.0);
    // The first handshake found the canary down: an attempt the canary failed, counted as a
    // request's is, though the retry saved it.
    let failed = proxy
        .metric("ramp_upstream_errors_total{pool=\"canary\",kind=\"connect\"}")
        .await;
    assert!(failed >= 1.0, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_reaches_an_upstream_back_while_its_whole_pool_is_ejected() {
    let c = WsBackend::start("canary").await;
    let (a, b) = (support::dead_port(), support::dead_port());
    let (a, b, b_port) = (a.addr, b.addr, b);
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{a}', '{b}'], canary: ['{}']}}\nrollout: {{id: ws, percent: 0}}\npassive_health: {{eject_after: 1, backoff: 1m, max_backoff: 1m}}\n",
        c.addr
    ));
    // Both stable upstreams down: both ejected for a minute.
    let client = support::Client::http1();
    for i in 0..4 {
        let r = client
            .get(&proxy.url("/"), &[("x-user-id", &format!("down-{i}"))])
            .await;
        assert_eq!(r.status, 502);
    }
    // One comes back while its ejection runs: every handshake reaches it.
    drop(b_port);
    let _back = WsBackend::start_at("stable", b).await;
    for i in 0..6 {
        let mut ws = connect(&proxy, &format!("back-{i}")).await;
        assert_eq!(exchange(&mut ws).await, "stable");
        ws.close(None).await.expect("close");
    }
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("upstream reinstated: it answered a request")),
        "{:?}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_handshakes_is_ejected_like_any_other() {
    let good = WsBackend::start("stable").await;
    let c = WsBackend::start("canary").await;
    // Accepts, reads the handshake, answers garbage and closes.
    let broken = support::RawUpstream::start(b"garbage\r\n\r\n", true).await;
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{}', '{}'], canary: ['{}']}}\nrollout: {{id: ws, percent: 0}}\npassive_health: {{eject_after: 2, backoff: 1m}}\n",
        good.addr, broken.addr, c.addr
    ));
    let mut refused = 0;
    for i in 0..12 {
        let mut req = format!("ws://{}/chat", proxy.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-user-id", format!("u{i}").parse().expect("header"));
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((mut ws, _)) => {
                assert_eq!(exchange(&mut ws).await, "stable");
                ws.close(None).await.expect("close");
            }
            Err(_) => refused += 1,
        }
    }
    // Two broken handshakes eject it; every later one reaches the good upstream.
    assert!(refused <= 2, "{refused} of 12 handshakes failed");
    assert!(
        proxy.logs().iter().any(|l| l.contains("upstream ejected")),
        "{:?}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_that_ends_cleanly_still_gets_the_other_s_last_bytes_then_the_tunnel_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A WebSocket server that answers the handshake, sends its last bytes once the client has
    // ended its side, and then never closes its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = listener.local_addr().expect("addr");
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.expect("head"), 1);
            head.push(byte[0]);
        }
        // (With a length, which a 1xx must not have: not passed on.)
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await
            .expect("101");
        // The client's end arrives as the end of what ramp sends.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("client side");
        let _ = ended_tx.send(rest);
        s.write_all(b"last bytes").await.expect("last bytes");
        // Held open: ramp must not wait on it forever.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let proxy = Proxy::start(&support::single(up, "metrics: {listen: 127.0.0.1:0}"));
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nfirst bytes")
        .await
        .expect("handshake");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await.expect("101");
        assert!(n > 0, "closed before the 101: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101 ")
            && !String::from_utf8_lossy(&got)
                .to_ascii_lowercase()
                .contains("content-length"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let tail = got.split_off(got.windows(4).position(|w| w == b"\r\n\r\n").expect("end") + 4);
    // The client ends its side: the server sees everything it sent, then the end.
    c.shutdown().await.expect("shutdown");
    let rest = tokio::time::timeout(Duration::from_secs(10), ended_rx)
        .await
        .expect("the server never saw the client's end")
        .expect("server");
    assert_eq!(rest, b"first bytes");
    // The server's last bytes still reach the client, and then the tunnel closes although the
    // server never does.
    let mut down = tail;
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut down))
        .await
        .expect("the tunnel was left open")
        .expect("read");
    assert_eq!(down, b"last bytes");
    let series = "ramp_tunnels_open{pool=\"stable\"}";
    for _ in 0..200 {
        if proxy.metric(series).await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.metric(series).await, 0.0, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_s_websockets_over_http2_cannot_take_every_upstream_connection() {
    // Tunnels live for an hour: three connections of thirty took all forty places, and every
    // other user got 503. Past half, a connection holds eight at most.
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "upstream: {max_connections: 40}\nlimits: {max_tunnels: 40}\n",
    ));
    let mut held = Vec::new();
    for n in 0..3 {
        let sender = http2_client(&proxy).await;
        for i in 0..30 {
            let (mut sender, req) = (
                sender.clone(),
                extended_connect(&proxy, &format!("h2-{n}-{i}")),
            );
            held.push(tokio::spawn(async move {
                let Ok(resp) = sender.send_request(req).await else {
                    return;
                };
                if let Ok(io) = hyper::upgrade::on(resp).await {
                    // Held open, quiet, until the test ends.
                    std::future::pending::<()>().await;
                    drop(io);
                }
            }));
        }
    }
    support::settled(|| s.open() + c.open()).await;
    // Half the places freely, then eight at most per connection: 20 + 8 + 8.
    assert!(s.open() + c.open() <= 36, "{} tunnels", s.open() + c.open());
    // Everyone else still gets a socket.
    let mut ws = connect(&proxy, "bystander").await;
    assert_eq!(exchange(&mut ws).await, pool_of("bystander"));
    for h in held {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tunnels_cannot_take_the_places_requests_need() {
    // Tunnels last an hour: ten quiet ones took every upstream connection of ten, and every
    // other user got 503. By default they may hold half.
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "upstream: {max_connections: 10}\n"));
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(connect(&proxy, &format!("quiet-{i}")).await);
    }
    // The sixth handshake is refused, and says nothing of the pools.
    let mut req = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-user-id", "sixth".parse().expect("header"));
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
        }
        other => panic!("the sixth tunnel: {:?}", other.map(|(_, r)| r.status())),
    }
    // The refusal is logged (by ramp's log thread: waited for).
    proxy.wait_log("limits.max_tunnels tunnels are open");
    let logs = proxy.logs();
    assert!(
        !logs.iter().any(|l| l.contains("upstream request failed")),
        "ramp's own limit is no upstream's failure: {logs:?}"
    );
    // Requests still get through, several at once.
    let client = support::Client::http1();
    let gets = (0..4).map(|i| {
        let (client, url) = (client.clone(), format!("http://{}/page", proxy.addr));
        tokio::spawn(async move {
            let id = format!("reader-{i}");
            client.get(&url, &[("x-user-id", id.as_str())]).await.status
        })
    });
    for g in gets {
        assert_eq!(g.await.expect("task"), 200);
    }
    // A tunnel that ends gives its place back.
    drop(held.pop());
    let mut ws = None;
    for _ in 0..100 {
        let mut req = format!("ws://{}/chat", proxy.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-user-id", "seventh".parse().expect("header"));
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        if let Ok((w, _)) = tokio_tungstenite::client_async(req, tcp).await {
            ws = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = ws.expect("a place came free");
    assert_eq!(exchange(&mut ws).await, pool_of("seventh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_websocket_s_answer_keeps_its_place_under_the_cap() {
    // The upstream refuses the upgrade with a long answer that stalls: its connection is open
    // while the answer is read, and was not counted under `upstream.max_connections` — twenty
    // handshakes opened twenty connections past a cap of five.
    let up = support::RawUpstream::start(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 1000000\r\n\r\nnot a socket",
        false,
    )
    .await;
    let proxy = Proxy::start(&support::single(
        up.addr,
        "upstream: {max_connections: 5}\nlimits: {body_idle_timeout: 30s, max_tunnels: 20}\n",
    ));
    let sender = http2_client(&proxy).await;
    let mut answers = Vec::new();
    for i in 0..20 {
        let (mut sender, req) = (sender.clone(), extended_connect(&proxy, &format!("r-{i}")));
        answers.push(tokio::spawn(async move {
            // The head, and the body left unread.
            let resp = sender.send_request(req).await.expect("an answer");
            let status = resp.status().as_u16();
            (status, resp)
        }));
    }
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for a in answers {
        let (status, resp) = a.await.expect("task");
        statuses.push(status);
        bodies.push(resp);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 404).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        15,
        "{statuses:?}"
    );
    assert!(
        up.connections() <= 5,
        "{} upstream connections",
        up.connections()
    );
    drop(bodies);
}

/// The first id `user-{prefix}-N` whose bucket, under rollout `ws`, lies in `from..to` (ppm).
fn user_in(prefix: &str, from: u32, to: u32) -> String {
    let salt = routing::bucket::salt("ws");
    (0..)
        .map(|i| format!("user-{prefix}-{i}"))
        .find(|u| (from..to).contains(&routing::bucket(&salt, u.as_bytes())))
        .expect("some id")
}

/// Completes once the peer has closed the socket (its next read ends or fails).
async fn closed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => panic!("the tunnel is still open 10 s later"),
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(m))) if m.is_close() => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_the_canary_closes_once_the_rollout_sends_its_user_to_stable() {
    let (s, c) = (
        WsBackend::start("stable").await,
        WsBackend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, support::CONTROL));
    // At 50%: one user stays on the canary at 10%, one leaves it there; one is on stable.
    let (stays, leaves, stable) = (
        user_in("stays", 0, 100_000),
        user_in("leaves", 100_000, 500_000),
        user_in("stable", 500_000, 1_000_000),
    );
    let mut ws_stays = connect(&proxy, &stays).await;
    let mut ws_leaves = connect(&proxy, &leaves).await;
    let mut ws_stable = connect(&proxy, &stable).await;
    assert_eq!(exchange(&mut ws_stays).await, "canary");
    assert_eq!(exchange(&mut ws_leaves).await, "canary");
    assert_eq!(exchange(&mut ws_stable).await, "stable");
    // The same over HTTP/2: a user who leaves the canary at 10%.
    let mut sender = http2_client(&proxy).await;
    let h2_user = user_in("h2-leaves", 100_000, 500_000);
    let resp = sender
        .send_request(extended_connect(&proxy, &h2_user))
        .await
        .expect("extended CONNECT");
    assert_eq!(resp.status(), 200, "{resp:?}");
    let io = hyper::upgrade::on(resp).await.expect("upgraded stream");
    let mut ws_h2 = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(io),
        Role::Client,
        None,
    )
    .await;
    assert_eq!(exchange(&mut ws_h2).await, "canary");

    // A halt moves nobody: every tunnel stays open.
    assert_eq!(proxy.admin("halt")["ok"], true);
    assert_eq!(proxy.admin("resume")["ok"], true);
    // Lowering the percent sends two of them to stable: their tunnels close at once, and their
    // reconnect lands on stable.
    assert_eq!(proxy.admin("set 10")["ok"], true);
    closed(&mut ws_leaves).await;
    closed(&mut ws_h2).await;
    let mut again = connect(&proxy, &leaves).await;
    assert_eq!(exchange(&mut again).await, "stable");
    // The others still carry messages both ways.
    assert_eq!(c.open(), 1, "only the user who stays is on the canary");
    for ws in [&mut ws_stays, &mut ws_stable] {
        ws.send(Message::text("still there?")).await.expect("send");
        let answer = ws.next().await.expect("answer").expect("frame");
        assert_eq!(answer.into_data().len(), "still there?".len());
    }
    // A rollback sends everyone to stable: the last canary tunnel closes, stable's stay.
    assert_eq!(proxy.admin("rollback")["ok"], true);
    closed(&mut ws_stays).await;
    eventually("the canary's tunnels closed", || c.open() == 0).await;
    ws_stable
        .send(Message::text("and now?"))
        .await
        .expect("send");
    assert!(ws_stable.next().await.expect("answer").is_ok());
    assert_eq!(s.open(), 2, "stable's tunnels stay open");
    let logs = proxy.logs().join("\n");
    assert!(
        logs.contains(
            "a WebSocket tunnel to the canary closed: the rollout now sends its user to stable"
        ),
        "{logs}"
    );
}

/// An upstream that answers every request with an endless stream, an event every 50 ms (its
/// name in each): `Content-Type: text/event-stream`, or `text/plain` for `/plain`.
async fn streaming(name: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    support::raw_upstream(move |mut conn| async move {
        let mut buf = Vec::new();
        let Some(head) = support::next_head(&mut conn, &mut buf).await else {
            return;
        };
        let kind = if head.starts_with("GET /plain ") {
            "text/plain"
        } else {
            "text/event-stream; charset=utf-8"
        };
        let start = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        if conn.write_all(start.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let event = format!("data: {name}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// An HTTP/1.1 request for `path` as `user`, its answer's head read: the stream, and the head.
async fn open_stream(proxy: &Proxy, path: &str, user: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: shop\r\nx-user-id: {user}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.expect("read"), 1, "an answer head");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// What arrives on `s` within half a second (empty: it ended).
async fn next_bytes(s: &mut TcpStream) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
        Err(_) => Err("nothing within 0.5 s".into()),
        Ok(Err(e)) => Ok(format!("ended: {e}")),
        Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// Reads until the stream ends (within 10 s): whether it ended without the chunked body's last
/// chunk (cut, as opposed to finished).
async fn cut(s: &mut TcpStream) -> bool {
    let mut all = String::new();
    let since = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(10) {
        match next_bytes(s).await {
            Ok(b) if b.is_empty() || b.starts_with("ended") => return !all.ends_with("0\r\n\r\n"),
            Ok(b) => all.push_str(&b),
            Err(_) => {}
        }
    }
    panic!("the stream is still open 10 s later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_event_stream_ends_once_the_rollout_sends_its_user_to_stable() {
    let (s, c) = (streaming("stable").await, streaming("canary").await);
    let proxy = Proxy::start(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{s}'], canary: ['{c}']}}\nrollout: {{id: ws, percent: 50}}\n{}",
        support::CONTROL
    ));
    let (stays, leaves, stable) = (
        user_in("sse-stays", 0, 100_000),
        user_in("sse-leaves", 100_000, 500_000),
        user_in("sse-stable", 500_000, 1_000_000),
    );
    let (mut sse_stays, head) = open_stream(&proxy, "/events", &stays).await;
    assert!(head.contains("text/event-stream"), "{head}");
    let (mut sse_leaves, _) = open_stream(&proxy, "/events", &leaves).await;
    let (mut sse_stable, _) = open_stream(&proxy, "/events", &stable).await;
    // A download that is no event stream finishes where it began, whatever happens meanwhile.
    let (mut plain, _) = open_stream(&proxy, "/plain", &leaves).await;
    for (s, pool) in [
        (&mut sse_stays, "canary"),
        (&mut sse_leaves, "canary"),
        (&mut sse_stable, "stable"),
        (&mut plain, "canary"),
    ] {
        let b = next_bytes(s).await.expect("events");
        assert!(b.contains(&format!("data: {pool}")), "{b}");
    }
    let since = proxy.wait_status("the streams' answers are counted", |v| {
        v["analysis"]["pools"]["canary"]["requests"] == 3
    })["analysis"]["since"]
        .clone();
    // Lowering the percent sends one of them to stable: that stream is cut at once.
    assert_eq!(proxy.admin("set 10")["ok"], true);
    assert!(cut(&mut sse_leaves).await, "cut, not finished");
    for s in [&mut sse_stays, &mut sse_stable, &mut plain] {
        let b = next_bytes(s).await.expect("still flowing");
        assert!(b.contains("data: "), "{b}");
    }
    // A rollback sends everyone to stable: the canary's last event stream is cut too.
    assert_eq!(proxy.admin("rollback")["ok"], true);
    assert!(cut(&mut sse_stays).await, "cut, not finished");
    for s in [&mut sse_stable, &mut plain] {
        let b = next_bytes(s).await.expect("still flowing");
        assert!(b.contains("data: "), "{b}");
    }
    // Ramp's doing, not the canary's: no error is charged to it. (The new percent began a new
    // comparison; the rollback's cut comes within it.)
    std::thread::sleep(Duration::from_millis(1_500));
    let st = proxy.wait_status("the comparison since the new percent", |v| {
        v["analysis"]["since"] != since && v["analysis"]["pools"]["canary"].is_object()
    });
    assert_eq!(st["analysis"]["pools"]["canary"]["errors"], 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_answered_with_a_status_of_600_or_more_is_a_502() {
    let odd =
        support::RawUpstream::start(b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", true).await;
    let proxy = Proxy::start(&support::single(odd.addr, ""));
    let mut req = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-user-id", "odd".parse().expect("header"));
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("{other:?}"),
    }
}
