//! ramp's own HTTP/1.1 server side: request heads are parsed out of the connection's buffer, the
//! request is handled in the connection's own task, and the answer is written straight back, its
//! head and a short body in one write. Between requests an idle connection holds no buffer and a
//! small future (about 4 KiB in all, where hyper's server kept 32 KiB: its 8 KiB read and write
//! buffers, idle or not, and a request's future). HTTP/2 stays with hyper.

mod answer;
mod head;

use std::future::Future;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Limits;
use crate::inbound::{
    self, ClientRead, ClientWrite, Continue, Inbound, InboundBody, LINGER_MOST, LINGER_QUIET,
    Rewind, Shared,
};
use crate::upstream::ClientBody;

use super::body::error_response;
use super::context::Conn;
use super::handler::handle;
use super::watchdog::Signal;

/// A client connection handed on after its first bytes were read (to HTTP/2, or to a tunnel
/// after a 101): reading gives those bytes first.
pub type Handed = Rewind<ClientRead, ClientWrite>;

/// In the extensions of a request that asks to switch protocols: gives its client connection
/// once the 101 answer has gone out (to the first to take it).
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Handed>>>>);

impl OnUpgrade {
    pub fn take(&self) -> Option<oneshot::Receiver<Handed>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What comes after an exchange.
enum Next {
    KeepAlive,
    Close,
    /// A 101 went out: the connection goes to whoever asked for it.
    Upgrade(oneshot::Sender<Handed>),
    /// The answer was cut short: the connection ends with a reset, never in a way a whole
    /// answer could.
    Reset,
}

/// The most bytes a request head may take: a target up to 64 KiB fits, so that an over-long
/// target gets 414 from the request check rather than 431.
fn max_head(limits: &Limits) -> usize {
    limits.max_header_bytes + limits.max_uri_bytes.max(64 * 1024) + 1024
}

/// Serves HTTP/1.1 requests on the connection until it closes, fails, is told to close, or
/// switches protocols.
pub async fn serve(conn: &Arc<Conn>, inbound: Inbound, mut write: ClientWrite, limits: &Limits) {
    let shared: Shared = Arc::new(Mutex::new(inbound));
    let max_head = max_head(limits);
    let signal = &conn.signal;
    let mut registered = None;
    loop {
        // With no request in progress, whatever the reason to close: close now.
        let head = {
            let wait = std::pin::pin!(next_head(&shared, limits.max_headers, max_head));
            signal.unless(Signal::closing, &mut registered, wait).await
        };
        let head = match head {
            None | Some(Ok(None)) => return,
            Some(Ok(Some(head))) => head,
            Some(Err(status)) => {
                refuse(conn, &mut write, status).await;
                let wait = std::pin::pin!(linger(&shared, &mut write));
                signal.unless(Signal::aborting, &mut registered, wait).await;
                return;
            }
        };
        let next = {
            // Boxed: the connection's future stays small while it waits for the next request.
            let one = Box::pin(exchange(conn, &shared, head, &mut write));
            // Told to finish, this request goes on (its answer says `Connection: close`).
            signal.unless(Signal::aborting, &mut registered, one).await
        };
        let Some(next) = next else {
            return;
        };
        match next {
            Next::KeepAlive if !conn.signal.closing() => inbound::lock(&shared).release(),
            Next::KeepAlive | Next::Close => {
                if !inbound::lock(&shared).framing.is_done() {
                    // The client may still be sending the body nobody read.
                    let wait = std::pin::pin!(linger(&shared, &mut write));
                    signal.unless(Signal::aborting, &mut registered, wait).await;
                } else {
                    // Shut, not dropped: over TLS, a close_notify tells the client the answer
                    // ended here (one that ends with the connection, an HTTP/1.0 one, is
                    // otherwise a cut to it: curl's "unexpected eof").
                    let wait = std::pin::pin!(write.shutdown());
                    signal.unless(Signal::aborting, &mut registered, wait).await;
                }
                return;
            }
            Next::Reset => {
                write.reset();
                return;
            }
            Next::Upgrade(to) => {
                let Ok(inbound) = Arc::try_unwrap(shared) else {
                    return;
                };
                let inbound = inbound.into_inner().unwrap_or_else(|e| e.into_inner());
                let _ = to.send(Rewind {
                    pre: inbound.buf.freeze(),
                    read: inbound.io,
                    write,
                });
                return;
            }
        }
    }
}

/// The next request head; `None` when the client closed the connection between requests.
async fn next_head(
    shared: &Shared,
    max_fields: usize,
    max_head: usize,
) -> Result<Option<head::Head>, StatusCode> {
    // How much of the buffer was parsed as a partial head: parsing again waits for more.
    let mut parsed = 0;
    poll_fn(|cx| {
        let mut guard = inbound::lock(shared);
        let inbound = &mut *guard;
        loop {
            if inbound.buf.len() != parsed {
                match head::parse(&mut inbound.buf, max_fields, max_head) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) => parsed = inbound.buf.len(),
                    Err(status) => return Poll::Ready(Err(status)),
                }
            }
            match inbound.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Writes the `100 Continue` once the request body asks for it ([`Continue::Due`]), as far as
/// the connection takes it now; `continued` counts what has gone.
fn send_continue(
    shared: &Shared,
    write: &mut ClientWrite,
    continued: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> std::io::Result<()> {
    if inbound::lock(shared).expect != Continue::Due {
        return Ok(());
    }
    while *continued < CONTINUE.len() {
        match std::pin::Pin::new(&mut *write).poll_write(cx, &CONTINUE[*continued..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => *continued += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
    }
    inbound::lock(shared).expect = Continue::Met;
    Ok(())
}

/// Ready if the client has closed the connection (or it failed) while its request is handled,
/// once its body (if any) has been read: the request is then abandoned. Bytes sent meanwhile
/// (the next request) are kept for later.
fn client_gone(shared: &Shared, cx: &mut std::task::Context<'_>) -> Poll<()> {
    let mut inbound = inbound::lock(shared);
    // While the body is being read, its reader sees the end.
    if !inbound.buf.is_empty() || !inbound.framing.is_done() {
        return Poll::Pending;
    }
    match inbound.poll_fill(cx) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(()),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// One request: handled, and its answer written. Its future is boxed for every request, by
/// copying the whole of it, so it is kept small: an `async` block (an `async fn` would keep
/// `head` twice), and locals scoped (a local once borrowed keeps its place in the future until
/// its scope ends).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn exchange(
    conn: &Arc<Conn>,
    shared: &Shared,
    head: head::Head,
    write: &mut ClientWrite,
) -> impl Future<Output = Next> {
    async move {
        let (version, head_request) = (head.parts.version, head.parts.method == Method::HEAD);
        let (keep_alive, expect_continue) = (head.keep_alive, head.expect_continue);
        let body = if head.framing.is_done() {
            ClientBody::None
        } else {
            let mut inbound = inbound::lock(shared);
            inbound.framing = head.framing;
            if expect_continue {
                inbound.expect = Continue::Owed;
            }
            ClientBody::H1(InboundBody::new(Arc::clone(shared)))
        };
        let mut out = answer::Out::take();
        let (req, upgrade) = request(head.parts, body, head.upgrade);
        // How much of a `100 Continue` has been written.
        let mut continued = 0;
        // Scoped, as the answer's head is: only its body is kept while it is written.
        let (framed, close, switching, mut body) = {
            let answered = {
                // Pinned where it is, and gone once it has answered: the request's future is
                // the largest part of this one.
                let mut handling = std::pin::pin!(handle(Arc::clone(conn), req));
                poll_fn(|cx| {
                    if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                        return Poll::Ready(Some(resp));
                    }
                    if expect_continue && send_continue(shared, write, &mut continued, cx).is_err()
                    {
                        return Poll::Ready(None);
                    }
                    if client_gone(shared, cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await
            };
            let Some(Ok(resp)) = answered else {
                return Next::Close;
            };
            if expect_continue {
                // An answer before the body was wanted replaces the `100 Continue`; one begun
                // is finished.
                inbound::lock(shared).expect = Continue::Met;
                if continued > 0 && continued < CONTINUE.len() {
                    out.extend_from_slice(&CONTINUE[continued..]);
                }
            }
            // A request body not read to its end by now (the request failed, or the upstream
            // answered early) leaves the connection unusable: the answer says so.
            let unread = !inbound::lock(shared).framing.is_done();
            let close = !keep_alive || unread || conn.signal.closing();
            let (framed, close) = answer::head(&mut out, &resp, version, head_request, close);
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            (framed, close, switching, resp.into_body())
        };
        if switching {
            let next = match upgrade {
                Some(to) if answer::flush(write, &mut out).await.is_ok() => Next::Upgrade(to),
                _ => Next::Close,
            };
            drop(body);
            return next;
        }
        if let Err(e) = answer::body(write, &mut out, &mut body, framed).await {
            tracing::debug!(peer = %conn.info.peer, error = %e, "answer not sent whole");
            return Next::Reset;
        }
        drop(body);
        if close || !inbound::lock(shared).framing.is_done() {
            // The request's body was not all read: what follows on the connection is not a head.
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// The request the handler takes, and for a request that asks to switch protocols, where to
/// hand the connection if the upstream agrees.
fn request(
    parts: http::request::Parts,
    body: ClientBody,
    upgrade: bool,
) -> (Request<ClientBody>, Option<oneshot::Sender<Handed>>) {
    let mut req = Request::from_parts(parts, body);
    let upgrade = upgrade.then(|| {
        let (to, from) = oneshot::channel();
        req.extensions_mut()
            .insert(OnUpgrade(Arc::new(Mutex::new(Some(from)))));
        to
    });
    (req, upgrade)
}

/// Closes the way nginx's lingering close does, once the answer is out while the client may
/// still be sending (a request body not read, a refused head): our side is shut (FIN, after a
/// TLS close_notify), and what the client still sends is read and dropped until it stops, is
/// quiet for `LINGER_QUIET`, or `LINGER_MOST` has passed. Closed at once, the unread bytes would
/// make the kernel reset the connection, and a reset can destroy the answer before the client
/// has read it (RFC 9112 §9.6).
async fn linger(shared: &Shared, write: &mut ClientWrite) {
    if write.shutdown().await.is_err() {
        return;
    }
    let end = Instant::now() + LINGER_MOST;
    loop {
        let read = poll_fn(|cx| {
            let mut inbound = inbound::lock(shared);
            inbound.buf.clear();
            inbound.poll_fill(cx)
        });
        let until = end.min(Instant::now() + LINGER_QUIET);
        match tokio::time::timeout_at(until, read).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Answers a head that cannot be served (malformed, too large), and the connection closes.
async fn refuse(conn: &Conn, write: &mut ClientWrite, status: StatusCode) {
    conn.proxy.metrics.rejected.increment(1);
    tracing::debug!(peer = %conn.info.peer, status = status.as_u16(), "request head refused");
    let resp = error_response(status);
    let mut out = answer::Out::take();
    let (framed, _) = answer::head(&mut out, &resp, http::Version::HTTP_11, false, true);
    let _ = answer::body(write, &mut out, &mut resp.into_body(), framed).await;
}
