//! How the rest of ramp reaches the controller: a command in, its reply back; a reload's file is
//! read and parsed on the caller's side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Config};
use crate::control::command::{Command, Source};
use crate::control::reply::{ControlError, Reply};

pub(super) struct Request {
    pub(super) command: Command,
    pub(super) source: Source,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// How the rest of ramp talks to the controller.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Request>,
    /// The config file, read and parsed here (on a blocking thread) for a reload, so that the
    /// controller takes a halt or rollback while a large file is parsed.
    pub(super) config_path: Arc<std::path::Path>,
    pub(super) reads: Arc<Reads>,
}

/// The config file's reads so far.
#[derive(Debug)]
pub(super) struct Reads {
    /// How many: a parse that finishes after a later read's is not applied over it.
    count: AtomicU64,
    /// The xxh3 of the text read last, to tell whether the file changed since.
    last: AtomicU64,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.command)
            .finish()
    }
}

/// A [`Handle`] that does not keep the controller running: the controller's own, to read the
/// file again (see [`Controller::fleet_link`](super::Controller)).
#[derive(Debug)]
pub(super) struct WeakHandle {
    tx: mpsc::WeakSender<Request>,
    config_path: Arc<std::path::Path>,
    reads: Arc<Reads>,
}

impl WeakHandle {
    /// The handle, while any other is left.
    pub(super) fn upgrade(&self) -> Option<Handle> {
        Some(Handle {
            tx: self.tx.upgrade()?,
            config_path: Arc::clone(&self.config_path),
            reads: Arc::clone(&self.reads),
        })
    }
}

impl Handle {
    pub(super) fn downgrade(&self) -> WeakHandle {
        WeakHandle {
            tx: self.tx.downgrade(),
            config_path: Arc::clone(&self.config_path),
            reads: Arc::clone(&self.reads),
        }
    }

    /// Sends a command and waits for its outcome: by then the change is live and persisted.
    pub async fn send(&self, command: Command, source: Source) -> Reply {
        let command = match command {
            Command::Reload => self.parse(None).await?,
            Command::FileChanged(text) => self.parse(Some(text)).await?,
            // `start` without an id starts the rollout the file names: the file as it is now,
            // read first as by `reload` (a script that edits the file and runs `start` at once
            // started the one it named before, the watcher not having read the edit yet). A file
            // that cannot be read or parsed refuses the start, saying why.
            start @ Command::Start { id: None, .. } => {
                let parsed = self.parse(None).await?;
                self.deliver(parsed, source.clone()).await?;
                start
            }
            // The commands a file edit bears on (its plan is what `set` overrides, what a `start`
            // with an id follows, what `resume` takes up): an edit saved just before is applied
            // first, as by `reload`, and not after the command when the watcher reads it (last
            // writer wins). A file that did not change since it was last read is not read again
            // (its parse could take seconds); one that cannot be read or parsed is the watcher's
            // to report, and stops nothing here.
            Command::Set(_) | Command::Start { .. } | Command::Resume => {
                if let Some(parsed) = self.parse_if_changed().await {
                    let _ = self.deliver(parsed, source.clone()).await;
                }
                command
            }
            other => other,
        };
        self.deliver(command, source).await
    }

    /// Hands a command to the controller and waits for its outcome.
    async fn deliver(&self, command: Command, source: Source) -> Reply {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            command,
            source,
            reply,
        };
        if self.tx.send(req).await.is_err() {
            return Err(ControlError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(ControlError::ShuttingDown))
    }

    /// Reads the config file (or takes the `text` the watcher read of it) and parses it.
    async fn parse(&self, text: Option<Vec<u8>>) -> Result<Command, ControlError> {
        let path = Arc::clone(&self.config_path);
        let reads = Arc::clone(&self.reads);
        tokio::task::spawn_blocking(move || {
            let text = text.map_or_else(|| config::read(&path), Ok);
            Command::Parsed(Arc::new(parsed(text, &path, &reads)))
        })
        .await
        .map_err(|e| ControlError::ReloadTask(e.to_string()))
    }

    /// The config file parsed, if it reads and differs from the text read last.
    async fn parse_if_changed(&self) -> Option<Command> {
        let path = Arc::clone(&self.config_path);
        let reads = Arc::clone(&self.reads);
        tokio::task::spawn_blocking(move || {
            let text = config::read(&path).ok()?;
            let unchanged = xxhash_rust::xxh3::xxh3_64(&text) == reads.last.load(Ordering::Relaxed);
            (!unchanged).then(|| Command::Parsed(Arc::new(parsed(Ok(text), &path, &reads))))
        })
        .await
        .ok()
        .flatten()
    }
}

impl Reads {
    /// As the file at `path` is now: read at start, just after the config was loaded from it.
    pub(super) fn of(path: &std::path::Path) -> Reads {
        let last = config::read(path).map_or(0, |text| xxhash_rust::xxh3::xxh3_64(&text));
        Reads {
            count: AtomicU64::new(0),
            last: AtomicU64::new(last),
        }
    }
}

/// `text` read from the config file at `path`, numbered and parsed.
fn parsed(
    text: Result<Vec<u8>, config::ConfigError>,
    path: &std::path::Path,
    reads: &Reads,
) -> Parsed {
    // Numbered once the text is in hand: a later number means a later read.
    let seq = reads.count.fetch_add(1, Ordering::Relaxed) + 1;
    if let Ok(text) = &text {
        reads
            .last
            .store(xxhash_rust::xxh3::xxh3_64(text), Ordering::Relaxed);
    }
    let loaded = text.and_then(|text| config::parse_bytes(&text, path));
    Parsed { seq, loaded }
}

/// A config file read and parsed for a reload, numbered in the order of the reads.
#[derive(Debug)]
pub struct Parsed {
    pub(super) seq: u64,
    pub(super) loaded: Result<Config, config::ConfigError>,
}

impl PartialEq for Parsed {
    fn eq(&self, other: &Parsed) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Parsed {}
