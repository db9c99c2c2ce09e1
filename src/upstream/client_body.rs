//! A client's request body as ramp reads it, and what is done with the rest of an HTTP/2 one when
//! the answer came first.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::inbound::{InboundBody, LINGER_MOST, LINGER_QUIET};

use super::idle::BodyError;

/// A client's request body: read by ramp from an HTTP/1.1 connection, or by hyper from an HTTP/2
/// stream.
#[derive(Debug)]
pub enum ClientBody {
    /// No body.
    None,
    H1(InboundBody),
    H2(H2Body),
}

/// An HTTP/2 request body. Dropped before its end (the upstream answered early, or ramp refused
/// the request), what is left of it is read on or reset by the answer (see [`Leftover`]).
#[derive(Debug)]
pub struct H2Body {
    inner: Option<Incoming>,
    left: Option<Arc<Mutex<Left>>>,
    /// The end was seen once, and held back for one turn of the task (see `poll_frame`).
    end_seen: bool,
}

/// An abandoned body and its request's answer, whichever comes first.
#[derive(Debug, Default)]
struct Left {
    status: Option<http::StatusCode>,
    body: Option<Incoming>,
}

impl H2Body {
    /// The body, and (unless it is already at its end) the handle to give its answer to.
    pub fn new(inner: Incoming) -> (Self, Option<Leftover>) {
        let left = (!inner.is_end_stream()).then(|| Arc::new(Mutex::new(Left::default())));
        let leftover = left.as_ref().map(|l| Leftover(Arc::clone(l)));
        (
            H2Body {
                inner: Some(inner),
                left,
                end_seen: false,
            },
            leftover,
        )
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        let (Some(body), Some(left)) = (self.inner.take(), &self.left) else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let mut left = left.lock().unwrap_or_else(|e| e.into_inner());
        match left.status {
            Some(status) => {
                drop(left);
                settle(status, body);
            }
            None => left.body = Some(body),
        }
    }
}

/// Where an HTTP/2 request body dropped before its end meets its request's answer.
#[derive(Debug)]
pub struct Leftover(Arc<Mutex<Left>>);

impl Leftover {
    /// The request was answered with `status` (the body may be abandoned before or after).
    pub fn answered(self, status: http::StatusCode) {
        let mut left = self.0.lock().unwrap_or_else(|e| e.into_inner());
        left.status = Some(status);
        let body = left.body.take();
        drop(left);
        if let Some(body) = body {
            settle(status, body);
        }
    }
}

/// What becomes of an abandoned body. Under a refusal (3xx to 5xx) the client is likely still
/// uploading: the rest is read and dropped until the client ends it, is quiet for
/// [`LINGER_QUIET`] or [`LINGER_MOST`] has passed, as an HTTP/1.1 connection lingers, so that the
/// client reads the answer and stops (curl stops on such an answer) instead of meeting a reset
/// (RST_STREAM NO_ERROR, which RFC 9113 §8.1 allows but curl up to 8.x reports as an error,
/// losing the answer). Under a success the stream is reset once the answer is out, as hyper
/// does: curl keeps uploading after a success and, its send window used up, never reads the
/// window updates a drain sends, so it would hang where a reset fails it at once.
fn settle(status: http::StatusCode, body: Incoming) {
    if status.as_u16() < 300 {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(drain(body));
    }
}

/// Reads the rest of an abandoned HTTP/2 request body and drops it, within the linger limits.
async fn drain(mut body: Incoming) {
    let end = tokio::time::Instant::now() + LINGER_MOST;
    loop {
        let until = end.min(tokio::time::Instant::now() + LINGER_QUIET);
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let me = self.get_mut();
        match &mut me.inner {
            Some(body) => match Pin::new(body).poll_frame(cx) {
                // hyper ends a body whose stream the client reset with NO_ERROR as if the client
                // had ended it (RFC 9113 §8.1's early answer, read from the client's side); from
                // a client it is an upload abandoned. The end goes on after one turn of the task:
                // hyper's server looks for a reset whenever the request's future waits, and drops
                // it then — before the upstream is sent the end of a body nobody finished.
                Poll::Ready(None) if !me.end_seen => {
                    me.end_seen = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                polled => polled,
            },
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::None => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Client),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Http),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::None => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::None => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}
