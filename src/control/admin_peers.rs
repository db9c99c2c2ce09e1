//! Who holds admin connections, so that no one can lock the socket. Accepting never waits, and
//! each uid may keep only so many connections that have sent nothing for a while: a new one beyond
//! that closes the uid's longest-idle connection. A peer that opens many connections and sends
//! nothing therefore only ever crowds out itself, an operator's `halt` always gets in, and a burst
//! of clients that connect at once and send their command right away is not cut. A uid never
//! holds more than [`MOST_PER_UID`] connections: at that many, a newcomer closes the uid's
//! longest-idle one however briefly idle (one whose reply waits for its peer to read it counts),
//! so that a peer keeping its connections busy with commands cannot keep a `halt` out either, and
//! is refused only while every one of them has a command running, so that no burst can take the
//! process's descriptors.

use crate::logs::EverySecond;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Idle connections one uid may keep; beyond, its longest-idle one is closed.
pub const PER_UID: usize = 64;

/// Connections one uid may hold at all; beyond, a newcomer with none idle to replace is refused.
pub const MOST_PER_UID: usize = 512;

/// A connection idle this long may be closed to make room for its uid's newest.
const EVICTABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    id: u64,
    close: Arc<Notify>,
    /// When it last finished a command (or opened); `None` while a command runs.
    idle_since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Peers {
    inner: Mutex<Inner>,
    /// Refused peers and commands are logged at most once a second.
    pub refusals: EverySecond,
    /// Connections closed for a newcomer of the same uid, likewise.
    evictions: EverySecond,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    by_uid: HashMap<u32, Vec<Entry>>,
}

/// One registered connection; unregisters itself when dropped.
#[derive(Debug)]
pub struct Slot {
    peers: Arc<Peers>,
    uid: u32,
    id: u64,
    /// Notified when a newer connection of the same uid needs the room.
    pub close: Arc<Notify>,
}

impl Peers {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of `uid`, closing the uid's longest-idle one (idle for
    /// [`EVICTABLE_AFTER`] at least; at [`MOST_PER_UID`], idle at all) if it is at its limit;
    /// `None` (refused) if none is.
    pub fn register(self: &Arc<Self>, uid: u32) -> Option<Slot> {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.next += 1;
        let id = inner.next;
        let list = inner.by_uid.entry(uid).or_default();
        if list.len() >= PER_UID {
            let full = list.len() >= MOST_PER_UID;
            let oldest = list
                .iter()
                .enumerate()
                // Of two idle since the same moment, the one opened first.
                .filter_map(|(i, e)| e.idle_since.map(|t| (t, e.id, i)))
                .filter(|(t, _, _)| full || now.duration_since(*t) >= EVICTABLE_AFTER)
                .min();
            match oldest {
                Some((_, _, i)) => {
                    let evicted = list.swap_remove(i);
                    evicted.close.notify_one();
                    if let Some(unlogged) = self.evictions.admit_now() {
                        tracing::info!(
                            uid,
                            unlogged,
                            "admin connection closed: the uid is at its limit and opened another"
                        );
                    }
                }
                None if full => return None,
                None => {}
            }
        }
        let close = Arc::new(Notify::new());
        list.push(Entry {
            id,
            close: Arc::clone(&close),
            idle_since: Some(Instant::now()),
        });
        Some(Slot {
            peers: Arc::clone(self),
            uid,
            id,
            close,
        })
    }

    fn mark(&self, uid: u32, id: u64, idle: Option<Instant>) {
        let mut inner = self.inner();
        if let Some(e) = inner
            .by_uid
            .get_mut(&uid)
            .and_then(|l| l.iter_mut().find(|e| e.id == id))
        {
            e.idle_since = idle;
        }
    }
}

impl Slot {
    /// A command is running: this connection is not idle.
    pub fn busy(&self) {
        self.peers.mark(self.uid, self.id, None);
    }

    /// The command is answered: idle again from now.
    pub fn idle(&self) {
        self.peers.mark(self.uid, self.id, Some(Instant::now()));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.peers.inner();
        if let Some(list) = inner.by_uid.get_mut(&self.uid) {
            list.retain(|e| e.id != self.id);
            if list.is_empty() {
                inner.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_never_holds_more_than_the_most_per_uid() {
        let peers = Arc::new(Peers::default());
        let closed = |s: &Slot| {
            let notified = s.close.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable()
        };
        // A burst that sends nothing: each newcomer past the most closes the longest idle.
        let burst: Vec<Slot> = (0..3 * MOST_PER_UID)
            .flat_map(|_| peers.register(65534))
            .collect();
        assert_eq!(peers.inner().by_uid[&65534].len(), MOST_PER_UID);
        // (Told once: a look takes the notice.)
        let held: Vec<&Slot> = burst.iter().filter(|s| !closed(s)).collect();
        assert_eq!(held.len(), MOST_PER_UID, "the oldest were told to close");
        assert!(std::ptr::eq(held[0], &burst[2 * MOST_PER_UID]));
        for h in &held {
            h.busy();
        }
        assert!(
            peers.register(65534).is_none(),
            "every one has a command running"
        );
        assert!(peers.register(0).is_some(), "root still gets in");
        // One of them done with its command, however briefly: a newcomer replaces it.
        held[7].idle();
        let newcomer = peers.register(65534).expect("it replaces the idle one");
        assert!(closed(held[7]));
        newcomer.busy();
        assert!(peers.register(65534).is_none(), "none idle any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_uid_at_its_limit_loses_its_longest_idle_connection() {
        let peers = Arc::new(Peers::default());
        let slots: Vec<Slot> = (0..PER_UID).flat_map(|_| peers.register(1000)).collect();
        assert_eq!(slots.len(), PER_UID);
        // All just opened (about to send their command): a newcomer closes none of them.
        let burst = peers.register(1000).expect("a burst is let in");
        let closed = |s: &Slot| {
            let notified = s.close.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable()
        };
        assert!(!slots.iter().any(closed), "fresh connections are kept");
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        slots[0].busy();
        // Another uid is not affected by uid 1000's connections.
        let root = peers.register(0).expect("another uid has its own room");
        assert!(!slots.iter().any(closed));
        let _newest = peers.register(1000).expect("an idle one makes room");
        // The longest idle (the second: the first is running a command) was told to close.
        assert!(
            closed(&slots[1]),
            "the longest-idle connection was not closed"
        );
        assert!(!closed(&slots[0]) && !closed(&burst) && !closed(&root));
    }
}
