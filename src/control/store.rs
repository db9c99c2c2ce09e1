//! The state file: the runtime rollout state, written before every reply with temp file + fsync +
//! rename + directory fsync, and read back at start-up. Versioned: older versions keep loading.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Plan, RolloutPlan, Step};
use crate::fleet::{EtcdError, Kv};
use crate::routing::State;

use super::command::Source;
use super::schedule::{Schedule, Timing};
use super::state::RolloutState;

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
    encode_file(s, None, now, wall)
}

/// A fleet's local cache: the state, and the halt or rollback (`pending`, with who made it) still
/// to be written to the fleet, so that a restart keeps it.
pub fn encode_cache(
    s: &RolloutState,
    pending: Option<(&str, &Source)>,
    now: Instant,
    wall: SystemTime,
) -> Result<Vec<u8>, StoreError> {
    encode_file(s, pending, now, wall)
}

/// What a fleet's local cache at `path` holds still to be written to the fleet: `halt` or
/// `rollback` and who made it (`startup` in a cache written by an older ramp), or nothing (also
/// when it cannot be read).
pub fn cached_pending(path: &Path) -> Option<(&'static str, Source)> {
    #[derive(Deserialize)]
    struct Pending {
        #[serde(default)]
        fleet_pending: Option<String>,
        #[serde(default)]
        fleet_pending_by: Option<Source>,
    }
    let text = resolve(path).and_then(|p| read_trusted(&p)).ok()?;
    let p: Pending = serde_json::from_slice(&text).ok()?;
    let what = match p.fleet_pending.as_deref() {
        Some("halt") => "halt",
        Some("rollback") => "rollback",
        _ => return None,
    };
    Some((what, p.fleet_pending_by.unwrap_or(Source::Startup)))
}

fn encode_file(
    s: &RolloutState,
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
    if f.changed_at_unix_ms > LATEST_MS {
        return Err(invalid("changed_at after the year 9999"));
    }
    let generation = f.generation.unwrap_or(f.changed_at_unix_ms);
    if generation > LATEST_MS {
        return Err(invalid("generation after the year 9999"));
    }
    Ok(RolloutState {
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
    })
}

/// Writes `bytes` to `path` whole or not at all: a new file of a random name beside it
/// (created exclusively: never a link, a FIFO or a file someone left there), synced, renamed over
/// it unless `given_up` says by then that it is no longer wanted, and the directory synced. A
/// state file kept behind a symlink is written where the link points, and the link stays.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    given_up: impl Fn() -> bool,
) -> Result<(), StoreError> {
    let err = |error| StoreError::Write {
        path: path.to_owned(),
        error,
    };
    let target = resolve(path).map_err(err)?;
    // Never replace what is not a regular file (a FIFO, /dev/null, a device, or a link to one):
    // the path is a mistake, and renaming over it would destroy it.
    let (mode, owner) = match std::fs::metadata(&target) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file; refusing to replace it",
            )));
        }
        // Another user's plant: replaced by a file of ramp's own, as a first file would be.
        Ok(meta) if foreign(&target, meta.uid()) => (std::fs::Permissions::from_mode(0o644), None),
        // The new file keeps the old one's mode and owner.
        Ok(meta) => (meta.permissions(), Some((meta.uid(), meta.gid()))),
        Err(_) => (std::fs::Permissions::from_mode(0o644), None),
    };
    let dir = parent(&target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(mode.clone())
        .tempfile_in(&dir)
        .map_err(err)?;
    if let Some((uid, gid)) = owner {
        keep_owner(tmp.as_file(), &target, uid, gid);
        // The old file's mode exactly: creation applied ramp's umask to it (a first file keeps
        // that umask's say).
        tmp.as_file().set_permissions(mode).map_err(err)?;
    }
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if given_up() {
        // Refused meanwhile: the temporary file goes, the state file stays as it is.
        return Err(err(std::io::Error::other(
            "given up before it was complete; the state file is unchanged",
        )));
    }
    // Opened before the rename: a directory ramp cannot open fails the write while the file
    // still holds the old state.
    let dir_file = std::fs::File::open(&dir).map_err(err)?;
    if let Err(e) = tmp.persist(&target) {
        if e.error.raw_os_error() != Some(nix::errno::Errno::EBUSY as i32) {
            return Err(err(e.error));
        }
        // The file is a mount point (a container's single-file bind mount): it cannot be
        // replaced, only written in place — not atomically, so a crash mid-write can leave it
        // torn (read back as unusable: everyone on stable). Mount its directory instead.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(path = %target.display(), "the state file is a mount point (a single-file bind mount?) and is written in place, not atomically; mount its directory instead");
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&target)
            .map_err(err)?;
        file.write_all(bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        return Ok(());
    }
    // Renamed, the file holds the new state whatever follows: a directory that cannot be synced
    // (some filesystems refuse to) is told in the log, not as a failed write.
    if let Err(error) = dir_file.sync_all() {
        tracing::warn!(dir = %dir.display(), %error, "the state file's directory could not be synced; the new state is in the file, but a crash of the machine may lose it");
    }
    Ok(())
}

