//! A pool: the upstreams of one version, taken in turn, skipping those that are not healthy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Upstream;

#[derive(Debug)]
pub struct Pool {
    upstreams: Box<[Arc<Upstream>]>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Pool {
            upstreams: upstreams.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The next healthy upstream in round-robin order; `None` when none is healthy.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = match n {
            0 => return None,
            1 => 0,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.health.is_available())
    }

    /// A healthy upstream other than `not`, for a retry.
    pub fn pick_other(&self, not: &Arc<Upstream>) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = self.next.load(Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| !Arc::ptr_eq(u, not) && u.health.is_available())
    }
}
