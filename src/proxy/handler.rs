//! One request: check it, decide the pool, forward (retrying where that is safe), answer.
//! Loads the snapshot exactly once.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HOST, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::analysis;
use crate::config::CanaryUnavailable;
use crate::logs::EverySecond;
use crate::routing::{self, Decision, PoolName};
use crate::snapshot::Snapshot;
use crate::upstream::{
    BodyTimes, ClientBody, Failure, Outbound, Outcome, ReqBody, Retry, SendError, Upstream,
};

use super::body::{Busy, Moved, ProxyBody, error_response};
use super::context::{Conn, ConnInfo, Proxy};
use super::error::ProxyError;
use super::follow::{self, Follow};
use super::share::Share;
use super::unanswered::Unanswered;
use super::{check, forward, tunnel};

const CLOSE: HeaderValue = HeaderValue::from_static("close");
const PRIVATE: HeaderValue = HeaderValue::from_static("private");
const CDN_CACHE_CONTROL: http::HeaderName = http::HeaderName::from_static("cdn-cache-control");

fn finish(
    mut resp: Response<ProxyBody>,
    mut busy: Busy,
    head: bool,
) -> Result<Response<ProxyBody>, Infallible> {
    if head && let Some(length) = resp.body().own_length() {
        // One of ramp's own answers to HEAD: no body (over HTTP/2 one would be a protocol
        // error), but the length a GET's would have (RFC 9110 §9.3.2).
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
        *resp.body_mut() = ProxyBody::empty();
    }
    busy.conn.activity.sending();
    busy.sending = true;
    resp.body_mut().busy = Some(busy);
    Ok(resp)
}

