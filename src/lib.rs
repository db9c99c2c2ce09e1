//! ramp: a staged-rollout reverse proxy.
//!
//! Two straight lines run through the code:
//!
//! ```text
//! data:    listener -> handler -> routing::decide(snapshot, request) -> pool -> upstream -> response
//! control: admin socket | file watcher | schedule | guard | fleet -> Command -> controller
//!          (the one writer) -> validate -> persist -> build Snapshot -> swap -> log -> reply
//! ```
#![forbid(unsafe_code)]

pub mod analysis;
pub mod app;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod files;
pub mod fleet;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod routing;
pub mod shown;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod web;
