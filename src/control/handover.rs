//! The rollout state's handover at a restart with `--takeover`. The successor takes the admin
//! socket's path, then reads the state file; until the old process notices (within a second) it
//! could still write a change queued before — after the successor read the file, which would
//! never see it, while the old process acknowledged it. So a lock beside the state file orders
//! the two: the old process's writer takes it, checks that the admin socket is still this
//! process's, and keeps it until the file is written (else it drops the write); a successor
//! takes it to read the state. A change either lands before the successor reads, or is refused.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::admin::{self, Owned};

/// The lock file of a state file: `<state file>.lock`, beside it.
fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The lock, held until dropped (closing the file releases it). A lock file that cannot be
/// opened (the directory is not writable) holds nothing: the state file's own write then fails
/// and says why.
#[derive(Debug)]
pub struct Held {
    _file: Option<File>,
}

/// The longest a write or a successor's read waits for the lock: longer than any write takes
/// (a write counts as failed after 2 s). Past it they go on without: a process that holds the
/// lock for good (it has to be ramp's own user or root: the file is theirs only) must not stop
/// ramp's writes or a restart.
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn lock_now(state: &Path) -> Held {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        // Never a link: one planted beside the state file would have ramp make files elsewhere.
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(lock_path(state))
    else {
        return Held { _file: None };
    };
    let since = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Held { _file: Some(file) },
            Err(std::fs::TryLockError::WouldBlock) if since.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => {
                tracing::warn!(path = %lock_path(state).display(), "the state file's lock is held by another process for too long: going on without it");
                return Held { _file: None };
            }
        }
    }
}

/// Takes the lock of `state`'s file, waiting for it off the runtime's threads.
pub async fn lock(state: &Path) -> Held {
    let state = state.to_path_buf();
    tokio::task::spawn_blocking(move || lock_now(&state))
        .await
        .unwrap_or(Held { _file: None })
}

/// What tells this process it still owns the rollout state: the admin socket it bound.
#[derive(Debug, Clone)]
pub struct Owner {
    pub state: PathBuf,
    pub socket: PathBuf,
    pub owned: Owned,
}

impl Owner {
    /// No successor has taken the admin socket over.
    pub fn ours(&self) -> bool {
        admin::still_ours(&self.socket, self.owned)
    }

    /// The lock, if the rollout state is still this process's to write (blocking: for the
    /// writer's thread).
    pub fn lock_if_ours(&self) -> Option<Held> {
        let held = lock_now(&self.state);
        self.ours().then_some(held)
    }
}
