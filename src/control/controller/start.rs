//! Starting the controller: the files the config names checked, the rollout restored.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::analysis::Analysis;
use crate::config::{Config, ppm_to_percent};
use crate::control::command::Source;
use crate::control::persist::{Restored, Store};
use crate::control::reply::ControlError;
use crate::control::state::{FileEffect, RolloutState, Stopped};
use crate::control::status::Notes;
use crate::control::store::StoreError;
use crate::snapshot::Current;
use crate::tls::{TlsConfigs, TlsError};
use crate::upstream::Registry;

use super::commit::{Durability, build};
use super::{CHANGES_KEPT, Controller, Handle};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Path(String),
    #[error(transparent)]
    Store(#[from] crate::control::persist::StoreStartError),
}

/// Why a symbolic link at `admin.socket` is refused, by `ramp check` and at the start alike.
pub const SOCKET_LINK: &str = "is a symbolic link: ramp makes its socket beside the path and renames it over the path, which would replace the link, so it refuses; give admin.socket the path the link points to";

/// Whether `path` (the `field` of the config) can be made: its directory (for a state file behind
/// a symlink, the directory it points into) exists and ramp's user may make files in it, and the
/// path is not a directory — nor, for a socket (`socket`), an existing file other than a socket.
fn places(path: &std::path::Path, field: &str, socket: bool) -> Result<(), StartError> {
    use std::os::unix::fs::FileTypeExt;
    // Where a write goes: a state file behind a symlink is written where the link points.
    let real = if socket {
        None
    } else {
        std::fs::canonicalize(path).ok()
    };
    let dir = match real.as_deref().unwrap_or(path).parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let problem = match std::fs::metadata(dir) {
        Err(e) => Some(format!(
            "its directory {} cannot be used: {e}",
            dir.display()
        )),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        // A state file that reads, on a filesystem remounted read-only (ext4's
        // `errors=remount-ro` after a disk error): a restart serves with the state it holds, as
        // a running ramp does meanwhile (halt and rollback apply unsaved, other changes are
        // refused), rather than leave the site without a proxy.
        Ok(_)
            if !socket
                && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
                    == Err(nix::errno::Errno::EROFS)
                && std::fs::metadata(path).is_ok_and(|m| m.is_file()) =>
        {
            tracing::warn!(path = %path.display(), "{field} is on a read-only filesystem: ramp serves with the state it holds, a halt or rollback applies unsaved and other changes are refused until it is writable again");
            None
        }
        // The state file is replaced whole by a new file made beside it, and the socket is made
        // there: either needs a directory ramp's user may make files in.
        Ok(_)
            if let Err(e) = nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            ) =>
        {
            Some(format!(
                "ramp's user may not make files in its directory {}: {e}",
                dir.display()
            ))
        }
        Ok(_) => match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Some("is a directory".to_owned()),
            Ok(m) if socket && m.file_type().is_symlink() => Some(SOCKET_LINK.to_owned()),
            Ok(m) if socket && !m.file_type().is_socket() => {
                Some("exists and is not a socket: ramp would not replace it".to_owned())
            }
            _ => None,
        },
    };
    match problem {
        Some(p) => Err(StartError::Path(format!(
            "{field}: {}: {p}",
            path.display()
        ))),
        None => Ok(()),
    }
}

