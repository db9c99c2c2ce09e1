//! The client's side of an HTTP/1.1 connection: its two halves, what has been read from it and
//! not yet used, and the request body read from it. The connection reads request heads from it;
//! a request's body is read from it by whoever sends that body upstream, one at a time.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::framing::{Framing, Step};

/// Bytes read from a client at a time.
pub const READ_SIZE: usize = 8 * 1024;

/// How long a closing connection (or an abandoned HTTP/2 request body) waits for more of what
/// the client still sends, at most, and how long it lingers in all (nginx's `lingering_timeout`
/// and `lingering_time` are 5 s and 30 s).
pub const LINGER_QUIET: Duration = Duration::from_secs(2);
pub const LINGER_MOST: Duration = Duration::from_secs(10);

/// Read buffers kept per thread for connections to take when a request arrives.
const SPARES: usize = 64;

thread_local! {
    /// Read buffers given back by connections between requests.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A TLS client connection.
pub type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A client connection, before it is split.
#[derive(Debug)]
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A client connection's read half.
#[derive(Debug)]
pub enum ClientRead {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<Tls>>),
}

/// A client connection's write half.
#[derive(Debug)]
pub enum ClientWrite {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<Tls>>),
}

impl ClientWrite {
    /// Closes the connection with a reset (once the read half is dropped): an answer cut short
    /// (the upstream failed mid-body) must not end in the FIN that also ends a whole answer
    /// framed by its close, as an HTTP/1.0 client's is. (Over TLS the missing close_notify says
    /// so.)
    pub fn reset(self) {
        if let ClientWrite::Plain(w) = self {
            let _ = w.as_ref().set_zero_linger();
            // Dropped, the write half would send a FIN first.
            w.forget();
        }
    }
}

impl ClientIo {
    pub fn split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientIo::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientIo::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::Tls($s) => $e,
        }
    };
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A connection that was read into `pre` before it was handed on (to HTTP/2, or to a tunnel):
/// reading gives those bytes first.
#[derive(Debug)]
pub struct Rewind<R, W> {
    pub pre: Bytes,
    pub read: R,
    pub write: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Rewind<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Rewind<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// The read half and what was read from it and not yet used.
#[derive(Debug)]
pub struct Inbound {
    pub io: ClientRead,
    pub buf: BytesMut,
    /// How much of the current request's body is left to read.
    pub framing: Framing,
    /// The current request's `Expect: 100-continue`, until it is met.
    pub expect: Continue,
}

/// Where a request's `Expect: 100-continue` stands. The `100 Continue` is sent only when the
/// body is first wanted and not already there, as hyper's server does: a request answered
/// without its body (an upstream that cannot be reached) is answered without the client sending
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    /// Nothing expected, or the `100 Continue` has gone out.
    Met,
    /// Expected, and the body not wanted yet.
    Owed,
    /// The body is wanted: the connection is to send the `100 Continue`.
    Due,
}

impl Inbound {
    /// Reads once into the buffer; the count, 0 at the end. With nothing buffered (between
    /// requests) no memory is taken until the client sends something.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() == 0 {
            if let ClientRead::Plain(r) = &self.io {
                ready!(r.as_ref().poll_read_ready(cx))?;
            }
            self.buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Between requests, with nothing read ahead: gives the buffer back (to the thread's
    /// spares), so that an idle keep-alive connection holds none.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() != 0 {
            let buf = std::mem::take(&mut self.buf);
            SPARE.with_borrow_mut(|spare| {
                if spare.len() < SPARES {
                    spare.push(buf);
                }
            });
        }
    }
}

/// The read side, shared between the connection and the request body being read.
pub type Shared = Arc<Mutex<Inbound>>;

pub fn lock(shared: &Shared) -> MutexGuard<'_, Inbound> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a client's request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("the client closed the connection before the end of the request body")]
    Cut,
    #[error(transparent)]
    Invalid(#[from] crate::framing::Invalid),
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

/// A request body read from an HTTP/1.1 client connection, as its framing says.
#[derive(Debug)]
pub struct InboundBody {
    shared: Shared,
}

impl InboundBody {
    pub fn new(shared: Shared) -> Self {
        InboundBody { shared }
    }
}

impl Body for InboundBody {
    type Data = Bytes;
    type Error = InboundError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        let mut guard = lock(&self.shared);
        let inbound = &mut *guard;
        loop {
            match inbound.framing.decode(&mut inbound.buf) {
                Ok(Step::Data(data)) => {
                    // The client sends its body without waiting: nothing more to tell it.
                    if inbound.expect == Continue::Owed {
                        inbound.expect = Continue::Met;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            if inbound.expect == Continue::Owed {
                // The client waits for it before sending the body; the connection, which polls
                // this body, sends it next.
                inbound.expect = Continue::Due;
            }
            match ready!(inbound.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Some(Err(InboundError::Cut))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(InboundError::Io(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.shared).framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.shared).framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}
