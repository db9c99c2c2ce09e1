//! One HTTP/2 connection's share of the upstream connections. Below half of
//! `upstream.max_connections` its requests hold as many as they need; past half, at most
//! [`PAST_HALF`] at once, the rest waiting for one of theirs to end. Otherwise one client's
//! streams (uploading a byte now and then, never reading their answers, or held open as
//! WebSocket tunnels) could hold every place and leave everyone else a 503, while hundreds of
//! connections are what that now takes. Only holders count towards "past half": a connection's
//! waiting streams hold nothing, and neither do idle pooled connections (a burst's leftovers
//! would otherwise hold every HTTP/2 client to eight for a minute). A stream waits
//! [`WAIT_MOST`] at most, then gets ramp's own 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::context::Conn;

/// Upstream connections one HTTP/2 connection's requests may hold at once past half of
/// `upstream.max_connections`: a browser's usual concurrency per server over HTTP/1.1 and then
/// some, so that a page's assets, an event stream or a long poll and the request that ends it
/// still go on together.
pub const PAST_HALF: usize = 8;

/// How often a waiting request looks again whether the proxy fell below half meanwhile (one of
/// its own connection's requests ending wakes it at once).
const RECHECK: Duration = Duration::from_millis(50);

/// The longest a request waits for its connection's share (eight event streams or long polls
/// open on one connection would otherwise hold its every other request forever).
pub const WAIT_MOST: Duration = Duration::from_secs(10);

/// HTTP/2 requests (and tunnels) holding, or about to open, an upstream connection: how crowded
/// `upstream.max_connections` is. Counted as each takes its share, before the connection is
/// opened, so that a burst of streams sees itself.
static HOLDING: AtomicUsize = AtomicUsize::new(0);

/// A connection's holders and waiters.
#[derive(Debug, Default)]
pub struct Shares {
    held: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One request's (or tunnel's) hold on an upstream connection, given back when dropped.
#[derive(Debug)]
pub struct Share(Arc<Conn>);

impl Share {
    /// The share at once, unless `conn` holds [`PAST_HALF`] already and the proxy is past half
    /// of `max`.
    pub fn try_take(conn: &Arc<Conn>, max: usize) -> Option<Share> {
        let shares = conn.shares();
        let before = HOLDING.fetch_add(1, Ordering::Relaxed);
        let mine = shares.held.fetch_add(1, Ordering::Relaxed);
        if mine < PAST_HALF || before < max / 2 {
            return Some(Share(Arc::clone(conn)));
        }
        HOLDING.fetch_sub(1, Ordering::Relaxed);
        shares.held.fetch_sub(1, Ordering::Relaxed);
        None
    }

    /// Waits for the share: until one of `conn`'s own holders ends, or the proxy is below half;
    /// `None` after [`WAIT_MOST`].
    pub async fn wait(conn: &Arc<Conn>, max: usize) -> Option<Share> {
        let shares = conn.shares();
        let _waiting = Waiting::new(shares);
        let end = tokio::time::Instant::now() + WAIT_MOST;
        loop {
            let freed = shares.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so that a holder ending in between is not missed.
            freed.as_mut().enable();
            if let Some(share) = Share::try_take(conn, max) {
                return Some(share);
            }
            let now = tokio::time::Instant::now();
            if now >= end {
                return None;
            }
            let _ = tokio::time::timeout_at(end.min(now + RECHECK), freed).await;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        HOLDING.fetch_sub(1, Ordering::Relaxed);
        let shares = self.0.shares();
        shares.held.fetch_sub(1, Ordering::Relaxed);
        if shares.waiting.load(Ordering::Relaxed) > 0 {
            shares.freed.notify_one();
        }
    }
}

/// A request counted among its connection's waiters while it waits (and not after, even when its
/// client gives up meanwhile).
struct Waiting<'a>(&'a Shares);

impl<'a> Waiting<'a> {
    fn new(shares: &'a Shares) -> Self {
        shares.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(shares)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
