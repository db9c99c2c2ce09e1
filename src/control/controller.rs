//! The one writer of rollout state. Every change arrives here — a [`Command`] from the admin
//! socket, the file watcher, the guard or the fleet, or the schedule's own clock — and goes
//! through [`Controller::commit`]: validated, persisted, published, logged, and only then
//! answered.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::analysis::Analysis;
use crate::config::{self, Config, ppm_to_percent};
use crate::routing::{Rollout, State};
use crate::snapshot::{Current, Snapshot};
use crate::tls::{TlsConfigs, TlsError};
use crate::upstream::Registry;

use super::command::{Command, Source};
use super::persist::{Restored, Store};
use super::reply::{Change, ControlError, Outcome, Reply};
use super::state::{FileEffect, Refusal, RolloutState};
use super::status::{self, Notes};
use super::store::StoreError;
use super::{admin, handover};

struct Request {
    command: Command,
    source: Source,
    reply: oneshot::Sender<Reply>,
}

/// How the rest of ramp talks to the controller.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    /// The config file, read and parsed here (on a blocking thread) for a reload, so that the
    /// controller takes a halt or rollback while a large file is parsed.
    config_path: Arc<std::path::Path>,
    /// Reads of the config file so far: a parse that finishes after a later read's is not
    /// applied over it.
    reads: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.command)
            .finish()
    }
}

impl Handle {
    /// Sends a command and waits for its outcome: by then the change is live and persisted.
    pub async fn send(&self, command: Command, source: Source) -> Reply {
        let command = match command {
            Command::Reload => self.parse(None).await?,
            Command::FileChanged(text) => self.parse(Some(text)).await?,
            other => other,
        };
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
            // Numbered once the text is in hand: a later number means a later read.
            let seq = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let loaded = text.and_then(|text| config::parse_bytes(&text, &path));
            Command::Parsed(Arc::new(Parsed { seq, loaded }))
        })
        .await
        .map_err(|e| ControlError::ReloadTask(e.to_string()))
    }
}

/// A config file read and parsed for a reload, numbered in the order of the reads.
#[derive(Debug)]
pub struct Parsed {
    seq: u64,
    loaded: Result<Config, config::ConfigError>,
}

