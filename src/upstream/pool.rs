//! A pool: the upstreams of one version, taken in turn.

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

    /// The next upstream in round-robin order; `None` for an empty pool.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Upstream>> {
        match self.upstreams.len() {
            0 => None,
            1 => self.upstreams.first(),
            n => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                self.upstreams.get(i)
            }
        }
    }
}
