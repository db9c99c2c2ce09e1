//! The response body from an upstream, streamed to the client; when it has been read to the end
//! its connection goes back to the pool, otherwise the connection is closed with it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::{ReqBody, Upstream};

#[derive(Debug)]
struct Reuse {
    upstream: Arc<Upstream>,
    sender: http1::SendRequest<ReqBody>,
    max_idle: usize,
}

#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Reuse>,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        upstream: Arc<Upstream>,
        sender: http1::SendRequest<ReqBody>,
        max_idle: usize,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            reuse: Some(Reuse {
                upstream,
                sender,
                max_idle,
            }),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(r) = self.reuse.take() {
            r.upstream.release(r.sender, r.max_idle);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            None => this.release(),
            // A broken exchange: the connection is not reused.
            Some(Err(_)) => this.reuse = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
