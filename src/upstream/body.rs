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

use super::Upstream;
use super::client_body::ClientBody;
use super::idle::{BodyError, IdleTimer};
use super::wire::{Failed, Fields, Framing, Outgoing, Step, Wire};

/// Polls `inner` for a data frame, aborting after the idle limit. Trailers are dropped: ramp does
/// not forward them (and removes the `Trailer` field that announces them).
fn poll_idle<B>(
    inner: &mut B,
    idle: &mut IdleTimer,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    loop {
        return match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                idle.activity();
                continue;
            }
            Poll::Ready(frame) => {
                idle.activity();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if idle.poll_expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Idle(limit))))
            }
            Poll::Pending => Poll::Pending,
        };
    }
}

/// When a streamed request body moved ([`crate::clock::now_us`]; 0: not yet).
#[derive(Debug, Default)]
pub struct BodyTimes {
    /// Sending the request ended: written to the upstream whole, or stopped by a failed write.
    /// The response timeout runs from here, so a long upload does not count against it.
    pub done: AtomicU64,
    /// The client's body last moved (a data frame read, or its end): the latency the comparison
    /// judges runs from here at the latest, so a client's slow upload is not the upstream's.
    pub moved: AtomicU64,
}

/// The body ramp sends upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// No body (most GETs): nothing to stream, and the request can be replayed.
    Empty,
    Stream {
        inner: ClientBody,
        idle: IdleTimer,
        limit: Duration,
        times: Arc<BodyTimes>,
    },
}

