//! The per-connection guard against slow request heads, idle connections and stalled readers: an
//! HTTP/1 connection that has no request in progress for `header_read_timeout` is closed, an
//! HTTP/2 connection without a stream for `h2_idle_timeout` gets a GOAWAY, and a connection that
//! takes nothing of the answers it is being sent for `body_idle_timeout` is closed.
//!
//! hyper can do this itself, but it arms a fresh boxed timer for every request; here a request
//! costs two atomic updates and the connection's one timer is re-armed once per period.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now_ms;

/// Close at once (a head that does not arrive, a client that takes nothing).
pub const ABORT: u8 = 1;
/// Finish what is in flight, then close.
pub const FINISH: u8 = 2;

/// Between a connection, its watchdog task and whoever needs it closed.
#[derive(Debug, Default)]
pub struct Signal {
    /// Tells an HTTP/2 connection to close (why: `reason`).
    pub to_connection: Notify,
    /// Woken to tell an HTTP/1.1 connection to close: registered once per connection, where a
    /// `Notify` would be waited on (and its waiter list locked) for every request.
    waker: Mutex<Option<Waker>>,
    pub reason: AtomicU8,
    /// The connection tells the watchdog it has ended.
    pub to_watchdog: Notify,
    /// Set once the connection was told to close.
    closing: AtomicBool,
}

impl Signal {
    /// Whether the connection has been told to close.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn close(&self, reason: u8) {
        self.reason.store(reason, Ordering::Relaxed);
        self.closing.store(true, Ordering::SeqCst);
        self.to_connection.notify_one();
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the connection was told to close at once.
    pub fn aborting(&self) -> bool {
        self.closing() && self.reason.load(Ordering::Relaxed) == ABORT
    }

    /// Polls `fut` to its end, unless `stop` says the connection must close first (`None`).
    /// The task's waker is handed to [`Signal::close`] once, and again only if it changes.
    pub async fn unless<F: Future + Unpin>(
        &self,
        stop: fn(&Signal) -> bool,
        registered: &mut Option<Waker>,
        mut fut: F,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = Pin::new(&mut fut).poll(cx) {
                return Poll::Ready(Some(out));
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                *registered = Some(cx.waker().clone());
            }
            // Read after the waker is in place: a close from now on wakes this task.
            if stop(self) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// Why a connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// HTTP/1: no complete request head within the limit (idle keep-alive included).
    SlowHead,
    /// HTTP/2: no stream for the idle limit; a GOAWAY ends it cleanly.
    Idle,
    /// Answers are being sent, and the client has taken nothing for the body idle limit.
    Stalled,
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
    /// Answers whose body is being sent.
    sending: AtomicU32,
    /// Body frames handed to the client so far (progress, not a clock).
    frames: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            http2: AtomicBool::new(false),
            sending: AtomicU32::new(0),
            frames: AtomicU64::new(0),
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

    /// Whether the connection speaks HTTP/2 (known from its first request).
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Since when (ms) the connection has had no request in progress; `None` while it has one.
    pub fn idle_since(&self) -> Option<u64> {
        (self.active.load(Ordering::Relaxed) == 0).then(|| self.idle_since.load(Ordering::Relaxed))
    }

    /// A request is done (its answer sent, or abandoned).
    #[inline]
    pub fn end(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// An answer's body starts going out. Pair with [`Activity::sent`].
    #[inline]
    pub fn sending(&self) {
        self.sending.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer's body is done (or abandoned).
    #[inline]
    pub fn sent(&self) {
        self.sending.fetch_sub(1, Ordering::Relaxed);
    }

    /// A body frame went to the client.
    #[inline]
    pub fn progress(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Completes when the connection should close: an HTTP/1 connection without a request in
    /// progress for `head_limit` (a slow or missing head), an HTTP/2 one without a stream for
    /// `idle_limit`, or one that takes nothing of the answers it is sent for `body_limit`.
    pub async fn expired(
        &self,
        head_limit: Duration,
        idle_limit: Duration,
        body_limit: Duration,
    ) -> Expiry {
        // Whether the connection speaks HTTP/2 is learnt from its first request, possibly while
        // this sleeps: no sleep is longer than the shorter limit.
        let longest_sleep = head_limit.min(idle_limit);
        // The last progress seen, and when (ms); a stall is judged to a quarter of the limit.
        let mut last = (u64::MAX, now_ms());
        let body_ms = body_limit.as_millis() as u64;
        loop {
            let http2 = self.http2.load(Ordering::Relaxed);
            let limit = if http2 { idle_limit } else { head_limit };
            let limit_ms = limit.as_millis() as u64;
            let sending = self.sending.load(Ordering::Relaxed) > 0;
            if !sending {
                last.0 = u64::MAX;
            }
            let wait = if sending {
                let (frames, now) = (self.frames.load(Ordering::Relaxed), now_ms());
                if frames != last.0 {
                    last = (frames, now);
                } else if now.saturating_sub(last.1) >= body_ms {
                    return Expiry::Stalled;
                }
                body_limit / 4
            } else if self.active.load(Ordering::Relaxed) > 0 {
                // Waiting for an upstream's answer; its body may start going out any moment.
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
            // Never longer than a quarter of the body limit, idle or not: a download that
            // begins on a connection idle until then is judged from within that quarter, not
            // once a longer idle wait ends (a stall is then called within 1.5× the limit).
            tokio::time::sleep(wait.min(longest_sleep).min(body_limit / 4)).await;
        }
    }
}
