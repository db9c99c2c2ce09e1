//! The request going out on an upstream connection: the head, then the body, as the client
//! sends it (as it is under a Content-Length, or chunked).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::super::body::ReqBody;
use super::super::idle::IdleTimer;
use super::{Exchange, Failed, Wire};

/// Where sending stands: the head (in the wire's `out`), then each body frame (`data`, with a
/// chunk's size line in `out` and its CRLF in `tail`).
#[derive(Debug)]
pub struct Outgoing {
    pos: usize,
    data: Bytes,
    tail: &'static [u8],
    body_open: bool,
    chunked: bool,
    /// Everything went out.
    pub sent: bool,
    /// Some byte went out.
    pub wrote: bool,
    /// Writing failed (an answer may still be readable).
    pub error: Option<std::io::Error>,
    /// How long the upstream may take nothing.
    stall: IdleTimer,
    limit: Duration,
}

impl Outgoing {
    pub fn new(body_open: bool, chunked: bool, stall: Duration) -> Outgoing {
        Outgoing {
            pos: 0,
            data: Bytes::new(),
            tail: b"",
            body_open,
            chunked,
            sent: false,
            wrote: false,
            error: None,
            stall: IdleTimer::new(stall),
            limit: stall,
        }
    }

    pub fn failed(&self, error: Exchange) -> Failed {
        Failed::Exchange {
            error,
            wrote: self.wrote,
        }
    }

    /// Writes what it can; gives whether anything moved. Errors: the client's body failed, or
    /// (`watch_stall`) the upstream took nothing for the stall limit. A write error is kept in
    /// `error`, not returned: an answer may be waiting to be read.
    pub fn poll_send(
        &mut self,
        wire: &mut Wire,
        body: &mut ReqBody,
        watch_stall: bool,
        cx: &mut Context<'_>,
    ) -> Result<bool, Failed> {
        let mut moved = false;
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
                        moved = true;
                        // Trailers are not forwarded.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            self.frame(wire, data);
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        moved = true;
                        self.body_open = false;
                        wire.out.clear();
                        self.pos = 0;
                        if self.chunked {
                            wire.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Err(Failed::ClientBody(e)),
                    // The client's body has its own idle limit.
                    Poll::Pending => return Ok(moved),
                }
            } else {
                match Pin::new(&mut wire.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.sent = true;
                        // The answer's wait starts now (see `respond_after_body`).
                        body.stopped();
                    }
                    Poll::Ready(Err(e)) => self.write_failed(body, e),
                    Poll::Pending => {}
                }
                return Ok(moved);
            };
            match Pin::new(&mut wire.io).poll_write(cx, chunk) {
                Poll::Ready(Ok(0)) => self.write_failed(body, std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    moved = true;
                    self.wrote = true;
                    self.stall.activity();
                    if self.pos < wire.out.len() {
                        self.pos += n;
                    } else if !self.data.is_empty() {
                        self.data.advance(n);
                    } else {
                        self.tail = &self.tail[n..];
                    }
                }
                Poll::Ready(Err(e)) => self.write_failed(body, e),
                Poll::Pending if watch_stall && self.stall.poll_expired(cx) => {
                    return Err(self.failed(Exchange::Stalled(self.limit)));
                }
                Poll::Pending => return Ok(moved),
            }
        }
        Ok(moved)
    }

    fn write_failed(&mut self, body: &ReqBody, e: std::io::Error) {
        // What is left of the body will not be sent: the answer's wait starts now.
        body.stopped();
        self.error = Some(e);
    }

    /// Queues one body frame: as it is, or as a chunk.
    fn frame(&mut self, wire: &mut Wire, data: Bytes) {
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
