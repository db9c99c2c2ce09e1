//! The state file's one writer: a thread of its own, so that a disk that stops answering (a hung
//! NFS mount, a frozen filesystem) stalls that thread and nothing else. The controller waits for
//! a write at most [`WRITE_WAIT`]; a write still going on then counts as failed (the change is
//! refused, or for a halt or rollback applied unsaved), and while the disk stays stuck later
//! writes fail at once rather than wait again. Once the disk answers, the thread writes the newest
//! state it was given by then, so the file ends up holding the state in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::handover;
use super::store::{self, StoreError};

/// The longest the controller waits for one write.
pub const WRITE_WAIT: Duration = Duration::from_secs(2);

struct Job {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Written even once its caller has stopped waiting (a halt or rollback, which is in force
    /// whatever the disk does, or the state in force written again). Any other job whose caller
    /// gave up was refused: it is dropped, never renamed into place late.
    keep: bool,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Job {
    /// Its caller gave up on it and it is not to be kept.
    fn abandoned(&self) -> bool {
        !self.keep && self.done.as_ref().is_some_and(oneshot::Sender::is_closed)
    }

    fn superseded(self) {
        if let Some(done) = self.done {
            let _ = done.send(Err(StoreError::Write {
                path: self.path,
                error: std::io::Error::other("superseded by a newer state"),
            }));
        }
    }
}

#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    /// When the write in progress began (none in progress: `None`).
    started: Arc<Mutex<Option<std::time::Instant>>>,
    /// Once set, every write takes the handover lock and is dropped if a successor has taken
    /// the admin socket over ([`handover`]).
    owner: Arc<OnceLock<handover::Owner>>,
    /// The files the config in force has ramp read, and what each is: a write that would land
    /// on one (through a link made since the config was checked) is refused.
    reads: Reads,
}

type Reads = Arc<Mutex<Vec<(PathBuf, &'static str)>>>;

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("path", &self.path).finish()
    }
}

impl Writer {
    /// The writer of the file at `path`; first it removes what a writer that never finished left
    /// beside it.
    pub fn start(path: &std::path::Path) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = Arc::new(Mutex::new(None));
        let busy = Arc::clone(&started);
        let owner = Arc::new(OnceLock::new());
        let owns = Arc::clone(&owner);
        let reads = Reads::default();
        let read = Arc::clone(&reads);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("ramp-state-writer".into())
            .spawn(move || {
                store::remove_stale_temporaries(&path);
                run(&rx, &busy, &owns, &read);
            })?;
        Ok(Writer {
            tx,
            started,
            owner,
            reads,
        })
    }

    /// The files the config in force has ramp read ([`crate::config::files_read`]).
    pub fn reads(&self, files: Vec<(PathBuf, &'static str)>) {
        *self.reads.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }

    /// From now on, writes only while the rollout state is this process's ([`handover`]). The
    /// lock file is made now, while the disk answers.
    pub fn own(&self, owner: handover::Owner) {
        drop(owner.lock_if_ours(&owner.state));
        let _ = self.owner.set(owner);
    }

    /// Writes `bytes` to `path` (whole, atomically), waiting at most [`WRITE_WAIT`]. Unless
    /// `keep`, a write given up on is dropped rather than finished later.
    pub async fn write(&self, path: PathBuf, bytes: Vec<u8>, keep: bool) -> Result<(), StoreError> {
        let stuck = |path: PathBuf| StoreError::Write {
            path,
            error: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the disk did not answer within {} s (the write goes on; the state in force is written once it answers)",
                    WRITE_WAIT.as_secs()
                ),
            ),
        };
        let (done, rx) = oneshot::channel();
        let shown = path.clone();
        let already_stuck = self.stuck();
        if self
            .tx
            .send(Job {
                path,
                bytes,
                keep,
                done: Some(done),
            })
            .is_err()
        {
            return Err(StoreError::Write {
                path: shown,
                error: std::io::Error::other("the state writer has stopped"),
            });
        }
        if already_stuck {
            return Err(stuck(shown));
        }
        match tokio::time::timeout(WRITE_WAIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Write {
                path: shown,
                error: std::io::Error::other("the state writer has stopped"),
            }),
            Err(_) => Err(stuck(shown)),
        }
    }

    /// Writes without waiting (the fleet's local cache): a failure is only logged.
    pub fn write_quietly(&self, path: PathBuf, bytes: Vec<u8>) {
        let _ = self.tx.send(Job {
            path,
            bytes,
            keep: true,
            done: None,
        });
    }

    /// A write has been going on for longer than [`WRITE_WAIT`].
    fn stuck(&self) -> bool {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() > WRITE_WAIT)
    }
}

