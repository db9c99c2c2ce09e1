//! The data plane: accept, decide, forward, answer.

mod check;
mod error;
mod forward;
mod handler;
mod listener;
mod watchdog;

pub use error::ProxyError;
pub use forward::HOP_BY_HOP;
pub use handler::{Conn, ConnInfo, Proxy, ProxyBody, error_response, handle};
pub use listener::{bind, serve};
