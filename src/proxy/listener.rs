//! The listening socket, the accept loop (HTTP/1.1 and HTTP/2 on one port, over TCP or TLS),
//! connection limits, idle and slow-head closing, and the graceful drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::config::Limits;

use super::handler::{Conn, ConnInfo, Proxy, handle};
use super::watchdog::{Activity, Expiry};

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
    // Slow heads and idle connections are the watchdog's job (cheaper than hyper's
    // per-request timer).
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head)
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// What every connection task of one listener needs.
struct Accepting {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    limits: Limits,
    tls: bool,
    /// Becomes true when the drain asks connections to finish.
    drain: watch::Receiver<bool>,
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
        builder: builder(&limits),
        proxy: Arc::clone(&proxy),
        limits,
        tls,
        drain,
    });
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
    tokio::spawn(async move {
        let _permit = permit;
        if !a.tls {
            return serve_one(stream, peer, &a).await;
        }
        let Some(config) = a.proxy.current.load().tls.clone() else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = a.limits.header_read_timeout;
        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => serve_one(stream, peer, &a).await,
            Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
        }
    });
}

async fn serve_one<IO>(io: IO, peer: SocketAddr, a: &Accepting)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        proxy: Arc::clone(&a.proxy),
        info: ConnInfo::new(peer, a.tls),
        activity: Activity::default(),
    });
    // The timers live in a task of their own: polling them alongside the connection would cost
    // every request; this way the connection only checks a notification.
    let signal = Arc::new(Signal::default());
    tokio::spawn(watchdog(
        Arc::clone(&conn),
        Arc::clone(&signal),
        a.drain.clone(),
        a.limits,
    ));
    let _ended = Ended(Arc::clone(&signal));
    let svc = service_fn(move |req| handle(Arc::clone(&conn), req));
    let mut connection = std::pin::pin!(a.builder.serve_connection(TokioIo::new(io), svc));
    tokio::select! {
        biased;
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "client connection ended");
            }
            return;
        }
        () = signal.to_connection.notified() => {}
    }
    if signal.reason.load(Ordering::Relaxed) == SLOW_HEAD {
        // A head that does not arrive: drop the connection, do not wait for it.
        tracing::debug!(peer = %peer, "closing: no request head within header_read_timeout");
        return;
    }
    // Idle HTTP/2 or draining: finish what is in flight, then close.
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        tracing::debug!(peer = %peer, error = %e, "client connection ended");
    }
}

const SLOW_HEAD: u8 = 1;
const FINISH: u8 = 2;

/// Between a connection and its watchdog task.
#[derive(Default)]
struct Signal {
    /// The watchdog tells the connection to close (why: `reason`).
    to_connection: Notify,
    reason: AtomicU8,
    /// The connection tells the watchdog it has ended.
    to_watchdog: Notify,
}

/// Tells the watchdog its connection ended, however the connection task ends.
struct Ended(Arc<Signal>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.to_watchdog.notify_one();
    }
}

/// A connection's timers: slow heads, idle HTTP/2, and the drain.
async fn watchdog(
    conn: Arc<Conn>,
    signal: Arc<Signal>,
    mut drain: watch::Receiver<bool>,
    limits: Limits,
) {
    let reason = tokio::select! {
        () = signal.to_watchdog.notified() => return,
        _ = drain.wait_for(|d| *d) => FINISH,
        expiry = conn.activity.expired(limits.header_read_timeout, limits.h2_idle_timeout) => match expiry {
            Expiry::SlowHead => SLOW_HEAD,
            Expiry::Idle => FINISH,
        },
    };
    signal.reason.store(reason, Ordering::Relaxed);
    signal.to_connection.notify_one();
}
