//! What the data plane shares: the proxy's state (the snapshot in force, metrics, the drain), and
//! what is known about each client connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;

use crate::analysis::Analysis;
use crate::config::CanaryUnavailable;
use crate::metrics::Metrics;
use crate::routing::PoolName;
use crate::snapshot::{Current, Snapshot};
use crate::upstream::Upstream;

use super::watchdog::{Activity, Signal};

/// State shared by every connection of the data plane.
#[derive(Debug)]
pub struct Proxy {
    pub current: Arc<Current>,
    pub metrics: Metrics,
    /// Where every answer is recorded for the comparison of the pools.
    pub analysis: Arc<Analysis>,
    /// The Host for requests that name none (HTTP/1.0, HTTP/2 without `:authority`): the
    /// listener's address, the same whichever pool serves. The upstream's own address would name
    /// the pool to anyone whose answer repeats its Host (an absolute redirect, a canonical link).
    pub(super) host: HeaderValue,
    pub(super) draining: AtomicBool,
    canary_down: AtomicBool,
    /// WebSocket tunnels open, and opening (see [`Proxy::tunnel_place`]).
    tunnels: std::sync::atomic::AtomicUsize,
}

/// A WebSocket tunnel's place under `limits.max_tunnels`, held from its handshake to its end.
#[derive(Debug)]
pub struct TunnelPlace(Arc<Proxy>);

