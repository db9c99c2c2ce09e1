//! Replies on the admin socket: one JSON object per line, `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::config::{Plan, ppm_to_percent};
use crate::routing;
use crate::snapshot::Snapshot;

use super::schedule::Timing;
use super::state::RolloutState;

pub type Reply = Map<String, Value>;

pub fn error(message: impl std::fmt::Display) -> Reply {
    let mut m = Map::new();
    m.insert("ok".into(), Value::Bool(false));
    m.insert("error".into(), Value::String(message.to_string()));
    m
}

fn object(v: Value) -> Reply {
    match v {
        Value::Object(m) => m,
        other => error(format!("internal: reply is not an object: {other}")),
    }
}

/// What the controller knows beyond the rollout state.
#[derive(Debug, Default)]
pub struct Notes {
    pub last_reload_error: Option<String>,
    pub state_file: Option<String>,
    pub state_file_error: Option<String>,
    pub restart_required: Vec<&'static str>,
}

/// A time as RFC 3339, or null when it cannot be one (before 1970 or after 9999).
fn rfc3339(t: std::time::SystemTime) -> Value {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .ok();
    match ms {
        Some(ms) if ms <= u128::from(super::store::LATEST_MS) => {
            Value::String(humantime::format_rfc3339_seconds(t).to_string())
        }
        _ => Value::Null,
    }
}

fn schedule(r: &RolloutState, now: Instant) -> Value {
    let (Some(at), Plan::Steps(steps)) = (r.schedule, &r.plan.plan) else {
        return Value::Null;
    };
    let next = steps.get(at.step + 1);
    json!({
        "step": at.step + 1,
        "steps": steps.len(),
        "percent": steps.get(at.step).map(|s| ppm_to_percent(s.ppm)),
        "next_percent": next.map(|s| ppm_to_percent(s.ppm)),
        "next_in_secs": at.left(now).map(|d| d.as_secs_f64().round()),
        "paused": matches!(at.timing, Timing::Paused(_)),
    })
}

pub fn status(r: &RolloutState, snap: &Snapshot, notes: &Notes, now: Instant) -> Reply {
    object(json!({
        "ok": true,
        "rollout": r.id,
        "state": r.state.as_str(),
        "percent": ppm_to_percent(r.ppm),
        "schedule": schedule(r, now),
        "file_plan_pending": r.plan_pending,
        "changed_at": rfc3339(r.changed_at),
        "changed_by": r.changed_by.to_string(),
        "source": r.changed_by.kind(),
        "last_reload_error": notes.last_reload_error,
        "state_file": notes.state_file,
        "state_file_error": notes.state_file_error,
        "restart_required": notes.restart_required,
        "pid": std::process::id(),
        "upstreams": {
            "stable": snap.stable.upstreams().len(),
            "canary": snap.canary.upstreams().len(),
        },
    }))
}

pub fn bucket(snap: &Snapshot, user: &[u8]) -> Reply {
    let r = &snap.rollout;
    object(json!({
        "ok": true,
        "user": String::from_utf8_lossy(user),
        "bucket": routing::bucket(&r.salt, user),
        "pool": routing::assign(r, user).as_str(),
        "rollout": &*r.id,
        "state": r.state.as_str(),
        "percent": ppm_to_percent(r.ppm),
    }))
}
