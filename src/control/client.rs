//! `ramp ctl`: sends one command line to the admin socket and shows the reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {error} (is ramp serving with admin.socket set to this path?)"
    )]
    Connect { path: String, error: std::io::Error },
    #[error("talking to {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("ramp closed the connection without replying")]
    NoReply,
    #[error("unreadable reply {0:?}")]
    BadReply(String),
}

/// Sends `line` and gives the parsed reply object.
pub fn request(socket: &Path, line: &str) -> Result<Value, ClientError> {
    let path = socket.display().to_string();
    let io = |error| ClientError::Io {
        path: path.clone(),
        error,
    };
    let mut stream = UnixStream::connect(socket).map_err(|error| ClientError::Connect {
        path: path.clone(),
        error,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut text = Vec::with_capacity(line.len() + 1);
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    // ramp may answer (a refusal) and close before reading: the reply still tells why.
    let sent = stream.write_all(&text);
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        sent.map_err(io)?;
        read.map_err(io)?;
    }
    if reply.is_empty() {
        return Err(ClientError::NoReply);
    }
    serde_json::from_str(&reply).map_err(|_| ClientError::BadReply(reply.trim().to_owned()))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A percent as people write it: 5, 2.5, 0.01.
fn pct(v: &Value) -> String {
    match v.as_f64() {
        Some(p) => format!("{}%", (p * 10_000.0).round() / 10_000.0),
        None => text(v),
    }
}

fn duration(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0) as u64)).to_string()
}

/// The reply as a person reads it: a small table for status, one line otherwise.
pub fn human(reply: &Value) -> String {
    if reply["ok"] != Value::Bool(true) {
        return format!("error: {}", text(&reply["error"]));
    }
    if reply.get("bucket").is_some() {
        return format!(
            "{}: bucket {}, pool {} (rollout {} at {}, {})",
            text(&reply["user"]),
            text(&reply["bucket"]),
            text(&reply["pool"]),
            text(&reply["rollout"]),
            pct(&reply["percent"]),
            text(&reply["state"])
        );
    }
    let schedule =
        match &reply["schedule"] {
            Value::Null => "-".to_owned(),
            s => {
                let mut out = format!(
                    "step {} of {} at {}",
                    text(&s["step"]),
                    text(&s["steps"]),
                    pct(&s["percent"])
                );
                match (&s["next_percent"], s["next_in_secs"].as_f64()) {
                    (Value::Null, _) => out.push_str(", last step"),
                    (next, Some(secs)) if s["paused"] == Value::Bool(true) => out.push_str(
                        &format!(", next {} {} after resume", pct(next), duration(secs)),
                    ),
                    (next, Some(secs)) => {
                        out.push_str(&format!(", next {} in {}", pct(next), duration(secs)))
                    }
                    (next, None) => out.push_str(&format!(", next {}", pct(next))),
                }
                out
            }
        };
    let mut rows = vec![
        ("rollout", text(&reply["rollout"])),
        ("state", text(&reply["state"])),
        ("percent", pct(&reply["percent"])),
        ("schedule", schedule),
        (
            "changed",
            format!(
                "{} by {}",
                text(&reply["changed_at"]),
                text(&reply["changed_by"])
            ),
        ),
        (
            "reload",
            match &reply["last_reload_error"] {
                Value::Null => "ok".into(),
                e => format!("error: {}", text(e)),
            },
        ),
    ];
    if let Some(f) = reply["state_file"].as_str() {
        let note = match &reply["state_file_error"] {
            Value::Null => String::new(),
            e => format!(" (error: {})", text(e)),
        };
        rows.push(("state file", format!("{f}{note}")));
    }
    if reply["file_plan_pending"] == Value::Bool(true) {
        rows.push((
            "file plan",
            "changed while halted; applies on resume".into(),
        ));
    }
    if let Some(list) = reply["restart_required"]
        .as_array()
        .filter(|l| !l.is_empty())
    {
        let names: Vec<String> = list.iter().map(text).collect();
        rows.push(("restart", format!("needed for: {}", names.join(", "))));
    }
    if reply["changed"] == Value::Bool(false) {
        rows.push(("note", "nothing changed".into()));
    }
    rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
}
