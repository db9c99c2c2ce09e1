//! Bodies crossing ramp. The request body is the client's, streamed; the response body is the
//! upstream's, streamed, and puts its connection back in the pool once read to the end (or closes
//! it with itself otherwise). Either is aborted after `body_idle_timeout` without data.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use crate::clock::now_ms;

use super::Upstream;
use super::idle::{BodyError, IdleTimer};

/// Polls `inner` for a data frame, aborting after the idle limit. Trailers are dropped: ramp does
/// not forward them (and removes the `Trailer` field that announces them).
fn poll_idle(
    inner: &mut Incoming,
    idle: &mut IdleTimer,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        return match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                idle.activity();
                continue;
            }
            Poll::Ready(frame) => {
                idle.activity();
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Http)))
            }
            Poll::Pending if idle.poll_expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Idle(limit))))
            }
            Poll::Pending => Poll::Pending,
        };
    }
}

/// The body ramp sends upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// No body (most GETs): nothing to stream, and the request can be replayed.
    Empty,
    Stream {
        inner: Incoming,
        idle: IdleTimer,
        limit: Duration,
        /// When the body was read to its end ([`now_ms`]), 0 until then: the response timeout
        /// starts there, so a long upload does not count against it.
        done: Arc<AtomicU64>,
    },
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: Duration) -> Self {
        if inner.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Stream {
                inner,
                idle: IdleTimer::new(limit),
                limit,
                done: Arc::new(AtomicU64::new(0)),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }

    /// Where the end of a streamed body will be recorded.
    pub(super) fn done(&self) -> Option<Arc<AtomicU64>> {
        match self {
            ReqBody::Empty => None,
            ReqBody::Stream { done, .. } => Some(Arc::clone(done)),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream {
                inner,
                idle,
                limit,
                done,
            } => {
                let frame = poll_idle(inner, idle, *limit, cx);
                if matches!(frame, Poll::Ready(None)) || inner.is_end_stream() {
                    done.store(now_ms().max(1), Ordering::Relaxed);
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

#[derive(Debug)]
struct Reuse {
    upstream: Arc<Upstream>,
    sender: http1::SendRequest<ReqBody>,
    max_idle: usize,
}

/// The body ramp answers with, from an upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Reuse>,
    idle: IdleTimer,
    limit: Duration,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        upstream: Arc<Upstream>,
        sender: http1::SendRequest<ReqBody>,
        max_idle: usize,
        limit: Duration,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            reuse: Some(Reuse {
                upstream,
                sender,
                max_idle,
            }),
            idle: IdleTimer::new(limit),
            limit,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    /// A body on a connection that is not pooled (a refused WebSocket handshake).
    pub fn unpooled(inner: Incoming, limit: Duration) -> Self {
        UpstreamBody {
            inner,
            reuse: None,
            idle: IdleTimer::new(limit),
            limit,
        }
    }

    /// The connection must not carry another exchange (its framing cannot be trusted).
    pub fn forbid_reuse(&mut self) {
        self.reuse = None;
    }

    fn release(&mut self) {
        if let Some(r) = self.reuse.take() {
            r.upstream.release(r.sender, r.max_idle);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let frame = poll_idle(&mut this.inner, &mut this.idle, this.limit, cx);
        match &frame {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(None) => this.release(),
            // A broken or stalled exchange: the connection is not reused.
            Poll::Ready(Some(Err(_))) => this.reuse = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