impl ReqBody {
    pub fn new(inner: ClientBody, limit: Duration) -> Self {
        if inner.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Stream {
                inner,
                idle: IdleTimer::new(limit),
                limit,
                times: Arc::default(),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }

    /// Sending the request ended: written whole, or stopped by a failed write. The response
    /// timeout runs from now.
    pub(super) fn stopped(&self) {
        if let ReqBody::Stream { times, .. } = self {
            let now = crate::clock::now_us().max(1);
            let _ = times
                .done
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Where a streamed body's progress is recorded.
    pub fn times(&self) -> Option<Arc<BodyTimes>> {
        match self {
            ReqBody::Empty => None,
            ReqBody::Stream { times, .. } => Some(Arc::clone(times)),
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
                times,
            } => {
                let polled = poll_idle(inner, idle, *limit, cx);
                if matches!(polled, Poll::Ready(None | Some(Ok(_)))) {
                    times
                        .moved
                        .store(crate::clock::now_us().max(1), Ordering::Relaxed);
                }
                polled
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

/// Where a pooled answer's connection goes back once the body has been read to its end.
#[derive(Debug)]
struct Reuse {
    upstream: Arc<Upstream>,
    max_idle: usize,
}

#[derive(Debug)]
enum Source {
    /// Read by ramp from the upstream connection.
    Wire {
        wire: Option<Box<Wire>>,
        framing: Framing,
        reuse: Option<Reuse>,
        /// The rest of a request the upstream answered before it had all of it.
        sending: Option<Box<Sending>>,
    },
    /// From hyper's client (a refused WebSocket handshake): never pooled. The connection keeps
    /// its place under `upstream.max_connections` until the answer has been read.
    Hyper(Incoming, super::Slot),
}

/// A request still going out while its answer is read (an upstream that streams its answer
/// as the upload comes in).
#[derive(Debug)]
pub(super) struct Sending {
    pub(super) out: Outgoing,
    pub(super) body: ReqBody,
}

/// The body ramp answers with, from an upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    source: Source,
    idle: IdleTimer,
    limit: Duration,
    /// The answer's fields, when its head was read by ramp's own client side (the response's
    /// `HeaderMap` then holds only what ramp adds).
    pub(super) fields: Option<Box<Fields>>,
}

impl UpstreamBody {
    /// The body that follows an answer's head on `wire`; `keep_alive`: the connection may
    /// carry another exchange once the body has been read (and all of the request sent).
    pub(super) fn new(
        wire: Box<Wire>,
        framing: Framing,
        keep_alive: bool,
        sending: Option<Box<Sending>>,
        upstream: Arc<Upstream>,
        max_idle: usize,
        limit: Duration,
    ) -> Self {
        let mut body = UpstreamBody {
            source: Source::Wire {
                wire: Some(wire),
                framing,
                reuse: keep_alive.then_some(Reuse { upstream, max_idle }),
                sending,
            },
            idle: IdleTimer::new(limit),
            limit,
            fields: None,
        };
        if framing.is_done() {
            body.finish();
        }
        body
    }

    /// A body on a connection that is not pooled (a refused WebSocket handshake), holding the
    /// connection's `slot`.
    pub fn unpooled(inner: Incoming, slot: super::Slot, limit: Duration) -> Self {
        UpstreamBody {
            source: Source::Hyper(inner, slot),
            idle: IdleTimer::new(limit),
            limit,
            fields: None,
        }
    }

    /// The request is still going out while its answer is read (the upstream answered before
    /// it had all of the upload): an answer with nothing to send yet waits for the client's
    /// upload, not for the client to read.
    pub fn uploading(&self) -> bool {
        matches!(
            &self.source,
            Source::Wire {
                sending: Some(_),
                ..
            }
        )
    }

    /// The upstream's fields, to be written before the response's own.
    pub fn fields(&self) -> Option<&Fields> {
        self.fields.as_deref()
    }

    /// Takes the upstream's fields out (to make them a `HeaderMap`).
    pub fn take_fields(&mut self) -> Option<Box<Fields>> {
        self.fields.take()
    }

    /// The body has been read to its end: its connection goes back to the pool when it may
    /// carry another exchange, the request went out whole, and nothing unasked-for followed the
    /// body.
    fn finish(&mut self) {
        if let Source::Wire {
            wire,
            reuse,
            sending,
            ..
        } = &mut self.source
            && let Some(wire) = wire.take()
            && let Some(r) = reuse.take()
            && sending.is_none()
            && wire.buf.is_empty()
        {
            r.upstream.release(wire, r.max_idle);
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
        let (slot, framing, sending, reuse) = match &mut this.source {
            Source::Hyper(inner, _) => return poll_idle(inner, &mut this.idle, this.limit, cx),
            Source::Wire {
                wire,
                framing,
                sending,
                reuse,
            } => (wire, framing, sending, reuse),
        };
        let Some(wire) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(s) = sending.as_mut() {
            match s.out.poll_send(wire, &mut s.body, false, cx) {
                Ok(moved) => {
                    if moved {
                        this.idle.activity();
                    }
                    if s.out.sent {
                        *sending = None;
                    } else if s.out.error.is_some() {
                        // The upstream stopped taking the request; what it answers is still
                        // read, and the connection is not used again.
                        *sending = None;
                        *reuse = None;
                    }
                }
                Err(Failed::ClientBody(e)) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyError::Upload(Box::new(e)))));
                }
                Err(Failed::Exchange { .. }) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyError::Idle(this.limit))));
                }
            }
        }
        // Any error below drops the connection: its exchange is broken.
        loop {
            match framing.decode(&mut wire.buf) {
                Ok(Step::Data(data)) => {
                    this.idle.activity();
                    if framing.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyError::Invalid(e))));
                }
            }
            match wire.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    let whole = framing.at_eof();
                    *slot = None;
                    return Poll::Ready(if whole {
                        None
                    } else {
                        Some(Err(BodyError::Truncated))
                    });
                }
                Poll::Ready(Ok(_)) => this.idle.activity(),
                Poll::Ready(Err(e)) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
                Poll::Pending if this.idle.poll_expired(cx) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(BodyError::Idle(this.limit))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Wire { framing, .. } => framing.is_done(),
            Source::Hyper(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Wire {
                framing: Framing::Length(n),
                ..
            } => SizeHint::with_exact(*n),
            Source::Wire {
                framing: Framing::Done,
                ..
            } => SizeHint::with_exact(0),
            Source::Wire { .. } => SizeHint::default(),
            Source::Hyper(inner, _) => inner.size_hint(),
        }
    }
}
