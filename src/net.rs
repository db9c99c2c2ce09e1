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
    let socket = bind_quiet(addr, takeover)?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A socket bound to `addr` as [`bind`] binds it, not listening yet: the kernel hands it no
/// connection until it does (a successor's metrics address, taken only once the process it
/// replaces has stopped listening there).
pub fn bind_quiet(addr: SocketAddr, takeover: bool) -> io::Result<Socket> {
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
    Ok(socket)
}

/// Whether a socket listens on exactly `addr`, as the kernel lists them (`/proc/net/tcp`, or
/// `tcp6`); a socket only bound there, as [`bind_quiet`] leaves one, is not listed as listening.
pub fn listened_on(addr: SocketAddr) -> bool {
    let (file, local) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let mut hex = String::with_capacity(37);
            for word in a.ip().octets().chunks_exact(4) {
                let word = [word[0], word[1], word[2], word[3]];
                hex.push_str(&format!("{:08X}", u32::from_ne_bytes(word)));
            }
            ("/proc/net/tcp6", format!("{hex}:{:04X}", a.port()))
        }
    };
    std::fs::read_to_string(file).is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            // local address, remote address, state (0A: listening)
            fields.next() == Some(local.as_str()) && fields.nth(1) == Some("0A")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_listed_as_listening_once_it_listens_not_when_only_bound() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(quiet) = bind_quiet(any.parse().expect("addr"), false) else {
                continue; // no IPv6 here
            };
            let addr = quiet
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .expect("bound");
            assert!(!listened_on(addr), "{addr} only bound");
            quiet.listen(16).expect("listen");
            assert!(listened_on(addr), "{addr} listening");
            drop(quiet);
            assert!(!listened_on(addr), "{addr} closed");
        }
    }
}
