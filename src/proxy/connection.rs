//! One client connection: HTTP/1.1 served by ramp's own server side, HTTP/2 (by ALPN, or by its
//! preface in cleartext) by hyper; watched by a task of its own (slow heads, idle HTTP/2,
//! stalled readers, the drain), and listed among the open connections so that, at
//! `max_connections`, the longest-idle one can make room for a newcomer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::future::poll_fn;

use bytes::BytesMut;
use http::Response;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::config::Limits;
use crate::framing::Framing;
use crate::inbound::{ClientIo, Continue, Inbound, Rewind};
use crate::upstream::{ClientBody, H2Body};

use super::body::ProxyBody;
use super::context::{Conn, ConnInfo, Proxy};
use super::handler::handle;
use super::http1;
use super::watchdog::{ABORT, Expiry, FINISH};

/// What every connection task of one listener needs.
pub struct Accepting {
    pub h2: http2::Builder<TokioExecutor>,
    pub proxy: Arc<Proxy>,
    pub limits: Limits,
    pub tls: bool,
    /// Becomes true when the drain asks connections to finish.
    pub drain: watch::Receiver<bool>,
    pub open: Open,
}

/// Tells the watchdog its connection ended, however the connection task ends, and takes it off
/// the list of open connections.
struct Ended<'a> {
    conn: Arc<Conn>,
    open: &'a Open,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.conn.proxy.metrics.open_connections.decrement(1.0);
        self.conn.signal.to_watchdog.notify_one();
        self.open.remove(self.conn.id);
    }
}

/// The open client connections, by id.
#[derive(Debug, Default)]
pub struct Open {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Weak<Conn>>>,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn add(&self, conn: &Arc<Conn>) {
        self.lock().insert(conn.id, Arc::downgrade(conn));
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection that has been idle longest (no request in progress), as nginx reuses
    /// idle keep-alive connections; false when every connection is busy.
    pub fn close_longest_idle(&self) -> bool {
        let oldest = self
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.signal.closing())
            .filter_map(|c| c.activity.idle_since().map(|t| (t, c)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, conn)) => {
                tracing::debug!(peer = %conn.info.peer, "closing the longest-idle connection: max_connections reached");
                // Nothing is in progress on it: an HTTP/1 connection (perhaps holding half a
                // head) is dropped at once; an HTTP/2 one gets a GOAWAY.
                let how = if conn.activity.is_http2() {
                    FINISH
                } else {
                    ABORT
                };
                conn.signal.close(how);
                true
            }
            None => false,
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one plain connection; `permit` is its place under `max_connections`.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    a: &Accepting,
) {
    let (conn, _ended) = register(peer, permit, a);
    run(ClientIo::Plain(stream), false, &conn, a).await;
}

/// Serves one TLS connection: the handshake first, within `header_read_timeout`. Meanwhile the
/// connection is listed like any other, idle since it was accepted, so that at `max_connections`
/// a client that never finishes its handshake makes room for a newcomer.
pub async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    a: &Accepting,
) {
    let (conn, _ended) = register(peer, permit, a);
    let handshake = tokio::time::timeout(a.limits.header_read_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        biased;
        () = conn.signal.to_connection.notified() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    run(ClientIo::Tls(Box::new(stream)), h2, &conn, a).await;
}

/// A new connection, listed among the open ones and watched; the guard takes it off the list.
fn register<'a>(
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    a: &'a Accepting,
) -> (Arc<Conn>, Ended<'a>) {
    let conn = Arc::new(Conn::new(
        Arc::clone(&a.proxy),
        ConnInfo::new(peer, a.tls),
        a.open.id(),
        permit,
    ));
    a.open.add(&conn);
    conn.proxy.metrics.open_connections.increment(1.0);
    // The timers live in a task of their own: polling them alongside the connection would cost
    // every request; this way the connection only checks a notification.
    tokio::spawn(watchdog(Arc::clone(&conn), a.drain.clone(), a.limits));
    let ended = Ended {
        conn: Arc::clone(&conn),
        open: &a.open,
    };
    (conn, ended)
}

