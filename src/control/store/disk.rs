//! The state file on disk: written whole or not at all, and read only from a file ramp may trust.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

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
        // The new file keeps the old one's mode and owner, with its owner's read and write added:
        // a file its owner may not read (chmod 000) would be a change acknowledged and then lost
        // at the next start.
        Ok(meta) => (
            std::fs::Permissions::from_mode(meta.permissions().mode() | 0o600),
            Some((meta.uid(), meta.gid())),
        ),
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
pub(super) fn resolve(path: &Path) -> std::io::Result<PathBuf> {
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
pub(super) fn read_trusted(p: &Path) -> std::io::Result<Vec<u8>> {
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
