//! Builds the typed [`Status`] and [`BucketInfo`] from what the controller holds.

use tokio::time::Instant;

use crate::config::{Plan, ppm_to_percent};
use crate::routing::{self, PerPool, State};
use crate::snapshot::Snapshot;

use crate::analysis::AnalysisView;

use super::reply::{BucketInfo, Change, OnResume, ScheduleStatus, Status, StoppedStatus};
use super::schedule::Timing;
use super::state::RolloutState;

/// What the controller knows beyond the rollout state.
#[derive(Debug, Default)]
pub struct Notes {
    pub last_reload_error: Option<String>,
    pub state_file: Option<String>,
    pub state_file_error: Option<String>,
    pub restart_required: Vec<&'static str>,
    /// Why the schedule's last step could not be saved (etcd away, say), until one is.
    pub step_unsaved: Option<String>,
    /// The last reload refused the file itself (not a wait for etcd or the disk).
    pub file_refused: bool,
}

/// A time as RFC 3339, or `None` when it cannot be one (before 1970 or after 9999).
fn rfc3339(t: std::time::SystemTime) -> Option<String> {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .ok()?;
    (ms <= u128::from(super::store::LATEST_MS))
        .then(|| humantime::format_rfc3339_seconds(t).to_string())
}

fn schedule(r: &RolloutState, now: Instant, hold: Option<String>) -> Option<ScheduleStatus> {
    let (Some(at), Plan::Steps(steps), false) = (r.schedule, &r.plan.plan, r.plan_pending) else {
        return None;
    };
    let next = steps.get(at.step + 1);
    Some(ScheduleStatus {
        step: at.step + 1,
        steps: steps.len(),
        percent: steps.get(at.step).map(|s| ppm_to_percent(s.ppm)),
        next_percent: next.map(|s| ppm_to_percent(s.ppm)),
        next_in_secs: at.left(now).map(|d| d.as_secs_f64().round()),
        paused: matches!(at.timing, Timing::Paused(_)),
        held: match at.timing {
            Timing::Until(t) if t <= now => hold,
            Timing::Until(_) | Timing::Paused(_) | Timing::Final => None,
        },
    })
}

/// What `resume` would put in force now, while halted or rolled back.
fn on_resume(r: &RolloutState, now: Instant) -> Option<OnResume> {
    if !matches!(r.state, State::Halted | State::RolledBack) {
        return None;
    }
    let mut resumed = r.clone();
    resumed.resume(now).ok()?;
    let steps = match &resumed.plan.plan {
        Plan::Steps(steps) => Some(steps.len()),
        Plan::Percent(_) => None,
    };
    Some(OnResume {
        rollout: resumed.id.clone(),
        state: resumed.state,
        percent: ppm_to_percent(resumed.ppm),
        step: resumed.schedule.map(|s| s.step + 1),
        steps: resumed.schedule.and(steps),
    })
}

/// What the status shows beyond the rollout and the controller's notes.
pub struct Extra {
    pub analysis: Option<AnalysisView>,
    /// Why the schedule waits, if it does.
    pub hold: Option<String>,
    pub changes: Vec<Change>,
    pub fleet: Option<super::persist::FleetStatus>,
}

pub fn build(
    r: &RolloutState,
    snap: &Snapshot,
    notes: &Notes,
    now: Instant,
    extra: Extra,
) -> Status {
    Status {
        rollout: r.id.clone(),
        state: r.state,
        percent: ppm_to_percent(r.ppm),
        effective_percent: match r.state {
            State::RolledBack => 0.0,
            State::Completed => 100.0,
            State::Running | State::Halted => ppm_to_percent(r.ppm),
        },
        // A step that cannot be saved is not taken (a restart would not find it).
        schedule: schedule(
            r,
            now,
            extra
                .hold
                .or_else(|| {
                    notes
                        .state_file_error
                        .as_ref()
                        .map(|e| format!("the state cannot be saved, so no step is taken: {e}"))
                })
                .or_else(|| {
                    notes
                        .step_unsaved
                        .as_ref()
                        .filter(|_| r.next_deadline().is_some_and(|d| d <= now))
                        .map(|e| format!("the next step is due but could not be saved ({e})"))
                }),
        ),
        file_plan_pending: r.plan_pending,
        on_resume: on_resume(r, now),
        changed_at: rfc3339(r.changed_at),
        changed_by: r.changed_by.to_string(),
        source: r.changed_by.kind().to_owned(),
        stopped: r.stopped.as_ref().map(|s| StoppedStatus {
            at: rfc3339(s.at),
            by: s.by.to_string(),
            source: s.by.kind().to_owned(),
        }),
        last_reload_error: notes.last_reload_error.clone(),
        state_file: notes.state_file.clone(),
        state_file_error: notes.state_file_error.clone(),
        restart_required: notes
            .restart_required
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        pid: std::process::id(),
        upstreams: PerPool::from_fn(|p| snap.pools[p].upstreams().len()),
        upstreams_available: Some(PerPool::from_fn(|p| {
            snap.pools[p]
                .upstreams()
                .iter()
                .filter(|u| u.health.is_available())
                .count()
        })),
        analysis: extra.analysis,
        changes: extra.changes,
        fleet: extra.fleet,
    }
}

/// A change as status lists it.
pub fn change(before: &RolloutState, after: &RolloutState, command: &str) -> Change {
    Change {
        at: rfc3339(after.changed_at),
        by: after.changed_by.to_string(),
        source: after.changed_by.kind().to_owned(),
        command: command.to_owned(),
        rollout: after.id.clone(),
        from_rollout: (before.id != after.id).then(|| before.id.clone()),
        from_state: before.state,
        to_state: after.state,
        from_percent: ppm_to_percent(before.ppm),
        to_percent: ppm_to_percent(after.ppm),
    }
}

pub fn bucket(snap: &Snapshot, user: &[u8]) -> BucketInfo {
    let r = &snap.routing.rollout;
    BucketInfo {
        user: String::from_utf8_lossy(user).into_owned(),
        bucket: routing::bucket(&r.salt, user),
        pool: routing::assign(r, user),
        rollout: r.id.to_string(),
        state: r.state,
        percent: ppm_to_percent(r.ppm),
    }
}
