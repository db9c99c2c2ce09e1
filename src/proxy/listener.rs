//! The listening socket and the accept loop: HTTP/1.1 and cleartext HTTP/2 on one port.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use super::handler::{ConnInfo, Proxy, handle};

/// Binds the listening socket (non-blocking, ready for tokio).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new());
    b.http2().timer(TokioTimer::new());
    b
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let builder = Arc::new(builder());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving the
                // connections we have and try again shortly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let conn = Arc::new((proxy, ConnInfo::new(peer, false)));
            let svc = service_fn(move |req| {
                let conn = Arc::clone(&conn);
                async move { Ok::<_, Infallible>(handle(&conn.0, &conn.1, req).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(peer = %peer, error = %e, "client connection ended");
            }
        });
    }
}