impl Controller {
    /// Reads every file `config` names beyond itself (TLS certificates, keys and CAs, the fleet's
    /// password file and CA) the way starting would, changing nothing: `serve` runs it before it
    /// takes anything (a port, the admin socket) from a running ramp. The first problem.
    pub fn preflight(config: &Config) -> Result<(), StartError> {
        match unstartable(config).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What `ramp check` reports beyond the file itself: every problem [`Controller::preflight`]
    /// finds, not only the first, and a state file `serve` could not read (it would start with
    /// everyone on stable until an operator acts).
    pub fn check(config: &Config) -> Vec<String> {
        let mut problems: Vec<String> = unstartable(config)
            .iter()
            .map(ToString::to_string)
            .collect();
        // (A directory there is a problem above: serve refuses it.)
        if let Some(path) = &config.state_file
            && !path.is_dir()
            && let Err(e) =
                crate::control::store::read(path, Instant::now(), std::time::SystemTime::now())
        {
            problems.push(format!(
                "state.file: {e}: serve would start with everyone on stable until an operator acts"
            ));
        }
        problems
    }

    /// Restores the rollout (state file, else the config's plan), publishes the first snapshot,
    /// and commits what start-up changed (a first state file, edits made while ramp was down).
    pub async fn start(
        config_path: PathBuf,
        mut config: Config,
        analysis: Arc<Analysis>,
    ) -> Result<(Controller, Arc<Current>, Handle), StartError> {
        if let Some(configured) = config.fit_upstreams() {
            tracing::warn!(
                configured,
                in_force = config.upstream.max_connections,
                "upstream.max_connections is lowered to what the open files limit leaves room for: beyond it a request gets 503, and an HTTP/2 connection's streams hold at most 8 upstream connections past half of it"
            );
        }
        let tls = TlsConfigs::load(&config, &TlsConfigs::default())?;
        tls.note_certificate();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let now = Instant::now();
        let mut notes = Notes {
            state_file: config.state_file.as_ref().map(|p| p.display().to_string()),
            ..Notes::default()
        };
        let fresh = || RolloutState::fresh(config.rollout.clone(), now, Source::Startup);
        let mut store = Store::new(&config)?;
        store.reads(&config, &config_path);
        // What was in force before, and whether it still needs saving.
        let (rollout, unsaved) = match store.restore(now).await {
            Restored::Nothing => {
                if matches!(store, Store::Nothing) {
                    tracing::warn!(
                        "no state.file configured: rollout changes will not survive a restart"
                    );
                }
                (fresh(), !matches!(store, Store::Nothing))
            }
            Restored::Found(saved) => {
                tracing::info!(rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "state restored");
                (saved, false)
            }
            Restored::Cached(saved) => {
                tracing::warn!(rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "the fleet's key is missing, or holds a state fewer changes along than the local cache (etcd's data wiped or restored from an older copy): state restored from the local cache, and written back");
                (saved, true)
            }
            Restored::Stale(saved, e) => {
                tracing::error!(error = %e, rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "the fleet's key is unreadable: serving the local cache's state, the last the fleet held, until the next change replaces the key");
                notes.state_file_error = Some(e);
                (saved, false)
            }
            Restored::Unusable(e) => {
                if matches!(store, Store::Fleet(_)) {
                    tracing::error!(error = %e, "FLEET STATE UNAVAILABLE: serving everyone from stable (rolled_back) until etcd answers or an operator acts");
                } else {
                    tracing::error!(error = %e, "STATE FILE UNREADABLE: serving everyone from stable (rolled_back) until an operator acts; the file is left as it is");
                }
                notes.state_file_error = Some(e);
                let mut s = fresh();
                s.rollback(now);
                // ramp stopped it: said as long as it stays stopped, a file edit or a restart
                // later too, when the error itself is no longer shown.
                s.stopped = Some(Stopped {
                    at: s.changed_at,
                    by: Source::Startup,
                });
                (s, false)
            }
        };
        // A halt or rollback made here before a restart that etcd never took: in force from the
        // first request, and written to the fleet when etcd answers.
        let mut rollout = rollout;
        match store.link().and_then(|l| l.pending.as_ref()).map(|p| p.0) {
            Some("rollback") => rollout.rollback(now),
            Some(_) => {
                let _ = rollout.halt(now);
            }
            None => {}
        }
        let registry = Registry::new();
        let config = Arc::new(config);
        let current = Arc::new(Current::new(build(&config, &rollout, &registry, &tls)));
        let (tx, rx) = mpsc::channel(256);
        let mut c = Controller {
            config_path,
            reloaded_seq: 0,
            config,
            rollout,
            unsaved,
            registry,
            current: Arc::clone(&current),
            tls,
            notes,
            rx,
            backlog: VecDeque::new(),
            store,
            schedule_retry: None,
            pending_retry: None,
            pending_failed: None,
            save_retry: None,
            analysis,
            changes: VecDeque::with_capacity(CHANGES_KEPT),
            reloads: ["ok", "error"]
                .map(|r| metrics::counter!("ramp_config_reloads_total", "result" => r)),
            owner: None,
            taken_over: None,
            myself: None,
            reload_awaits_etcd: false,
        };
        // Edits of the file made while ramp was down apply now, by the usual rules.
        let mut next = c.rollout.clone();
        let effect = next.file_plan(c.config.rollout.clone(), now);
        let (source, what) = match effect {
            FileEffect::Unchanged => (Source::Startup, "start"),
            _ => (
                Source::File,
                "the config file's edits made while ramp was down",
            ),
        };
        match c
            .change(next, None, source, what, Durability::Required)
            .await
        {
            Ok(_) => {}
            // Nothing to apply: the state is in force, only not saved yet.
            Err(ControlError::Unsaved { error, .. }) if effect == FileEffect::Unchanged => {
                tracing::error!(%error, rollout = %c.rollout.id, state = c.rollout.state.as_str(), "the rollout state in force cannot be saved yet: it is tried again every 2 s");
            }
            // The file's edits could not reach the fleet, etcd being away: they are read again
            // from the file when it answers, as a running instance's edit is.
            Err(ControlError::NotSaved {
                error: error @ StoreError::Fleet(crate::fleet::EtcdError::Unreachable { .. }),
                ..
            }) => {
                let e = ControlError::ReloadAwaitsEtcd(error);
                tracing::error!(error = %e, "the config file's edits made while ramp was down are not applied yet");
                c.notes.last_reload_error = Some(e.to_string());
                c.reload_awaits_etcd = true;
            }
            Err(e) => tracing::error!(error = %e, "cannot save the rollout state"),
        }
        let handle = Handle {
            tx,
            config_path: Arc::from(c.config_path.as_path()),
            reads: Arc::new(super::handle::Reads::of(&c.config_path)),
        };
        c.myself = Some(handle.downgrade());
        Ok((c, current, handle))
    }
}

/// Whether ramp's user may give a file of its own to group `gid`: root may; anyone else only to a
/// group they are in.
fn may_give_group(gid: u32) -> bool {
    let gid = nix::unistd::Gid::from_raw(gid);
    nix::unistd::geteuid().is_root()
        || nix::unistd::getegid() == gid
        || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid))
}