/// Serves one request. Kept to one future around the upstream's send so the request's future
/// stays small (every nested future level is copied on creation), and written as an `async`
/// block rather than an `async fn`: an `async fn` keeps its arguments twice in its future (once
/// as they came, once bound to the body's names), and the request is ~270 bytes.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
pub fn handle(
    conn: Arc<Conn>,
    req: Request<ClientBody>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        let mut start = Instant::now();
        let version = req.version();
        let mut busy = Busy::begin(conn, version == Version::HTTP_2);
        let (proxy, info) = (&*busy.conn.proxy, &busy.conn.info);
        let snap = proxy.current.load();
        let h1 = version <= Version::HTTP_11;
        let head = req.method() == Method::HEAD;
        let scan = forward::scan(req.headers(), &[]);
        if let Err(status) = check::request(&req, &scan, &snap.config.limits) {
            proxy.metrics.rejected.increment(1);
            tracing::debug!(peer = %info.peer, status = status.as_u16(), "request refused");
            let mut resp = error_response(status);
            if h1 {
                // The framing cannot be trusted: do not read another request from this connection.
                resp.headers_mut().insert(CONNECTION, CLOSE);
            }
            return finish(resp, busy, head);
        }
        let rollout = &snap.routing.rollout;
        let mut domain_fits = true;
        let (pool, user, minted) = match routing::decide(&snap.routing, req.headers()) {
            Decision::User { pool, user } => (pool, Some(user), None),
            Decision::Anonymous(pool) => (pool, None, None),
            // A browser's request that lacks a cookie it has, or cannot keep one.
            Decision::Mint if !routing::sticky::newcomer(req.method(), req.headers()) => {
                (routing::anonymous(rollout), None, None)
            }
            Decision::Mint => {
                proxy.metrics.ids_minted.increment(1);
                let host = req.uri().authority().map(|a| a.as_str().as_bytes());
                let host = host.or_else(|| req.headers().get(HOST).map(HeaderValue::as_bytes));
                domain_fits = routing::sticky::domain_fits(&snap.routing.sticky, host);
                let id = routing::mint(rollout);
                let (pool, user) = routing::assign_hashed(rollout, id.as_bytes());
                (pool, Some(user), Some(id))
            }
        };
        let settings = &snap.config.analysis;
        let goals = analysis::candidate_goals(settings, req.method(), req.uri().path());
        // A WebSocket handshake is a GET without a body (RFC 6455 §4.1): one with a body goes on
        // as a plain request, body and all, without the upgrade.
        let websocket = tunnel::wanted(&req, &scan).filter(|&kind| {
            kind == tunnel::Kind::Connect || matches!(req.body(), ClientBody::None)
        });
        // Past half of `upstream.max_connections`, an HTTP/2 connection's requests hold a few
        // upstream connections at most (`share`).
        if version == Version::HTTP_2 {
            let max = snap.config.upstream.max_connections;
            busy.share = match Share::try_take(&busy.conn, max) {
                Some(share) => Some(share),
                None => {
                    // Boxed: rare; inline it would enlarge every request's future.
                    let Some(share) = Box::pin(Share::wait(&busy.conn, max)).await else {
                        // Ramp's own answer, charged to no pool.
                        static WAITED: EverySecond = EverySecond::new();
                        if let Some(unlogged) = WAITED.admit_now() {
                            tracing::warn!(peer = %info.peer, unlogged, "an HTTP/2 connection's request waited 10 s for one of the 8 upstream connections its streams may hold past half of upstream.max_connections: 503");
                        }
                        let resp = error_response(StatusCode::SERVICE_UNAVAILABLE);
                        return finish(resp, busy, head);
                    };
                    // The wait is not the upstream's time.
                    start = Instant::now();
                    Some(share)
                }
            };
        }
        // A streamed body's progress (the latency runs from its last move at the latest).
        let mut body_times = None;
        let (result, served_by) = match choose(proxy, &snap, pool) {
            Err(e) => (Err(e), pool),
            Ok((first, served_by)) if let Some(kind) = websocket => {
                // Boxed: rare, and large; inline it would enlarge every request's future.
                let to = tunnel::Target {
                    up: first,
                    pool: served_by,
                    wanted: pool,
                    user,
                    minted: minted.as_deref(),
                };
                Box::pin(tunnel::open(
                    &busy.conn,
                    &mut busy.share,
                    &snap,
                    req,
                    kind,
                    &scan,
                    to,
                ))
                .await
            }
            Ok((first, served_by)) => {
                let (mut parts, xff, mut body) =
                    upstream_request(req, &scan, info, &snap, &proxy.host);
                if let Some(id) = &minted {
                    forward::add_minted(&mut parts.headers, &snap.routing.sticky.cookie, id);
                }
                let mut unanswered = Unanswered {
                    conn: &busy.conn,
                    pool: served_by,
                    start,
                    body: body.times(),
                    user,
                    armed: true,
                };
                let added = [
                    ("x-forwarded-for", &xff),
                    ("x-forwarded-proto", &info.proto),
                ];
                let out = Outbound {
                    parts: &parts,
                    added: &added,
                    hide: &snap.hide,
                };
                let passive = &snap.config.passive_health;
                let sent = first.send(out, &mut body, &snap.connector).await;
                snap.pools[served_by].record(first, Outcome::of(&sent), passive, served_by);
                let (sent, to) = match sent {
                    Ok(resp) => (Ok(resp), served_by),
                    Err(mut failure) => {
                        let repeatable = body.is_empty() && idempotent(&parts.method);
                        // The upstreams tried so far, the last one with its pool, and whether
                        // the one retry for a failure other than a refused connection is spent.
                        let mut tried = [first; TRIES];
                        let (mut n, mut last) = (1, (first, served_by));
                        let mut spent = failure.retry(repeatable) != Retry::Elsewhere;
                        loop {
                            let charged = super::error::charged(&failure);
                            let (upstream, to) = match retry(
                                proxy,
                                &snap,
                                failure,
                                repeatable,
                                (pool, last),
                                &tried[..n],
                            ) {
                                Ok(next) => next,
                                Err(error) => break (Err(ProxyError::from(error)), last.1),
                            };
                            proxy.metrics.retries.increment(1);
                            if let Some(kind) = charged {
                                // The user may not see it, but the pool failed a request.
                                proxy.metrics.upstream_error(last.1, kind);
                                proxy.analysis.recorder.failed_attempt(last.1, user);
                            }
                            tracing::debug!(pool = to.as_str(), first = %first.addr, retry = %upstream.addr, "retrying");
                            unanswered.pool = to;
                            // The time the failed attempt took is not the retry's: else a canary
                            // that hangs, then closes, would slow stable's figures.
                            start = Instant::now();
                            unanswered.start = start;
                            let again = upstream.send(out, &mut body, &snap.connector).await;
                            snap.pools[to].record(upstream, Outcome::of(&again), passive, to);
                            // Tries are left for another refused connection, and for one
                            // other failure a retry may follow if none has been retried yet.
                            let next = match again.as_ref().map_err(|f| f.retry(repeatable)) {
                                Err(Retry::Elsewhere) => n + 1 < TRIES,
                                Err(Retry::Anywhere | Retry::IfRepeatable) => {
                                    n + 1 < TRIES && !std::mem::replace(&mut spent, true)
                                }
                                Ok(_) | Err(Retry::Never) => false,
                            };
                            match again {
                                Err(f) if next => {
                                    (failure, tried[n], last) = (f, upstream, (upstream, to));
                                    n += 1;
                                }
                                again => break (again.map_err(|f| ProxyError::from(f.error)), to),
                            }
                        }
                    }
                };
                let answered = sent.and_then(|resp| {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // Nobody asked it to switch (a WebSocket takes the tunnel's path).
                        return Err(ProxyError::UnaskedUpgrade);
                    }
                    Ok(resp.map(ProxyBody::upstream))
                });
                unanswered.armed = false;
                body_times = unanswered.body.take();
                (answered, to)
            }
        };
        // What the comparison judges is the upstream's answer: a WebSocket the upstream declined
        // with a 2xx is no upstream failure, though an HTTP/2 client gets a 502 for it.
        let judged = match &result {
            Err(ProxyError::UpgradeNotTaken(status)) => Some(*status),
            _ => None,
        };
        let unjudged = matches!(&result, Err(e) if e.unjudged());
        let mut resp = match result {
            Ok(mut resp) => {
                // The client's own version, whatever the upstream spoke (an HTTP/1.0 upstream must
                // not make ramp close the client's keep-alive connection).
                *resp.version_mut() = version;
                resp.body_mut().judged = Some((served_by, user, false));
                if served_by == PoolName::Canary
                    && resp
                        .body()
                        .upstream_fields()
                        .is_some_and(|f| follow::is_event_stream(f.iter()))
                {
                    // Boxed: rare; an event stream from the canary follows its user.
                    let follow = Follow {
                        rollout: Arc::clone(&snap.routing.rollout.id),
                        user,
                        pool: served_by,
                    };
                    let moved = follow.moved(Arc::clone(&proxy.current));
                    resp.body_mut().follow = Some(Moved(Box::pin(moved)));
                }
                resp
            }
            Err(e @ ProxyError::Send(SendError::ClientBody(_))) => {
                tracing::debug!(peer = %info.peer, reason = %e, "client request body failed");
                error_response(StatusCode::from(&e))
            }
            Err(e @ ProxyError::UpgradeNotTaken(_)) => {
                tracing::debug!(peer = %info.peer, reason = %e, "websocket declined");
                error_response(StatusCode::from(&e))
            }
            // ramp's own limit, logged where it refuses: no upstream's failure.
            Err(e @ ProxyError::TooManyTunnels(_)) => error_response(StatusCode::from(&e)),
            Err(e) => {
                // During an outage every request fails: one line a second says so.
                static FAILED: EverySecond = EverySecond::new();
                if let Some(unlogged) = FAILED.admit_now() {
                    tracing::warn!(peer = %info.peer, pool = served_by.as_str(), reason = %e, unlogged, "upstream request failed");
                }
                if let Some(kind) = e.upstream_kind() {
                    proxy.metrics.upstream_error(served_by, kind);
                }
                error_response(StatusCode::from(&e))
            }
        };
        let status = resp.status();
        // A request whose own body failed (cut off, stalled, malformed) is the client's doing,
        // judged like one refused before routing: no pool's; so is one ramp could not send for
        // want of an upstream connection (`upstream.max_connections`) or a file descriptor.
        if unjudged {
            proxy.metrics.rejected.increment(1);
        } else {
            proxy.metrics.response(served_by, status);
            let judged = judged.unwrap_or(status).as_u16();
            let counted = proxy.analysis.recorder.record(
                served_by,
                settings.error_statuses.contains(judged),
                latency(start, body_times.as_deref()),
                user,
                analysis::converted(settings, goals, judged),
            );
            if let Some(j) = &mut resp.body_mut().judged {
                j.2 = counted;
            }
        }
        if let Some(id) = minted
            && let Some(cookie) = routing::set_cookie(&snap.routing.sticky, &id, domain_fits)
        {
            resp.headers_mut().append(SET_COOKIE, cookie);
            // A shared cache must not keep this answer: it would hand the id to everyone. A CDN
            // reads its own field first (RFC 9213), which the app may have given a max-age.
            resp.headers_mut().append(CACHE_CONTROL, PRIVATE);
            resp.headers_mut().append(CDN_CACHE_CONTROL, PRIVATE);
        }
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if h1 && !switching && proxy.draining.load(Ordering::Relaxed) {
            resp.headers_mut().insert(CONNECTION, CLOSE);
        }
        finish(resp, busy, head)
    }
}

