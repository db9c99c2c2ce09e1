//! The state file: the runtime rollout state, written before every reply with temp file + fsync +
//! rename + directory fsync, and read back at start-up. Versioned: older versions keep loading.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Plan, RolloutPlan, Step};
use crate::fleet::{EtcdError, Kv};
use crate::routing::State;

mod disk;

use disk::{read_trusted, resolve};
pub use disk::{remove_stale_temporaries, write_atomic};

use super::command::Source;
use super::schedule::{Schedule, Timing};
use super::state::{RolloutState, Stopped};

/// The version this build writes. 2 added `pending_rollout`; version 1 files load with it false.
pub const VERSION: u32 = 2;

/// Durations read back are capped here (a damaged file must not overflow a clock).
const MAX_SPAN: Duration = crate::config::MAX_DURATION;

/// 9999-12-31T23:59:59Z: later times cannot be shown as RFC 3339.
pub const LATEST_MS: u64 = 253_402_300_799_000;

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_SPAN)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a ramp state file: {error}")]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path} has format version {found}; this ramp reads up to {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} holds an invalid value: {what}")]
    Invalid { path: PathBuf, what: &'static str },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot encode the state: {0}")]
    Encode(serde_json::Error),
    #[error("not a ramp fleet state: {0}")]
    Envelope(serde_json::Error),
    #[error(transparent)]
    Fleet(#[from] EtcdError),
    /// A halt or rollback came while etcd had not answered this change's write: it was given up
    /// so that the halt or rollback applies at once.
    #[error(
        "a halt or rollback came while etcd had not answered, and went first: this change is not in force (etcd may still make it, and the halt or rollback is then put on top of it)"
    )]
    Preempted,
    /// The fleet's state changed meanwhile (at another instance): what it holds now.
    #[error("the rollout was changed meanwhile at another instance")]
    Conflict(Option<Kv>),
}