/// How often the writer looks whether the files it wrote are still there.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What a file last held, as this writer wrote it.
struct Written {
    bytes: Vec<u8>,
    /// Writing it again failed (logged once, tried again at every look).
    failed: bool,
}

/// Writes `bytes` to `path` under the handover lock, unless a successor owns the state now.
fn write(
    path: &Path,
    bytes: &[u8],
    owner: &OnceLock<handover::Owner>,
    reads: &Reads,
    abandoned: impl Fn() -> bool,
) -> Result<(), StoreError> {
    let clash = reads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(f, _)| crate::config::same_file(path, f))
        .map(|(f, what)| {
            format!(
                "it is {what} ({}), which ramp reads: refusing to write the state over it",
                f.display()
            )
        });
    if let Some(why) = clash {
        return Err(StoreError::Write {
            path: path.to_path_buf(),
            error: std::io::Error::other(why),
        });
    }
    let _held = match owner.get().map(|o| o.lock_if_ours(path)) {
        Some(None) => {
            return Err(StoreError::Write {
                path: path.to_path_buf(),
                error: std::io::Error::other(
                    "a newer ramp has taken the admin socket over: the rollout state is its to write",
                ),
            });
        }
        Some(Some(held)) => Some(held),
        None => None,
    };
    store::write_atomic(path, bytes, abandoned)
}

fn run(
    rx: &mpsc::Receiver<Job>,
    started: &Mutex<Option<std::time::Instant>>,
    owner: &OnceLock<handover::Owner>,
    reads: &Reads,
) {
    let mut written: HashMap<PathBuf, Written> = HashMap::new();
    loop {
        let first = match rx.recv_timeout(LOOK_EVERY) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                write_deleted_again(&mut written, started, owner, reads);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Only the newest state for a path matters: older ones queued behind a slow write are
        // superseded (whoever waited for them has given up by now) — except that the newest one
        // to keep stays ahead of a newer one that may yet be dropped.
        let mut jobs = vec![first];
        while let Ok(next) = rx.try_recv() {
            let mut i = 0;
            while i < jobs.len() {
                if jobs[i].path == next.path && (next.keep || !jobs[i].keep) {
                    jobs.remove(i).superseded();
                } else {
                    i += 1;
                }
            }
            jobs.push(next);
        }
        for job in jobs {
            *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            let result = write(&job.path, &job.bytes, owner, reads, || job.abandoned());
            *started.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if result.is_ok() {
                written.insert(
                    job.path.clone(),
                    Written {
                        bytes: job.bytes,
                        failed: false,
                    },
                );
            }
            match job.done {
                Some(done) => {
                    let _ = done.send(result);
                }
                None => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "cannot write the state (the fleet's local cache, or the state file again after a reload)");
                    }
                }
            }
        }
    }
}

/// A file this writer wrote that has since been deleted (by hand, or a cleanup of old files in
/// /tmp) is written again as it was: until the next change, a restart would otherwise find no
/// state and begin the config's rollout afresh, undoing a halt or rollback.
fn write_deleted_again(
    written: &mut HashMap<PathBuf, Written>,
    started: &Mutex<Option<std::time::Instant>>,
    owner: &OnceLock<handover::Owner>,
    reads: &Reads,
) {
    for (path, last) in written.iter_mut() {
        // Followed: a link whose file is gone counts as deleted too.
        let gone =
            matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        if !gone {
            continue;
        }
        *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        let result = write(path, &last.bytes, owner, reads, || false);
        *started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(()) => {
                last.failed = false;
                tracing::warn!(path = %path.display(), "the state file was deleted behind ramp's back; it is written again");
            }
            Err(error) if !last.failed => {
                last.failed = true;
                tracing::error!(path = %path.display(), %error, "the state file was deleted behind ramp's back and cannot be written again; a restart now would not find the state in force");
            }
            Err(_) => {}
        }
    }
}
