//! What a command gives back, as types: [`Outcome`] or [`ControlError`]. They become JSON only at
//! the admin socket ([`encode`]), and `ramp ctl` reads them back into the same types
//! ([`decode`]), so a renamed field is a compile error on both sides, not a blank column.
//!
//! The wire protocol: one JSON object per line, `{"ok":true,...status keys...}` (a change adds
//! `"changed"`, a reload adds `"reload"`), `{"ok":true,"user":...,"bucket":...}` for `bucket`,
//! or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisView;

use super::persist::FleetStatus;
use crate::config::ConfigError;
use crate::routing::{PerPool, PoolName, State};
use crate::tls::TlsError;

use super::command::ParseError;
use super::state::{FileEffect, Refusal};
use super::store::StoreError;

/// Where a rollout stands, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub rollout: String,
    pub state: State,
    /// The share the plan sets (what `set`, the schedule or the file gave). While rolled back or
    /// completed it is not what users get: see `effective_percent`.
    pub percent: f64,
    /// The share of users on canary now: 0 when rolled back, 100 when completed, else `percent`.
    pub effective_percent: f64,
    /// Null while a file plan waits for `resume`: the position belongs to the steps it replaced
    /// (see `on_resume`).
    pub schedule: Option<ScheduleStatus>,
    pub file_plan_pending: bool,
    /// While halted or rolled back: what `resume` would put in force now.
    #[serde(default)]
    pub on_resume: Option<OnResume>,
    /// RFC 3339, or null when the time cannot be shown.
    pub changed_at: Option<String>,
    /// Who made the last change, e.g. `admin (uid 0, pid 4242)`.
    pub changed_by: String,
    /// The kind of source of the last change: admin, file, schedule, startup, guard, fleet.
    pub source: String,
    /// While halted or rolled back: who stopped the rollout and when (kept through later
    /// changes that leave it stopped, and across restarts); null when running or unknown.
    #[serde(default)]
    pub stopped: Option<StoppedStatus>,
    pub last_reload_error: Option<String>,
    pub state_file: Option<String>,
    pub state_file_error: Option<String>,
    pub restart_required: Vec<String>,
    pub pid: u32,
    /// Upstreams configured per pool.
    pub upstreams: PerPool<usize>,
    /// Upstreams per pool neither ejected by passive health nor failing active checks now.
    #[serde(default)]
    pub upstreams_available: Option<PerPool<usize>>,
    /// Canary and stable side by side, with verdicts (none in the first second).
    #[serde(default)]
    pub analysis: Option<AnalysisView>,
    /// The last changes of the rollout, newest first (kept since this process started).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// The fleet's shared state in etcd, when there is one.
    #[serde(default)]
    pub fleet: Option<FleetStatus>,
}

/// Who halted or rolled back the rollout in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoppedStatus {
    /// RFC 3339, or null when the time cannot be shown.
    pub at: Option<String>,
    /// e.g. `guard (the figures)`.
    pub by: String,
    /// admin, file, schedule, startup, guard, fleet.
    pub source: String,
}

/// What `resume` would put in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnResume {
    pub rollout: String,
    pub state: State,
    pub percent: f64,
    /// The schedule's step (1-based) and how many there are, when it follows one.
    pub step: Option<usize>,
    pub steps: Option<usize>,
}

/// One change of the rollout: who, when, from what to what, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// RFC 3339.
    pub at: Option<String>,
    /// Who, e.g. `admin (uid 0, pid 4242)`, or `guard (the figures)`.
    pub by: String,
    pub source: String,
    pub command: String,
    pub rollout: String,
    /// The rollout before, when the change started a new one (users regrouped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_rollout: Option<String>,
    pub from_state: State,
    pub to_state: State,
    pub from_percent: f64,
    pub to_percent: f64,
}

/// Position in a staged schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub percent: Option<f64>,
    pub next_percent: Option<f64>,
    pub next_in_secs: Option<f64>,
    pub paused: bool,
    /// Why the next step waits although its hold is over (a regressed metric, or too little
    /// data at this step with `guard.require_data`).
    #[serde(default)]
    pub held: Option<String>,
}

/// One user id's bucket and pool right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub user: String,
    pub bucket: u32,
    pub pool: PoolName,
    pub rollout: String,
    pub state: State,
    pub percent: f64,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `status`.
    Status(Status),
    /// A change command: whether anything changed, and where the rollout stands now.
    Applied { changed: bool, status: Status },
    /// `reload`: what the file did to the rollout, and the settings it changed.
    Reloaded {
        effect: FileEffect,
        applied: Vec<String>,
        status: Status,
    },
    /// `bucket`.
    Bucket(BucketInfo),
}

