//! Which pool answers a request. `decide` is pure: no I/O, no clock, no allocation.

pub mod bucket;
pub mod sticky;

use http::HeaderMap;

use crate::snapshot::{Rollout, Snapshot, State};

pub use bucket::{BUCKETS, bucket};
pub use sticky::{MAX_ID_LEN, mint, set_cookie, user_id};

/// One of the two upstream pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolName {
    Stable,
    Canary,
}

impl PoolName {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolName::Stable => "stable",
            PoolName::Canary => "canary",
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to this pool.
    Pool(PoolName),
    /// The request carries no id: mint one ([`sticky::mint`]) and route by [`assign`].
    Mint,
}

/// The pool for a request under `snap`, from the id it carries.
#[inline]
pub fn decide(snap: &Snapshot, headers: &HeaderMap) -> Decision {
    match user_id(&snap.sticky, headers) {
        Some(id) => Decision::Pool(assign(&snap.rollout, id)),
        None if snap.sticky.assign => Decision::Mint,
        None => Decision::Pool(anonymous(&snap.rollout)),
    }
}

/// The pool of user `id` under `rollout`.
#[inline]
pub fn assign(rollout: &Rollout, id: &[u8]) -> PoolName {
    match rollout.state {
        State::RolledBack => PoolName::Stable,
        State::Completed => PoolName::Canary,
        State::Running | State::Halted => {
            if bucket(&rollout.salt, id) < rollout.ppm {
                PoolName::Canary
            } else {
                PoolName::Stable
            }
        }
    }
}

/// The pool of a request with no id when minting is off: stable, unless the rollout completed.
pub fn anonymous(rollout: &Rollout) -> PoolName {
    match rollout.state {
        State::Completed => PoolName::Canary,
        State::Running | State::Halted | State::RolledBack => PoolName::Stable,
    }
}
