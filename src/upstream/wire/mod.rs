//! ramp's HTTP/1.1 client side, in the request's own task: the request is written and the answer
//! read on the upstream connection directly, with no connection task, channel or extra wake-up
//! between them (hyper's client connection API costs about half of a proxied request's
//! instructions). The WebSocket handshake and the health probes still use hyper's client.
//!
//! The request head stays the caller's: after a failure it can be sent again as it is.

pub mod framing;
mod head;
mod io;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::ReqBody;
use super::idle::BodyError;

pub use framing::{Framing, Step};
pub use head::Answer;
pub use io::Io;

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
            Exchange::Hyper(e) => super::conn::closed_before_answer(e),
            Exchange::Io(_) | Exchange::Invalid(_) => false,
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
}

impl Wire {
    pub fn new(io: Io) -> Box<Wire> {
        Box::new(Wire {
            io,
            buf: BytesMut::new(),
            out: Vec::with_capacity(1024),
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
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
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
    pub hide: &'a [http::HeaderName],
}

/// Sends the request — `out`, and `body` — and reads the answer's head; gives it, and whether
/// the whole request went out. Writing and reading go on together: an upstream may answer
/// before it has read all of a body (the rest is then not sent, and the connection is not
/// reused).
pub async fn exchange(
    wire: &mut Wire,
    request: Outbound<'_>,
    body: &mut ReqBody,
) -> Result<(Answer, bool), Failed> {
    let parts = request.parts;
    let sending = head::sending(parts, !body.is_empty());
    head::encode(&mut wire.out, parts, request.added, sending);
    let mut out = Outgoing {
        pos: 0,
        data: bytes::Bytes::new(),
        tail: b"",
        body_open: !body.is_empty(),
        chunked: sending == head::Sending::Chunked,
        sent: false,
        wrote: false,
        error: None,
    };
    let result = poll_fn(|cx| {
        out.poll_send(wire, body, cx)?;
        loop {
            match head::parse(&mut wire.buf, &parts.method, request.hide) {
                Ok(Some(answer)) => return Poll::Ready(Ok((answer, out.sent))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(out.failed(e.into()))),
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
    result
}

/// The request going out: the head (in the wire's `out`), then each body frame (`data`, with a
/// chunk's size line in `out` and its CRLF in `tail`).
struct Outgoing {
    pos: usize,
    data: bytes::Bytes,
    tail: &'static [u8],
    body_open: bool,
    chunked: bool,
    /// Everything went out.
    sent: bool,
    /// Some byte went out.
    wrote: bool,
    /// Writing failed (the answer may still be readable).
    error: Option<std::io::Error>,
}

impl Outgoing {
    fn failed(&self, error: Exchange) -> Failed {
        Failed::Exchange {
            error,
            wrote: self.wrote,
        }
    }

    /// Writes what it can; only the client's body failing is an error here (a write error is
    /// kept, as an answer may be waiting to be read).
    fn poll_send(
        &mut self,
        wire: &mut Wire,
        body: &mut ReqBody,
        cx: &mut Context<'_>,
    ) -> Result<(), Failed> {
        while !self.sent && self.error.is_none() {
            let chunk: &[u8] = if self.pos < wire.out.len() {
                &wire.out[self.pos..]
            } else if !self.data.is_empty() {
                &self.data
            } else if !self.tail.is_empty() {
                self.tail
            } else if self.body_open {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not forwarded.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            self.frame(wire, data);
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.body_open = false;
                        wire.out.clear();
                        self.pos = 0;
                        if self.chunked {
                            wire.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Err(Failed::ClientBody(e)),
                    Poll::Pending => return Ok(()),
                }
            } else {
                match Pin::new(&mut wire.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.sent = true,
                    Poll::Ready(Err(e)) => self.error = Some(e),
                    Poll::Pending => {}
                }
                return Ok(());
            };
            match Pin::new(&mut wire.io).poll_write(cx, chunk) {
                Poll::Ready(Ok(0)) => self.error = Some(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wrote = true;
                    if self.pos < wire.out.len() {
                        self.pos += n;
                    } else if !self.data.is_empty() {
                        self.data.advance(n);
                    } else {
                        self.tail = &self.tail[n..];
                    }
                }
                Poll::Ready(Err(e)) => {
                    // What is left of the body will not be sent: the answer's wait starts now.
                    body.stopped();
                    self.error = Some(e);
                }
                Poll::Pending => return Ok(()),
            }
        }
        Ok(())
    }

    /// Queues one body frame: as it is, or as a chunk.
    fn frame(&mut self, wire: &mut Wire, data: bytes::Bytes) {
        wire.out.clear();
        self.pos = 0;
        if self.chunked {
            use std::io::Write;
            let _ = write!(wire.out, "{:x}\r\n", data.len());
            self.tail = b"\r\n";
        }
        self.data = data;
    }
}
