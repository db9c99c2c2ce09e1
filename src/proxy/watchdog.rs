//! The per-connection guard against slow request heads (and idle keep-alive connections): a
//! connection that has no request in progress for `header_read_timeout` is closed.
//!
//! hyper can do this itself, but it arms a fresh boxed timer for every request; here a request
//! costs two atomic updates and the connection's one timer is re-armed once per period.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// What one connection is doing.
#[derive(Debug)]
pub struct Activity {
    /// Requests in progress (from the head's arrival until the answer's body is done).
    active: AtomicU32,
    /// When the last request ended (or the connection opened), in ms since [`epoch`].
    idle_since: AtomicU64,
    /// HTTP/2 manages its own streams and pings: the watchdog stands down.
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

    /// Completes when the connection has been without a request for `limit`.
    pub async fn expired(&self, limit: Duration) {
        let limit_ms = limit.as_millis() as u64;
        loop {
            if self.http2.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let wait = if self.active.load(Ordering::Relaxed) > 0 {
                limit
            } else {
                let idle = now_ms().saturating_sub(self.idle_since.load(Ordering::Relaxed));
                if idle >= limit_ms {
                    return;
                }
                Duration::from_millis(limit_ms - idle)
            };
            tokio::time::sleep(wait).await;
        }
    }
}
