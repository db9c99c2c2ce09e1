//! The rollout state's handover at a restart with `--takeover`. The successor takes the admin
//! socket's path, then reads the state file; until the old process notices (within a second) it
//! could still write a change queued before — after the successor read the file, which would
//! never see it, while the old process acknowledged it. So a lock beside the state file orders
//! the two: the old process's writer takes it, checks that no successor has taken the admin
//! socket over, and keeps it until the file is written (else it drops the write); a successor
//! takes it to read the state. A change either lands before the successor reads, or is refused.
//!
//! The lock never stops ramp: a lock file that is not a regular file of ramp's own user (a FIFO,
//! a directory, a link, another user's file in a shared directory) is not used, and a lock held
//! elsewhere is waited for only so long ([`WRITE_LOCK_WAIT`], [`READ_LOCK_WAIT`]); either way
//! ramp goes on without it and says so.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::logs::EverySecond;

use super::admin::{self, Owned};

/// The lock file of a state file: `<state file>.lock`, beside it.
fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The lock, held until dropped (closing the file releases it).
#[derive(Debug)]
pub struct Held {
    _file: Option<File>,
}

/// How long a write waits for the lock: well within the 2 s a write may take in all.
const WRITE_LOCK_WAIT: Duration = Duration::from_millis(500);

/// How long a successor waits for the lock to read the state: longer than the old process's
/// write may take (2 s).
const READ_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the lock file without ever blocking on it (a FIFO put there would block a plain open
/// for good), and only if it is a regular file of this process's user.
fn open(path: &Path) -> Result<File, &'static str> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        // Never a link: one planted beside the state file would have ramp make files elsewhere.
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|_| "cannot be opened (not a regular file, or not writable)")?;
    let meta = file.metadata().map_err(|_| "cannot be read")?;
    if !meta.is_file() {
        return Err("is not a regular file");
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err("belongs to another user");
    }
    Ok(file)
}

fn lock_now(state: &Path, wait: Duration) -> Held {
    let path = lock_path(state);
    static TOLD: EverySecond = EverySecond::new();
    let file = match open(&path) {
        Ok(file) => file,
        Err(why) => {
            if let Some(unlogged) = TOLD.admit_now() {
                tracing::warn!(path = %path.display(), why, unlogged, "the state file's lock file is not used: a restart with --takeover could miss a change made during it");
            }
            return Held { _file: None };
        }
    };
    let since = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Held { _file: Some(file) },
            Err(std::fs::TryLockError::WouldBlock) if since.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => {
                if let Some(unlogged) = TOLD.admit_now() {
                    tracing::warn!(path = %path.display(), unlogged, "the state file's lock is held elsewhere: going on without it");
                }
                return Held { _file: None };
            }
        }
    }
}

/// Takes the lock of `state`'s file to read the state at a restart, waiting for it off the
/// runtime's threads.
pub async fn lock(state: &Path) -> Held {
    let state = state.to_path_buf();
    tokio::task::spawn_blocking(move || lock_now(&state, READ_LOCK_WAIT))
        .await
        .unwrap_or(Held { _file: None })
}

/// What tells this process it still owns the rollout state: the admin socket it bound.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The state file at start (a reload may move it: each write locks where it writes).
    pub state: PathBuf,
    pub socket: PathBuf,
    pub owned: Owned,
}

impl Owner {
    /// No successor has taken the admin socket over: the socket file there is still this
    /// process's, or there is none (a socket file merely deleted is no takeover).
    pub fn ours(&self) -> bool {
        !admin::another_socket(&self.socket, &self.owned)
    }

    /// The lock of the state file at `state` (where it is now: a reload may have moved it from
    /// where it was at start, and a successor locks it there), if the rollout state is still
    /// this process's to write (blocking: for the writer's thread).
    pub fn lock_if_ours(&self, state: &Path) -> Option<Held> {
        let held = lock_now(state, WRITE_LOCK_WAIT);
        self.ours().then_some(held)
    }
}