/// Why a command did not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{what} not applied: {error}")]
    NotSaved {
        what: &'static str,
        error: StoreError,
    },
    #[error(
        "{what} is in effect, but the state file could not be written ({error}): it will not survive a restart"
    )]
    Unsaved {
        what: &'static str,
        error: StoreError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("reload failed: {0}")]
    ReloadTask(String),
    #[error("reload not applied yet: {0}; the config file is read again when etcd answers again")]
    ReloadAwaitsEtcd(StoreError),
    #[error(
        "reload applied but for the rollout, whose change waits for etcd: {0}; the config file is read again when etcd answers again"
    )]
    RolloutAwaitsEtcd(StoreError),
    #[error("a restart could not start from this config: {0}")]
    Unstartable(String),
    #[error(
        "state.file: cannot write the state in force to {to} ({error}); the running config stays"
    )]
    StateNotMoved { to: String, error: String },
    #[error("permission denied: uid {uid} may only run status and bucket")]
    ReadOnly { uid: u32 },
    #[error(
        "permission denied: uid {uid} may not use the admin socket: it is in neither admin.allowed_uids nor admin.readonly_uids of the running config"
    )]
    NotAllowed { uid: u32 },
    #[error("cannot identify the peer")]
    UnknownPeer,
    #[error("too many admin connections from uid {uid} ({most} open, none idle): close some")]
    TooManyConnections { uid: u32, most: usize },
    #[error(
        "{what} is in effect at this instance, but etcd has not taken it ({error}); it is written to the fleet as soon as etcd takes it"
    )]
    UnsavedInFleet {
        what: &'static str,
        error: StoreError,
    },
    #[error("ramp is shutting down")]
    ShuttingDown,
    #[error(
        "not applied: a newer ramp has taken this admin socket over (a restart with --takeover); this connection reached the old one: connect again"
    )]
    TakenOver,
    /// The fleet's key changed meanwhile (internal: becomes `ChangedMeanwhile` once the
    /// controller has taken the fleet's state).
    #[error("the rollout was changed meanwhile at another instance")]
    Conflict(Option<crate::fleet::Kv>),
    #[error(
        "not applied: the rollout was changed meanwhile at another instance; now: {now}. Run the command again if it still applies"
    )]
    ChangedMeanwhile { now: String },
    #[error("not applied: the guard judged rollout {judged}, which is no longer in force")]
    GuardLate { judged: String },
}

/// A command's result.
pub type Reply = Result<Outcome, ControlError>;

