//! A pool: the upstreams of one version, taken in turn, skipping those that are not healthy; and
//! what each answer says about the upstream's health.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Response;

use crate::config::PassiveHealth;
use crate::routing::PoolName;

use super::failure::{Failure, SendError};
use super::{Upstream, UpstreamBody, health};

#[derive(Debug)]
pub struct Pool {
    upstreams: Box<[Arc<Upstream>]>,
    next: AtomicUsize,
    /// Its users have another pool to go to when none of its upstreams is healthy (the canary,
    /// with `canary_unavailable: fallback`): its last healthy upstream may be ejected too.
    may_empty: bool,
}

/// What one exchange says about its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with this status.
    Answered(u16),
    /// No connection could be made: the upstream is unreachable.
    Unreachable,
    /// Connected, then no usable answer (reset, garbage, timeout).
    Failed,
    /// The client's own body failed, or ramp could not open a connection: nothing is known
    /// about the upstream.
    Unknown,
}

impl Outcome {
    pub fn of(result: &Result<Response<UpstreamBody>, Failure>) -> Outcome {
        match result {
            Ok(resp) => Outcome::Answered(resp.status().as_u16()),
            Err(f) => match f.error {
                SendError::Connect(_)
                | SendError::ConnectTimeout
                | SendError::Tls(_)
                | SendError::Handshake(_) => Outcome::Unreachable,
                SendError::Exchange(_) | SendError::Timeout(_) => Outcome::Failed,
                SendError::ClientBody(_) | SendError::Local(_) => Outcome::Unknown,
            },
        }
    }
}

impl Pool {
    pub fn new(upstreams: Vec<Arc<Upstream>>, may_empty: bool) -> Self {
        Pool {
            upstreams: upstreams.into_boxed_slice(),
            next: AtomicUsize::new(0),
            may_empty,
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The next upstream in round-robin order: a healthy one, or — when fewer than
    /// `panic_threshold` percent of the pool are healthy — any one, so the few left are not
    /// overwhelmed. `None` when none is healthy (the caller decides: fall back, or [`Pool::any`]).
    #[inline]
    pub fn pick(&self, panic_threshold: u32) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let healthy = self
            .upstreams
            .iter()
            .filter(|u| u.health.is_available())
            .count();
        // Nothing taken from the turn when none is healthy: [`Pool::any`] takes it then (two
        // steps a request would skip every other upstream).
        if healthy == 0 {
            return None;
        }
        let start = match n {
            1 => 0,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        if healthy * 100 < n * panic_threshold as usize {
            return Some(&self.upstreams[start]);
        }
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.health.is_available())
    }

    /// The next upstream whatever its health (a pool with none healthy still tries).
    pub fn any(&self) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        (n > 0).then(|| &self.upstreams[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }

    /// A healthy upstream not in `tried`, for a retry.
    pub fn pick_other(&self, tried: &[&Arc<Upstream>]) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        // The turn moves on: retries a pool takes for another's users (stable's for canary
        // users) are spread over it too.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[start.wrapping_add(i) % n])
            .find(|u| untried(u, tried) && u.health.is_available())
    }

    /// Any upstream not in `tried`, healthy or not, for a request no connection could be made
    /// for when no healthy one is left: an ejected upstream may answer again (it may be the one
    /// that came back while its backoff runs), where giving up is a certain 502.
    pub fn any_other(&self, tried: &[&Arc<Upstream>]) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[start.wrapping_add(i) % n])
            .find(|u| untried(u, tried))
    }

    /// Feeds `outcome` of an exchange with `up` into its passive health. An upstream that answers
    /// (even badly) is never ejected when it is the last healthy one of the pool: ejecting it
    /// would turn one bad endpoint into an outage. An unreachable one may be, and so may any of a
    /// pool whose users have somewhere else to go (a canary that falls back to stable).
    pub fn record(&self, up: &Upstream, outcome: Outcome, passive: &PassiveHealth, pool: PoolName) {
        let failed = match outcome {
            Outcome::Answered(status) => passive.failure_statuses.contains(status),
            Outcome::Unreachable | Outcome::Failed => true,
            Outcome::Unknown => return,
        };
        if !failed {
            if let Some(t) = up.health.success() {
                health::log(&up.addr, pool, t);
            }
            return;
        }
        let may_eject =
            outcome == Outcome::Unreachable || self.may_empty || self.others_available(up);
        if let Some(t) = up.health.failure(passive, may_eject) {
            health::log(&up.addr, pool, t);
        }
    }

    fn others_available(&self, up: &Upstream) -> bool {
        self.upstreams
            .iter()
            .any(|u| !std::ptr::eq(&**u, up) && u.health.is_available())
    }
}

fn untried(u: &Arc<Upstream>, tried: &[&Arc<Upstream>]) -> bool {
    !tried.iter().any(|t| Arc::ptr_eq(t, u))
}
