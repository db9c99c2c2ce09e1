//! One request: check it, decide the pool, forward (retrying where that is safe), answer.
//! Loads the snapshot exactly once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::CanaryUnavailable;
use crate::metrics::Metrics;
use crate::routing::{self, Decision, PoolName};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::{Failure, Pool, ReqBody, Upstream, UpstreamBody, probe};

use super::error::{ProxyError, body_for};
use super::{check, forward};

/// What ramp answers with: an upstream's streamed body, or a short error of its own.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// State shared by every connection of the data plane.
#[derive(Debug)]
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    draining: AtomicBool,
    canary_down: AtomicBool,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, metrics: Metrics) -> Self {
        Proxy {
            shared,
            metrics,
            draining: AtomicBool::new(false),
            canary_down: AtomicBool::new(false),
        }
    }

    /// From now on HTTP/1 answers carry `Connection: close`, so clients move to a new process.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Logs once per change whether the canary pool has a healthy upstream.
    fn canary_available(&self, available: bool) {
        if available {
            if self.canary_down.load(Ordering::Relaxed)
                && self.canary_down.swap(false, Ordering::Relaxed)
            {
                tracing::info!(pool = "canary", "canary pool has a healthy upstream again");
            }
        } else if !self.canary_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(pool = "canary", "canary pool has no healthy upstream");
        }
    }
}

/// What ramp knows about one client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP, ready for X-Forwarded-For.
    peer_ip: HeaderValue,
    /// `http` or `https`, for X-Forwarded-Proto.
    proto: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

const CLOSE: HeaderValue = HeaderValue::from_static("close");

pub async fn handle(proxy: &Proxy, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let snap = proxy.shared.load();
    let h1 = req.version() <= Version::HTTP_11;
    if let Err(status) = check::request(&req, &snap.config.limits) {
        proxy.metrics.rejected.increment(1);
        tracing::debug!(peer = %conn.peer, status = status.as_u16(), "request refused");
        let mut resp = error_response(status);
        if h1 {
            // The framing cannot be trusted: do not read another request from this connection.
            resp.headers_mut().insert(CONNECTION, CLOSE);
        }
        return resp;
    }
    let (pool, minted) = match routing::decide(&snap, req.headers()) {
        Decision::Pool(pool) => (pool, None),
        Decision::Mint => {
            let id = routing::mint(&snap.rollout);
            (routing::assign(&snap.rollout, id.as_bytes()), Some(id))
        }
    };
    let (result, served_by) = forward(proxy, &snap, pool, conn, req).await;
    let mut resp = match result {
        Ok(resp) => resp.map(Either::Left),
        Err(e) => {
            tracing::warn!(peer = %conn.peer, pool = served_by.as_str(), reason = %e, "upstream request failed");
            error_response(StatusCode::from(&e))
        }
    };
    proxy.metrics.response(served_by, resp.status());
    if let Some(id) = minted
        && let Some(cookie) = routing::set_cookie(&snap.sticky, &id)
    {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    if h1 && proxy.draining.load(Ordering::Relaxed) {
        resp.headers_mut().insert(CONNECTION, CLOSE);
    }
    resp
}

/// The pool that serves `pool`'s users now: canary users go to stable when no canary upstream
/// is healthy, unless configured to get 503.
fn choose<'s>(
    proxy: &Proxy,
    snap: &'s Snapshot,
    pool: PoolName,
) -> Result<(&'s Pool, &'s Arc<Upstream>, PoolName), ProxyError> {
    let stable = || {
        snap.stable
            .pick()
            .map(|u| (&snap.stable, u, PoolName::Stable))
            .ok_or_else(|| {
                proxy.metrics.no_upstream[0].increment(1);
                ProxyError::NoUpstream("stable")
            })
    };
    match pool {
        PoolName::Stable => stable(),
        PoolName::Canary => match snap.canary.pick() {
            Some(u) => {
                proxy.canary_available(true);
                Ok((&snap.canary, u, PoolName::Canary))
            }
            None => {
                proxy.canary_available(false);
                match snap.config.canary_unavailable {
                    CanaryUnavailable::Error => {
                        proxy.metrics.no_upstream[1].increment(1);
                        Err(ProxyError::NoUpstream("canary"))
                    }
                    CanaryUnavailable::Fallback => {
                        proxy.metrics.canary_fallback.increment(1);
                        stable()
                    }
                }
            }
        },
    }
}

/// A bodiless idempotent request's head, kept so it can be sent again.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn request(self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

async fn forward(
    proxy: &Proxy,
    snap: &Snapshot,
    pool: PoolName,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> (Result<Response<UpstreamBody>, ProxyError>, PoolName) {
    let (upstreams, first, served_by) = match choose(proxy, snap, pool) {
        Ok(chosen) => chosen,
        Err(e) => return (Err(e), pool),
    };
    let (mut parts, body) = req.into_parts();
    forward::request_head(&mut parts, &conn.peer_ip, &conn.proto);
    let body = ReqBody::new(body, snap.config.limits.body_idle_timeout);
    let replay = (body.is_empty() && idempotent(&parts.method)).then(|| Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let req = Request::from_parts(parts, body);
    let limit = snap.connector.settings.response_timeout;
    let sent = tokio::time::timeout(
        limit,
        send(proxy, snap, upstreams, first, served_by, req, replay),
    )
    .await;
    let result = match sent {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            forward::response_head(&mut parts.headers, &snap.hide_response_headers);
            Ok(Response::from_parts(parts, body))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyError::Timeout(limit)),
    };
    (result, served_by)
}

/// Sends, and on failure tries once more where that cannot repeat a request: on another upstream
/// when no connection could be made, or when the request came back unsent; for a bodiless
/// idempotent request, also when the upstream sent not a byte of an answer.
async fn send(
    proxy: &Proxy,
    snap: &Snapshot,
    upstreams: &Pool,
    first: &Arc<Upstream>,
    pool: PoolName,
    req: Request<ReqBody>,
    replay: Option<Head>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let Failure { error, request } = match attempt(snap, first, pool, req).await {
        Ok(resp) => return Ok(resp),
        Err(f) => f,
    };
    let other = upstreams.pick_other(first);
    let again = match request {
        Some(req) if error.is_connect() => other.map(|u| (u, req)),
        Some(req) => Some((other.unwrap_or(first), req)),
        None if error.nothing_received() => replay.map(|h| (other.unwrap_or(first), h.request())),
        None => None,
    };
    let Some((upstream, req)) = again else {
        return Err(error.into());
    };
    proxy.metrics.retries.increment(1);
    tracing::debug!(pool = pool.as_str(), first = %first.addr, retry = %upstream.addr, reason = %error, "retrying");
    attempt(snap, upstream, pool, req)
        .await
        .map_err(|f| f.error.into())
}

/// One send, with its outcome fed to the upstream's passive health.
async fn attempt(
    snap: &Snapshot,
    upstream: &Arc<Upstream>,
    pool: PoolName,
    req: Request<ReqBody>,
) -> Result<Response<UpstreamBody>, Failure> {
    let passive = &snap.config.passive_health;
    let result = upstream.send(req, &snap.connector).await;
    let failed = match &result {
        Ok(resp) => resp.status().is_server_error(),
        Err(_) => true,
    };
    if failed {
        if let Some(t) = upstream.health.failure(passive) {
            probe::log(upstream, pool.as_str(), t);
        }
    } else {
        upstream.health.success();
    }
    result
}

pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body_for(status))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
