//! What outlives a request follows its user: a WebSocket tunnel or a server-sent event stream
//! the canary serves ends as soon as the rollout sends its user to stable (a rollback, a lowered
//! percent), as every later request of that user goes there — the client's reconnect lands on
//! stable. A new rollout id ends them all (a new rollout is a new group; only the id's hash is
//! kept, which the new salt makes meaningless). A halt moves nobody.

use std::sync::Arc;

use crate::routing::{self, PoolName};
use crate::snapshot::Current;

/// Whose stream it is: the rollout it began in and the user's hash under it (none: a request
/// without an id, minting off), and the pool that serves it.
pub struct Follow {
    pub rollout: Arc<str>,
    pub user: Option<u64>,
    pub pool: PoolName,
}

impl Follow {
    /// Completes once the rollout in force sends this user to stable while the canary serves
    /// them; never for stable (a canary user's fallback to stable included: the canary did not
    /// serve it). It subscribes to every publish first, then looks at the state in force: no
    /// change before or after is missed.
    pub async fn moved(self, current: Arc<Current>) {
        if self.pool == PoolName::Canary {
            let mut published = current.watch();
            loop {
                let snap = current.load();
                let rollout = &snap.routing.rollout;
                let now = match self.user {
                    _ if rollout.id != self.rollout => PoolName::Stable,
                    Some(hash) => routing::assign_hash(rollout, hash),
                    None => routing::anonymous(rollout),
                };
                drop(snap);
                if now == PoolName::Stable {
                    return;
                }
                if published.changed().await.is_err() {
                    break;
                }
            }
        }
        std::future::pending().await
    }
}

/// Whether an answer's fields say it is a server-sent event stream (`Content-Type:
/// text/event-stream`, any parameters after).
pub fn is_event_stream<'f>(mut fields: impl Iterator<Item = (&'f [u8], &'f [u8])>) -> bool {
    const TYPE: &[u8] = b"text/event-stream";
    fields.any(|(name, value)| {
        name.eq_ignore_ascii_case(b"content-type")
            && value
                .trim_ascii_start()
                .get(..TYPE.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(TYPE))
    })
}
