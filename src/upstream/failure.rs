//! Why sending to an upstream failed, and whether the request may go to another upstream.

use std::time::Duration;

use super::Slot;
use super::conn::Connector;
use super::idle::BodyError;
use super::wire::Exchange;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// ramp itself ran out of something a connection needs (file descriptors, memory, local
    /// ports): nothing is known about the upstream, which is not charged for it.
    #[error("cannot open a connection here: {0}")]
    Local(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("exchange: {0}")]
    Exchange(Exchange),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client's request body failed (it went away, or stalled past the idle limit): not the
    /// upstream's fault.
    #[error("client body: {0}")]
    ClientBody(BodyError),
}

impl SendError {
    /// Whether the client's body stalled (as opposed to going away).
    pub fn client_stalled(&self) -> bool {
        matches!(self, SendError::ClientBody(BodyError::Idle(_)))
    }
}

/// A place for one more upstream connection, or ramp's own error if `upstream.max_connections`
/// are open.
pub(super) fn slot(connector: &Connector) -> Result<Slot, SendError> {
    Slot::take(connector.settings.max_connections).ok_or_else(|| {
        SendError::Local(std::io::Error::other(
            "upstream.max_connections upstream connections are open",
        ))
    })
}

/// A connect error that is ramp's own: out of file descriptors (its own or the system's), memory
/// or buffers, or local ports.
pub(super) fn local(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::ENOBUFS,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(n))
    })
}

/// Whether ramp has no descriptor left: a name lookup that failed says only that the name was
/// not found when the resolver could open neither `/etc/hosts` nor a socket to ask with (glibc
/// then says `EAI_NONAME`), which is ramp's shortage, not the upstream's failure.
pub(super) fn out_of_descriptors() -> bool {
    std::fs::File::open("/dev/null").is_err_and(|e| local(&e))
}

/// The request may have been sent, but the connection closed (or reset) before a byte of an
/// answer came back (on hyper's client). Anything else hyper reports is not known to be safe:
/// false.
pub fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        )
    })
}

/// Where a failed request may go again without ever reaching an upstream twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No connection could be made: nothing reached this upstream; another one may take it.
    Elsewhere,
    /// It came back unsent (a pooled connection closed under it): anywhere, this upstream too.
    Anywhere,
    /// It may have reached the upstream, which closed before a byte of an answer: only a request
    /// that is safe to repeat (bodiless and idempotent) may go again.
    IfRepeatable,
    /// Never.
    Never,
}

/// A failed send. The request stays the caller's, to send again where [`Failure::retry`] allows.
#[derive(Debug)]
pub struct Failure {
    pub error: SendError,
    /// Some byte of the request was written to an upstream.
    pub wrote: bool,
}

impl Failure {
    /// The one classification of what may be retried, and where, for a request whose body is
    /// `body` (`repeatable`: bodiless and idempotent). Every variant is listed: a new one is not
    /// retryable until someone decides it is.
    pub fn retry(&self, repeatable: bool) -> Retry {
        match &self.error {
            SendError::Connect(_)
            | SendError::ConnectTimeout
            | SendError::Tls(_)
            | SendError::Handshake(_) => Retry::Elsewhere,
            SendError::Exchange(e) => {
                if !self.wrote {
                    Retry::Anywhere
                } else if e.closed_before_answer() && repeatable {
                    Retry::IfRepeatable
                } else {
                    Retry::Never
                }
            }
            SendError::Timeout(_) | SendError::ClientBody(_) | SendError::Local(_) => Retry::Never,
        }
    }
}
