//! ramp's HTTP/1.1 client side, in the request's own task: the request is written and the answer
//! read on the upstream connection directly, with no connection task, channel or extra wake-up
//! between them (hyper's client connection API costs about half of a proxied request's
//! instructions). The WebSocket handshake and the health probes still use hyper's client.
//!
//! The request head stays the caller's: after a failure it can be sent again as it is.

mod fields;
mod head;
mod io;
mod send;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::body::ReqBody;
use super::idle::BodyError;

pub use crate::framing::{Framing, Step};
pub use fields::Fields;
pub use head::{Answer, Invalid as InvalidAnswer};
pub use io::Io;
pub use send::Outgoing;

/// Bytes read from an upstream at a time: a client that reads an answer slowly holds at most
/// about this much of it in ramp.
pub const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Exchange {
    /// The connection ended (closed, or reset) before a byte of an answer came back.
    #[error("connection closed before an answer{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Closed(Option<std::io::Error>),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Invalid(#[from] head::Invalid),
    /// The upstream took nothing of the request for this long.
    #[error("the upstream took nothing of the request for {0:?}")]
    Stalled(Duration),
    /// On hyper's client (the WebSocket handshake).
    #[error(transparent)]
    Hyper(hyper::Error),
}

impl Exchange {
    /// The request may have been sent, but the connection closed (or reset) before a byte of an
    /// answer came back. Anything else is not known to be safe: false.
    pub fn closed_before_answer(&self) -> bool {
        match self {
            Exchange::Closed(_) => true,
            Exchange::Hyper(e) => super::failure::closed_before_answer(e),
            Exchange::Io(_) | Exchange::Invalid(_) | Exchange::Stalled(_) => false,
        }
    }
}

fn reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// What the exchange failed on, and whether any byte of the request was written.
#[derive(Debug)]
pub enum Failed {
    Exchange {
        error: Exchange,
        wrote: bool,
    },
    /// The client's request body failed.
    ClientBody(BodyError),
}

/// One HTTP/1.1 connection to an upstream.
#[derive(Debug)]
pub struct Wire {
    io: Io,
    /// Read from the upstream, not yet used.
    pub(super) buf: BytesMut,
    /// What is being written.
    out: Vec<u8>,
    /// The response timeout's timer, kept for the connection's next request: moving a timer
    /// later is cheaper than making one.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Its place among the upstream connections open at once.
    _slot: super::Slot,
}

impl Wire {
    pub fn new(io: Io, slot: super::Slot) -> Box<Wire> {
        Box::new(Wire {
            io,
            _slot: slot,
            buf: BytesMut::new(),
            out: Vec::with_capacity(1024),
            timer: None,
        })
    }

    /// Whether a pooled connection is still open with nothing unread on it (the upstream may
    /// have closed it while it was idle). Reads nothing unless the socket is known readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let mut probe = ReadBuf::uninit(&mut probe);
        let io = &mut self.io;
        // Unconstrained: a probe spends none of the task's cooperative budget (a spent budget
        // would make the read Pending and pass a closed connection as open).
        let read = tokio::task::coop::unconstrained(poll_fn(|cx| {
            Pin::new(&mut *io).poll_read(cx, &mut probe)
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(std::pin::pin!(read).poll(&mut cx), Poll::Pending)
    }

    /// Reads once (at most [`READ_SIZE`]) into the buffer; the count, 0 at the end.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE {
            self.buf.reserve(READ_SIZE);
        }
        let mut room = bytes::BufMut::limit(&mut self.buf, READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut room)
    }

    /// After an exchange: a buffer grown for a large upload is not kept in the pool.
    fn trim(&mut self) {
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::with_capacity(1024);
        }
    }
}

/// A request as it goes to an upstream, and what of the answer is never passed back.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The head, prepared for the upstream.
    pub parts: &'a http::request::Parts,
    /// Fields written after the head's own (X-Forwarded-For and -Proto).
    pub added: &'a [(&'static str, &'a http::HeaderValue)],
    /// Answer fields dropped (besides the hop-by-hop ones).
    pub hide: &'a super::Hide,
}

/// Sends the request — `request`, and `body` — and reads the answer's head; gives it, and the
/// request's sending as it stands. Writing and reading go on together: an upstream may answer
/// before it has read all of a body, and the rest of the body then goes out while the answer
/// is read ([`Outgoing`] travels with the answer's body). An upstream that takes nothing of the
/// request for `stall` fails it.
pub async fn exchange(
    wire: &mut Wire,
    request: Outbound<'_>,
    body: &mut ReqBody,
    stall: Duration,
) -> Result<(Answer, Outgoing), Failed> {
    let parts = request.parts;
    let sending = head::sending(parts, !body.is_empty());
    head::encode(&mut wire.out, parts, request.added, sending);
    let mut out = Outgoing::new(!body.is_empty(), sending == head::Sending::Chunked, stall);
    // How much of `buf` was parsed as a partial head: parsing again waits for more.
    let mut parsed = 0;
    let result = poll_fn(|cx| {
        out.poll_send(wire, body, true, cx)?;
        loop {
            if wire.buf.len() != parsed {
                match head::parse(&mut wire.buf, &parts.method, request.hide) {
                    Ok(Some(answer)) => return Poll::Ready(Ok(answer)),
                    Ok(None) => parsed = wire.buf.len(),
                    Err(e) => return Poll::Ready(Err(out.failed(e.into()))),
                }
            }
            match wire.poll_fill(cx) {
                Poll::Ready(Ok(0)) if wire.buf.is_empty() => {
                    let error = Exchange::Closed(out.error.take());
                    return Poll::Ready(Err(out.failed(error)));
                }
                Poll::Ready(Ok(0)) => {
                    let cut = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Err(out.failed(Exchange::Io(cut))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) if reset(&e) && wire.buf.is_empty() => {
                    return Poll::Ready(Err(out.failed(Exchange::Closed(Some(e)))));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(out.failed(Exchange::Io(e)))),
                // After a failed write too: a reset connection becomes readable (with the
                // answer the upstream sent before, or the error).
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    wire.trim();
    result.map(|answer| (answer, out))
}
