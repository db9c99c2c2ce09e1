//! WebSocket through ramp: an HTTP/1.1 `Upgrade: websocket` handshake, or a WebSocket over
//! HTTP/2 (extended CONNECT, RFC 8441), routed by the user's sticky id like any request, becomes
//! an HTTP/1.1 upgrade to the upstream and then a tunnel of bytes both ways. A tunnel holds its
//! client connection's place under `max_connections`, closes after `tunnel_idle_timeout` without
//! a byte either way, ends with the process's drain, and follows its user ([`super::follow`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock::now_ms;
use crate::logs::EverySecond;
use crate::routing::PoolName;
use crate::snapshot::Snapshot;
use crate::upstream::{
    ClientBody, Exchange, Outcome, ReqBody, SendError, Sender, Slot, Upstream, UpstreamBody,
};

use super::body::ProxyBody;
use super::context::{Conn, Proxy};
use super::error::ProxyError;
use super::follow::Follow;
use super::forward::{self, Scan};
use super::http1;
use super::share::Share;

/// After one side of a tunnel has closed, how long the other may take to finish.
const HALF_CLOSED: Duration = Duration::from_secs(10);

const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`; answered 101.
    Upgrade,
    /// HTTP/2 extended CONNECT with `:protocol websocket`; answered 200.
    Connect,
}

/// Whether `req` asks for a WebSocket (`scan` says whether it has an Upgrade field at all).
#[inline]
pub fn wanted<B>(req: &Request<B>, scan: &Scan) -> Option<Kind> {
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        return protocol
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
            .then_some(Kind::Connect);
    }
    if !scan.upgrade || req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let h = req.headers();
    let upgrade = h.get_all(UPGRADE).iter().any(|v| has_token(v, "websocket"));
    let connection = h
        .get_all(CONNECTION)
        .iter()
        .any(|v| has_token(v, "upgrade"));
    (upgrade && connection).then_some(Kind::Upgrade)
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str().is_ok_and(|t| {
        t.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// A fresh connection for the handshake: to `to.up`, else (nothing reached it) where a request
/// would go next ([`Proxy::unreached`]), as many tries as a request gets. An attempt tried again
/// elsewhere counts against its pool as a request's does. Gives the pool it is in.
async fn connect<'s>(
    proxy: &Proxy,
    snap: &'s Snapshot,
    to: &Target<'s>,
) -> Result<(Sender, Slot, &'s Arc<Upstream>, PoolName), (ProxyError, PoolName)> {
    let passive = &snap.config.passive_health;
    let (mut up, mut last) = (to.up, to.pool);
    // The upstreams tried so far.
    let mut tried = [up; super::handler::TRIES];
    let mut n = 0;
    loop {
        let error = match up.connect_upgradable(&snap.connector).await {
            Ok((s, slot)) => return Ok((s, slot, up, last)),
            // ramp's own shortage: nothing to try elsewhere, nothing to charge the upstream.
            Err(e @ SendError::Local(_)) => return Err((e.into(), last)),
            Err(e) => e,
        };
        snap.pools[last].record(up, Outcome::Unreachable, passive, last);
        tried[n] = up;
        n += 1;
        let next = (n < tried.len())
            .then(|| proxy.unreached(snap, to.wanted, &tried[..n]))
            .flatten();
        let Some((next, pool)) = next else {
            return Err((error.into(), last));
        };
        proxy.metrics.retries.increment(1);
        if let Some(kind) = super::error::send_kind(&error) {
            // The client may not see it, but the pool failed a handshake.
            proxy.metrics.upstream_error(last, kind);
            proxy.analysis.recorder.failed_attempt(last, to.user);
        }
        (up, last) = (next, pool);
    }
}

/// The upstream to try first and its pool, the user's pool, and the user's hash (none: a request
/// without an id, minting off).
pub struct Target<'s> {
    pub up: &'s Arc<Upstream>,
    pub pool: PoolName,
    /// The user's pool (`pool` is stable's for a canary user under fallback).
    pub wanted: PoolName,
    pub user: Option<u64>,
    /// The id, if ramp minted it for this request.
    pub minted: Option<&'s str>,
}

/// Opens the tunnel for a user of `to.pool` (first try `to.up`): the upstream handshake on a
/// fresh connection, then the answer to the client; the bytes flow in a task of their own once
/// both sides have switched, which takes the HTTP/2 request's `share` of the upstream
/// connections along. An upstream that refuses the upgrade answers the client as it would any
/// request, but a success without a switch is a 502 to an HTTP/2 client (to which a 2xx means
/// the tunnel is open). Gives the pool that served.
pub async fn open(
    conn: &Arc<Conn>,
    share: &mut Option<Share>,
    snap: &Snapshot,
    mut req: Request<ClientBody>,
    kind: Kind,
    scan: &Scan,
    to: Target<'_>,
) -> (Result<Response<ProxyBody>, ProxyError>, PoolName) {
    // Tunnels last: past their share, they would take the places requests need.
    let most = snap
        .config
        .limits
        .most_tunnels(snap.config.upstream.max_connections);
    let Some(place) = conn.proxy.tunnel_place(most) else {
        static SAID: EverySecond = EverySecond::new();
        if let Some(unlogged) = SAID.admit_now() {
            tracing::warn!(
                most,
                unlogged,
                "a WebSocket handshake refused with 503: limits.max_tunnels tunnels are open"
            );
        }
        return (Err(ProxyError::TooManyTunnels(most)), to.pool);
    };
    let (mut sender, slot, up, pool) = match connect(&conn.proxy, snap, &to).await {
        Ok(connected) => connected,
        Err((e, pool)) => return (Err(e), pool),
    };
    let client = match req.extensions_mut().remove::<http1::OnUpgrade>() {
        Some(on) => match on.take() {
            Some(from) => Client::H1(from),
            None => return (Err(ProxyError::UnaskedUpgrade), pool),
        },
        None => Client::H2(hyper::upgrade::on(&mut req)),
    };
    let (mut parts, _) = req.into_parts();
    let id_header = snap.routing.sticky.header.as_ref();
    forward::request_head(&mut parts, scan, &conn.proxy.host, id_header);
    if let Some(id) = to.minted {
        forward::add_minted(&mut parts.headers, &snap.routing.sticky.cookie, id);
    }
    forward::add_forwarded(
        &mut parts.headers,
        scan,
        &conn.info.peer_ip,
        &conn.info.proto,
    );
    parts.method = Method::GET;
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, WEBSOCKET);
    // A WebSocket over HTTP/2 carries no key; the HTTP/1.1 handshake needs one, which ramp makes.
    // Either way ramp checks the upstream's accept itself (RFC 6455 §4.1): the HTTP/2 client never
    // sees it, and a 101 an upstream gives without answering the client's key (one that took the
    // handshake for something else) would open a raw tunnel to it, past ramp's handling of the
    // requests that follow (smuggled through the tunnel).
    let key = match parts.headers.get(SEC_WEBSOCKET_KEY) {
        Some(key) => key.as_bytes().to_vec(),
        None => {
            let key = STANDARD.encode(rand::random::<[u8; 16]>());
            if let Ok(value) = HeaderValue::from_str(&key) {
                parts.headers.insert(SEC_WEBSOCKET_KEY, value);
            }
            key.into_bytes()
        }
    };
    let req = Request::from_parts(parts, ReqBody::Empty);
    let limit = snap.connector.settings.response_timeout;
    let passive = &snap.config.passive_health;
    // Connected, then no usable answer: a failure of the upstream, as for any request.
    let failed = || snap.pools[pool].record(up, Outcome::Failed, passive, pool);
    let mut resp = match tokio::time::timeout(limit, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            failed();
            return (Err(SendError::Exchange(Exchange::Hyper(e)).into()), pool);
        }
        Err(_) => {
            failed();
            return (Err(SendError::Timeout(limit).into()), pool);
        }
    };
    if resp.status().as_u16() >= 600 {
        // Three digits, 100 to 599, as for every answer: no success the comparison cannot judge.
        failed();
        let invalid = Exchange::Invalid(crate::upstream::InvalidAnswer("bad status code"));
        return (Err(SendError::Exchange(invalid).into()), pool);
    }
    // An answer, as for any request: it may bring an ejected upstream back, or count against it.
    let answered = Outcome::Answered(resp.status().as_u16());
    snap.pools[pool].record(up, answered, passive, pool);
    let hide = &snap.hide;
    if kind == Kind::Connect && resp.status().is_success() {
        // To an HTTP/2 client a 2xx would mean the tunnel is open; the upstream took the
        // handshake as a plain request.
        return (Err(ProxyError::UpgradeNotTaken(resp.status())), pool);
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let limit = snap.config.limits.body_idle_timeout;
        forward::response_head(resp.headers_mut(), hide);
        let answer = resp.map(|b| ProxyBody::upstream(UpstreamBody::unpooled(b, slot, limit)));
        return (Ok(answer), pool);
    }
    if resp
        .headers()
        .get(SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes)
        != Some(accept(&key).as_bytes())
    {
        failed();
        let invalid = Exchange::Invalid(crate::upstream::InvalidAnswer(
            "a WebSocket accept that does not match the key",
        ));
        return (Err(SendError::Exchange(invalid).into()), pool);
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let mut headers = std::mem::take(resp.headers_mut());
    forward::response_head(&mut headers, hide);
    let mut answer = Response::new(ProxyBody::empty());
    match kind {
        Kind::Upgrade => {
            *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            // A 1xx has no length (RFC 9110 §8.6): what follows is the tunnel's.
            headers.remove(http::header::CONTENT_LENGTH);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, WEBSOCKET);
        }
        Kind::Connect => {
            // HTTP/2 has no 101 and no key to accept.
            headers.remove(SEC_WEBSOCKET_ACCEPT);
        }
    }
    *answer.headers_mut() = headers;
    // An HTTP/1.1 tunnel outlives the connection it came from and takes over its place under
    // `max_connections`; an HTTP/2 one lives inside its connection, which keeps its place (given
    // to the first tunnel, it was given back when that tunnel ended, with the connection open).
    let permit = match client {
        Client::H1(_) => conn.take_permit(),
        Client::H2(_) => None,
    };
    let proxy = Arc::clone(&conn.proxy);
    let idle = snap.config.limits.tunnel_idle_timeout;
    let share = share.take();
    let user = Follow {
        rollout: Arc::clone(&snap.routing.rollout.id),
        user: to.user,
        pool,
    };
    tokio::spawn(async move {
        let (_permit, _slot, _share, _place) = (permit, slot, share, place);
        let Ok(upstream) = upstream.await else {
            return;
        };
        let upstream = TokioIo::new(upstream);
        match client {
            Client::H1(from) => {
                if let Ok(client) = from.await {
                    carry(client, upstream, &proxy, user, idle).await;
                }
            }
            Client::H2(on) => {
                if let Ok(client) = on.await {
                    carry(TokioIo::new(client), upstream, &proxy, user, idle).await;
                }
            }
        }
    });
    (Ok(answer), pool)
}

/// Where the client's side of a tunnel comes from once the handshake's answer has gone out.
enum Client {
    H1(tokio::sync::oneshot::Receiver<http1::Handed>),
    H2(hyper::upgrade::OnUpgrade),
}

/// Runs a tunnel, counted in the pool's metrics.
async fn carry<C, U>(client: C, upstream: U, proxy: &Proxy, user: Follow, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (metrics, pool) = (&proxy.metrics, user.pool);
    metrics.tunnels[pool].increment(1.0);
    let [to_upstream, to_client] = &metrics.tunnel_bytes[pool];
    let moved = user.moved(Arc::clone(&proxy.current));
    if run(client, upstream, [to_upstream, to_client], idle, moved).await {
        static MOVED: EverySecond = EverySecond::new();
        if let Some(unlogged) = MOVED.admit_now() {
            tracing::info!(
                unlogged,
                "a WebSocket tunnel to the canary closed: the rollout now sends its user to stable"
            );
        }
    }
    metrics.tunnels[pool].decrement(1.0);
}

/// Carries bytes both ways until both sides are done, one side is done and the other has not
/// finished within [`HALF_CLOSED`], nothing has moved for `idle`, or `moved` completes (then
/// both sides are closed at once, and it gives true).
async fn run<C, U>(
    client: C,
    upstream: U,
    bytes: [&Counter; 2],
    idle: Duration,
    moved: impl Future<Output = ()>,
) -> bool
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(now_ms());
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let up = pump(client_read, upstream_write, bytes[0], &last);
    let down = pump(upstream_read, client_write, bytes[1], &last);
    let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
    let quiet = idle_for(&last, idle);
    let mut moved = std::pin::pin!(moved);
    // A clean end of one side leaves the other a moment to finish; a reset ends both at once.
    tokio::select! {
        ended = up.as_mut() => if ended.is_ok() {
            tokio::select! {
                _ = tokio::time::timeout(HALF_CLOSED, down) => {}
                () = moved => return true,
            }
        },
        ended = down.as_mut() => if ended.is_ok() {
            tokio::select! {
                _ = tokio::time::timeout(HALF_CLOSED, up) => {}
                () = moved => return true,
            }
        },
        () = quiet => tracing::debug!(idle_secs = idle.as_secs(), "tunnel idle: closed"),
        () = moved.as_mut() => return true,
    }
    false
}

/// Copies `from` to `to` until `from` ends (then shuts `to`'s write side) or either fails.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    bytes: &Counter,
    last: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        last.store(now_ms(), Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
        bytes.increment(n as u64);
    }
}

/// Completes once nothing has moved for `idle`.
async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let quiet = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2).
fn accept(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_is_rfc_6455_s() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            super::accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
