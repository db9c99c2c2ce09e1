//! A request that went upstream and whose client gave up before the answer's head: counted
//! (as a lower bound of its latency, in the comparison, once its client had waited a second) and
//! held against its HTTP/2 connection, whose client may be resetting streams on purpose.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::logs::EverySecond;
use crate::routing::PoolName;
use crate::upstream::BodyTimes;

use super::context::{Conn, TooMany};
use super::handler::latency;

/// How long a client must have waited before it gave up for its request to count: giving up
/// sooner says nothing of the upstream (and would let anyone add fast "successes" by the
/// thousand without an upstream ever seeing them).
const GAVE_UP_AFTER_US: u64 = 1_000_000;

/// A request sent upstream whose client went away before the answer's head (its future dropped)
/// after waiting at least [`GAVE_UP_AFTER_US`]: still counted, with the time it had waited as its
/// latency (a lower bound), so that a canary that hangs until clients give up shows in the
/// comparison. Not counted while its body was still coming (the client stopped its own upload),
/// nor once answered.
pub(super) struct Unanswered<'a> {
    pub(super) conn: &'a Conn,
    pub(super) pool: PoolName,
    pub(super) start: Instant,
    pub(super) body: Option<Arc<BodyTimes>>,
    pub(super) user: Option<u64>,
    pub(super) armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let proxy = &self.conn.proxy;
        proxy.metrics.abandoned[self.pool].increment(1);
        // Each stream reset after its request went upstream cost an upstream request (and, cut
        // off, its connection), where a reset before costs nothing: hyper's guard against rapid
        // resets counts only those.
        let signal = &self.conn.signal;
        match self
            .conn
            .activity
            .is_http2()
            .then(|| self.conn.abandons.one())
        {
            Some(Some(TooMany::GoAway)) if !signal.closing() => {
                static FLOOD: EverySecond = EverySecond::new();
                if let Some(unlogged) = FLOOD.admit_now() {
                    tracing::warn!(peer = %self.conn.info.peer, unlogged, "an HTTP/2 client reset over 100 streams in 10 s after their requests went upstream: its connection gets a GOAWAY");
                }
                signal.close(super::watchdog::FINISH);
            }
            Some(Some(TooMany::Close)) if !signal.aborting() => {
                static HEEDLESS: EverySecond = EverySecond::new();
                if let Some(unlogged) = HEEDLESS.admit_now() {
                    tracing::warn!(peer = %self.conn.info.peer, unlogged, "an HTTP/2 client went on resetting streams after its GOAWAY: its connection is closed");
                }
                signal.close(super::watchdog::ABORT);
            }
            _ => {}
        }
        let whole = self
            .body
            .as_ref()
            .is_none_or(|t| t.done.load(Ordering::Relaxed) != 0);
        let waited = latency(self.start, self.body.as_deref());
        if whole && waited >= GAVE_UP_AFTER_US {
            proxy
                .analysis
                .recorder
                .record(self.pool, false, waited, self.user, None);
        }
    }
}
