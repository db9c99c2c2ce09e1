//! How many upstream connections are open at once, all upstreams together: each holds a
//! [`Slot`] for as long as it lives. `upstream.max_connections` caps them, so that however many
//! client streams wait on upstreams, ramp keeps descriptors for new clients, the admin socket and
//! the state file.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Open upstream connections in this process (file descriptors are the process's).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// One open upstream connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot(());

impl Slot {
    /// A place for one more connection, unless `max` are open.
    pub fn take(max: usize) -> Option<Slot> {
        OPEN.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(()))
    }

    /// Upstream connections open now.
    pub fn open() -> usize {
        OPEN.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}
