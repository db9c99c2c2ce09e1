//! Reload triggers: the config file's directory (notify) and SIGHUP. The watcher only says
//! "reload"; reading and applying the file is the controller's job.

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

/// Watches the directories that can change what `config_path` reads: its own directory (editors
/// that write a new file and rename it over the old one; Kubernetes' `..data` symlink swap) and
/// the directory of the file it resolves to, if that is elsewhere. Keep the returned watcher
/// alive; dropping it stops watching.
pub fn watch(config_path: &Path, handle: Handle) -> notify::Result<RecommendedWatcher> {
    let name: OsString = config_path.file_name().map(Into::into).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![parent(config_path)];
    if let Ok(real) = std::fs::canonicalize(config_path) {
        let real_dir = parent(&real);
        if !dirs.contains(&real_dir) {
            dirs.push(real_dir);
        }
    }
    let real_name: Option<OsString> = std::fs::canonicalize(config_path)
        .ok()
        .and_then(|p| p.file_name().map(Into::into));
    let changed = Arc::new(Notify::new());
    let signal = Arc::clone(&changed);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                n == name
                    || Some(n) == real_name.as_deref()
                    || n.to_string_lossy().starts_with("..")
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
            handle.send(Command::Reload, Source::File).await;
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
            handle.send(Command::Reload, Source::File).await;
        }
    });
    Ok(())
}