impl PartialEq for Parsed {
    fn eq(&self, other: &Parsed) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Parsed {}

/// What a failed write does to a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Nothing changes unless it is persisted.
    Required,
    /// Applies even unsaved (halt, rollback: stopping exposure comes first), and says so.
    BestEffort,
    /// The fleet already holds it at this revision: only the local cache is written.
    Adopted(i64),
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Path(String),
    #[error(transparent)]
    Store(#[from] super::persist::StoreStartError),
}

/// Whether `path` (the `field` of the config) can be made: its directory (for a state file behind
/// a symlink, the directory it points into) exists and ramp's user may make files in it, and the
/// path is not a directory — nor, for a socket (`socket`), an existing file other than a socket.
fn places(path: &std::path::Path, field: &str, socket: bool) -> Result<(), StartError> {
    use std::os::unix::fs::FileTypeExt;
    // Where a write goes: a state file behind a symlink is written where the link points.
    let real = if socket {
        None
    } else {
        std::fs::canonicalize(path).ok()
    };
    let dir = match real.as_deref().unwrap_or(path).parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let problem = match std::fs::metadata(dir) {
        Err(e) => Some(format!(
            "its directory {} cannot be used: {e}",
            dir.display()
        )),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        // The state file is replaced whole by a new file made beside it, and the socket is made
        // there: either needs a directory ramp's user may make files in.
        Ok(_)
            if let Err(e) = nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            ) =>
        {
            Some(format!(
                "ramp's user may not make files in its directory {}: {e}",
                dir.display()
            ))
        }
        Ok(_) => match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Some("is a directory".to_owned()),
            Ok(m) if socket && !m.file_type().is_socket() && !m.file_type().is_symlink() => {
                Some("exists and is not a socket: ramp would not replace it".to_owned())
            }
            _ => None,
        },
    };
    match problem {
        Some(p) => Err(StartError::Path(format!(
            "{field}: {}: {p}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// The generation of a change made on top of one at `previous`, at `now`: one more, or the wall
/// clock in milliseconds if that is later (a hybrid logical clock). A change made after another
/// one it knew of is always later, whatever the clocks; of two changes that knew nothing of each
/// other (an instance that could not read the fleet's state, two sides of a wiped etcd), the
/// later by the clock wins. It stops at the year 9999, as far as a state file can say.
pub(super) fn generation_after(previous: u64, now: SystemTime) -> u64 {
    let wall = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Never past what every instance reads (a key written by hand at the limit would otherwise
    // make each change after it unreadable to the others).
    previous
        .saturating_add(1)
        .max(wall)
        .min(super::store::LATEST_MS)
}

/// A configuration read from the file, to be put in force with a change.
pub(super) struct NewConfig {
    config: Arc<Config>,
    tls: TlsConfigs,
    /// Whether it differs from the one in force (else only the rollout may change).
    differs: bool,
}

pub struct Controller {
    config_path: PathBuf,
    /// The number of the latest read of the config file a reload judged (see [`Parsed`]).
    reloaded_seq: u64,
    pub(super) config: Arc<Config>,
    pub(super) rollout: RolloutState,
    /// The rollout in force is not saved yet (first start, or a write that failed).
    pub(super) unsaved: bool,
    registry: Registry,
    current: Arc<Current>,
    tls: TlsConfigs,
    pub(super) notes: Notes,
    rx: mpsc::Receiver<Request>,
    /// Where the state is saved: nowhere, a file, or the fleet's etcd key.
    pub(super) store: Store,
    /// A schedule step that could not be persisted (or that the analysis holds) is tried again
    /// then, not before.
    schedule_retry: Option<Instant>,
    /// When a halt or rollback made while etcd was away is tried again (a fixed time: commands
    /// handled meanwhile do not put it off).
    pending_retry: Option<Instant>,
    /// When the state in force, not held by the state file yet (a write failed or timed out),
    /// is written again.
    save_retry: Option<Instant>,
    /// The comparison of the pools: shown in status, and it may hold the schedule.
    analysis: Arc<Analysis>,
    /// The last changes, newest first.
    changes: VecDeque<Change>,
    /// `ramp_config_reloads_total{result}`: `[ok, error]`.
    reloads: [metrics::Counter; 2],
    /// With a state file and an admin socket: what tells a change that no successor has taken
    /// the rollout state over ([`handover`]).
    owner: Option<handover::Owner>,
    /// Told once a successor has taken the admin socket over: the controller stops after the
    /// command in hand (see [`Controller::stop_when`]).
    taken_over: Option<oneshot::Receiver<()>>,
}

/// Changes kept for status.
const CHANGES_KEPT: usize = 20;

/// How often a schedule step the analysis holds is looked at again.
const HOLD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a halt or rollback made while etcd was away is tried again.
const PENDING_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a state the file does not hold yet is written again.
const SAVE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a schedule step waits after its state could not be written.
const SCHEDULE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Controller {
    /// Reads every file `config` names beyond itself (TLS certificates, keys and CAs, the fleet's
    /// password file and CA) the way starting would, changing nothing: `ramp check` runs it, and
    /// `serve` runs it before it takes anything (a port, the admin socket) from a running ramp.
    pub fn preflight(config: &Config) -> Result<(), StartError> {
        TlsConfigs::load(config, &TlsConfigs::default())?;
        if let Some(f) = &config.fleet {
            crate::fleet::client(f).map_err(super::persist::StoreStartError::from)?;
        }
        if let Some(path) = &config.state_file {
            places(path, "state.file", false)?;
        }
        if let Some(admin) = &config.admin {
            // The kernel's limit on a socket's path (`sun_path`, 108 bytes with its NUL).
            if admin.socket.as_os_str().len() > 107 {
                return Err(StartError::Path(format!(
                    "admin.socket: {} is longer than a socket's path may be (107 bytes)",
                    admin.socket.display()
                )));
            }
            places(&admin.socket, "admin.socket", true)?;
        }
        Ok(())
    }

    /// Restores the rollout (state file, else the config's plan), publishes the first snapshot,
    /// and commits what start-up changed (a first state file, edits made while ramp was down).
    pub async fn start(
        config_path: PathBuf,
        config: Config,
        analysis: Arc<Analysis>,
    ) -> Result<(Controller, Arc<Current>, Handle), StartError> {
        let tls = TlsConfigs::load(&config, &TlsConfigs::default())?;
        let now = Instant::now();
        let mut notes = Notes {
            state_file: config.state_file.as_ref().map(|p| p.display().to_string()),
            ..Notes::default()
        };
        let fresh = || RolloutState::fresh(config.rollout.clone(), now, Source::Startup);
        let mut store = Store::new(&config)?;
        // What was in force before, and whether it still needs saving.
        let (rollout, unsaved) = match store.restore(now).await {
            Restored::Nothing => {
                if matches!(store, Store::Nothing) {
                    tracing::warn!(
                        "no state.file configured: rollout changes will not survive a restart"
                    );
                }
                (fresh(), !matches!(store, Store::Nothing))
            }
            Restored::Found(saved) => {
                tracing::info!(rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "state restored");
                (saved, false)
            }
            Restored::Cached(saved) => {
                tracing::warn!(rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "the fleet's key is missing: state restored from the local cache, and written back");
                (saved, true)
            }
            Restored::Unusable(e) => {
                if matches!(store, Store::Fleet(_)) {
                    tracing::error!(error = %e, "FLEET STATE UNAVAILABLE: serving everyone from stable (rolled_back) until etcd answers or an operator acts");
                } else {
                    tracing::error!(error = %e, "STATE FILE UNREADABLE: serving everyone from stable (rolled_back) until an operator acts; the file is left as it is");
                }
                notes.state_file_error = Some(e);
                let mut s = fresh();
                s.rollback(now);
                (s, false)
            }
        };
        // A halt or rollback made here before a restart that etcd never took: in force from the
        // first request, and written to the fleet when etcd answers.
        let mut rollout = rollout;
        match store.link().and_then(|l| l.pending.as_ref()).map(|p| p.0) {
            Some("rollback") => rollout.rollback(now),
            Some(_) => {
                let _ = rollout.halt(now);
            }
            None => {}
        }
        let registry = Registry::new();
        let config = Arc::new(config);
        let current = Arc::new(Current::new(build(&config, &rollout, &registry, &tls)));
        let (tx, rx) = mpsc::channel(256);
        let mut c = Controller {
            config_path,
            reloaded_seq: 0,
            config,
            rollout,
            unsaved,
            registry,
            current: Arc::clone(&current),
            tls,
            notes,
            rx,
            store,
            schedule_retry: None,
            pending_retry: None,
            save_retry: None,
            analysis,
            changes: VecDeque::with_capacity(CHANGES_KEPT),
            reloads: ["ok", "error"]
                .map(|r| metrics::counter!("ramp_config_reloads_total", "result" => r)),
            owner: None,
            taken_over: None,
        };
        // Edits of the file made while ramp was down apply now, by the usual rules.
        let mut next = c.rollout.clone();
        let effect = next.file_plan(c.config.rollout.clone(), now);
        let (source, what) = match effect {
            FileEffect::Unchanged => (Source::Startup, "start"),
            _ => (
                Source::File,
                "the config file's edits made while ramp was down",
            ),
        };
        match c
            .change(next, None, source, what, Durability::Required)
            .await
        {
            Ok(_) => {}
            // Nothing to apply: the state is in force, only not saved yet.
            Err(ControlError::Unsaved { error, .. }) if effect == FileEffect::Unchanged => {
                tracing::error!(%error, rollout = %c.rollout.id, state = c.rollout.state.as_str(), "the rollout state in force cannot be saved yet: it is tried again every 2 s");
            }
            Err(e) => tracing::error!(error = %e, "cannot save the rollout state"),
        }
        let handle = Handle {
            tx,
            config_path: Arc::from(c.config_path.as_path()),
            reads: Arc::default(),
        };
        Ok((c, current, handle))
    }

    /// From now on no change is made once a successor has taken the admin socket over
    /// (`socket`, bound as `owned`), and the state file is written under the handover lock.
    pub fn own(&mut self, socket: PathBuf, owned: admin::Owned) {
        if let Store::File(state, writer) = &self.store {
            let owner = handover::Owner {
                state: state.clone(),
                socket,
                owned,
            };
            writer.own(owner.clone());
            self.owner = Some(owner);
        }
    }

    /// The sender that tells this controller a successor has taken the admin socket over: it
    /// finishes the command in hand (its reply true to what happened), answers every command
    /// still queued that it was taken over, and stops — no more schedule steps or guard actions.
    pub fn stop_when(&mut self) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        self.taken_over = Some(rx);
        tx
    }

    /// Refused once a successor has taken the admin socket over (the state file's writer checks
    /// again, under the handover lock, as it writes).
    fn ours(&self) -> Result<(), ControlError> {
        match &self.owner {
            Some(owner) if !owner.ours() => Err(ControlError::TakenOver),
            _ => Ok(()),
        }
    }

    /// Serves commands and the schedule until every handle is dropped.
    pub async fn run(mut self) {
        loop {
            let deadline = self
                .rollout
                .next_deadline()
                .map(|d| self.schedule_retry.map_or(d, |r| d.max(r)));
            // A halt or rollback made while etcd was away is written as soon as it can be.
            let pending = self.store.link().is_some_and(|l| l.pending.is_some());
            self.pending_retry = retry_at(self.pending_retry, pending, PENDING_RETRY);
            // So is a state the file does not hold yet.
            let resave = self.unsaved && matches!(self.store, Store::File(..));
            self.save_retry = retry_at(self.save_retry, resave, SAVE_RETRY);
            let taken_over = async {
                match self.taken_over.as_mut() {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = taken_over => {
                    self.rx.close();
                    while let Some(req) = self.rx.recv().await {
                        let _ = req.reply.send(Err(ControlError::TakenOver));
                    }
                    return;
                }
                req = self.rx.recv() => {
                    let Some(req) = req else { return };
                    let reply = self.handle(req.command, req.source).await;
                    let _ = req.reply.send(reply);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.advance().await;
                }
                () = tokio::time::sleep_until(self.pending_retry.unwrap_or_else(Instant::now)), if self.pending_retry.is_some() => {
                    self.pending_retry = None;
                    self.write_pending().await;
                }
                () = tokio::time::sleep_until(self.save_retry.unwrap_or_else(Instant::now)), if self.save_retry.is_some() => {
                    self.save_retry = None;
                    self.resave().await;
                }
            }
        }
    }

    /// Writes the state in force, which the state file does not hold yet.
    async fn resave(&mut self) {
        if self.ours().is_err() {
            return;
        }
        let generation = self.rollout.generation;
        match self.store.save(&self.rollout, generation, true).await {
            Ok(()) => {
                self.unsaved = false;
                self.notes.state_file_error = None;
                tracing::info!(rollout = %self.rollout.id, state = self.rollout.state.as_str(), "the rollout state in force is saved now");
            }
            Err(e) => {
                tracing::debug!(error = %e, "the rollout state still cannot be saved");
                self.notes.state_file_error = Some(e.to_string());
            }
        }
    }

    /// The schedule's hold expired: move to the next step, persisted first like any change. If
    /// the state cannot be written the step waits and is tried again.
    async fn advance(&mut self) {
        if let Some(why) = self.analysis.hold() {
            if self.schedule_retry.is_none() {
                tracing::info!(reason = %why, "the schedule's next step waits");
            }
            self.schedule_retry = Some(Instant::now() + HOLD_RETRY);
            return;
        }
        let mut next = self.rollout.clone();
        if !next.advance(Instant::now()) {
            // Nothing to advance to; `advance` may have stopped a stray clock.
            self.rollout = next;
            return;
        }
        let committed = self
            .change(
                next,
                None,
                Source::Schedule,
                "advance",
                Durability::Required,
            )
            .await;
        self.schedule_retry = match committed {
            // Another instance moved first: the fleet's state (now in force) has the next step.
            Ok(_) | Err(ControlError::ChangedMeanwhile { .. }) => None,
            Err(_) => Some(Instant::now() + SCHEDULE_RETRY),
        };
    }

    async fn handle(&mut self, command: Command, source: Source) -> Reply {
        match &command {
            Command::Status => return Ok(Outcome::Status(self.status())),
            Command::Bucket(user) => {
                return Ok(Outcome::Bucket(status::bucket(&self.current.load(), user)));
            }
            Command::Parsed(parsed) => {
                let parsed = Arc::clone(parsed);
                drop(command);
                return match Arc::try_unwrap(parsed) {
                    Ok(parsed) => self.reload(parsed, source).await,
                    Err(_) => Err(ControlError::ReloadTask("the parsed file is shared".into())),
                };
            }
            // A Handle parses these before they come here.
            Command::Reload | Command::FileChanged(_) => {
                return Err(ControlError::ReloadTask("the file was not parsed".into()));
            }
            Command::FleetState(kv) => {
                self.fleet_state(kv.clone()).await;
                return Ok(Outcome::Status(self.status()));
            }
            Command::FleetLink { error } => {
                self.fleet_link(error.clone()).await;
                return Ok(Outcome::Status(self.status()));
            }
            Command::Set(_)
            | Command::Halt
            | Command::Resume
            | Command::Rollback
            | Command::Promote
            | Command::Start { .. } => {}
        }
        // The guard judged figures of one rollout; a `start` since began another, which its
        // action must not stop.
        if let Source::Guard { rollout, .. } = &source
            && *rollout != self.rollout.id
        {
            return Err(ControlError::GuardLate {
                judged: rollout.clone(),
            });
        }
        let durability = match command {
            Command::Halt | Command::Rollback => Durability::BestEffort,
            _ => Durability::Required,
        };
        // In a fleet, a halt or rollback that met a change made meanwhile elsewhere is applied
        // again on top of it: stopping exposure always wins. Any other command is the
        // operator's to reconsider, unless the key changed without changing the rollout (it
        // holds something unreadable, or what this instance has already): then it goes again.
        let mut attempt = 0;
        let changed = loop {
            attempt += 1;
            let before = self.rollout.clone();
            let mut next = self.rollout.clone();
            apply(&mut next, &command, Instant::now())?;
            match self
                .change(next, None, source.clone(), command.name(), durability)
                .await
            {
                Err(ControlError::ChangedMeanwhile { .. })
                    if attempt < 5
                        && (durability == Durability::BestEffort || self.rollout == before) =>
                {
                    continue;
                }
                other => break other?,
            }
        };
        Ok(Outcome::Applied {
            changed,
            status: self.status(),
        })
    }

    /// Like [`Controller::commit`], and when the fleet's key changed meanwhile, takes the
    /// fleet's state and says so.
    pub(super) async fn change(
        &mut self,
        next: RolloutState,
        config: Option<NewConfig>,
        source: Source,
        what: &'static str,
        durability: Durability,
    ) -> Result<bool, ControlError> {
        match self.commit(next, config, source, what, durability).await {
            Err(ControlError::Conflict(now)) => {
                if let Some(kv) = now {
                    self.adopt(kv).await;
                }
                let r = &self.rollout;
                Err(ControlError::ChangedMeanwhile {
                    now: format!(
                        "{} {} at {}% by {}",
                        r.id,
                        r.state.as_str(),
                        ppm_to_percent(r.ppm),
                        r.changed_by
                    ),
                })
            }
            other => other,
        }
    }

    fn status(&self) -> super::reply::Status {
        // Until the analysis has counted a second of a rollout just started, what it holds is the
        // previous rollout's: not shown as this one's.
        let analysis = self
            .analysis
            .view()
            .filter(|v| v.rollout == self.rollout.id)
            .map(|v| {
                let mut v = (*v).clone();
                v.series = None;
                v
            });
        let hold = analysis.as_ref().and(self.analysis.hold());
        status::build(
            &self.rollout,
            &self.current.load(),
            &self.notes,
            Instant::now(),
            status::Extra {
                analysis,
                hold,
                changes: self.changes.iter().cloned().collect(),
                fleet: self.store.status(),
            },
        )
    }

    /// The one way anything changes: persists `next` (when it differs from the rollout in force,
    /// or that one is not on disk yet), puts `config` in force, publishes the new snapshot, and
    /// logs the change with its source. Gives whether the rollout changed.
    pub(super) async fn commit(
        &mut self,
        mut next: RolloutState,
        config: Option<NewConfig>,
        source: Source,
        what: &'static str,
        durability: Durability,
    ) -> Result<bool, ControlError> {
        let changed = next != self.rollout;
        let saved = match durability {
            Durability::Adopted(revision) => {
                // Stamped by the instance that made it; readable, so whatever was wrong with the
                // key before is over.
                self.store.adopted(&next, revision).await;
                self.notes.state_file_error = None;
                Ok(())
            }
            Durability::Required | Durability::BestEffort if changed || self.unsaved => {
                // Before anything is in force: a successor may have read the state already.
                self.ours()?;
                if changed {
                    next.changed_at = SystemTime::now();
                    next.changed_by = source.clone();
                    next.generation = generation_after(self.rollout.generation, next.changed_at);
                }
                if changed && durability == Durability::BestEffort {
                    // Stopping exposure waits for neither the disk nor etcd.
                    self.current
                        .publish(build(&self.config, &next, &self.registry, &self.tls));
                }
                let saved = self
                    .store
                    .save(
                        &next,
                        self.rollout.generation,
                        durability == Durability::BestEffort,
                    )
                    .await;
                match &saved {
                    Ok(()) => self.notes.state_file_error = None,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => {
                        tracing::error!(error = %e, command = what, "cannot save the rollout state");
                        self.notes.state_file_error = Some(e.to_string());
                    }
                }
                saved
            }
            Durability::Required | Durability::BestEffort => Ok(()),
        };
        let saved = match saved {
            Err(StoreError::Conflict(now)) => return Err(ControlError::Conflict(now)),
            Err(error) if durability == Durability::Required => {
                if matches!(self.store, Store::File(..)) {
                    // The file may not hold the state in force any more (a write that timed out
                    // is dropped, but it may have been renamed into place just before): it is
                    // written again with the state in force, first thing.
                    self.unsaved = true;
                    self.save_retry = Some(Instant::now());
                }
                return Err(ControlError::NotSaved { what, error });
            }
            Err(error) => {
                // A halt or rollback in force but unsaved: in a fleet, written when etcd is back.
                if matches!(error, StoreError::Fleet(_)) {
                    self.store.pending(&next, what, source.clone()).await;
                }
                Err(error)
            }
            Ok(()) => Ok(()),
        };
        self.unsaved = saved.is_err();
        let config_changed = match config {
            Some(new) => {
                self.config = new.config;
                self.tls = new.tls;
                new.differs
            }
            None => false,
        };
        let before = std::mem::replace(&mut self.rollout, next);
        if changed || config_changed {
            self.publish();
        }
        // After the snapshot: the analysis restarts on what is in force now.
        let resumed = matches!(before.state, State::Halted | State::RolledBack)
            && self.rollout.state == State::Running;
        if before.id != self.rollout.id || resumed {
            self.analysis.restart();
        }
        if changed {
            let now = &self.rollout;
            if self.changes.len() >= CHANGES_KEPT {
                self.changes.pop_back();
            }
            self.changes.push_front(status::change(&before, now, what));
            tracing::info!(
                source = source.kind(), by = %source, command = what, from_rollout = %before.id, rollout = %now.id,
                from_state = before.state.as_str(), from_percent = ppm_to_percent(before.ppm),
                to_state = now.state.as_str(), to_percent = ppm_to_percent(now.ppm),
                "rollout changed"
            );
        }
        match saved {
            Ok(()) => Ok(changed),
            Err(error @ StoreError::Fleet(_)) => Err(ControlError::UnsavedInFleet { what, error }),
            Err(error) => Err(ControlError::Unsaved { what, error }),
        }
    }

    /// Puts the config file a [`Handle`] read and parsed in force.
    async fn reload(&mut self, parsed: Parsed, trigger: Source) -> Reply {
        if parsed.seq < self.reloaded_seq {
            // A later read of the file was applied already (or refused) while this one parsed:
            // its outcome is this one's.
            return Err(ControlError::ReloadTask(
                match &self.notes.last_reload_error {
                    Some(e) => {
                        format!("a later read of the file was judged first, and refused: {e}")
                    }
                    None => {
                        "a later read of the file was judged first, and is in force (see status)"
                            .into()
                    }
                },
            ));
        }
        self.reloaded_seq = parsed.seq;
        let failed = &self.reloads[1];
        let rejected = |notes: &mut Notes, e: ControlError| {
            failed.increment(1);
            tracing::error!(trigger = trigger.kind(), error = %e, "reload rejected: the running config stays");
            notes.last_reload_error = Some(e.to_string());
            Err(e)
        };
        let mut new = match parsed.loaded {
            Ok(c) => c,
            Err(e) => return rejected(&mut self.notes, e.into()),
        };
        // Every file the new config names must be usable, those of parts that wait for a restart
        // too (a new TLS section, a fleet's password): a config a restart could not start from
        // is refused now, not at the restart.
        if let Err(e) = Controller::preflight(&new) {
            return rejected(&mut self.notes, ControlError::Unstartable(e.to_string()));
        }
        // A state file moved to another path: the state in force goes there now, so that the
        // restart the edit is made for finds it (a restart would otherwise begin the config's
        // plan afresh, undoing a halt or rollback).
        let moved_to = match (&self.config.state_file, &new.state_file) {
            (Some(from), Some(to)) if from != to => Some(to.clone()),
            _ => None,
        };
        let moved = match &moved_to {
            Some(to) => match self.store.move_file(to, &self.rollout).await {
                Ok(moved) => moved,
                Err(e) => {
                    let e = ControlError::StateNotMoved {
                        to: to.display().to_string(),
                        error: e.to_string(),
                    };
                    return rejected(&mut self.notes, e);
                }
            },
            None => false,
        };
        let mut restart_required = keep_restart_only(&self.config, &mut new);
        if moved {
            restart_required.retain(|&part| part != "state");
            new.state_file = moved_to;
            self.notes.state_file = new.state_file.as_ref().map(|p| p.display().to_string());
        }
        let tls = match TlsConfigs::load(&new, &self.tls) {
            Ok(t) => t,
            Err(e) => return rejected(&mut self.notes, e.into()),
        };
        self.notes.last_reload_error = None;
        self.notes.restart_required = restart_required;
        if !self.notes.restart_required.is_empty() {
            tracing::warn!(fields = ?self.notes.restart_required, "these changes need a restart; everything else was applied");
        }
        let mut next = self.rollout.clone();
        let effect = next.file_plan(new.rollout.clone(), Instant::now());
        let differs = new != *self.config || tls.differs(&self.tls);
        let new = NewConfig {
            config: Arc::new(new),
            tls,
            differs,
        };
        let committed = self
            .change(
                next,
                Some(new),
                Source::File,
                "reload",
                Durability::Required,
            )
            .await;
        self.reloads[usize::from(committed.is_err())].increment(1);
        if let Err(e) = &committed {
            // The config is in force or not as the error says; either way, say it in status.
            self.notes.last_reload_error = Some(e.to_string());
        }
        committed?;
        // The state file's path may lead somewhere new (a `current` link switched between
        // release directories): the state is written there too.
        if self.ours().is_ok() {
            self.store.rewrite(&self.rollout).await;
        }
        if differs {
            tracing::info!(trigger = trigger.kind(), effect = ?effect, "config reloaded");
        }
        Ok(Outcome::Reloaded {
            effect,
            status: self.status(),
        })
    }

    fn publish(&self) {
        self.current.publish(build(
            &self.config,
            &self.rollout,
            &self.registry,
            &self.tls,
        ));
    }
}

/// When to try something again: not at all when it is not `wanted`, else at the time already set
/// (commands handled meanwhile do not put it off), else `after` from now.
fn retry_at(at: Option<Instant>, wanted: bool, after: std::time::Duration) -> Option<Instant> {
    match at {
        _ if !wanted => None,
        Some(at) => Some(at),
        None => Some(Instant::now() + after),
    }
}

/// `command`'s transition of the rollout (the change commands only).
fn apply(next: &mut RolloutState, command: &Command, now: Instant) -> Result<(), Refusal> {
    match command {
        Command::Set(ppm) => next.set(*ppm),
        Command::Halt => next.halt(now),
        Command::Resume => next.resume(now),
        Command::Rollback => {
            next.rollback(now);
            Ok(())
        }
        Command::Promote => {
            next.promote();
            Ok(())
        }
        Command::Start { id, ppm } => {
            next.start(id.clone(), *ppm, now);
            Ok(())
        }
        Command::Status
        | Command::Bucket(_)
        | Command::Reload
        | Command::FileChanged(_)
        | Command::Parsed(_)
        | Command::FleetState(_)
        | Command::FleetLink { .. } => Ok(()),
    }
}

fn build(
    config: &Arc<Config>,
    r: &RolloutState,
    registry: &Registry,
    tls: &TlsConfigs,
) -> Snapshot {
    let rollout = Rollout::new(&r.id, r.ppm, r.state);
    // The share users get now (0 when rolled back, 100 when completed), not the plan's.
    let effective = match r.state {
        State::RolledBack => 0,
        State::Completed => crate::routing::BUCKETS,
        State::Running | State::Halted => r.ppm,
    };
    metrics::gauge!("ramp_rollout_percent").set(ppm_to_percent(effective));
    for state in State::ALL {
        let on = if state == r.state { 1.0 } else { 0.0 };
        metrics::gauge!("ramp_rollout_state", "state" => state.as_str()).set(on);
    }
    Snapshot::build(Arc::clone(config), rollout, registry, tls)
}

/// Settings that only take effect at start-up: keeps the running values in `new` and names the
/// ones the file changed.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if new.listen != running.listen {
        changed.push("listen");
        new.listen = running.listen;
    }
    if new.workers != running.workers {
        changed.push("workers");
        new.workers = running.workers;
    }
    if new.admin != running.admin {
        changed.push("admin");
        new.admin = running.admin.clone();
    }
    if new.state_file != running.state_file {
        changed.push("state");
        new.state_file = running.state_file.clone();
    }
    // Certificates rotate on reload; turning TLS on or off changes the listener.
    if new.tls.is_some() != running.tls.is_some() {
        changed.push("tls");
        new.tls = running.tls.clone();
    }
    if new.limits != running.limits {
        changed.push("limits");
        new.limits = running.limits;
    }
    if new.metrics != running.metrics {
        changed.push("metrics");
        new.metrics = running.metrics.clone();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_later_than_the_one_it_changed_whatever_the_clock() {
        let now = SystemTime::now();
        let wall = now
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        // Made by an instance whose clock ran an hour ahead: the change on top is still later.
        let ahead = wall + 3_600_000;
        assert_eq!(generation_after(ahead, now), ahead + 1);
        // Otherwise the clock: a change by an instance that knew no state beats older ones.
        assert_eq!(generation_after(0, now), wall);
        assert_eq!(generation_after(7, now), wall);
        // At the limit every instance reads, it stays there.
        let limit = crate::control::store::LATEST_MS;
        assert_eq!(generation_after(limit, now), limit);
    }

    #[tokio::test]
    async fn a_guard_action_for_a_rollout_no_longer_in_force_is_not_applied() {
        let config = crate::config::parse(
            "listen: 127.0.0.1:0\npools: {stable: ['127.0.0.1:9'], canary: ['127.0.0.1:9']}\nrollout: {id: second, percent: 5}\n",
            std::path::Path::new("ramp.yaml"),
        )
        .expect("config");
        let analysis = Arc::new(Analysis::new());
        let (controller, current, handle) =
            Controller::start(PathBuf::from("ramp.yaml"), config, analysis)
                .await
                .expect("controller");
        tokio::spawn(controller.run());
        let guard = |rollout: &str| Source::Guard {
            reason: "error rate".into(),
            rollout: rollout.into(),
        };
        // Judged while `first` was in force; `second` was started since.
        let late = handle.send(Command::Rollback, guard("first")).await;
        assert!(
            matches!(&late, Err(ControlError::GuardLate { judged }) if judged == "first"),
            "{late:?}"
        );
        assert_eq!(current.load().routing.rollout.state, State::Running);
        let due = handle.send(Command::Rollback, guard("second")).await;
        assert!(due.is_ok(), "{due:?}");
        assert_eq!(current.load().routing.rollout.state, State::RolledBack);
    }
}
