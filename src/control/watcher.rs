//! Reload triggers: the directories of the config file and the TLS files (notify), and SIGHUP.
//! The watcher only says "reload"; reading and applying the files is the controller's job.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher};
use tokio::sync::Notify;

use super::command::{Command, Source};
use super::controller::Handle;
use super::watched::{self, Dirs, Watching};
use crate::snapshot::Current;

/// Quiet time after the last change before reloading (editors write in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How many quiet periods a file may keep changing before this change is given up on (the next
/// change event tries again).
const MAX_SETTLE_ROUNDS: usize = 50;

/// What to watch for `files`: directories, and the names in them that matter.
#[derive(Debug, Default)]
struct Targets {
    dirs: Vec<PathBuf>,
    names: Vec<OsString>,
}

impl Targets {
    /// Each file's own directory (editors that write a new file and rename it over the old one;
    /// Kubernetes' `..data` symlink swap) and the directory of the file it resolves to, if that
    /// is elsewhere; and for every symlink on a file's path (a `current` link switched between
    /// release directories), the directory holding that link.
    fn of(files: &[PathBuf]) -> Targets {
        let mut t = Targets::default();
        for file in files {
            let real = std::fs::canonicalize(file).ok();
            for p in std::iter::once(file.clone()).chain(real) {
                t.add(parent(&p), p.file_name());
            }
            for link in file.ancestors().skip(1).filter(|a| {
                !a.as_os_str().is_empty()
                    && std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink())
            }) {
                t.add(parent(link), link.file_name());
            }
        }
        t
    }

    fn add(&mut self, dir: PathBuf, name: Option<&std::ffi::OsStr>) {
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
        if let Some(n) = name
            && !self.names.iter().any(|m| m == n)
        {
            self.names.push(n.to_owned());
        }
    }
}

/// The files whose changes reload: the config file, and the TLS certificate and key the config in
/// force names (a reload may name others).
fn files(config: &Path, tls: Option<&crate::config::ServerCert>) -> Vec<PathBuf> {
    std::iter::once(config.to_path_buf())
        .chain(tls.iter().flat_map(|t| [t.cert.clone(), t.key.clone()]))
        .collect()
}

/// What the config in force needs watched.
fn targets(config: &Path, current: &Current) -> Targets {
    Targets::of(&files(config, current.load().config.tls.as_ref()))
}

/// The directories `config` (read from `path`) needs watched that cannot be, with why: `ramp
/// check`'s warnings.
pub fn unwatchable(path: &Path, config: &crate::config::Config) -> Vec<String> {
    watched::unwatchable(&Targets::of(&files(path, config.tls.as_ref())).dirs)
}

/// The file watcher, made before ramp takes anything from a running one (making it is the one
/// step of watching that can fail), not watching anything yet.
pub struct Prepared {
    watcher: RecommendedWatcher,
    names: Arc<std::sync::Mutex<Vec<OsString>>>,
    changed: Arc<Notify>,
}

/// Makes the file watcher: it tells of changes to the names the watch loop puts in `names`.
pub fn prepare() -> notify::Result<Prepared> {
    let names: Arc<std::sync::Mutex<Vec<OsString>>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let signal = Arc::clone(&changed);
    let known = Arc::clone(&names);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening or reading a file changes nothing (and ramp's own reads of it, or `ramp ctl
        // --config`'s, would otherwise start a reload that reads it again, for ever); a write
        // that ends is a change.
        if let EventKind::Access(kind) = event.kind
            && kind != AccessKind::Close(AccessMode::Write)
        {
            return;
        }
        let names = known.lock().unwrap_or_else(|e| e.into_inner());
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|name| name == n) || n.to_string_lossy().starts_with("..")
            })
        });
        if relevant {
            signal.notify_one();
        }
    })?;
    Ok(Prepared {
        watcher,
        names,
        changed,
    })
}

/// Watches the directories that can change what the config file and the TLS certificate and key
/// of the config in force read (see [`Targets::of`]), again after every change and every publish
/// (a reload by any means may name other files; a switched link leads elsewhere). A directory
/// that cannot be watched is logged, not fatal.
///
/// A change is applied only once the config file's content is stable: the same bytes read twice,
/// a quiet period apart. A slow in-place rewrite is never applied half-written.
pub fn watch(prepared: Prepared, config: &Path, current: Arc<Current>, handle: Handle) -> Watching {
    let Prepared {
        watcher,
        names,
        changed,
    } = prepared;
    let config = config.to_path_buf();
    let watching: Watching = Arc::new(std::sync::Mutex::new(watcher));
    let mut dirs = Dirs::new(Arc::clone(&watching));
    let path = config.clone();
    let follow = move |dirs: &mut Dirs, current: &Current| {
        let now = targets(&path, current);
        dirs.follow(&now.dirs);
        *names.lock().unwrap_or_else(|e| e.into_inner()) = now.names;
    };
    follow(&mut dirs, &current);
    let mut published = current.watch();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(RECHECK) => {
                    if !dirs.rewatch() {
                        continue;
                    }
                }
                changed = published.changed() => {
                    // A reload (by a file change, `ramp ctl reload`, SIGHUP) may name other TLS
                    // files: their directories are watched from here on.
                    if changed.is_ok() {
                        follow(&mut dirs, &current);
                    }
                    continue;
                }
            }
            // Debounce: wait for a quiet spell.
            while tokio::time::timeout(DEBOUNCE, changed.notified())
                .await
                .is_ok()
            {}
            // A switched link leads to directories not watched yet.
            follow(&mut dirs, &current);
            let command = match settled(&config).await {
                Some(Ok(text)) => Command::FileChanged(text),
                // Unreadable (gone, not a regular file): the controller reads it and says why.
                Some(Err(_)) => Command::Reload,
                None => {
                    tracing::warn!(path = %config.display(), "the config file keeps changing; not reloaded until it settles");
                    continue;
                }
            };
            // The controller logs a rejected reload and shows it in status.
            let _ = handle.send(command, Source::File).await;
        }
    });
    watching
}

/// How often the watched directories are looked at: one removed and made again (`rm -rf conf;
/// mkdir conf`, a restore from a backup) takes its watch with it, and no event would ever come;
/// one that could not be watched may be now.
const RECHECK: Duration = Duration::from_secs(2);

/// The file's content once two reads a quiet period apart agree; `None` if it never settles.
async fn settled(path: &Path) -> Option<std::io::Result<Vec<u8>>> {
    let read = |p: PathBuf| async move {
        tokio::task::spawn_blocking(move || crate::files::read_regular(&p, crate::files::MAX_FILE))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    let same = |a: &std::io::Result<Vec<u8>>, b: &std::io::Result<Vec<u8>>| match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.kind() == b.kind(),
        _ => false,
    };
    let mut last = read(path.to_path_buf()).await;
    for _ in 0..MAX_SETTLE_ROUNDS {
        tokio::time::sleep(DEBOUNCE).await;
        let now = read(path.to_path_buf()).await;
        if same(&last, &now) {
            return Some(now);
        }
        last = now;
    }
    None
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reloads on every SIGHUP `hup` receives.
pub fn on_sighup(handle: Handle, mut hup: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the config");
            // The controller logs a rejected reload and shows it in status.
            let _ = handle.send(Command::Reload, Source::File).await;
        }
    });
}
