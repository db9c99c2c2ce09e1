//! `ramp ctl`: sends one command line to the admin socket and shows the reply, read back into
//! the same types the controller answered with.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::routing::State;

use super::reply::{self, BucketInfo, Decoded, ScheduleStatus, Status};

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
    #[error("unreadable reply {line:?}: {error}")]
    BadReply {
        line: String,
        error: serde_json::Error,
    },
}

/// A reply: the raw line (for `--json`) and what it says.
#[derive(Debug)]
pub struct Answer {
    pub line: String,
    pub reply: Decoded,
}

impl Answer {
    pub fn ok(&self) -> bool {
        !matches!(self.reply, Decoded::Error(_))
    }
}

/// Sends `line` and reads the reply.
pub fn request(socket: &Path, line: &str) -> Result<Answer, ClientError> {
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
        return Err(ClientError::NoReply);
    }
    let is_bucket = line
        .split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("bucket"));
    let line = reply.trim_end().to_owned();
    match reply::decode(&line, is_bucket) {
        Ok(reply) => Ok(Answer { line, reply }),
        Err(error) => Err(ClientError::BadReply { line, error }),
    }
}

/// A percent as people write it: 5, 2.5, 0.01.
fn pct(p: f64) -> String {
    format!("{}%", (p * 10_000.0).round() / 10_000.0)
}

fn duration(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0) as u64)).to_string()
}

fn schedule(s: &ScheduleStatus) -> String {
    let at = s.percent.map_or_else(|| "-".to_owned(), pct);
    let mut out = format!("step {} of {} at {at}", s.step, s.steps);
    match (s.next_percent, s.next_in_secs) {
        (None, _) => out.push_str(", last step"),
        (Some(next), Some(secs)) if s.paused => out.push_str(&format!(
            ", next {} {} after resume",
            pct(next),
            duration(secs)
        )),
        (Some(next), Some(secs)) => {
            out.push_str(&format!(", next {} in {}", pct(next), duration(secs)))
        }
        (Some(next), None) => out.push_str(&format!(", next {}", pct(next))),
    }
    out
}

fn bucket(b: &BucketInfo) -> String {
    format!(
        "{}: bucket {}, pool {} (rollout {} at {}, {})",
        b.user,
        b.bucket,
        b.pool.as_str(),
        b.rollout,
        pct(b.percent),
        b.state.as_str()
    )
}

/// The share users get now, and the plan's when that differs.
fn percent(s: &Status) -> String {
    match s.state {
        State::RolledBack => format!(
            "0% now (rolled back; the plan's {} applies again on resume)",
            pct(s.percent)
        ),
        State::Completed => "100% now (completed)".to_owned(),
        State::Running | State::Halted => pct(s.effective_percent),
    }
}

fn status(s: &Status, changed: Option<bool>) -> String {
    let mut rows = vec![
        ("rollout", s.rollout.clone()),
        ("state", s.state.as_str().to_owned()),
        ("percent", percent(s)),
        ("schedule", s.schedule.as_ref().map_or("-".into(), schedule)),
        (
            "changed",
            format!(
                "{} by {}",
                s.changed_at.as_deref().unwrap_or("-"),
                s.changed_by
            ),
        ),
        (
            "reload",
            match &s.last_reload_error {
                None => "ok".into(),
                Some(e) => format!("error: {e}"),
            },
        ),
    ];
    if let Some(f) = &s.state_file {
        let note = match &s.state_file_error {
            None => String::new(),
            Some(e) => format!(" (error: {e})"),
        };
        rows.push(("state file", format!("{f}{note}")));
    }
    if s.file_plan_pending {
        rows.push((
            "file plan",
            "changed while halted; applies on resume".into(),
        ));
    }
    if !s.restart_required.is_empty() {
        rows.push((
            "restart",
            format!("needed for: {}", s.restart_required.join(", ")),
        ));
    }
    if changed == Some(false) {
        rows.push(("note", "nothing changed".into()));
    }
    rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
}

/// The reply as a person reads it: a small table for status, one line otherwise.
pub fn human(reply: &Decoded) -> String {
    match reply {
        Decoded::Error(e) => format!("error: {e}"),
        Decoded::Bucket(b) => bucket(b),
        Decoded::Status {
            status: s, changed, ..
        } => status(s, *changed),
    }
}
