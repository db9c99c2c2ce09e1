//! Who holds admin connections, so that no one can lock the socket. Accepting never waits, and
//! each uid may keep only so many connections that have sent nothing for a while: a new one beyond
//! that closes the uid's longest-idle connection. A peer that opens many connections and sends
//! nothing therefore only ever crowds out itself, an operator's `halt` gets in, and a burst
//! of clients that connect at once and send their command right away is not cut. A uid never
//! holds more than [`MOST_PER_UID`] connections: at that many, a newcomer closes the uid's
//! longest-idle one, or one running a command that only reads (`status`), once it has been open
//! a moment ([`GRACE`]: one that has just connected is about to send its command), or one whose
//! reply its peer has not read for [`EVICTABLE_AFTER`], so that a peer keeping its
//! connections busy with such commands, or reading none of its replies, cannot keep a `halt` out
//! either; else the newcomer is refused, so that no burst can take the process's descriptors. A
//! command that changes something, and a reply being taken, are never cut.

use crate::logs::EverySecond;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Idle connections one uid may keep; beyond, its longest-idle one is closed.
pub const PER_UID: usize = 64;

/// Connections one uid may hold at all; beyond, a newcomer with none idle to replace is refused.
pub const MOST_PER_UID: usize = 512;

/// A connection idle this long (or whose reply waits this long for its peer) may be closed to
/// make room for its uid's newest.
const EVICTABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// At [`MOST_PER_UID`], a connection open this long may be closed for a newcomer while it waits
/// for a command or runs one that only reads.
const GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a connection is doing, and since when.
#[derive(Debug, Clone, Copy)]
enum Doing {
    /// Waiting for a command (since it opened, or answered the last one).
    Idle(Instant),
    /// Running a command that changes something: never cut.
    Running,
    /// Running a command that only reads (`status`, `bucket`), since then.
    Reading(Instant),
    /// Its reply is being written, for a peer that may not read it.
    Replying(Instant),
}

#[derive(Debug)]
struct Entry {
    id: u64,
    close: Arc<Notify>,
    opened: Instant,
    doing: Doing,
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
    /// [`EVICTABLE_AFTER`] at least; at [`MOST_PER_UID`], idle or running a read-only command
    /// once open [`GRACE`], or with its reply unread for [`EVICTABLE_AFTER`]) if it is at its
    /// limit; `None` (refused) if none is.
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
                .filter_map(|(i, e)| {
                    let (since, from, after) = match e.doing {
                        Doing::Idle(t) | Doing::Reading(t) if full => (t, e.opened, GRACE),
                        Doing::Idle(t) => (t, t, EVICTABLE_AFTER),
                        Doing::Reading(_) => return None,
                        Doing::Replying(t) if full => (t, t, EVICTABLE_AFTER),
                        Doing::Replying(_) | Doing::Running => return None,
                    };
                    // The longest idle; of two alike, the one opened first.
                    (now.duration_since(from) >= after).then_some((since, e.id, i))
                })
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
            opened: now,
            doing: Doing::Idle(now),
        });
        Some(Slot {
            peers: Arc::clone(self),
            uid,
            id,
            close,
        })
    }

    /// Whether the connection is still registered (not closed for a newcomer).
    fn mark(&self, uid: u32, id: u64, doing: Doing) -> bool {
        let mut inner = self.inner();
        match inner
            .by_uid
            .get_mut(&uid)
            .and_then(|l| l.iter_mut().find(|e| e.id == id))
        {
            Some(e) => {
                e.doing = doing;
                true
            }
            None => false,
        }
    }
}

impl Slot {
    /// A command is running: this connection is not idle. `false` if it was closed for a
    /// newcomer meanwhile: the command must not run.
    #[must_use]
    pub fn busy(&self) -> bool {
        self.peers.mark(self.uid, self.id, Doing::Running)
    }

    /// The command running only reads: at its uid's most, it may be cut for a newcomer.
    pub fn reading(&self) {
        self.peers
            .mark(self.uid, self.id, Doing::Reading(Instant::now()));
    }

    /// The command is done; its reply is being written.
    pub fn replying(&self) {
        self.peers
            .mark(self.uid, self.id, Doing::Replying(Instant::now()));
    }

    /// The reply is written: idle again from now.
    pub fn idle(&self) {
        self.peers
            .mark(self.uid, self.id, Doing::Idle(Instant::now()));
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
        // A burst: all just connected, about to send their command. None is cut; past the most,
        // newcomers are refused.
        let held: Vec<Slot> = (0..3 * MOST_PER_UID)
            .flat_map(|_| peers.register(65534))
            .collect();
        assert_eq!(held.len(), MOST_PER_UID, "the rest were refused");
        assert!(!held.iter().any(closed));
        assert!(peers.register(0).is_some(), "root still gets in");
        // A moment later, the longest idle makes room, even though not idle for a second.
        tokio::time::advance(GRACE).await;
        let newcomer = peers.register(65534).expect("the longest idle makes room");
        assert!(closed(&held[0]));
        assert!(
            !held[0].busy(),
            "closed: a command it reads now must not run"
        );
        // Commands running, and replies just sent, are never cut.
        assert!(newcomer.busy());
        for h in &held[1..] {
            h.replying();
        }
        tokio::time::advance(GRACE).await;
        assert!(
            peers.register(65534).is_none(),
            "every one is busy or just replying"
        );
        // A reply its peer has not taken for a second may go.
        tokio::time::advance(EVICTABLE_AFTER).await;
        let late = peers.register(65534).expect("an unread reply makes room");
        assert!(closed(&held[1]));
        // A `status` running on a connection open a while may go; the command just begun on a
        // connection just opened may not, nor a change (`newcomer`'s).
        for h in &held[2..] {
            assert!(h.busy());
        }
        late.reading();
        held[3].reading();
        let _next = peers
            .register(65534)
            .expect("a read-only command makes room");
        assert!(closed(&held[3]));
        assert!(!closed(&late) && !closed(&newcomer));
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
        assert!(slots[0].busy());
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