/// Gives the new file the owner of the one it replaces. Only root may give a file away, so a ramp
/// that is not root may fail to: the state is still written (owned by ramp's user), and the log
/// says so, as saving it matters more than who owns it.
fn keep_owner(file: &std::fs::File, target: &Path, uid: u32, gid: u32) {
    let same = file
        .metadata()
        .is_ok_and(|m| m.uid() == uid && m.gid() == gid);
    if same {
        return;
    }
    if let Err(error) = std::os::unix::fs::fchown(file, Some(uid), Some(gid)) {
        // Not root: the group may still be kept, if ramp is in it.
        let group = std::os::unix::fs::fchown(file, None, Some(gid)).is_ok();
        tracing::warn!(path = %target.display(), uid, gid, group_kept = group, %error, "the state file's owner could not be kept; the new file is owned by ramp's user");
    }
}

/// Removes the temporary files a write that never finished left beside the state file (a process
/// that ended while its disk did not answer): `.NAME.*.tmp`, and `.NAME.tmp-PID` of older ramps,
/// once a minute old (a ramp taking over from this one may be writing one now).
pub fn remove_stale_temporaries(path: &Path) {
    let Ok(target) = resolve(path) else {
        return;
    };
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent(&target)) else {
        return;
    };
    let (ours, older) = (format!(".{name}."), format!(".{name}.tmp-"));
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let temporary =
            (file.starts_with(&ours) && file.ends_with(".tmp")) || file.starts_with(&older);
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60));
        if temporary && stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The file a path names once symlinks are followed (as far as they lead: a dangling link gives
/// where it points). A link is followed only when it belongs to ramp's user, to root or to the
/// owner of the directory it is in — the kernel's `protected_symlinks` rule, kept in every
/// directory: a link another user left where ramp keeps its state would otherwise aim ramp's
/// writes at any file ramp may write.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    // As many links as the kernel follows (ELOOP beyond).
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let dir = parent(&p);
                let owner = meta.uid();
                if !ours(owner, std::fs::metadata(&dir).ok().as_ref()) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "{} is a symlink of user {owner}, who is neither ramp's user nor root nor the owner of its directory; ramp does not follow it",
                            p.display()
                        ),
                    ));
                }
                match std::fs::read_link(&p) {
                    Ok(to) => p = dir.join(to),
                    Err(_) => break,
                }
            }
            _ => break,
        }
    }
    Ok(p)
}

/// A state file's text. In a directory every user may write (`/tmp`), a file that belongs to
/// neither ramp's user nor root nor the directory's owner is refused, as the kernel's
/// `protected_regular` refuses to open one there: another user could have put it in place of
/// ramp's (after a cleanup deleted it) to choose the state a restart begins with. Refused, it
/// counts as unreadable: everyone on stable until an operator acts.
fn read_trusted(p: &Path) -> std::io::Result<Vec<u8>> {
    let owner = std::fs::metadata(p)?.uid();
    if foreign(p, owner) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to user {owner}, who is neither ramp's user nor root nor the owner of its directory, which every user may write; ramp does not trust it",
                p.display()
            ),
        ));
    }
    crate::files::read_regular(p, crate::files::MAX_FILE)
}

/// Whether a file at `p` owned by `owner` could be another user's plant: its directory is open
/// to every user, and `owner` is neither ramp's user nor root nor the directory's owner.
fn foreign(p: &Path, owner: u32) -> bool {
    let dir = std::fs::metadata(parent(p)).ok();
    let open_to_all = dir.as_ref().is_some_and(|d| d.mode() & 0o002 != 0);
    open_to_all && !ours(owner, dir.as_ref())
}

