//! One request: decide the pool, forward, answer. Loads the snapshot exactly once.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::routing::{self, Decision, PoolName};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::UpstreamBody;

use super::error::{ProxyError, body_for};
use super::forward;

/// What ramp answers with: an upstream's streamed body, or a short error of its own.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// State shared by every connection of the data plane.
#[derive(Debug)]
pub struct Proxy {
    pub shared: Arc<Shared>,
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

pub async fn handle(proxy: &Proxy, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let snap = proxy.shared.load();
    let (pool, minted) = match routing::decide(&snap, req.headers()) {
        Decision::Pool(pool) => (pool, None),
        Decision::Mint => {
            let id = routing::mint(&snap.rollout);
            (routing::assign(&snap.rollout, id.as_bytes()), Some(id))
        }
    };
    let mut resp = match forward(&snap, pool, conn, req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(e) => {
            tracing::warn!(peer = %conn.peer, pool = pool.as_str(), reason = %e, "upstream request failed");
            error_response(StatusCode::from(&e))
        }
    };
    if let Some(id) = minted
        && let Some(cookie) = routing::set_cookie(&snap.sticky, &id)
    {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

async fn forward(
    snap: &Snapshot,
    pool: PoolName,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let upstreams = match pool {
        PoolName::Stable => &snap.stable,
        PoolName::Canary => &snap.canary,
    };
    let upstream = upstreams
        .pick()
        .ok_or(ProxyError::NoUpstream(pool.as_str()))?;
    let (mut parts, body) = req.into_parts();
    forward::request_head(&mut parts, &conn.peer_ip, &conn.proto);
    let req = Request::from_parts(parts, body);
    let limit = snap.upstream.response_timeout;
    let resp = tokio::time::timeout(limit, upstream.send(req, &snap.upstream))
        .await
        .map_err(|_| ProxyError::Timeout(limit))??;
    let (mut parts, body) = resp.into_parts();
    forward::response_head(&mut parts.headers, &snap.hide_response_headers);
    Ok(Response::from_parts(parts, body))
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
