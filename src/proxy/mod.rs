//! The data plane: accept, decide, forward, answer.

mod body;
mod check;
mod connection;
mod context;
mod error;
mod follow;
mod forward;
mod handler;
mod http1;
mod listener;
mod share;
mod tunnel;
mod unanswered;
mod watchdog;

pub use body::{ProxyBody, error_response};
pub use context::{Conn, ConnInfo, Proxy};
pub use error::ProxyError;
pub use forward::HOP_BY_HOP;
pub use handler::handle;
pub use listener::serve;
