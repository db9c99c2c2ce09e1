//! The control plane: everything that changes the rollout goes through the controller.

pub mod admin;
mod admin_path;
mod admin_peers;
pub mod client;
pub mod command;
mod controller;
mod fleet;
pub mod handover;
mod persist;
pub mod probes;
pub mod reply;
pub mod schedule;
pub mod state;
mod status;
pub mod store;
pub mod watched;
pub mod watcher;
mod writer;

pub use command::{Command, MAX_LINE, ParseError, Source};
pub use controller::{Controller, Handle, StartError};
pub use fleet::watch as watch_fleet;
pub use persist::FleetStatus;
pub use reply::{ControlError, Outcome, Reply, Status};
