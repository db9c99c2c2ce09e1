//! Whether an upstream should get requests: passive ejection (consecutive connect failures or 5xx
//! answers, for a backoff that grows) and active probes. Read on every request (one atomic load);
//! written rarely.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ActiveHealth, PassiveHealth, UpstreamAddr};
use crate::routing::PoolName;

#[derive(Debug, Default)]
struct Inner {
    /// Ejected by passive failures: out until a probe after `until` succeeds.
    ejected: bool,
    until: Option<Instant>,
    /// Ejections since the last successful request: the backoff doubles with each.
    ejections: u32,
    /// Marked down by active probes.
    down: bool,
    probe_failures: u32,
    probe_successes: u32,
}

#[derive(Debug)]
pub struct Health {
    available: AtomicBool,
    failures: AtomicU32,
    inner: Mutex<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            available: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// What a state change was, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Ejected(Duration),
    Reinstated,
    /// Back in because it answered a request (one a pool with none healthy sent it).
    Answered,
    Down,
    Up,
    /// Back in because active checks were turned off.
    Unchecked,
}

impl Health {
    #[inline]
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refresh(&self, inner: &Inner) {
        self.available
            .store(!inner.ejected && !inner.down, Ordering::Relaxed);
    }

    /// A request got an answer that is not a failure. One that reached an ejected upstream (a
    /// pool with none healthy tries them all) ends its ejection: it answers again, and the backoff
    /// would keep it out while it is the one that works.
    #[inline]
    pub fn success(&self) -> Option<Transition> {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.ejections = 0;
        if !inner.ejected {
            return None;
        }
        inner.ejected = false;
        inner.until = None;
        self.refresh(&inner);
        Some(Transition::Answered)
    }

    /// A failed exchange; ejects the upstream after `eject_after` in a row, if `may_eject`.
    pub fn failure(&self, passive: &PassiveHealth, may_eject: bool) -> Option<Transition> {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < passive.eject_after || !may_eject {
            return None;
        }
        let mut inner = self.inner();
        if inner.ejected {
            return None;
        }
        let backoff = eject(&mut inner, passive);
        self.refresh(&inner);
        Some(Transition::Ejected(backoff))
    }

    /// Whether the health task should probe it now.
    pub fn wants_probe(&self, now: Instant, active: bool) -> bool {
        let inner = self.inner();
        active || (inner.ejected && inner.until.is_none_or(|u| u <= now))
    }

    /// Active checks are off (a reload removed them): an upstream they had marked down is up
    /// again, as nothing would ever probe it back.
    pub fn unchecked(&self) -> Option<Transition> {
        if self.is_available() {
            return None;
        }
        let mut inner = self.inner();
        inner.probe_failures = 0;
        inner.probe_successes = 0;
        if !inner.down {
            return None;
        }
        inner.down = false;
        self.refresh(&inner);
        Some(Transition::Unchecked)
    }

    /// A probe's result.
    pub fn probed(
        &self,
        ok: bool,
        now: Instant,
        active: Option<&ActiveHealth>,
        passive: &PassiveHealth,
    ) -> Option<Transition> {
        let mut inner = self.inner();
        let mut change = None;
        if inner.ejected && inner.until.is_none_or(|u| u <= now) {
            if ok {
                inner.ejected = false;
                inner.until = None;
                self.failures.store(0, Ordering::Relaxed);
                change = Some(Transition::Reinstated);
            } else {
                change = Some(Transition::Ejected(eject(&mut inner, passive)));
            }
        }
        if let Some(active) = active {
            if ok {
                inner.probe_successes += 1;
                inner.probe_failures = 0;
                if inner.down && inner.probe_successes >= active.healthy_after {
                    inner.down = false;
                    change = change.or(Some(Transition::Up));
                }
            } else {
                inner.probe_failures += 1;
                inner.probe_successes = 0;
                if !inner.down && inner.probe_failures >= active.unhealthy_after {
                    inner.down = true;
                    change = Some(Transition::Down);
                }
            }
        }
        self.refresh(&inner);
        change
    }
}

/// Logs a health change of the upstream at `addr` in `pool` (and counts ejections).
pub fn log(addr: &UpstreamAddr, pool: PoolName, t: Transition) {
    let (upstream, pool) = (addr.to_string(), pool.as_str());
    match t {
        Transition::Ejected(backoff) => {
            metrics::counter!("ramp_upstream_ejections_total", "pool" => pool).increment(1);
            tracing::warn!(
                upstream,
                pool,
                backoff_ms = backoff.as_millis() as u64,
                "upstream ejected"
            )
        }
        Transition::Reinstated => {
            tracing::info!(upstream, pool, "upstream reinstated after a good probe")
        }
        Transition::Answered => {
            tracing::info!(upstream, pool, "upstream reinstated: it answered a request")
        }
        Transition::Down => tracing::warn!(upstream, pool, "upstream failed its health checks"),
        Transition::Up => tracing::info!(upstream, pool, "upstream passed its health checks"),
        Transition::Unchecked => tracing::info!(
            upstream,
            pool,
            "upstream back in: active health checks are off now"
        ),
    }
}

fn eject(inner: &mut Inner, passive: &PassiveHealth) -> Duration {
    let factor = 1u32 << inner.ejections.min(16);
    let backoff = passive
        .backoff
        .saturating_mul(factor)
        .min(passive.max_backoff);
    inner.ejected = true;
    inner.until = Some(Instant::now() + backoff);
    inner.ejections = inner.ejections.saturating_add(1);
    backoff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive() -> PassiveHealth {
        PassiveHealth {
            eject_after: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            failure_statuses: crate::config::StatusSet::of(&[502, 503, 504]),
            panic_threshold: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_a_growing_backoff() {
        let h = Health::default();
        let p = passive();
        assert_eq!((h.failure(&p, true), h.failure(&p, true)), (None, None));
        h.success();
        assert_eq!((h.failure(&p, true), h.failure(&p, true)), (None, None));
        assert_eq!(
            h.failure(&p, false),
            None,
            "not while it may not be ejected"
        );
        assert_eq!(
            h.failure(&p, true),
            Some(Transition::Ejected(Duration::from_secs(1)))
        );
        assert!(!h.is_available());
        let now = Instant::now();
        assert!(!h.wants_probe(now, false), "not before the backoff ends");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(h.wants_probe(now, false));
        assert_eq!(
            h.probed(false, now, None, &p),
            Some(Transition::Ejected(Duration::from_secs(2)))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            h.probed(false, Instant::now(), None, &p),
            Some(Transition::Ejected(Duration::from_secs(4)))
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            h.probed(false, Instant::now(), None, &p),
            Some(Transition::Ejected(Duration::from_secs(5))),
            "capped"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            h.probed(true, Instant::now(), None, &p),
            Some(Transition::Reinstated)
        );
        assert!(h.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn active_probes_mark_down_and_up_after_their_thresholds() {
        let h = Health::default();
        let p = passive();
        let a = ActiveHealth {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 3,
        };
        let now = Instant::now();
        assert_eq!(h.probed(false, now, Some(&a), &p), None);
        assert_eq!(h.probed(false, now, Some(&a), &p), Some(Transition::Down));
        assert!(!h.is_available());
        assert_eq!(
            (
                h.probed(true, now, Some(&a), &p),
                h.probed(true, now, Some(&a), &p)
            ),
            (None, None)
        );
        assert_eq!(h.probed(true, now, Some(&a), &p), Some(Transition::Up));
        assert!(h.is_available());
    }
}
