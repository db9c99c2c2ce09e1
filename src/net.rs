//! Binding the TCP listeners ramp owns (the proxy's and the metrics'). Each is bound with
//! SO_REUSEPORT so a successor started with `--takeover` can bind the same address while this one
//! drains; without `--takeover`, an address another process already listens on is an error, so
//! two ramps never split users between them by accident.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// A listening socket on `addr` (non-blocking, ready for tokio).
pub fn bind(addr: SocketAddr, takeover: bool) -> io::Result<std::net::TcpListener> {
    if !takeover && addr.port() != 0 {
        // A plain bind fails where another socket listens, SO_REUSEPORT or not.
        let probe = socket(addr)?;
        if let Err(e) = probe.bind(&addr.into()) {
            return Err(match e.kind() {
                io::ErrorKind::AddrInUse => io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "address in use by another process (to restart ramp on it, start the new one \
                     with --takeover)",
                ),
                _ => e,
            });
        }
    }
    let socket = socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
