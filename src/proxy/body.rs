//! What ramp answers with, and the bookkeeping that rides on it: while an answer's body is alive
//! its request counts as in progress, and each frame sent counts as progress for the watchdog.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::routing::PoolName;
use crate::upstream::UpstreamBody;

use super::context::Conn;
use super::error::body_for;
use super::share::Share;

/// What ramp answers with: an upstream's streamed body, or a short error of its own. While it
/// lives, its connection counts as busy for the slow-head watchdog.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Either<UpstreamBody, Full<Bytes>>,
    pub(super) busy: Option<Busy>,
    /// The pool whose answer this is, and the user's hash: charged if its upstream breaks the
    /// body off.
    pub(super) judged: Option<(PoolName, Option<u64>, bool)>,
    /// A canary's event stream: ended once the rollout sends its user to stable
    /// ([`super::follow`]).
    pub(super) follow: Option<Moved>,
}

/// The future that completes once an event stream's user is sent to stable.
pub(super) struct Moved(pub(super) Pin<Box<dyn Future<Output = ()> + Send>>);

impl std::fmt::Debug for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Moved")
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = crate::upstream::BodyError;

    #[inline]
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(moved) = &mut this.follow
            && moved.0.as_mut().poll(cx).is_ready()
        {
            this.follow = None;
            this.inner = Either::Right(Full::default());
            return std::task::Poll::Ready(Some(Err(crate::upstream::BodyError::Moved)));
        }
        let frame = match &mut this.inner {
            Either::Left(b) => std::pin::Pin::new(b).poll_frame(cx),
            Either::Right(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        match (&frame, &this.busy) {
            (std::task::Poll::Ready(Some(Ok(_))), Some(busy)) => busy.conn.activity.progress(),
            // Nothing to send while the upstream waits for the rest of the upload (polled again
            // as the upload moves): the client is not the one stalling the answer.
            (std::task::Poll::Pending, Some(busy)) if matches!(&this.inner, Either::Left(b) if b.uploading()) =>
            {
                busy.conn.activity.progress();
            }
            (std::task::Poll::Ready(Some(Err(e))), Some(busy)) => {
                if let (Some((pool, user, counted)), Some(kind)) =
                    (this.judged.take(), e.upstream_kind())
                {
                    // The answer was judged by its head; its body failing at the upstream's end
                    // makes it an error after all (a client that stops reading is no error).
                    let proxy = &busy.conn.proxy;
                    if counted {
                        proxy.analysis.recorder.broken_body(pool, user);
                    }
                    proxy.metrics.upstream_error(pool, kind);
                    tracing::debug!(pool = pool.as_str(), error = %e, "upstream answer broken off");
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request in progress on its connection; dropped with the answer's body (or the abandoned
/// handler), it ends the request.
#[derive(Debug)]
pub(super) struct Busy {
    pub(super) conn: Arc<Conn>,
    /// The answer's body is going out (watched for a client that takes nothing).
    pub(super) sending: bool,
    /// An HTTP/2 request's share of the upstream connections (see [`super::share`]).
    pub(super) share: Option<Share>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.sending {
            self.conn.activity.sent();
        }
        self.conn.activity.end();
    }
}

impl ProxyBody {
    /// An upstream's streamed body.
    pub fn upstream(body: UpstreamBody) -> Self {
        ProxyBody {
            inner: Either::Left(body),
            busy: None,
            judged: None,
            follow: None,
        }
    }

    /// The upstream's fields, when they came through ramp's own client side: they go out
    /// before the response's `HeaderMap`, which holds only what ramp added.
    pub fn upstream_fields(&self) -> Option<&crate::upstream::Fields> {
        match &self.inner {
            Either::Left(body) => body.fields(),
            Either::Right(_) => None,
        }
    }

    /// Takes the upstream's fields out.
    pub fn take_upstream_fields(&mut self) -> Option<Box<crate::upstream::Fields>> {
        match &mut self.inner {
            Either::Left(body) => body.take_fields(),
            Either::Right(_) => None,
        }
    }

    /// The length of the body of one of ramp's own answers (an upstream's answer is `None`: it
    /// says its own).
    pub fn own_length(&self) -> Option<u64> {
        match &self.inner {
            Either::Left(_) => None,
            Either::Right(full) => http_body::Body::size_hint(full).exact(),
        }
    }

    /// No body (a WebSocket handshake's answer).
    pub fn empty() -> Self {
        ProxyBody {
            inner: Either::Right(Full::default()),
            busy: None,
            judged: None,
            follow: None,
        }
    }
}

impl Busy {
    /// A request has begun on `conn`.
    pub(super) fn begin(conn: Arc<Conn>, http2: bool) -> Self {
        conn.activity.begin(http2);
        Busy {
            conn,
            sending: false,
            share: None,
        }
    }
}

/// ramp's own short answer with `status`: nothing about upstreams or pools.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody {
        inner: Either::Right(Full::new(body_for(status))),
        busy: None,
        judged: None,
        follow: None,
    });
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
