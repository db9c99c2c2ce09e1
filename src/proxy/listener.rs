//! The listening socket, the accept loop (HTTP/1.1 and HTTP/2 on one port, over TCP or TLS),
//! connection limits, and the graceful drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;

use super::handler::{Conn, ConnInfo, Proxy, handle};
use super::watchdog::Activity;

/// After a shutdown signal, HTTP/1 clients get `Connection: close` on their answers for this
/// long before idle connections are closed, so that a client busy on a keep-alive connection
/// learns to reconnect (to the new process) instead of racing a close.
pub const LINGER: Duration = Duration::from_secs(1);

/// Binds the listening socket with SO_REUSEPORT, so a new ramp can bind the same address while
/// this one drains (non-blocking, ready for tokio).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The head (request line + fields) is read into one buffer: its cap is what makes an
    // oversized head a 431 instead of unbounded memory. hyper needs at least 8 KiB.
    let head = (limits.max_header_bytes + limits.max_uri_bytes + 1024).max(8192);
    // Slow heads are the watchdog's job (cheaper than hyper's per-request timer).
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    b
}

/// Serves connections until `shutdown` completes, then drains: the socket closes (a new process
/// bound with SO_REUSEPORT takes the new connections), HTTP/1 answers carry `Connection: close`
/// for [`LINGER`], then every connection finishes its in-flight requests and closes, within the
/// snapshot's `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(builder(&limits));
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Beyond max_connections, new connections wait in the listen backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving the
                    // connections we have and try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, proxy, watcher) =
            (Arc::clone(&builder), Arc::clone(&proxy), graceful.watcher());
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            if !tls {
                return serve_one(stream, peer, false, &builder, proxy, watcher).await;
            }
            let Some(config) = proxy.shared.load().tls.clone() else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_one(stream, peer, true, &builder, proxy, watcher).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    proxy.start_draining();
    let grace = proxy.shared.load().config.shutdown_grace;
    tracing::info!(
        connections = graceful.count(),
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    let linger = LINGER.min(grace);
    tokio::time::sleep(linger).await;
    if tokio::time::timeout(grace - linger, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace is over: closing the connections still open");
    }
}

async fn serve_one<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    builder: &auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = proxy.shared.load().config.limits.header_read_timeout;
    let conn = Arc::new(Conn {
        proxy,
        info: ConnInfo::new(peer, tls),
        activity: Activity::default(),
    });
    let watched = Arc::clone(&conn);
    let svc = service_fn(move |req| handle(Arc::clone(&conn), req));
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        served = watcher.watch(connection) => if let Err(e) = served {
            tracing::debug!(peer = %peer, error = %e, "client connection ended");
        },
        () = watched.activity.expired(limit) => {
            tracing::debug!(peer = %peer, "closing: no request head within header_read_timeout");
        }
    }
}