#[derive(Debug, Serialize, Deserialize)]
struct FileV2 {
    version: u32,
    rollout: String,
    state: State,
    percent_ppm: u32,
    schedule: Option<ScheduleV1>,
    file_plan: PlanV1,
    plan_pending: bool,
    /// New in version 2.
    #[serde(default)]
    pending_rollout: bool,
    changed_at_unix_ms: u64,
    changed_by: Source,
    /// New in version 2; see [`RolloutState::generation`]. Absent (written by an older ramp):
    /// `changed_at_unix_ms`, which a generation never falls behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// New in version 2: rolled back from completed (`resume` completes it again). Absent
    /// (false, or written by an older ramp): `resume` runs it at its percent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    completed_before: bool,
    /// In a fleet's local cache only: a halt or rollback applied at this instance while etcd did
    /// not answer, not written to the fleet yet (`halt` or `rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_pending: Option<String>,
    /// Who made the pending halt or rollback, so that the fleet is told after a restart too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_pending_by: Option<Source>,
    /// In a fleet's local cache only: the key whose state it holds (absent: written by an older
    /// ramp, or a state file before the instance joined a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_key: Option<String>,
    /// New in version 2: while halted or rolled back, who stopped it and when (see
    /// [`RolloutState::stopped`]). Absent (running, or written by an older ramp): unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stopped_by: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stopped_at_unix_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ScheduleV1 {
    step: usize,
    /// Wall-clock end of the current step's hold, while running.
    deadline_unix_ms: Option<u64>,
    /// Time left in the hold, while paused.
    remaining_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlanV1 {
    id: String,
    percent_ppm: Option<u32>,
    steps: Option<Vec<StepV1>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StepV1 {
    percent_ppm: u32,
    hold_ms: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The file's text for `s`, taken at (`now`, `wall`).
pub fn encode(s: &RolloutState, now: Instant, wall: SystemTime) -> Result<Vec<u8>, StoreError> {
    encode_file(s, None, None, now, wall)
}

/// A fleet's local cache: the state of the fleet's `key`, and the halt or rollback (`pending`,
/// with who made it) still to be written to the fleet, so that a restart keeps it.
pub fn encode_cache(
    s: &RolloutState,
    key: &str,
    pending: Option<(&str, &Source)>,
    now: Instant,
    wall: SystemTime,
) -> Result<Vec<u8>, StoreError> {
    encode_file(s, Some(key), pending, now, wall)
}

/// What a fleet's local cache says beside the state.
#[derive(Debug, Default, PartialEq)]
pub struct CacheNotes {
    /// The key whose state it holds (`None`: not said, as by an older ramp).
    pub key: Option<String>,
    /// The halt or rollback still to be written to the fleet, and who made it (`startup` in a
    /// cache written by an older ramp).
    pub pending: Option<(&'static str, Source)>,
}

/// What the fleet's local cache at `path` says beside the state (nothing when it cannot be read).
pub fn cache_notes(path: &Path) -> CacheNotes {
    #[derive(Deserialize)]
    struct Notes {
        #[serde(default)]
        fleet_key: Option<String>,
        #[serde(default)]
        fleet_pending: Option<String>,
        #[serde(default)]
        fleet_pending_by: Option<Source>,
    }
    let Some(n) = resolve(path)
        .and_then(|p| read_trusted(&p))
        .ok()
        .and_then(|text| serde_json::from_slice::<Notes>(&text).ok())
    else {
        return CacheNotes::default();
    };
    let what = match n.fleet_pending.as_deref() {
        Some("halt") => Some("halt"),
        Some("rollback") => Some("rollback"),
        _ => None,
    };
    CacheNotes {
        key: n.fleet_key,
        pending: what.map(|w| (w, n.fleet_pending_by.unwrap_or(Source::Startup))),
    }
}

fn encode_file(
    s: &RolloutState,
    key: Option<&str>,
    pending: Option<(&str, &Source)>,
    now: Instant,
    wall: SystemTime,
) -> Result<Vec<u8>, StoreError> {
    let schedule = s.schedule.map(|sc| {
        let (deadline, remaining) = match sc.timing {
            Timing::Until(at) => (
                Some(unix_ms(
                    wall.checked_add(at.saturating_duration_since(now))
                        .unwrap_or(wall),
                )),
                None,
            ),
            Timing::Paused(left) => (None, Some(ms(left))),
            Timing::Final => (None, None),
        };
        ScheduleV1 {
            step: sc.step,
            deadline_unix_ms: deadline,
            remaining_ms: remaining,
        }
    });
    let file_plan = PlanV1 {
        id: s.plan.id.clone(),
        percent_ppm: match &s.plan.plan {
            Plan::Percent(p) => Some(*p),
            Plan::Steps(_) => None,
        },
        steps: match &s.plan.plan {
            Plan::Percent(_) => None,
            Plan::Steps(steps) => Some(
                steps
                    .iter()
                    .map(|st| StepV1 {
                        percent_ppm: st.ppm,
                        hold_ms: st.hold.map(ms),
                    })
                    .collect(),
            ),
        },
    };
    let file = FileV2 {
        version: VERSION,
        rollout: s.id.clone(),
        state: s.state,
        percent_ppm: s.ppm,
        schedule,
        file_plan,
        plan_pending: s.plan_pending,
        pending_rollout: s.pending_rollout,
        changed_at_unix_ms: unix_ms(s.changed_at),
        changed_by: s.changed_by.clone(),
        generation: Some(s.generation),
        completed_before: s.completed_before && s.state == State::RolledBack,
        fleet_pending: pending.map(|(what, _)| what.to_owned()),
        fleet_pending_by: pending.map(|(_, by)| by.clone()),
        fleet_key: key.map(str::to_owned),
        stopped_by: s.stopped.as_ref().map(|st| st.by.clone()),
        stopped_at_unix_ms: s.stopped.as_ref().map(|st| unix_ms(st.at)),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(StoreError::Encode)?;
    text.push(b'\n');
    Ok(text)
}

/// Reads the state back; `Ok(None)` when there is no file yet.
pub fn read(
    path: &Path,
    now: Instant,
    wall: SystemTime,
) -> Result<Option<RolloutState>, StoreError> {
    let read = resolve(path).and_then(|p| read_trusted(&p));
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                error,
            });
        }
    };
    decode(&text, path, now, wall).map(Some)
}

/// Decodes state bytes that came from somewhere else (`from` names it in errors).
pub fn decode_from(
    text: &[u8],
    from: &str,
    now: Instant,
    wall: SystemTime,
) -> Result<RolloutState, StoreError> {
    decode(text, Path::new(from), now, wall)
}

fn decode(
    text: &[u8],
    path: &Path,
    now: Instant,
    wall: SystemTime,
) -> Result<RolloutState, StoreError> {
    let corrupt = |error| StoreError::Corrupt {
        path: path.to_owned(),
        error,
    };
    let invalid = |what| StoreError::Invalid {
        path: path.to_owned(),
        what,
    };
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    let head: Head = serde_json::from_slice(text).map_err(corrupt)?;
    // Each version adds an arm that upgrades the older shape; version 1 lacks only
    // `pending_rollout`, which defaults to false.
    let f: FileV2 = match head.version {
        1 | 2 => serde_json::from_slice(text).map_err(corrupt)?,
        found => {
            return Err(StoreError::Version {
                path: path.to_owned(),
                found,
            });
        }
    };
    let check_ppm = |p: u32| {
        if p <= 1_000_000 {
            Ok(p)
        } else {
            Err(invalid("a percent above 100"))
        }
    };
    let plan = match (f.file_plan.percent_ppm, f.file_plan.steps) {
        (Some(p), None) => Plan::Percent(check_ppm(p)?),
        (None, Some(steps)) if !steps.is_empty() => Plan::Steps(
            steps
                .into_iter()
                .map(|s| {
                    Ok(Step {
                        ppm: check_ppm(s.percent_ppm)?,
                        hold: s.hold_ms.map(millis),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        _ => return Err(invalid("file_plan needs percent_ppm or steps")),
    };
    // As the config file's steps are (the key may have been written by hand): rising, and each
    // but the last held for at least a millisecond; else a schedule would bounce users between
    // the versions.
    if let Plan::Steps(steps) = &plan {
        if steps.windows(2).any(|w| w[1].ppm <= w[0].ppm) {
            return Err(invalid("steps whose percents do not rise"));
        }
        if steps[..steps.len() - 1]
            .iter()
            .any(|s| s.hold.is_none_or(|h| h < Duration::from_millis(1)))
        {
            return Err(invalid("a step other than the last without a hold"));
        }
    }
    let step_count = match &plan {
        Plan::Steps(steps) => steps.len(),
        Plan::Percent(_) => 0,
    };
    let schedule = match f.schedule {
        None => None,
        // A pending plan replaced the steps the position refers to; `resume` re-bases it.
        Some(s) if s.step >= step_count && !f.plan_pending => {
            return Err(invalid("schedule step past the plan"));
        }
        Some(s) => {
            let timing = match (s.deadline_unix_ms, s.remaining_ms) {
                (Some(deadline), None) => {
                    // Time spent down counts toward the hold; a hold that ended while ramp was
                    // down ends now.
                    let end = UNIX_EPOCH + millis(deadline);
                    Timing::Until(now + end.duration_since(wall).unwrap_or_default().min(MAX_SPAN))
                }
                (None, Some(left)) => Timing::Paused(millis(left)),
                (None, None) => Timing::Final,
                (Some(_), Some(_)) => return Err(invalid("schedule has a deadline and a pause")),
            };
            Some(Schedule {
                step: s.step,
                timing,
            })
        }
    };
    if f.rollout.is_empty() || crate::config::rollout_id(&f.rollout).is_err() {
        return Err(invalid("rollout id"));
    }
    // The file plan's id becomes the rollout's at a `resume` or `start` without an id.
    if crate::config::rollout_id(&f.file_plan.id).is_err() {
        return Err(invalid("the file plan's rollout id"));
    }
    if f.changed_at_unix_ms > LATEST_MS {
        return Err(invalid("changed_at after the year 9999"));
    }
    let generation = f.generation.unwrap_or(f.changed_at_unix_ms);
    if generation > LATEST_MS {
        return Err(invalid("generation after the year 9999"));
    }
    // Kept only while the state read back is a stop (a file edited by hand may say otherwise).
    let stopped = match (f.stopped_by, f.stopped_at_unix_ms) {
        (Some(by), Some(at)) if matches!(f.state, State::Halted | State::RolledBack) => {
            if at > LATEST_MS {
                return Err(invalid("stopped_at after the year 9999"));
            }
            Some(Stopped {
                at: UNIX_EPOCH + Duration::from_millis(at),
                by,
            })
        }
        _ => None,
    };
    let mut state = RolloutState {
        id: f.rollout,
        state: f.state,
        ppm: check_ppm(f.percent_ppm)?,
        schedule,
        plan: RolloutPlan {
            id: f.file_plan.id,
            plan,
        },
        plan_pending: f.plan_pending,
        pending_rollout: f.pending_rollout && f.plan_pending,
        completed_before: f.completed_before && f.state == State::RolledBack,
        changed_at: UNIX_EPOCH + Duration::from_millis(f.changed_at_unix_ms),
        changed_by: f.changed_by,
        generation,
        stopped,
    };
    if let Some(what) = state.settle(now) {
        tracing::warn!(from = %path.display(), "the rollout state read back was inconsistent: {what}");
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
