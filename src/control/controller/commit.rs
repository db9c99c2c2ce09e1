//! How a change is put in force: persisted first (as its durability asks), then published,
//! logged and kept for status.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::config::{Config, ppm_to_percent};
use crate::control::command::Source;
use crate::control::persist::Store;
use crate::control::reply::ControlError;
use crate::control::state::{RolloutState, Stopped};
use crate::control::status;
use crate::control::store::StoreError;
use crate::routing::{Rollout, State};
use crate::snapshot::Snapshot;
use crate::tls::TlsConfigs;
use crate::upstream::Registry;

use super::{CHANGES_KEPT, Controller};

/// How long a halt or rollback in a fleet waits for etcd before its reply: it is in force and
/// in the local cache already, and written by the retry when etcd answers again.
const FLEET_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a failed write does to a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::control) enum Durability {
    /// Nothing changes unless it is persisted.
    Required,
    /// Applies even unsaved (halt, rollback: stopping exposure comes first), and says so.
    BestEffort,
    /// The fleet already holds it at this revision: only the local cache is written.
    Adopted(i64),
}

/// The generation of a change made on top of one at `previous`, at `now`: one more, or the wall
/// clock in milliseconds if that is later (a hybrid logical clock). A change made after another
/// one it knew of is always later, whatever the clocks; of two changes that knew nothing of each
/// other (an instance that could not read the fleet's state, two sides of a wiped etcd), the
/// later by the clock wins. It stops at the year 9999, as far as a state file can say.
pub(in crate::control) fn generation_after(previous: u64, now: SystemTime) -> u64 {
    let wall = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Never past what every instance reads (a key written by hand at the limit would otherwise
    // make each change after it unreadable to the others).
    previous
        .saturating_add(1)
        .max(wall)
        .min(crate::control::store::LATEST_MS)
}

/// Whether `a` differs from `b` in more than who changed it, when, and the generation.
pub(in crate::control) fn differs_in_substance(a: &RolloutState, b: &RolloutState) -> bool {
    let mut a = a.clone();
    a.changed_at = b.changed_at;
    a.changed_by = b.changed_by.clone();
    a.generation = b.generation;
    a.stopped.clone_from(&b.stopped);
    a != *b
}

/// A configuration read from the file, to be put in force with a change.
pub(in crate::control) struct NewConfig {
    pub(super) config: Arc<Config>,
    pub(super) tls: TlsConfigs,
    /// Whether it differs from the one in force (else only the rollout may change).
    pub(super) differs: bool,
}

impl Controller {
    /// Like [`Controller::commit`], and when the fleet's key changed meanwhile, takes the
    /// fleet's state and says so.
    pub(in crate::control) async fn change(
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

    /// The one way anything changes: persists `next` (when it differs from the rollout in force,
    /// or that one is not on disk yet), puts `config` in force, publishes the new snapshot, and
    /// logs the change with its source. Gives whether the rollout changed.
    pub(in crate::control) async fn commit(
        &mut self,
        mut next: RolloutState,
        config: Option<NewConfig>,
        source: Source,
        what: &'static str,
        durability: Durability,
    ) -> Result<bool, ControlError> {
        // An operator's `start` of the rollout in force that changes nothing else is a change
        // too: it begins the comparison again, and the evidence gathered so far is gone, which
        // status (who changed it, when), the changes, the reply and the log say (a script that
        // runs `start` on every deploy would otherwise keep the guard from ever having enough
        // data, unseen).
        let afresh = next == self.rollout && what == "start" && !matches!(source, Source::Startup);
        let changed = next != self.rollout || afresh;
        // What the changes list and the log show: not a state written again as it is, only
        // later (a stop made here while etcd was away, tried again on top of the same state).
        let shown = afresh || differs_in_substance(&next, &self.rollout);
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
                    // A change that leaves the rollout stopped keeps who stopped it; one that
                    // stops it names who did, unless it says so itself (a stop made here while
                    // etcd was away, put on top of the fleet's state: who made it, and when).
                    if (next.state != self.rollout.state || next.id != self.rollout.id)
                        && next.stopped == self.rollout.stopped
                    {
                        next.stopped = matches!(next.state, State::Halted | State::RolledBack)
                            .then(|| Stopped {
                                at: next.changed_at,
                                by: source.clone(),
                            });
                    }
                }
                let best_effort = durability == Durability::BestEffort;
                if changed && best_effort {
                    // Stopping exposure waits for neither the disk nor etcd.
                    self.current
                        .publish(build(&self.config, &next, &self.registry, &self.tls));
                }
                let base = self.rollout.generation;
                let saved = match &self.store {
                    Store::Fleet(_) if best_effort => {
                        // In the local cache as still to be written before etcd is asked, so that
                        // a restart while etcd hangs (even by kill -9) keeps it; and etcd is
                        // given a second, not the seconds a write may take per endpoint.
                        self.store.pending(&next, what, source.clone()).await;
                        let saved = tokio::time::timeout(
                            FLEET_STOP_WAIT,
                            self.store.save(&next, base, true),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            // Status says so until etcd answers again.
                            let e = crate::fleet::EtcdError::silent(FLEET_STOP_WAIT);
                            if let Some(link) = self.store.link() {
                                link.connected = false;
                                link.error = Some(e.to_string());
                            }
                            Err(StoreError::Fleet(e))
                        });
                        if saved.is_ok() {
                            self.store.written(&next);
                        }
                        saved
                    }
                    Store::Fleet(_) => self.save_watching(&next, base).await,
                    Store::File(..) | Store::Nothing => {
                        self.store.save(&next, base, best_effort).await
                    }
                };
                match &saved {
                    Ok(()) => self.notes.state_file_error = None,
                    // etcd's troubles show as the fleet's, not the state file's.
                    Err(StoreError::Conflict(_)) => {}
                    // (A halt or rollback whose write etcd keeps refusing is said once, where
                    // it is tried again.)
                    Err(e @ (StoreError::Fleet(_) | StoreError::Preempted))
                        if !(self.pending_failed.is_some()
                            && matches!(what, "halt" | "rollback")) =>
                    {
                        tracing::warn!(error = %e, command = what, "the change is not written to etcd");
                    }
                    Err(StoreError::Fleet(_) | StoreError::Preempted) => {}
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
            // A halt or rollback in force but unsaved: in a fleet, kept as pending above and
            // written when etcd is back.
            Err(error) => Err(error),
            Ok(()) => Ok(()),
        };
        self.unsaved = saved.is_err();
        let config_changed = match config {
            Some(new) => {
                self.store.reads(&new.config, &self.config_path);
                self.config = new.config;
                if new.tls.server_differs(&self.tls) {
                    new.tls.note_certificate();
                }
                self.tls = new.tls;
                new.differs
            }
            None => false,
        };
        let before = std::mem::replace(&mut self.rollout, next);
        if changed || config_changed {
            self.publish();
        }
        // After the snapshot: the analysis restarts on what is in force now (a `start` of the
        // rollout in force is a fresh one too), and at a new share: counts pooled across shares
        // compare different hours (the canary's mostly from after a raise), so an error spike
        // that hits both versions alike would land mostly on the canary's side.
        let resumed = matches!(before.state, State::Halted | State::RolledBack)
            && self.rollout.state == State::Running;
        let new_share = before.ppm != self.rollout.ppm;
        if before.id != self.rollout.id || resumed || new_share || what == "start" {
            self.analysis.restart();
        }
        if shown {
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
            if afresh {
                tracing::info!(rollout = %now.id, "the rollout in force begun afresh: its comparison begins again");
            }
        }
        match saved {
            Ok(()) => Ok(changed),
            Err(error @ StoreError::Fleet(_)) => Err(ControlError::UnsavedInFleet { what, error }),
            Err(error) => Err(ControlError::Unsaved { what, error }),
        }
    }

    pub(super) fn publish(&self) {
        self.current.publish(build(
            &self.config,
            &self.rollout,
            &self.registry,
            &self.tls,
        ));
    }
}

pub(super) fn build(
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
