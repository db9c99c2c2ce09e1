//! Reload triggers: the directories of the config file and the TLS files (notify), and SIGHUP.
//! The watcher only says "reload"; reading and applying the files is the controller's job.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::command::{Command, Source};
use super::controller::Handle;

/// Quiet time after the last change before reloading (editors write in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the directories that can change what `files` (the config, TLS certificate and key)
/// read: each file's own directory (editors that write a new file and rename it over the old one;
/// Kubernetes' `..data` symlink swap) and the directory of the file it resolves to, if that is
/// elsewhere. Keep the returned watcher alive; dropping it stops watching.
pub fn watch(files: &[&Path], handle: Handle) -> notify::Result<RecommendedWatcher> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut names: Vec<OsString> = Vec::new();
    for file in files {
        let real = std::fs::canonicalize(file).ok();
        for p in std::iter::once(file.to_path_buf()).chain(real) {
            let dir = parent(&p);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
            if let Some(n) = p.file_name() {
                names.push(n.to_owned());
            }
        }
    }
    let changed = Arc::new(Notify::new());
    let signal = Arc::clone(&changed);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|name| name == n) || n.to_string_lossy().starts_with("..")
            })
        });
        if relevant {
            signal.notify_one();
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            // Debounce: wait for a quiet spell.
            while tokio::time::timeout(DEBOUNCE, changed.notified())
                .await
                .is_ok()
            {}
            // The controller logs a rejected reload and shows it in status.
            let _ = handle.send(Command::Reload, Source::File).await;
        }
    });
    Ok(watcher)
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reloads on every SIGHUP.
pub fn on_sighup(handle: Handle) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the config");
            // The controller logs a rejected reload and shows it in status.
            let _ = handle.send(Command::Reload, Source::File).await;
        }
    });
    Ok(())
}
