//! The admin socket's file: bound beside its path and renamed over it, handed over to a
//! `--takeover` successor (and given back by one that could not start), watched for a successor,
//! and made again when deleted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UnixListener;

use crate::config::Admin;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin socket {path}: another process is serving it; stop it or choose another admin.socket"
    )]
    Live { path: String },
    #[error("admin socket {path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: String },
    #[error(
        "admin socket {path}: exists and cannot be tried ({error}): another user's process may serve it; refusing to replace it"
    )]
    Untried { path: String, error: std::io::Error },
    #[error("admin socket {path}: {}", super::controller::SOCKET_LINK)]
    Link { path: String },
    #[error("admin socket {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// The socket file this process created, to remove it at exit only if it is still ours: shared
/// by every part that asks, since a socket file deleted by someone is made again (a new file).
#[derive(Debug, Clone)]
pub struct Owned(Arc<Bound>);

#[derive(Debug)]
struct Bound {
    file: ArcSwap<File>,
    /// Set once a successor has taken the socket over: its path is the successor's.
    given_up: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct File {
    dev: u64,
    ino: u64,
}

impl File {
    fn at(path: &Path) -> std::io::Result<File> {
        let meta = std::fs::metadata(path)?;
        Ok(File {
            dev: std::os::unix::fs::MetadataExt::dev(&meta),
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

impl Owned {
    fn is(&self, file: File) -> bool {
        **self.0.file.load() == file
    }
}

/// Binds the socket: replaces a stale socket file left by a dead process, refuses a live one
/// unless `takeover` (a restart: the new process takes the path while the old one drains), then
/// applies the configured mode and group.
/// The socket a takeover replaced, kept under another name until the new process is ready to
/// serve: dropped before [`Takeback::done`] (a start that failed after taking the socket), it is
/// put back, so the running ramp keeps its admin socket.
#[derive(Debug)]
pub struct Takeback {
    path: PathBuf,
    kept: Option<PathBuf>,
}

impl Takeback {
    /// The new process serves: the old socket goes.
    pub fn done(mut self) {
        if let Some(kept) = self.kept.take() {
            let _ = std::fs::remove_file(kept);
        }
    }
}

impl Drop for Takeback {
    fn drop(&mut self) {
        if let Some(kept) = self.kept.take() {
            if std::fs::rename(&kept, &self.path).is_ok() {
                tracing::warn!(path = %self.path.display(), "this ramp could not start: the admin socket is given back to the running one");
            }
            // (A rename onto another link of the same socket leaves both.)
            let _ = std::fs::remove_file(&kept);
        }
    }
}

pub fn bind(admin: &Admin, takeover: bool) -> Result<(UnixListener, Owned, Takeback), AdminError> {
    let path = &admin.socket;
    let shown = path.display().to_string();
    let io = |error| AdminError::Io {
        path: shown.clone(),
        error,
    };
    let mut live = false;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_symlink() {
                return Err(AdminError::Link { path: shown });
            }
            if !meta.file_type().is_socket() {
                return Err(AdminError::NotASocket { path: shown });
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) if !takeover => return Err(AdminError::Live { path: shown }),
                Ok(_) => {
                    tracing::info!(path = %shown, "taking the admin socket over from the running ramp");
                    live = true;
                }
                // Nobody listens: left by a process that is gone.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %shown, "replacing a stale admin socket");
                }
                // Not ours to try (another user's, 0600): it may well be served.
                Err(error) => return Err(AdminError::Untried { path: shown, error }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Made beside the path under a name of its own, given its mode and group, and only then
    // renamed over the path (atomically): a restart that fails here (a group ramp's user may
    // not give the socket) leaves the running ramp its socket. A path too long for the name
    // beside it is replaced in place.
    let beside = path.with_file_name(format!(".ramp-{}.sock", std::process::id()));
    let at = if beside.as_os_str().len() <= 107 {
        beside.as_path()
    } else {
        path.as_path()
    };
    // The running ramp's socket stays reachable under another name (a link to the same socket)
    // until this process serves; a link that cannot be made only means it cannot be given back.
    let kept = path.with_file_name(format!(".ramp-{}.old.sock", std::process::id()));
    let _ = std::fs::remove_file(&kept);
    let takeback = Takeback {
        path: path.clone(),
        kept: (live && std::fs::hard_link(path, &kept).is_ok()).then_some(kept),
    };
    match std::fs::remove_file(at) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let listener = match UnixListener::bind(at) {
        Ok(l) => l,
        Err(e) => {
            if at != path.as_path() {
                // Nothing was replaced: the running ramp's socket is where it was.
                takeback.done();
            }
            return Err(io(e));
        }
    };
    let prepared = std::fs::set_permissions(at, std::fs::Permissions::from_mode(admin.mode))
        .and_then(|()| match admin.group {
            Some(gid) => std::os::unix::fs::chown(at, None, Some(gid)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot give the socket to group {gid} (admin.group): {e}"),
                )
            }),
            None => Ok(()),
        })
        .and_then(|()| match at == path.as_path() {
            true => Ok(()),
            false => std::fs::rename(at, path),
        });

    if let Err(e) = prepared {
        if at != path.as_path() {
            let _ = std::fs::remove_file(at);
            // Nothing was replaced: the running ramp's socket is where it was.
            takeback.done();
        }
        return Err(io(e));
    }
    let owned = Owned(Arc::new(Bound {
        file: ArcSwap::from_pointee(File::at(path).map_err(io)?),
        given_up: AtomicBool::new(false),
    }));
    Ok((listener, owned, takeback))
}

/// Whether the socket file is still the one this process bound (no newer ramp has taken the
/// path over).
pub fn still_ours(path: &Path, owned: &Owned) -> bool {
    File::at(path).is_ok_and(|file| owned.is(file))
}

/// Another socket than the one this process bound is at `path` (a successor's): not a socket
/// file merely deleted, nor some other kind of file put there.
pub fn another_socket(path: &Path, owned: &Owned) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && !still_ours(path, owned)
}

/// Waits until a newer ramp has taken the socket's path over (`--takeover`): a socket other than
/// the one this process bound is there, and answers a command — a successor that took the path
/// and then could not start gives the socket back, and answers nothing meanwhile. A socket file
/// merely deleted is no takeover (it is made again: see [`Gone`]). From then on this process
/// no longer makes the socket again.
pub async fn taken_over(path: PathBuf, owned: Owned) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let (path, asked) = (path.clone(), owned.clone());
        // Asked again after the answer: a socket this process made again meanwhile answers too.
        let other = tokio::task::spawn_blocking(move || {
            another_socket(&path, &asked) && another_ramp(&path) && another_socket(&path, &asked)
        })
        .await
        .unwrap_or(false);
        if other {
            owned.0.given_up.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// Whether a ramp serves the admin socket at `path`: it replies to `status` within 2 s (a
/// refusal is a reply too).
pub fn answers(path: &Path) -> bool {
    super::client::request(path, "status", Duration::from_secs(2)).is_ok()
}

/// Whether another ramp serves the admin socket at `path`: its `status` names another pid, or
/// it refuses this process's uid (a successor whose `admin.allowed_uids` leaves ramp's own user
/// out). Anything else that answers (a test server, a script) takes nothing over: this process
/// would drain and exit for it.
fn another_ramp(path: &Path) -> bool {
    use super::reply::Decoded;
    match super::client::request(path, "status", Duration::from_secs(2)).map(|a| a.reply) {
        Ok(Decoded::Status { status, .. }) => status.pid != std::process::id(),
        Ok(Decoded::Error(e)) => e.starts_with("permission denied: uid "),
        _ => false,
    }
}

/// Removes the socket file at shutdown, unless a newer ramp has taken the path over.
pub fn remove(path: &Path, owned: &Owned) {
    if still_ours(path, owned) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes the names beside `path` a successor kept this process's socket `file` under
/// (`.ramp-<pid>.old.sock`), once this process has a socket of its own at `path` again.
fn forget_kept(path: &Path, file: File) {
    let Some(dir) = path.parent() else { return };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".ramp-")
            && name.ends_with(".old.sock")
            && File::at(&entry.path()).is_ok_and(|f| f == file)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How often the admin socket's path was found empty in a row, and whether making the socket
/// again failed last time (logged once until it is made).
#[derive(Default)]
pub(super) struct Gone {
    times: u32,
    failing: bool,
}

impl Gone {
    /// A new listener at the socket's path, made when the path has been empty twice in a row,
    /// or held a socket nobody serves (a successor killed while it started, after it took the
    /// path: this process's socket is left under the name it was kept by, which no `ramp ctl`
    /// reaches).
    pub(super) fn check(&mut self, admin: &Admin, owned: &Owned) -> Option<UnixListener> {
        use std::os::unix::fs::FileTypeExt;
        let path = &admin.socket;
        let empty = match std::fs::symlink_metadata(path) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(m) => {
                m.file_type().is_socket()
                    && !still_ours(path, owned)
                    && matches!(
                        std::os::unix::net::UnixStream::connect(path),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                    )
            }
        };
        if !empty || owned.0.given_up.load(Ordering::Relaxed) {
            self.times = 0;
            return None;
        }
        self.times += 1;
        if self.times < 2 {
            return None;
        }
        match bind(admin, false) {
            Ok((listener, made, takeback)) => {
                takeback.done();
                let was = owned.0.file.swap(made.0.file.load_full());
                forget_kept(path, *was);
                tracing::warn!(path = %admin.socket.display(), "the admin socket was deleted, or left to a process that is gone: it is made again");
                (self.times, self.failing) = (0, false);
                Some(listener)
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "the admin socket was deleted and cannot be made again: `ramp ctl` cannot reach this ramp; trying every second");
                    self.failing = true;
                }
                None
            }
        }
    }
}
