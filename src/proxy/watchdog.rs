//! The per-connection guard against slow request heads and idle connections: an HTTP/1
//! connection that has no request in progress for `header_read_timeout` is closed, an HTTP/2
//! connection without a stream for `idle_timeout` gets a GOAWAY.
//!
//! hyper can do this itself, but it arms a fresh boxed timer for every request; here a request
//! costs two atomic updates and the connection's one timer is re-armed once per period.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

/// Why a connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// HTTP/1: no complete request head within the limit (idle keep-alive included).
    SlowHead,
    /// HTTP/2: no stream for the idle limit; a GOAWAY ends it cleanly.
    Idle,
}

/// What one connection is doing.
#[derive(Debug)]
pub struct Activity {
    /// Requests in progress (from the head's arrival until the answer's body is done).
    active: AtomicU32,
    /// When the last request ended (or the connection opened), in ms since [`epoch`].
    idle_since: AtomicU64,
    /// Set by the first HTTP/2 request: streams, not heads, then count.
    http2: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            http2: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// A request's head has arrived. Pair with [`Activity::end`].
    #[inline]
    pub fn begin(&self, http2: bool) {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request is done (its answer sent, or abandoned).
    #[inline]
    pub fn end(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Completes when the connection should close: an HTTP/1 connection without a request in
    /// progress for `head_limit` (a slow or missing head), an HTTP/2 one without a stream for
    /// `idle_limit`.
    pub async fn expired(&self, head_limit: Duration, idle_limit: Duration) -> Expiry {
        // Whether the connection speaks HTTP/2 is learnt from its first request, possibly while
        // this sleeps: no sleep is longer than the shorter limit.
        let longest_sleep = head_limit.min(idle_limit);
        loop {
            let http2 = self.http2.load(Ordering::Relaxed);
            let limit = if http2 { idle_limit } else { head_limit };
            let limit_ms = limit.as_millis() as u64;
            let wait = if self.active.load(Ordering::Relaxed) > 0 {
                limit
            } else {
                let idle = now_ms().saturating_sub(self.idle_since.load(Ordering::Relaxed));
                if idle >= limit_ms {
                    return if http2 {
                        Expiry::Idle
                    } else {
                        Expiry::SlowHead
                    };
                }
                Duration::from_millis(limit_ms - idle)
            };
            tokio::time::sleep(wait.min(longest_sleep)).await;
        }
    }
}