/// Everything that would stop `serve` from starting on `config`, beyond the file itself.
fn unstartable(config: &Config) -> Vec<StartError> {
    let mut problems: Vec<StartError> = TlsConfigs::problems(config)
        .into_iter()
        .map(StartError::from)
        .collect();
    if let Some(f) = &config.fleet
        && let Err(e) = crate::fleet::client(f)
    {
        problems.push(crate::control::persist::StoreStartError::from(e).into());
    }
    if let Some(path) = &config.state_file
        && let Err(e) = places(path, "state.file", false)
    {
        problems.push(e);
    }
    if let Some(admin) = &config.admin {
        // The kernel's limit on a socket's path (`sun_path`, 108 bytes with its NUL).
        if admin.socket.as_os_str().len() > 107 {
            problems.push(StartError::Path(format!(
                "admin.socket: {} is longer than a socket's path may be (107 bytes)",
                admin.socket.display()
            )));
        } else if let Err(e) = places(&admin.socket, "admin.socket", true) {
            problems.push(e);
        }
        if let Some(gid) = admin.group
            && !may_give_group(gid)
        {
            problems.push(StartError::Path(format!(
                "admin.group: ramp's user (uid {}) is not in group {gid}, and may not give the socket to it: run ramp as a member of it, or leave admin.group out",
                nix::unistd::geteuid()
            )));
        }
    }
    problems
}