/// Serves a connection (past its TLS handshake); `h2`: TLS chose HTTP/2.
async fn run(io: ClientIo, h2: bool, conn: &Arc<Conn>, a: &Accepting) {
    let (read, write) = io.split();
    let mut inbound = Inbound {
        io: read,
        buf: BytesMut::new(),
        framing: Framing::Done,
        expect: Continue::Met,
    };
    let h2 = h2 || {
        let sniff = sniff(&mut inbound);
        tokio::select! {
            biased;
            () = conn.signal.to_connection.notified() => return,
            h2 = sniff => match h2 {
                Some(h2) => h2,
                None => return,
            },
        }
    };
    if !h2 {
        return http1::serve(conn, inbound, write, &a.limits).await;
    }
    let io = Rewind {
        pre: inbound.buf.freeze(),
        read: inbound.io,
        write,
    };
    // Boxed: a plain connection's future is not sized for hyper's HTTP/2 state.
    Box::pin(serve_h2(Arc::clone(conn), io, a)).await;
}

/// Serves an HTTP/2 connection with hyper until it ends, or is told to close.
async fn serve_h2(conn: Arc<Conn>, io: http1::Handed, a: &Accepting) {
    let peer = conn.info.peer;
    let svc = {
        let conn = Arc::clone(&conn);
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (parts, body) = req.into_parts();
            let (body, leftover) = H2Body::new(body);
            let req = http::Request::from_parts(parts, ClientBody::H2(body));
            let handling = handle(Arc::clone(&conn), req);
            async move {
                let resp = handling.await;
                if let (Some(leftover), Ok(resp)) = (leftover, &resp) {
                    leftover.answered(resp.status());
                }
                resp.map(with_upstream_fields)
            }
        })
    };
    let mut connection = std::pin::pin!(a.h2.serve_connection(TokioIo::new(io), svc));
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(peer = %peer, error = %e, "client connection ended");
                }
                return;
            }
            () = conn.signal.to_connection.notified() => {}
        }
        if conn.signal.reason.load(Ordering::Relaxed) == ABORT {
            // A client that takes nothing, or heeds no GOAWAY: drop the connection, do not wait
            // for it (also while it closes gracefully).
            tracing::debug!(peer = %peer, "closing at once");
            return;
        }
        // Idle, draining, or making room: finish what is in flight, then close.
        if !std::mem::replace(&mut closing, true) {
            connection.as_mut().graceful_shutdown();
        }
    }
}

/// An answer for hyper (HTTP/2): the upstream's fields, then what ramp added, in one `HeaderMap`.
fn with_upstream_fields(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Some(fields) = resp.body_mut().take_upstream_fields() {
        let added = std::mem::replace(resp.headers_mut(), fields.into_map());
        let headers = resp.headers_mut();
        for (name, value) in &added {
            headers.append(name.clone(), value.clone());
        }
    }
    resp
}

/// Whether the client speaks HTTP/2 with prior knowledge (its first bytes are the preface);
/// `None` if it closed first.
async fn sniff(inbound: &mut Inbound) -> Option<bool> {
    loop {
        let n = inbound.buf.len().min(PREFACE.len());
        if inbound.buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        match poll_fn(|cx| inbound.poll_fill(cx)).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A connection's timers: slow heads, idle HTTP/2, stalled readers, and the drain.
async fn watchdog(conn: Arc<Conn>, mut drain: watch::Receiver<bool>, limits: Limits) {
    let signal = &conn.signal;
    let reason = tokio::select! {
        () = signal.to_watchdog.notified() => return,
        _ = drain.wait_for(|d| *d) => FINISH,
        expiry = conn.activity.expired(limits.header_read_timeout, limits.h2_idle_timeout, limits.body_idle_timeout) => match expiry {
            Expiry::SlowHead | Expiry::Stalled => ABORT,
            Expiry::Idle => FINISH,
        },
    };
    signal.close(reason);
}
