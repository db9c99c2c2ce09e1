//! Upstream servers: pools, pooled keep-alive connections, and the registry that lets a new
//! snapshot keep the connections of upstreams it shares with the old one.

mod body;
mod client_body;
mod conn;
mod failure;
pub mod health;
mod hide;
mod idle;
mod pool;
mod slot;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::config::UpstreamAddr;

pub use body::{BodyTimes, ReqBody, UpstreamBody};
pub use client_body::{ClientBody, H2Body, Leftover};
pub use conn::{Connector, Sender, Upstream};
pub use failure::{Failure, Retry, SendError};
pub use hide::Hide;
pub use idle::BodyError;
pub use pool::{Outcome, Pool};
pub use slot::Slot;
pub use wire::Fields;
pub use wire::{Exchange, InvalidAnswer, Outbound};

/// Every live upstream by address. Only the controller touches it, when building a snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    known: Mutex<HashMap<UpstreamAddr, Weak<Upstream>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The upstreams for `addrs`, reusing those still alive (and their idle connections).
    pub fn get_all(&self, addrs: &[UpstreamAddr]) -> Vec<Arc<Upstream>> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, weak| weak.strong_count() > 0);
        addrs
            .iter()
            .map(|addr| {
                if let Some(up) = known.get(addr).and_then(Weak::upgrade) {
                    return up;
                }
                let up = Arc::new(Upstream::new(addr.clone()));
                known.insert(addr.clone(), Arc::downgrade(&up));
                up
            })
            .collect()
    }
}