/// The latency the comparison judges: from when ramp had the whole request to the answer's head
/// — from the request's head, or from the last move of its body (a data frame, its end) if that
/// came later. A client's slow upload is its own, not the upstream's.
pub(super) fn latency(start: Instant, body: Option<&BodyTimes>) -> u64 {
    let since_head = start.elapsed().as_micros() as u64;
    match body.map(|t| t.moved.load(Ordering::Relaxed)) {
        Some(at) if at != 0 => since_head.min(crate::clock::now_us().saturating_sub(at)),
        _ => since_head,
    }
}

/// The upstream (and the pool it is in) that serves `pool`'s users now: canary users go to
/// stable when no canary upstream is healthy, unless configured to get 503; a stable pool with
/// none healthy still tries one (there is nowhere else to go).
fn choose<'s>(
    proxy: &Proxy,
    snap: &'s Snapshot,
    pool: PoolName,
) -> Result<(&'s Arc<Upstream>, PoolName), ProxyError> {
    let panic = snap.config.passive_health.panic_threshold;
    let stable = || {
        let p = &snap.pools.stable;
        p.pick(panic)
            .or_else(|| p.any())
            .map(|u| (u, PoolName::Stable))
            .ok_or_else(|| {
                proxy.metrics.no_upstream[PoolName::Stable].increment(1);
                ProxyError::NoUpstream(PoolName::Stable)
            })
    };
    match pool {
        PoolName::Stable => stable(),
        PoolName::Canary => match snap.pools.canary.pick(panic) {
            Some(u) => {
                proxy.canary_available(true);
                Ok((u, PoolName::Canary))
            }
            None => {
                proxy.canary_available(false);
                match snap.config.canary_unavailable {
                    CanaryUnavailable::Error => {
                        proxy.metrics.no_upstream[PoolName::Canary].increment(1);
                        Err(ProxyError::NoUpstream(PoolName::Canary))
                    }
                    CanaryUnavailable::Fallback => proxy
                        .fallback(snap, pool)
                        .ok_or(ProxyError::NoUpstream(PoolName::Stable)),
                }
            }
        },
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The request as the upstream gets it: its head, its X-Forwarded-For, and its body.
fn upstream_request(
    req: Request<ClientBody>,
    scan: &forward::Scan,
    info: &ConnInfo,
    snap: &Snapshot,
    fallback_host: &HeaderValue,
) -> (http::request::Parts, HeaderValue, ReqBody) {
    let (mut parts, body) = req.into_parts();
    let id_header = snap.routing.sticky.header.as_ref();
    forward::request_head(&mut parts, scan, fallback_host, id_header);
    let xff = forward::forwarded_for(&mut parts.headers, scan, &info.peer_ip);
    let body = ReqBody::new(body, snap.config.limits.body_idle_timeout);
    (parts, xff, body)
}

/// Upstreams a request may be sent to: one, and two more when no connection could be made to the
/// ones before (nothing reached them).
pub(super) const TRIES: usize = 3;

/// Where a failed request may go next without ever reaching an upstream twice, as
/// [`Failure::retry`] classifies it: the upstream and the pool it is in. `pools` are the user's
/// pool, and the upstream that failed last with its pool; `tried` are all those it went to.
fn retry<'s>(
    proxy: &Proxy,
    snap: &'s Snapshot,
    failure: Failure,
    repeatable: bool,
    (wanted, last): (PoolName, (&'s Arc<Upstream>, PoolName)),
    tried: &[&'s Arc<Upstream>],
) -> Result<(&'s Arc<Upstream>, PoolName), SendError> {
    match failure.retry(repeatable) {
        Retry::Elsewhere => proxy.unreached(snap, wanted, tried).ok_or(failure.error),
        // A canary request that may go again, with no other canary upstream to take it: with
        // fallback on, stable serves it (the canary failed it once already). Else the same
        // upstream again.
        Retry::Anywhere | Retry::IfRepeatable => Ok(snap.pools[last.1]
            .pick_other(tried)
            .map(|u| (u, last.1))
            .or_else(|| proxy.fallback(snap, last.1))
            .unwrap_or(last)),
        Retry::Never => Err(failure.error),
    }
}
