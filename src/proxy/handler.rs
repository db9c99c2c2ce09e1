//! One request: check it, decide the pool, forward (retrying where that is safe), answer.
//! Loads the snapshot exactly once.

use std::convert::Infallible;
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
use crate::snapshot::{Current, Snapshot};
use crate::upstream::{Failure, Pool, ReqBody, Retry, SendError, Upstream, UpstreamBody};

use super::error::{ProxyError, body_for};
use super::watchdog::Activity;
use super::{check, forward};

/// What ramp answers with: an upstream's streamed body, or a short error of its own. While it
/// lives, its connection counts as busy for the slow-head watchdog.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Either<UpstreamBody, Full<Bytes>>,
    busy: Option<Busy>,
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = crate::upstream::BodyError;

    #[inline]
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().inner {
            Either::Left(b) => std::pin::Pin::new(b).poll_frame(cx),
            Either::Right(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request in progress on its connection; dropped with the answer's body (or the abandoned
/// handler), it ends the request.
#[derive(Debug)]
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

/// State shared by every connection of the data plane.
#[derive(Debug)]
pub struct Proxy {
    pub current: Arc<Current>,
    pub metrics: Metrics,
    draining: AtomicBool,
    canary_down: AtomicBool,
}

impl Proxy {
    pub fn new(current: Arc<Current>, metrics: Metrics) -> Self {
        Proxy {
            current,
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

/// One client connection: the shared proxy state, what is known about the peer, and whether a
/// request is in progress.
#[derive(Debug)]
pub struct Conn {
    pub proxy: Arc<Proxy>,
    pub info: ConnInfo,
    pub activity: Activity,
}

fn finish(mut resp: Response<ProxyBody>, busy: Busy) -> Result<Response<ProxyBody>, Infallible> {
    resp.body_mut().busy = Some(busy);
    Ok(resp)
}

/// Serves one request. Kept to one `async fn` around the upstream's send so the request's future
/// stays small (every nested future level is copied on creation).
pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    conn.activity.begin(req.version() == Version::HTTP_2);
    let busy = Busy(conn);
    let (proxy, info) = (&*busy.0.proxy, &busy.0.info);
    let snap = proxy.current.load();
    let h1 = req.version() <= Version::HTTP_11;
    let scan = forward::scan(req.headers(), &[]);
    if let Err(status) = check::request(&req, &scan, &snap.config.limits) {
        proxy.metrics.rejected.increment(1);
        tracing::debug!(peer = %info.peer, status = status.as_u16(), "request refused");
        let mut resp = error_response(status);
        if h1 {
            // The framing cannot be trusted: do not read another request from this connection.
            resp.headers_mut().insert(CONNECTION, CLOSE);
        }
        return finish(resp, busy);
    }
    let rollout = &snap.routing.rollout;
    let (pool, minted) = match routing::decide(&snap.routing, req.headers()) {
        Decision::Pool(pool) => (pool, None),
        Decision::Mint => {
            let id = routing::mint(rollout);
            (routing::assign(rollout, id.as_bytes()), Some(id))
        }
    };
    let (result, served_by) = match choose(proxy, &snap, pool) {
        Err(e) => (Err(e), pool),
        Ok((upstreams, first, served_by)) => {
            let (req, replay) = upstream_request(req, &scan, info, &snap, &first.host);
            let result = match first.send(req, &snap.connector, served_by).await {
                Ok(resp) => Ok(resp),
                Err(failure) => match retry(failure, upstreams, first, replay) {
                    Ok((upstream, req)) => {
                        proxy.metrics.retries.increment(1);
                        tracing::debug!(pool = served_by.as_str(), first = %first.addr, retry = %upstream.addr, "retrying");
                        upstream
                            .send(req, &snap.connector, served_by)
                            .await
                            .map_err(|f| f.error)
                    }
                    Err(error) => Err(error),
                },
            };
            let result = result.map_err(ProxyError::from);
            (result, served_by)
        }
    };
    let mut resp = match result {
        Ok(mut resp) => {
            forward::response_head(resp.headers_mut(), &snap.hide_response_headers);
            resp.map(|body| ProxyBody {
                inner: Either::Left(body),
                busy: None,
            })
        }
        Err(e @ ProxyError::Send(SendError::ClientBody(_))) => {
            tracing::debug!(peer = %info.peer, reason = %e, "client request body failed");
            error_response(StatusCode::from(&e))
        }
        Err(e) => {
            tracing::warn!(peer = %info.peer, pool = served_by.as_str(), reason = %e, "upstream request failed");
            error_response(StatusCode::from(&e))
        }
    };
    proxy.metrics.response(served_by, resp.status());
    if let Some(id) = minted
        && let Some(cookie) = routing::set_cookie(&snap.routing.sticky, &id)
    {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    if h1 && proxy.draining.load(Ordering::Relaxed) {
        resp.headers_mut().insert(CONNECTION, CLOSE);
    }
    finish(resp, busy)
}

/// The pool that serves `pool`'s users now: canary users go to stable when no canary upstream
/// is healthy, unless configured to get 503.
fn choose<'s>(
    proxy: &Proxy,
    snap: &'s Snapshot,
    pool: PoolName,
) -> Result<(&'s Pool, &'s Arc<Upstream>, PoolName), ProxyError> {
    let stable = || {
        let pool = &snap.pools.stable;
        pool.pick()
            .map(|u| (pool, u, PoolName::Stable))
            .ok_or_else(|| {
                proxy.metrics.no_upstream[PoolName::Stable].increment(1);
                ProxyError::NoUpstream(PoolName::Stable)
            })
    };
    match pool {
        PoolName::Stable => stable(),
        PoolName::Canary => match snap.pools.canary.pick() {
            Some(u) => {
                proxy.canary_available(true);
                Ok((&snap.pools.canary, u, PoolName::Canary))
            }
            None => {
                proxy.canary_available(false);
                match snap.config.canary_unavailable {
                    CanaryUnavailable::Error => {
                        proxy.metrics.no_upstream[PoolName::Canary].increment(1);
                        Err(ProxyError::NoUpstream(PoolName::Canary))
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

/// The request as the upstream gets it, and (for a bodiless idempotent one) a copy of its head.
fn upstream_request(
    req: Request<Incoming>,
    scan: &forward::Scan,
    info: &ConnInfo,
    snap: &Snapshot,
    fallback_host: &HeaderValue,
) -> (Request<ReqBody>, Option<Head>) {
    let (mut parts, body) = req.into_parts();
    forward::request_head(&mut parts, scan, &info.peer_ip, &info.proto, fallback_host);
    let body = ReqBody::new(body, snap.config.limits.body_idle_timeout);
    let replay = (body.is_empty() && idempotent(&parts.method)).then(|| Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    (Request::from_parts(parts, body), replay)
}

/// Where a failed request may go once more without ever reaching an upstream twice, as
/// [`Failure::retry`] classifies it.
fn retry<'p>(
    failure: Failure,
    upstreams: &'p Pool,
    first: &'p Arc<Upstream>,
    replay: Option<Head>,
) -> Result<(&'p Arc<Upstream>, Request<ReqBody>), SendError> {
    let other = upstreams.pick_other(first);
    let how = failure.retry();
    match (failure.request, how, replay) {
        (Some(req), Retry::Elsewhere, _) => match other {
            Some(u) => Ok((u, req)),
            None => Err(failure.error),
        },
        (Some(req), Retry::Anywhere, _) => Ok((other.unwrap_or(first), req)),
        (None, Retry::IfRepeatable, Some(head)) => Ok((other.unwrap_or(first), head.request())),
        (_, Retry::Elsewhere | Retry::Anywhere | Retry::IfRepeatable | Retry::Never, _) => {
            Err(failure.error)
        }
    }
}

pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody {
        inner: Either::Right(Full::new(body_for(status))),
        busy: None,
    });
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
