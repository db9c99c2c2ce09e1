//! The directories the config watcher watches: what the files in force need, each watched when it
//! can be, and a directory that cannot be (no permission to list it) logged and tried again.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// The notify watcher, kept alive while it is held; dropping it stops watching.
pub type Watching = std::sync::Arc<std::sync::Mutex<RecommendedWatcher>>;

pub fn lock(w: &Watching) -> std::sync::MutexGuard<'_, RecommendedWatcher> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory's identity (device, inode, and when it was made: a directory made again at once
/// may get the inode of the one removed), `None` while it is missing.
type Identity = Option<(u64, u64, Option<std::time::SystemTime>)>;

fn identity(dir: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

struct Dir {
    path: PathBuf,
    identity: Identity,
    /// Whether the watch is in place (else it is tried again at each look).
    watched: bool,
}

/// The watched directories.
pub struct Dirs {
    w: Watching,
    list: Vec<Dir>,
}

impl Dirs {
    pub fn new(w: Watching) -> Dirs {
        Dirs {
            w,
            list: Vec::new(),
        }
    }

    /// Watches `dir`; a failure is logged once (a directory ramp's user may not list, such as
    /// Debian's `/etc/ssl/private`): its files are then read only at a reload.
    fn add(&mut self, dir: PathBuf) {
        let watched = match lock(&self.w).watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory: changes to the files in it are read at a reload (ramp ctl reload, SIGHUP) and not before; tried again every 2 s");
                false
            }
        };
        let identity = identity(&dir);
        self.list.push(Dir {
            path: dir,
            identity,
            watched,
        });
    }

    /// Watches what `now` holds and no longer what it does not (a release directory left behind,
    /// a Kubernetes `..data` target replaced, a certificate's old directory).
    pub fn follow(&mut self, now: &[PathBuf]) {
        let w = &self.w;
        let mut dropped = Vec::new();
        self.list.retain(|d| {
            let kept = now.contains(&d.path);
            if !kept && d.watched {
                let _ = lock(w).unwatch(&d.path);
                dropped.push(d.identity);
            }
            kept
        });
        // One directory under two names (as given, relative or through a link, and as it
        // resolves) has one kernel watch: unwatching one name took it from the other, which is
        // watched again.
        for d in &mut self.list {
            if d.watched && d.identity.is_some() && dropped.contains(&d.identity) {
                let mut w = lock(w);
                let _ = w.unwatch(&d.path);
                d.watched = w.watch(&d.path, RecursiveMode::NonRecursive).is_ok();
            }
        }
        for dir in now {
            if !self.list.iter().any(|d| d.path == *dir) {
                self.add(dir.clone());
            }
        }
    }

    /// Watches again every directory that was removed and is back (or replaced), and every one
    /// that could not be watched before: gives whether one was, so that what it holds now is
    /// read.
    pub fn rewatch(&mut self) -> bool {
        let mut back = false;
        for d in &mut self.list {
            let now = identity(&d.path);
            if now == d.identity && d.watched {
                continue;
            }
            if now.is_some() {
                let mut w = lock(&self.w);
                if d.watched {
                    let _ = w.unwatch(&d.path);
                }
                d.watched = w.watch(&d.path, RecursiveMode::NonRecursive).is_ok();
                if d.watched {
                    tracing::info!(dir = %d.path.display(), "watching the directory anew");
                    back = true;
                }
            }
            d.identity = now;
        }
        back
    }
}

/// The directories among `dirs` that cannot be watched, with why (for `ramp check`).
pub fn unwatchable(dirs: &[PathBuf]) -> Vec<String> {
    let Ok(mut w) = notify::recommended_watcher(|_: notify::Result<notify::Event>| {}) else {
        return vec!["cannot make a file watcher (inotify instances used up?)".to_owned()];
    };
    // A directory that does not exist yet is watched once it does (and the files in it are
    // reported missing where they are named).
    let mut seen = Vec::new();
    dirs.iter()
        .filter(|d| d.is_dir())
        // One directory under two names (relative and as it resolves) is said once.
        .filter(|d| {
            let real = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            let new = !seen.contains(&real);
            seen.push(real);
            new
        })
        .filter_map(|d| {
            w.watch(d, RecursiveMode::NonRecursive)
                .err()
                .map(|e| format!("{}: {e}", d.display()))
        })
        .collect()
}
