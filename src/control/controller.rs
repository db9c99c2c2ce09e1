//! The one writer of rollout state. Every change arrives here — a [`Command`] from the admin
//! socket, the file watcher, the guard or the fleet, or the schedule's own clock — and goes
//! through [`Controller::commit`]: validated, persisted, published, logged, and only then
//! answered.

mod commit;
mod handle;
mod reload;
mod start;

pub(super) use commit::{Durability, differs_in_substance, generation_after};
use handle::Request;
pub use handle::{Handle, Parsed};
pub use start::{SOCKET_LINK, StartError};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::analysis::Analysis;
use crate::config::Config;
use crate::snapshot::Current;
use crate::tls::TlsConfigs;
use crate::upstream::Registry;

use super::command::{Command, Source};
use super::persist::Store;
use super::reply::{Change, ControlError, Outcome, Reply};
use super::state::{Refusal, RolloutState};
use super::status::{self, Notes};
use super::{admin, handover};

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
    /// Commands received while a change waited for etcd, handled next, in order (see
    /// [`Controller::save_watching`]).
    backlog: VecDeque<Request>,
    /// Where the state is saved: nowhere, a file, or the fleet's etcd key.
    pub(super) store: Store,
    /// A schedule step that could not be persisted (or that the analysis holds) is tried again
    /// then, not before.
    schedule_retry: Option<Instant>,
    /// When a halt or rollback made while etcd was away is tried again (a fixed time: commands
    /// handled meanwhile do not put it off).
    pending_retry: Option<Instant>,
    /// Why the last try to write that halt or rollback failed: said again only when it changes
    /// (a full etcd refuses every try, once a second).
    pub(super) pending_failed: Option<String>,
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
    /// The controller's own way to read the config file again: a reload etcd could not take is
    /// tried again when etcd answers again.
    myself: Option<handle::WeakHandle>,
    /// The last reload was refused because etcd did not take its change.
    reload_awaits_etcd: bool,
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
                    for req in self.backlog.drain(..) {
                        let _ = req.reply.send(Err(ControlError::TakenOver));
                    }
                    while let Some(req) = self.rx.recv().await {
                        let _ = req.reply.send(Err(ControlError::TakenOver));
                    }
                    return;
                }
                Some(req) = async { self.backlog.pop_front() }, if !self.backlog.is_empty() => {
                    let reply = self.handle(req.command, req.source).await;
                    let _ = req.reply.send(reply);
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

    /// etcd answers again: a reload it could not take is tried again, reading the file as it is
    /// now (it may have been edited since), parsed outside the controller like any reload.
    pub(super) fn reload_again(&mut self) {
        if !std::mem::take(&mut self.reload_awaits_etcd) {
            return;
        }
        let Some(handle) = self.myself.as_ref().and_then(handle::WeakHandle::upgrade) else {
            return;
        };
        tracing::info!("reading the config file again: etcd refused its reload");
        tokio::spawn(async move {
            if let Err(e) = handle.send(Command::Reload, Source::File).await {
                tracing::debug!(error = %e, "the config file's reload after etcd's return");
            }
        });
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
        self.notes.step_unsaved = None;
        self.schedule_retry = match committed {
            // Another instance moved first: the fleet's state (now in force) has the next step.
            Ok(_) | Err(ControlError::ChangedMeanwhile { .. }) => None,
            Err(e) => {
                self.notes.step_unsaved = Some(format!(
                    "{e}; tried again every {}",
                    humantime::format_duration(SCHEDULE_RETRY)
                ));
                Some(Instant::now() + SCHEDULE_RETRY)
            }
        };
    }

    /// Saves `next` to the fleet's key (made from the state at generation `base`). While etcd
    /// takes its time (a member that hangs can hold a write for seconds per endpoint), status
    /// and bucket are answered with the state in force, other commands wait in the backlog, and
    /// a halt or rollback ends the wait: the change is given up (`Preempted`), and the halt or
    /// rollback is handled next — stopping exposure waits for no other change's write.
    async fn save_watching(
        &mut self,
        next: &RolloutState,
        base: u64,
    ) -> Result<(), super::store::StoreError> {
        let in_force = self.status();
        let save = self.store.save(next, base, false);
        tokio::pin!(save);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                saved = &mut save => return saved,
                req = self.rx.recv(), if open => {
                    let Some(req) = req else {
                        open = false;
                        continue;
                    };
                    match &req.command {
                        Command::Status => {
                            let _ = req.reply.send(Ok(Outcome::Status(in_force.clone())));
                        }
                        Command::Bucket(user) => {
                            let b = status::bucket(&self.current.load(), user);
                            let _ = req.reply.send(Ok(Outcome::Bucket(b)));
                        }
                        Command::Halt | Command::Rollback => {
                            self.backlog.push_front(req);
                            return Err(super::store::StoreError::Preempted);
                        }
                        _ => self.backlog.push_back(req),
                    }
                }
            }
        }
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

    fn status(&self) -> super::reply::Status {
        // Until the analysis has counted a second since a fresh start (a new rollout, a resume, a
        // `start`), what it holds is from before: not shown as this one's.
        let analysis = self
            .analysis
            .fresh_view()
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::routing::State;

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