#[derive(Debug, Serialize, Deserialize)]
struct StatusLine {
    ok: bool,
    #[serde(flatten)]
    status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reload: Option<FileEffect>,
    /// With `reload`: the settings it changed (the file's section names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BucketLine {
    ok: bool,
    #[serde(flatten)]
    bucket: BucketInfo,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorLine {
    ok: bool,
    error: String,
    /// A halt or rollback in force here that could not be saved (the state file, the fleet):
    /// not the command's failure, and told apart from one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    in_effect: bool,
}

/// The reply as one JSON line (with its newline).
pub fn encode(reply: &Reply) -> Vec<u8> {
    let status = |status: &Status, changed, reload: Option<(FileEffect, &Vec<String>)>| {
        serde_json::to_vec(&StatusLine {
            ok: true,
            status: status.clone(),
            changed,
            reload: reload.map(|r| r.0),
            applied: reload.map(|r| r.1.clone()),
        })
    };
    let line = match reply {
        Ok(Outcome::Status(s)) => status(s, None, None),
        Ok(Outcome::Applied { changed, status: s }) => status(s, Some(*changed), None),
        Ok(Outcome::Reloaded {
            effect,
            applied,
            status: s,
        }) => status(s, None, Some((*effect, applied))),
        Ok(Outcome::Bucket(b)) => serde_json::to_vec(&BucketLine {
            ok: true,
            bucket: b.clone(),
        }),
        Err(e) => serde_json::to_vec(&ErrorLine {
            ok: false,
            error: e.to_string(),
            in_effect: matches!(
                e,
                ControlError::Unsaved { .. } | ControlError::UnsavedInFleet { .. }
            ),
        }),
    };
    let mut line = line.unwrap_or_else(|e| {
        // Only a float that is not finite could fail here; say so rather than send nothing.
        let fallback = ErrorLine {
            ok: false,
            error: format!("internal: cannot encode the reply: {e}"),
            in_effect: false,
        };
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    line.push(b'\n');
    line
}

/// A reply line as `ramp ctl` reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Status {
        status: Box<Status>,
        changed: Option<bool>,
        reload: Option<FileEffect>,
        applied: Option<Vec<String>>,
    },
    Bucket(BucketInfo),
    Error(String),
    /// In force, but not saved where it should be (`ramp ctl` exits 3).
    InEffect(String),
}

#[derive(Deserialize)]
struct Head {
    ok: bool,
}

/// Reads a reply line back; `bucket` says whether the command was `bucket`.
pub fn decode(line: &str, bucket: bool) -> Result<Decoded, serde_json::Error> {
    let head: Head = serde_json::from_str(line)?;
    Ok(match (head.ok, bucket) {
        (false, _) => {
            let e: ErrorLine = serde_json::from_str(line)?;
            if e.in_effect {
                Decoded::InEffect(e.error)
            } else {
                Decoded::Error(e.error)
            }
        }
        (true, true) => Decoded::Bucket(serde_json::from_str::<BucketLine>(line)?.bucket),
        (true, false) => {
            let s: StatusLine = serde_json::from_str(line)?;
            Decoded::Status {
                status: Box::new(s.status),
                changed: s.changed,
                reload: s.reload,
                applied: s.applied,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            rollout: "checkout-v2".into(),
            state: State::Halted,
            percent: 2.5,
            effective_percent: 2.5,
            schedule: Some(ScheduleStatus {
                step: 2,
                steps: 3,
                percent: Some(2.5),
                next_percent: Some(100.0),
                next_in_secs: Some(540.0),
                paused: true,
                held: None,
            }),
            file_plan_pending: false,
            on_resume: None,
            changed_at: Some("2026-11-26T10:00:00Z".into()),
            changed_by: "admin (uid 0, pid 7)".into(),
            source: "admin".into(),
            stopped: Some(StoppedStatus {
                at: Some("2026-11-26T10:00:00Z".into()),
                by: "admin (uid 0, pid 7)".into(),
                source: "admin".into(),
            }),
            last_reload_error: None,
            state_file: Some("/var/lib/ramp/state.json".into()),
            state_file_error: None,
            restart_required: vec!["listen".into()],
            pid: 4242,
            upstreams: PerPool {
                stable: 2,
                canary: 1,
            },
            upstreams_available: Some(PerPool {
                stable: 2,
                canary: 0,
            }),
            analysis: None,
            changes: vec![Change {
                at: Some("2026-11-26T10:00:00Z".into()),
                by: "admin (uid 0, pid 7)".into(),
                source: "admin".into(),
                command: "halt".into(),
                rollout: "checkout-v2".into(),
                from_rollout: None,
                from_state: State::Running,
                to_state: State::Halted,
                from_percent: 2.5,
                to_percent: 2.5,
            }],
            fleet: None,
        }
    }

    #[test]
    fn the_wire_format_is_pinned() {
        let line = encode(&Ok(Outcome::Applied {
            changed: true,
            status: status(),
        }));
        let golden = r#"{"ok":true,"rollout":"checkout-v2","state":"halted","percent":2.5,"effective_percent":2.5,"schedule":{"step":2,"steps":3,"percent":2.5,"next_percent":100.0,"next_in_secs":540.0,"paused":true,"held":null},"file_plan_pending":false,"on_resume":null,"changed_at":"2026-11-26T10:00:00Z","changed_by":"admin (uid 0, pid 7)","source":"admin","stopped":{"at":"2026-11-26T10:00:00Z","by":"admin (uid 0, pid 7)","source":"admin"},"last_reload_error":null,"state_file":"/var/lib/ramp/state.json","state_file_error":null,"restart_required":["listen"],"pid":4242,"upstreams":{"stable":2,"canary":1},"upstreams_available":{"stable":2,"canary":0},"analysis":null,"changes":[{"at":"2026-11-26T10:00:00Z","by":"admin (uid 0, pid 7)","source":"admin","command":"halt","rollout":"checkout-v2","from_state":"running","to_state":"halted","from_percent":2.5,"to_percent":2.5}],"fleet":null,"changed":true}"#;
        assert_eq!(String::from_utf8_lossy(&line), format!("{golden}\n"));
        let err = encode(&Err(ControlError::Refused(Refusal::Completed)));
        assert_eq!(
            String::from_utf8_lossy(&err),
            "{\"ok\":false,\"error\":\"the rollout is completed: `start` a new rollout or `rollback`\"}\n"
        );
        let bucket = encode(&Ok(Outcome::Bucket(BucketInfo {
            user: "user-1".into(),
            bucket: 573_883,
            pool: PoolName::Stable,
            rollout: "checkout-v2".into(),
            state: State::Running,
            percent: 5.0,
        })));
        assert_eq!(
            String::from_utf8_lossy(&bucket),
            "{\"ok\":true,\"user\":\"user-1\",\"bucket\":573883,\"pool\":\"stable\",\"rollout\":\"checkout-v2\",\"state\":\"running\",\"percent\":5.0}\n"
        );
    }

    #[test]
    fn every_reply_reads_back_into_the_same_types() {
        let reload = Ok(Outcome::Reloaded {
            effect: FileEffect::NewRollout,
            applied: vec!["pools".into(), "rollout".into()],
            status: status(),
        });
        let line = String::from_utf8_lossy(&encode(&reload)).into_owned();
        assert!(line.contains("\"reload\":\"new_rollout\""), "{line}");
        assert!(
            line.contains("\"applied\":[\"pools\",\"rollout\"]"),
            "{line}"
        );
        assert_eq!(
            decode(&line, false).expect("decode"),
            Decoded::Status {
                status: Box::new(status()),
                changed: None,
                reload: Some(FileEffect::NewRollout),
                applied: Some(vec!["pools".into(), "rollout".into()]),
            }
        );
        let err = String::from_utf8_lossy(&encode(&Err(ControlError::ShuttingDown))).into_owned();
        assert_eq!(
            decode(&err, false).expect("decode"),
            Decoded::Error("ramp is shutting down".into())
        );
    }
}
