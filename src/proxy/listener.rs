//! The listening socket, the accept loop (HTTP/1.1 and HTTP/2 on one port, over TCP or TLS),
//! connection limits, idle and slow-head closing, and the graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::Limits;

use super::connection::{self, Accepting, Open};
use super::context::Proxy;

/// After a shutdown signal, HTTP/1 clients get `Connection: close` on their answers for this
/// long before idle connections are closed, so that a client busy on a keep-alive connection
/// learns to reconnect (to the new process) instead of racing a close.
pub const LINGER: Duration = Duration::from_secs(1);

/// The most a request's header list may take by HPACK's count before the h2 layer refuses it
/// itself: room for every request the request check takes, so that the limits are the same for
/// both protocols and every 431 is ramp's own, counted and logged. HPACK counts 32 more bytes per
/// field than the check's 4 (and each cookie crumb is a field), and the pseudo-fields, the target
/// among them; as for an HTTP/1.1 head, a target up to 64 KiB fits, so that it gets 414.
fn max_header_list(limits: &Limits) -> usize {
    4 * limits.max_header_bytes
        + limits.max_uri_bytes.max(64 * 1024)
        + 32 * (limits.max_headers + 8)
}

fn h2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // What a stream may have queued for a client that does not read: small, so memory is
        // bounded by connections x streams x 16 KiB, not by what upstreams send.
        .max_send_buf_size(16 * 1024)
        // WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header_list(limits)).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Serves connections until `shutdown` completes, then drains: HTTP/1 answers carry
/// `Connection: close`, connections already queued on the socket are taken and served, the socket
/// closes (a new process bound with SO_REUSEPORT takes new connections), and after [`LINGER`] every
/// connection finishes its in-flight requests and closes, within the snapshot's `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain) = watch::channel(false);
    let accepting = Arc::new(Accepting {
        h2: h2_builder(&limits),
        proxy: Arc::clone(&proxy),
        limits,
        tls,
        drain,
        open: Open::default(),
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving the
                    // connections we have and try again shortly (said once a second at most).
                    static FAILED: crate::logs::EverySecond = crate::logs::EverySecond::new();
                    if let Some(unlogged) = FAILED.admit_now() {
                        tracing::warn!(error = %e, unlogged, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At max_connections the longest-idle connection makes room; when every one is busy, the
        // newcomer waits for one to end.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = room(&permits, &accepting.open) => match p {
                    Some(p) => p,
                    None => break,
                },
                () = &mut shutdown => {
                    // Served in the drain like the connections still queued.
                    spawn(stream, peer, None, &accepting);
                    break;
                }
            },
        };
        spawn(stream, peer, Some(permit), &accepting);
    }
    proxy.start_draining();
    // Connections already in this socket's queue would be reset when it closes: serve them.
    let mut queued = 0;
    while let Some((stream, peer)) = accept_now(&listener) {
        let permit = Arc::clone(&permits).try_acquire_owned().ok();
        spawn(stream, peer, permit, &accepting);
        queued += 1;
    }
    drop(listener);
    let grace = proxy.current.load().config.shutdown_grace;
    let open = limits.max_connections - permits.available_permits();
    tracing::info!(
        connections = open,
        queued,
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    let linger = LINGER.min(grace);
    tokio::time::sleep(linger).await;
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace - linger, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace is over: exiting with connections still open");
    }
}

/// How often a newcomer waiting at `max_connections` looks for an idle connection to close.
const ROOM_RETRY: Duration = Duration::from_millis(100);

/// A place under `max_connections`: closes the longest-idle connection to make one, and looks
/// again every [`ROOM_RETRY`] while every connection is busy (one that goes idle makes room).
/// `None` when the semaphore is closed.
async fn room(permits: &Arc<Semaphore>, open: &Open) -> Option<OwnedSemaphorePermit> {
    let mut wait = std::pin::pin!(Arc::clone(permits).acquire_owned());
    let mut said = false;
    loop {
        open.close_longest_idle();
        tokio::select! {
            p = wait.as_mut() => return p.ok(),
            () = tokio::time::sleep(ROOM_RETRY) => {}
        }
        // No idle one to close: every connection is busy (slow readers, long answers), and
        // newcomers wait, which nothing else would show.
        if !std::mem::replace(&mut said, true) {
            metrics::counter!("ramp_connections_waited_total").increment(1);
            static BUSY: crate::logs::EverySecond = crate::logs::EverySecond::new();
            if let Some(unlogged) = BUSY.admit_now() {
                tracing::warn!(
                    unlogged,
                    "every connection under limits.max_connections is busy: a newcomer waits for one to end"
                );
            }
        }
    }
}

/// A connection already waiting in the accept queue, if any (never waits).
fn accept_now(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match listener.poll_accept(&mut cx) {
        Poll::Ready(Ok(accepted)) => Some(accepted),
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}

/// Serves one accepted connection in a task of its own; `permit` counts it against
/// `max_connections` (the accept-queue drain at shutdown may go without one).
fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    accepting: &Arc<Accepting>,
) {
    let _ = stream.set_nodelay(true);
    let a = Arc::clone(accepting);
    if !a.tls {
        // A task of its own size: one future sized for the TLS path as well would make every
        // plain connection carry the TLS state's room (8 KiB instead of about 4).
        tokio::spawn(async move {
            connection::serve(stream, peer, permit, &a).await;
        });
        return;
    }
    tokio::spawn(async move {
        let Some(config) = a.proxy.current.load().tls.clone() else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        connection::serve_tls(stream, acceptor, peer, permit, &a).await;
    });
}
