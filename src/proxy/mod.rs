//! The data plane: accept, decide, forward, answer.

mod error;
mod forward;
mod handler;
mod listener;

pub use error::ProxyError;
pub use forward::{HOP_BY_HOP, strip_hop_by_hop};
pub use handler::{ConnInfo, Proxy, ProxyBody, handle};
pub use listener::{bind, serve};