/// Whether `owner` is ramp's user, root, or the owner of the directory (`dir`) a file or link is
/// in: the users the kernel's `protected_*` rules trust there.
fn ours(owner: u32, dir: Option<&std::fs::Metadata>) -> bool {
    owner == nix::unistd::geteuid().as_raw() || owner == 0 || dir.is_some_and(|d| d.uid() == owner)
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_through_the_file_format() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let plan = RolloutPlan {
            id: "r".into(),
            plan: Plan::Steps(vec![
                Step {
                    ppm: 100,
                    hold: Some(Duration::from_secs(600)),
                },
                Step {
                    ppm: 1_000_000,
                    hold: None,
                },
            ]),
        };
        let mut s = RolloutState::fresh(
            plan,
            now,
            Source::Admin {
                uid: 0,
                pid: Some(7),
            },
        );
        let text = encode(&s, now + Duration::from_secs(60), wall).expect("encode");
        let back =
            decode(&text, Path::new("t"), now + Duration::from_secs(60), wall).expect("decode");
        assert_eq!(
            back.schedule
                .and_then(|x| x.left(now + Duration::from_secs(60)))
                .map(|d| d.as_secs_f64().round()),
            Some(540.0)
        );
        assert_eq!(
            (back.id.as_str(), back.ppm, back.state),
            ("r", 100, State::Running)
        );
        assert_eq!(
            back.changed_by,
            Source::Admin {
                uid: 0,
                pid: Some(7)
            }
        );
        s.halt(now + Duration::from_secs(120)).expect("halt");
        let back = decode(
            &encode(&s, now, wall).expect("encode"),
            Path::new("t"),
            now,
            wall,
        )
        .expect("decode");
        assert_eq!(
            back.schedule.map(|x| x.timing),
            Some(Timing::Paused(Duration::from_secs(480)))
        );
        // A completed rollout rolled back still completes on `resume` after a restart.
        s.promote();
        s.rollback(now);
        let text = encode(&s, now, wall).expect("encode");
        let mut back = decode(&text, Path::new("t"), now, wall).expect("decode");
        back.resume(now).expect("resume");
        assert_eq!((back.state, back.ppm), (State::Completed, 1_000_000));
    }

    #[test]
    fn a_cache_keeps_a_pending_halt_and_who_made_it() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let plan = RolloutPlan {
            id: "r".into(),
            plan: Plan::Percent(50_000),
        };
        let s = RolloutState::fresh(plan, now, Source::Startup);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cache.json");
        let by = Source::Admin {
            uid: 1000,
            pid: Some(42),
        };
        let text = encode_cache(&s, Some(("rollback", &by)), now, wall).expect("encode");
        std::fs::write(&path, &text).expect("write");
        assert_eq!(cached_pending(&path), Some(("rollback", by)));
        // A cache written by a ramp that did not keep who made it.
        let old = String::from_utf8(text)
            .expect("utf8")
            .replace("\"fleet_pending_by\"", "\"ignored\"");
        std::fs::write(&path, old).expect("write");
        assert_eq!(cached_pending(&path), Some(("rollback", Source::Startup)));
        std::fs::write(&path, encode_cache(&s, None, now, wall).expect("encode")).expect("write");
        assert_eq!(cached_pending(&path), None);
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let p = Path::new("state.json");
        assert!(matches!(
            decode(b"{not json", p, now, wall),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(b"{\"version\": 9}", p, now, wall),
            Err(StoreError::Version { found: 9, .. })
        ));
        let bad =
            br#"{"version":1,"rollout":"r","state":"running","percent_ppm":2000000,"schedule":null,
            "file_plan":{"id":"r","percent_ppm":5,"steps":null},"plan_pending":false,
            "changed_at_unix_ms":0,"changed_by":{"kind":"file"}}"#;
        assert!(matches!(
            decode(bad, p, now, wall),
            Err(StoreError::Invalid { .. })
        ));
    }

    #[test]
    fn a_generation_is_read_back_or_taken_from_when_the_state_changed() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let p = Path::new("state.json");
        let state = |generation: &str| {
            format!(
                r#"{{"version":2,"rollout":"r","state":"halted","percent_ppm":5,"schedule":null,
                "file_plan":{{"id":"r","percent_ppm":5,"steps":null}},"plan_pending":false,
                "changed_at_unix_ms":1767225600000,"changed_by":{{"kind":"file"}}{generation}}}"#
            )
        };
        // Written by a ramp from before generations: as late as its change.
        let old = decode(state("").as_bytes(), p, now, wall).expect("decode");
        assert_eq!(old.generation, 1_767_225_600_000);
        let read = decode(
            state(r#","generation":1767225600123"#).as_bytes(),
            p,
            now,
            wall,
        );
        assert_eq!(read.expect("decode").generation, 1_767_225_600_123);
        // One that would overtake every change to come is refused, like an unreadable state.
        let max = decode(
            state(r#","generation":18446744073709551615"#).as_bytes(),
            p,
            now,
            wall,
        );
        assert!(matches!(max, Err(StoreError::Invalid { .. })), "{max:?}");
    }
}