impl Drop for TunnelPlace {
    fn drop(&mut self) {
        self.0
            .tunnels
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Proxy {
    /// `listening`: the address the proxy's listener is bound to.
    pub fn new(
        current: Arc<Current>,
        metrics: Metrics,
        analysis: Arc<Analysis>,
        listening: SocketAddr,
    ) -> Self {
        Proxy {
            current,
            metrics,
            analysis,
            host: HeaderValue::from_str(&listening.to_string())
                .unwrap_or(HeaderValue::from_static("localhost")),
            draining: AtomicBool::new(false),
            canary_down: AtomicBool::new(false),
            tunnels: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A place for one more WebSocket tunnel, if fewer than `most` are open.
    pub fn tunnel_place(self: &Arc<Self>, most: usize) -> Option<TunnelPlace> {
        use std::sync::atomic::Ordering::Relaxed;
        self.tunnels
            .fetch_update(Relaxed, Relaxed, |n| (n < most).then_some(n + 1))
            .ok()
            .map(|_| TunnelPlace(Arc::clone(self)))
    }

    /// Where a canary request goes when the canary pool cannot take it: a stable upstream, with
    /// `canary_unavailable: fallback` (counted); `None` for a stable request or with `error`.
    pub fn fallback<'s>(
        &self,
        snap: &'s Snapshot,
        pool: PoolName,
    ) -> Option<(&'s Arc<Upstream>, PoolName)> {
        if pool != PoolName::Canary || snap.config.canary_unavailable != CanaryUnavailable::Fallback
        {
            return None;
        }
        let stable = &snap.pools.stable;
        let panic = snap.config.passive_health.panic_threshold;
        let u = stable.pick(panic).or_else(|| stable.any())?;
        self.metrics.canary_fallback.increment(1);
        Some((u, PoolName::Stable))
    }

    /// Where a request (or a WebSocket handshake) of a user of `pool` goes next when no
    /// connection could be made to the upstreams in `tried`; never to one of them. A canary user under fallback goes to a healthy stable first: a try is not spent on
    /// another canary upstream that may be as dead. Once stable has been tried too (and refused:
    /// dead, and not yet known to be), another canary upstream comes first. Else another healthy
    /// upstream of the pool; then any, ejected or not, rather than a certain 502.
    pub fn unreached<'s>(
        &self,
        snap: &'s Snapshot,
        pool: PoolName,
        tried: &[&Arc<Upstream>],
    ) -> Option<(&'s Arc<Upstream>, PoolName)> {
        let stable = &snap.pools.stable;
        let falls_back = pool == PoolName::Canary
            && snap.config.canary_unavailable == CanaryUnavailable::Fallback;
        let stable_tried = tried
            .iter()
            .any(|t| stable.upstreams().iter().any(|u| Arc::ptr_eq(u, t)));
        let from_stable = |healthy: bool| {
            if !falls_back {
                return None;
            }
            let u = if healthy {
                stable.pick_other(tried)
            } else {
                stable.any_other(tried)
            }?;
            // A canary request served by stable, counted once.
            if !stable_tried {
                self.metrics.canary_fallback.increment(1);
            }
            Some((u, PoolName::Stable))
        };
        let own = &snap.pools[pool];
        let from_own = |healthy: bool| {
            if healthy {
                own.pick_other(tried)
            } else {
                own.any_other(tried)
            }
            .map(|u| (u, pool))
        };
        if falls_back && !stable_tried {
            from_stable(true)
                .or_else(|| from_own(true))
                .or_else(|| from_stable(false))
                .or_else(|| from_own(false))
        } else {
            from_own(true)
                .or_else(|| from_stable(true))
                .or_else(|| from_own(false))
                .or_else(|| from_stable(false))
        }
    }

    /// From now on HTTP/1 answers carry `Connection: close`, so clients move to a new process.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Logs once per change whether the canary pool has a healthy upstream.
    pub(super) fn canary_available(&self, available: bool) {
        if available {
            if self.canary_down.load(Ordering::Relaxed)
                && self.canary_down.swap(false, Ordering::Relaxed)
            {
                tracing::info!(pool = "canary", "canary pool has a healthy upstream again");
            }
        } else if !self.canary_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(pool = "canary", "canary pool has no healthy upstream");
        }
    }
}

/// What ramp knows about one client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP, ready for X-Forwarded-For.
    pub(super) peer_ip: HeaderValue,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub(super) proto: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// One client connection: the shared proxy state, what is known about the peer, and whether a
/// request is in progress.
#[derive(Debug)]
pub struct Conn {
    pub proxy: Arc<Proxy>,
    pub info: ConnInfo,
    pub activity: Activity,
    /// How the watchdog (or the listener, making room) closes this connection.
    pub signal: Signal,
    pub id: u64,
    /// Its place under `max_connections`; a WebSocket tunnel takes it over, since it outlives
    /// the HTTP connection it came from.
    pub permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Its HTTP/2 requests' share of the upstream connections (made at the first).
    shares: std::sync::OnceLock<Box<super::share::Shares>>,
    /// Its requests the client gave up on after they went upstream.
    pub abandons: Abandons,
}

/// Requests of one connection that the client gave up on (an HTTP/2 stream reset, a connection
/// closed) after they went upstream, before the answer's head, lately.
#[derive(Debug, Default)]
pub struct Abandons {
    /// When the current period began (ms, [`crate::clock::now_ms`]).
    since: AtomicU64,
    count: AtomicU32,
}

/// At most this many abandoned requests in [`ABANDONS_PERIOD_MS`] (a browser cancels a few as
/// its user moves on; a flood that resets every stream as soon as it is sent, many a second).
const ABANDONS_MOST: u32 = 100;
const ABANDONS_PERIOD_MS: u64 = 10_000;

/// What a connection that abandons too many requests gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooMany {
    /// Past [`ABANDONS_MOST`]: a GOAWAY, its requests in flight finished.
    GoAway,
    /// Past twice as many: the GOAWAY was not heeded (a client that never answers the PING
    /// hyper's graceful close waits for keeps opening streams): closed at once.
    Close,
}

impl Abandons {
    /// Counts one; what the connection gets once too many came in the period.
    pub fn one(&self) -> Option<TooMany> {
        let now = crate::clock::now_ms();
        if now.saturating_sub(self.since.load(Ordering::Relaxed)) > ABANDONS_PERIOD_MS {
            self.since.store(now, Ordering::Relaxed);
            self.count.store(1, Ordering::Relaxed);
            return None;
        }
        match self.count.fetch_add(1, Ordering::Relaxed) + 1 {
            n if n > 2 * ABANDONS_MOST => Some(TooMany::Close),
            n if n > ABANDONS_MOST => Some(TooMany::GoAway),
            _ => None,
        }
    }
}

impl Conn {
    pub fn new(
        proxy: Arc<Proxy>,
        info: ConnInfo,
        id: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Conn {
        Conn {
            proxy,
            info,
            activity: Activity::default(),
            signal: Signal::default(),
            id,
            permit: Mutex::new(permit),
            shares: std::sync::OnceLock::new(),
            abandons: Abandons::default(),
        }
    }

    /// Its HTTP/2 requests' holders and waiters.
    pub(super) fn shares(&self) -> &super::share::Shares {
        self.shares.get_or_init(Box::default)
    }

    /// Takes the connection's place under `max_connections` (for a tunnel).
    pub fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
