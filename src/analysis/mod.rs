//! Rollout analysis: canary and stable measured side by side (errors, latency, distinct users,
//! goal conversions), compared with statistics that stay valid under continuous monitoring, and
//! a guard that halts or rolls back a regressed canary by itself.
//!
//! The request path only records ([`Recorder`]); the analysis task does the rest once a second.

mod clusters;
mod counts;
pub mod guard;
pub mod histogram;
#[cfg(test)]
mod looks;
pub(crate) mod reference;
#[cfg(test)]
mod sim;
pub mod stats;
mod task;
pub mod users;
pub mod view;
mod window;

use http::Method;

use crate::config::Analysis as Settings;

pub use counts::{Counts, ERROR_USERS, Recorder};
pub use task::{Act, Analysis, run};
pub use view::AnalysisView;

/// The goals a request could convert, as a bit per goal, from its method and path (the status
/// decides later, [`converted`]). 0 — and no work — when no goal is configured.
#[inline]
pub fn candidate_goals(settings: &Settings, method: &Method, path: &str) -> u32 {
    let mut bits = 0;
    for (i, g) in settings.goals.iter().enumerate() {
        if g.path == path && g.method.as_ref().is_none_or(|m| m == method) {
            bits |= 1 << i;
        }
    }
    bits
}

/// The goal a request with `candidates` converted by answering `status`, if any.
#[inline]
pub fn converted(settings: &Settings, candidates: u32, status: u16) -> Option<usize> {
    if candidates == 0 {
        return None;
    }
    settings
        .goals
        .iter()
        .enumerate()
        .find(|(i, g)| candidates & (1 << i) != 0 && g.status.contains(status))
        .map(|(i, _)| i)
}
