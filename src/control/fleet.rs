//! The controller's side of a fleet: taking what other instances wrote to the shared key, and
//! the watch that brings it. A change from the fleet is one more source through the one
//! `commit`, stamped by the instance that made it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Etcd, Event, Kv, Watched, etcd};

use super::command::{Command, Source};
use super::controller::{Controller, Durability, Handle, differs_in_substance};
use super::persist;
use super::state::RolloutState;

/// How long a retry of a pending halt or rollback waits for etcd to answer a read before it
/// gives up until the next try.
const PENDING_PROBE: Duration = Duration::from_millis(250);

/// A halt or rollback (`what`) made here on `ours` (the state in force here), put on top of
/// `theirs` (what the fleet's key holds): the stop applied to theirs — a rollback beats a halt,
/// whichever came later — at the lower exposure of the two when both are of the same rollout and
/// plan, so that a schedule step or a `set` etcd took late (one given up here, or made elsewhere
/// during the outage) does not become what `resume` goes back to. When the fleet moved on to a
/// plan the config file gave at another instance (an edit etcd took when it came back: a higher
/// percent, new steps, a new rollout id), the stop stays where it was made, and the file's plan
/// waits for `resume`, as after an edit made while halted: a halt never ends at more exposure
/// than it was typed at. Who stopped it is the stop that holds: theirs where theirs is stopped
/// as hard already, else the one made here.
fn stop_on(theirs: &RolloutState, ours: &RolloutState, what: &str, now: Instant) -> RolloutState {
    use crate::routing::State;
    let rollback = what == "rollback" || ours.state == State::RolledBack;
    let stop = |s: &mut RolloutState| {
        if rollback {
            s.rollback(now);
        } else {
            let _ = s.halt(now);
        }
    };
    let theirs_holds = match theirs.state {
        State::RolledBack => true,
        State::Halted => !rollback,
        State::Running | State::Completed => false,
    };
    let mut next = theirs.clone();
    stop(&mut next);
    next.stopped = if theirs_holds {
        theirs.stopped.clone().or_else(|| ours.stopped.clone())
    } else {
        ours.stopped.clone()
    };
    let lower =
        ours.ppm < next.ppm && next.state != State::Completed && ours.state != State::Completed;
    if lower && next.id == ours.id && next.plan == ours.plan {
        next.ppm = ours.ppm;
        next.schedule = ours.schedule;
        next.completed_before = ours.completed_before;
        if let Some(s) = &mut next.schedule {
            s.pause(now);
        }
    } else if lower && (next.id == ours.id || theirs.id == theirs.plan.id) {
        // A rollback either side made stays one.
        let mut kept = ours.clone();
        if next.state == State::RolledBack {
            kept.rollback(now);
        } else {
            stop(&mut kept);
        }
        kept.stopped = next.stopped.clone();
        if theirs.plan != ours.plan {
            kept.plan = theirs.plan.clone();
            kept.plan_pending = true;
            kept.pending_rollout = theirs.plan.id != kept.id;
        }
        kept.generation = theirs.generation;
        next = kept;
    }
    next
}

/// The longest wait between attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Controller {
    /// Takes the fleet's state from `kv` (what another instance wrote, or what a conflict
    /// revealed), unless this instance already has it. Generations decide first, whatever etcd's
    /// revisions say (they start again when its data is wiped or restored): a state fewer changes
    /// along than the one in force (a stale cache written back, an older copy restored) never
    /// replaces it, and is written over.
    pub(super) async fn adopt(&mut self, kv: Kv) {
        let opened = persist::open(&kv, Instant::now());
        let ours = self.rollout.generation;
        let Some(link) = self.store.link() else {
            return;
        };
        // A halt or rollback made here is still to be written: it goes on top of what the fleet
        // holds, whichever is later, and what the fleet holds is never put in force without it
        // (a halt made elsewhere meanwhile would otherwise lift this rollback for a moment).
        if let (Some((what, source)), Ok((instance, theirs))) = (link.pending.clone(), &opened) {
            link.revision = kv.mod_revision;
            // The guard judged one rollout's figures; the fleet began another meanwhile (a
            // `start` elsewhere), which its verdict says nothing of.
            if let Source::Guard { rollout, .. } = &source
                && !rollout.is_empty()
                && *rollout != theirs.id
            {
                link.pending = None;
                self.pending_failed = None;
                tracing::warn!(command = what, judged = %rollout, fleet = %theirs.id, "the guard's halt or rollback made here while etcd was away is not written: the fleet began another rollout meanwhile, which the guard did not judge");
                let (instance, theirs) = (instance.clone(), theirs.clone());
                return Box::pin(self.take(instance, theirs, kv.mod_revision)).await;
            }
            if differs_in_substance(
                &stop_on(theirs, &self.rollout, what, Instant::now()),
                theirs,
            ) {
                return Box::pin(self.put_stop_on(theirs, what, source)).await;
            }
            // The fleet stops the rollout as hard already (a rollback made elsewhere meanwhile):
            // nothing of this one is left to write, and theirs is taken as the fleet's change.
            link.pending = None;
            self.pending_failed = None;
            tracing::info!(command = what, by = %source, "the halt or rollback made here while etcd was away is not written: the fleet's state stops the rollout as hard already");
            let (instance, theirs) = (instance.clone(), theirs.clone());
            return Box::pin(self.take(instance, theirs, kv.mod_revision)).await;
        }
        match opened.as_ref().ok().map(|(_, s)| s.generation) {
            Some(g) if g < ours => return Box::pin(self.write_over(kv)).await,
            Some(g) if g > ours => {}
            _ if kv.mod_revision == link.revision => return,
            _ if kv.mod_revision < link.revision => {
                return Box::pin(self.went_back(kv, opened.ok())).await;
            }
            _ => {}
        }
        match opened {
            Ok((instance, state)) => self.take(instance, state, kv.mod_revision).await,
            Err(e) => {
                // Not this instance's to judge, but not to be stuck behind either: the state in
                // force stays, and the next change made here replaces what the key holds.
                link.revision = kv.mod_revision;
                let why = format!(
                    "the fleet's key {} holds something unreadable at revision {}: {e}; the state in force stays until the next change, which replaces it",
                    link.key, kv.mod_revision
                );
                tracing::error!("{why}");
                self.notes.state_file_error = Some(why);
                // Even a command that changes nothing writes it; unless the state in force is the
                // stop ramp made at start for want of a readable state, no state of the fleet's.
                if self
                    .rollout
                    .stopped
                    .as_ref()
                    .is_none_or(|s| s.by != Source::Startup)
                {
                    self.unsaved = true;
                }
            }
        }
    }

    /// Puts the fleet's `state` (written by `instance`, at `revision`) in force. It keeps its
    /// own stamp (who changed it, when); the log says it came by the fleet.
    async fn take(&mut self, instance: String, state: RolloutState, revision: i64) {
        let source = Source::Fleet { instance };
        if let Err(e) = self
            .commit(state, None, source, "fleet", Durability::Adopted(revision))
            .await
        {
            tracing::error!(error = %e, "cannot take the fleet's state");
        }
    }

    /// The key holds `kv` (`theirs`, if readable) at a revision older than the one this instance
    /// has seen (etcd's data was wiped, or restored from an older copy) and as many changes along
    /// as the state in force (or something unreadable): the later changed wins, the key's taken
    /// or the state in force written over it. Never ignored, which would leave instances apart
    /// for good.
    async fn went_back(&mut self, kv: Kv, theirs: Option<(String, RolloutState)>) {
        let Some(link) = self.store.link() else {
            return;
        };
        let seen = link.revision;
        let newer = theirs
            .as_ref()
            .is_some_and(|(_, s)| s.changed_at > self.rollout.changed_at);
        tracing::warn!(
            seen,
            now = kv.mod_revision,
            key_is_newer = newer,
            "etcd's revision went back (its data was wiped or restored)"
        );
        match theirs.filter(|_| newer) {
            Some((instance, state)) => self.take(instance, state, kv.mod_revision).await,
            None => self.write_over(kv).await,
        }
    }

    /// Writes the state in force over the older one `kv` holds (kept as it is: re-published, not
    /// changed again).
    async fn write_over(&mut self, kv: Kv) {
        let Some(link) = self.store.link() else {
            return;
        };
        let seen = link.revision;
        tracing::warn!(
            seen,
            now = kv.mod_revision,
            "the fleet's key holds an older state than the one in force: writing it over"
        );
        link.revision = kv.mod_revision;
        let generation = self.rollout.generation;
        match self.store.save(&self.rollout, generation, true).await {
            Ok(()) => {
                self.notes.state_file_error = None;
                tracing::info!(rollout = %self.rollout.id, state = self.rollout.state.as_str(), "the state in force is written to etcd again");
            }
            Err(super::store::StoreError::Conflict(Some(now))) => self.adopt(now).await,
            Err(e) => {
                // Tried again when the watch next reads the key.
                tracing::error!(error = %e, "cannot write the state in force to etcd again");
                if let Some(link) = self.store.link() {
                    link.revision = seen;
                }
            }
        }
    }

    /// A watch event: the key holds `kv` now.
    pub(super) async fn fleet_state(&mut self, kv: Kv) {
        self.adopt(kv).await;
    }

    /// etcd answers again (`error` is `None`) or not. When it is back, a halt or rollback made
    /// here meanwhile is written.
    pub(super) async fn fleet_link(&mut self, error: Option<String>) {
        let Some(link) = self.store.link() else {
            return;
        };
        let up = error.is_none();
        if link.connected != up {
            match &error {
                None => tracing::info!(key = %link.key, "etcd answers again"),
                Some(e) => {
                    tracing::warn!(key = %link.key, error = %e, "etcd does not answer: serving the last known state")
                }
            }
        }
        link.connected = up;
        link.error = error;
        metrics::gauge!("ramp_fleet_connected").set(if up { 1.0 } else { 0.0 });
        if up {
            self.write_pending().await;
            // Whichever way this instance learnt etcd was back (a pending stop's write may have
            // told it first), an edit etcd could not take is read again.
            self.reload_again();
        }
    }

    /// Writes the halt or rollback made here while etcd was away, on top of whatever the fleet
    /// holds now (a halt or rollback always wins). Tried again later if etcd still does not
    /// answer.
    pub(super) async fn write_pending(&mut self) {
        let Some(link) = self.store.link() else {
            return;
        };
        if link.pending.is_none() {
            return;
        }
        let etcd = Arc::clone(&link.etcd);
        let key = link.key.clone();
        // A quick look first: while etcd hangs, each try holds commands and status up this long
        // at most, not the seconds a write may take.
        match tokio::time::timeout(PENDING_PROBE, etcd.get(&key)).await {
            // Written on top of what the key holds, when it holds a readable state.
            Ok(Ok((Some(kv), _))) => self.adopt(kv).await,
            Ok(Ok((None, _))) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        // No key (or etcd did not take the stop on top of it yet): on top of the state in force.
        let Some((what, source)) = self.store.link().and_then(|l| l.pending.clone()) else {
            return;
        };
        let ours = self.rollout.clone();
        self.put_stop_on(&ours, what, source).await;
    }

    /// Writes the halt or rollback (`what`, by `source`) made here, still pending, on top of
    /// `theirs` (what the fleet's key holds, or the state in force): see [`stop_on`]. It stays
    /// pending until etcd takes it.
    async fn put_stop_on(&mut self, theirs: &RolloutState, what: &'static str, source: Source) {
        if self.pending_failed.is_none() {
            tracing::info!(
                command = what,
                "writing the halt or rollback made while etcd was away"
            );
        }
        let mut next = stop_on(theirs, &self.rollout, what, Instant::now());
        // Later than both, whatever the other instance's clock says; and a change of its own
        // even when it is in force already (applied at start, from the local cache).
        self.rollout.generation = self.rollout.generation.max(theirs.generation);
        if next == self.rollout {
            next.generation = super::controller::generation_after(
                self.rollout.generation,
                std::time::SystemTime::now(),
            );
        }
        self.unsaved = true;
        match self
            .change(next, None, source, what, Durability::BestEffort)
            .await
        {
            Err(e) => {
                let said = e.to_string();
                if self.pending_failed.as_ref() != Some(&said) {
                    tracing::warn!(error = %said, command = what, "the halt or rollback made here is not written to etcd yet");
                }
                self.pending_failed = Some(said);
            }
            Ok(_) => self.pending_failed = None,
        }
    }

    /// The client and key the fleet watch needs, in a fleet.
    pub fn fleet(&mut self) -> Option<(Arc<Etcd>, String)> {
        self.store
            .link()
            .map(|l| (Arc::clone(&l.etcd), l.key.clone()))
    }
}

/// How long a watch may stay silent before etcd is asked directly whether the key moved: a
/// member that stops answering without closing the stream, or a route that drops it, would
/// otherwise leave this instance on an old state for good.
const CHECK_AFTER: Duration = Duration::from_secs(5);

/// Why a watch ended.
enum Ended {
    /// etcd does not answer (or the stream broke): reported, and retried with a backoff.
    Broken(String),
    /// The watch fell behind the key (or etcd's history went back): watched again at once.
    Behind,
}

/// Watches the fleet's key and hands every change to the controller; says when etcd stops and
/// starts answering, and catches up (read, then watch from there) each time it is back.
pub async fn watch(etcd: Arc<Etcd>, key: String, handle: Handle) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = match etcd.get(&key).await {
            Err(e) => e.to_string(),
            Ok((kv, revision)) => {
                backoff = Duration::from_millis(100);
                let _ = handle
                    .send(Command::FleetLink { error: None }, Source::Startup)
                    .await;
                if let Some(kv) = kv {
                    let _ = handle.send(Command::FleetState(kv), Source::Startup).await;
                }
                match follow(&etcd, &key, revision, &handle).await {
                    Ended::Behind => continue,
                    Ended::Broken(why) => why,
                }
            }
        };
        let _ = handle
            .send(Command::FleetLink { error: Some(why) }, Source::Startup)
            .await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows the key from after `seen` (the store's revision it was read at) until the watch ends;
/// after each [`CHECK_AFTER`] of silence, reads the key to check that nothing was missed.
async fn follow(etcd: &Etcd, key: &str, mut seen: i64, handle: &Handle) -> Ended {
    let mut lines = match etcd.watch(key, seen + 1).await {
        Ok(l) => l,
        Err(e) => return Ended::Broken(e.to_string()),
    };
    loop {
        let message = match tokio::time::timeout(CHECK_AFTER, lines.next()).await {
            Err(_) => match etcd.get(key).await {
                Err(e) => return Ended::Broken(format!("etcd did not answer a check: {e}")),
                Ok((kv, revision)) => {
                    let _ = handle
                        .send(Command::FleetLink { error: None }, Source::Startup)
                        .await;
                    let missed = kv.as_ref().is_some_and(|kv| kv.mod_revision > seen);
                    if missed || revision < seen {
                        tracing::warn!(
                            seen,
                            now = revision,
                            "the fleet's watch fell behind the key; watching again"
                        );
                        return Ended::Behind;
                    }
                    continue;
                }
            },
            Ok(None) => return Ended::Broken("the watch stream ended".into()),
            Ok(Some(Err(e))) => return Ended::Broken(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        match etcd::read_watch(&message) {
            Err(e) => return Ended::Broken(e.to_string()),
            Ok(Watched::Ended(why)) => return Ended::Broken(why),
            Ok(Watched::Quiet) => {}
            Ok(Watched::Events(events)) => {
                for e in events {
                    match e {
                        Event::Put(kv) => {
                            seen = seen.max(kv.mod_revision);
                            let _ = handle.send(Command::FleetState(kv), Source::Startup).await;
                        }
                        Event::Delete(revision) => {
                            seen = seen.max(revision);
                            tracing::warn!(
                                revision,
                                "the fleet's key was deleted; the state in force stays until the next change"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Plan, RolloutPlan, Step};
    use crate::routing::State;

    fn steps(now: Instant) -> RolloutState {
        let hold = Some(Duration::from_secs(60));
        let plan = RolloutPlan {
            id: "r".into(),
            plan: Plan::Steps(vec![
                Step { ppm: 100_000, hold },
                Step { ppm: 200_000, hold },
                Step {
                    ppm: 1_000_000,
                    hold: None,
                },
            ]),
        };
        RolloutState::fresh(plan, now, Source::Startup)
    }

    #[test]
    fn a_stop_made_here_goes_on_top_at_the_lower_exposure_and_a_rollback_beats_a_halt() {
        let now = Instant::now();
        let first = steps(now);
        assert_eq!(first.ppm, 100_000);
        // The schedule's next step, taken by etcd after the rollback here gave it up.
        let mut step = first.clone();
        assert!(step.advance(now + Duration::from_secs(61)));
        let mut ours = first.clone();
        ours.rollback(now);
        let next = stop_on(&step, &ours, "rollback", now);
        assert_eq!((next.state, next.ppm), (State::RolledBack, 100_000));
        assert_eq!(
            next.schedule, ours.schedule,
            "resume goes back to the first step"
        );
        // A halt made elsewhere meanwhile, on top of which this rollback goes, and the other way
        // round: rolled back either way.
        let mut halted = first.clone();
        let _ = halted.halt(now);
        assert_eq!(
            stop_on(&halted, &ours, "rollback", now).state,
            State::RolledBack
        );
        assert_eq!(
            stop_on(&ours, &halted, "halt", now).state,
            State::RolledBack
        );
        // A halt on a state at a lower exposure keeps that one.
        let next = stop_on(&first, &halted, "halt", now);
        assert_eq!((next.state, next.ppm), (State::Halted, 100_000));
    }

    #[test]
    fn a_stop_made_here_stays_below_a_file_edit_etcd_took_late_which_waits_for_resume() {
        let now = Instant::now();
        let percent = |id: &str, ppm| RolloutPlan {
            id: id.into(),
            plan: Plan::Percent(ppm),
        };
        let first = RolloutState::fresh(percent("r", 100_000), now, Source::Startup);
        let admin = Source::Admin {
            uid: 0,
            pid: Some(7),
        };
        let mut ours = first.clone();
        let _ = ours.halt(now);
        ours.stopped = Some(crate::control::state::Stopped {
            at: std::time::SystemTime::now(),
            by: admin.clone(),
        });
        // Another instance's file edit to 40%, which etcd took when it came back.
        let mut edited = first.clone();
        let _ = edited.file_plan(percent("r", 400_000), now);
        assert_eq!(edited.ppm, 400_000);
        let next = stop_on(&edited, &ours, "halt", now);
        assert_eq!((next.state, next.ppm), (State::Halted, 100_000));
        assert_eq!(next.stopped.as_ref().map(|s| &s.by), Some(&admin));
        // The edit applies on resume.
        let mut resumed = next.clone();
        assert!(resumed.resume(now).is_ok());
        assert_eq!((resumed.id.as_str(), resumed.ppm), ("r", 400_000));
        // An edit to a new rollout id: the halted one stays, the new one begins on resume.
        let mut new_id = first.clone();
        let _ = new_id.file_plan(percent("r2", 200_000), now);
        assert_eq!(new_id.id, "r2");
        let next = stop_on(&new_id, &ours, "halt", now);
        assert_eq!(
            (next.id.as_str(), next.state, next.ppm),
            ("r", State::Halted, 100_000)
        );
        let mut resumed = next.clone();
        assert!(resumed.resume(now).is_ok());
        assert_eq!((resumed.id.as_str(), resumed.ppm), ("r2", 200_000));
        // An edit to a lower percent: halted there, the lower exposure.
        let mut lower = first.clone();
        let _ = lower.file_plan(percent("r", 50_000), now);
        let next = stop_on(&lower, &ours, "halt", now);
        assert_eq!((next.state, next.ppm), (State::Halted, 50_000));
        // A rollback made elsewhere, on which this halt goes: that rollback's, and who made it.
        let guard = Source::Guard {
            reason: "errors".into(),
            rollout: "r".into(),
        };
        let mut rolled = first.clone();
        rolled.rollback(now);
        rolled.stopped = Some(crate::control::state::Stopped {
            at: std::time::SystemTime::now(),
            by: guard.clone(),
        });
        let next = stop_on(&rolled, &ours, "halt", now);
        assert_eq!(next.state, State::RolledBack);
        assert_eq!(next.stopped.map(|s| s.by), Some(guard.clone()));
        // A halt on a running fleet state: this halt's own record of who made it.
        let next = stop_on(&first, &ours, "halt", now);
        assert_eq!(next.stopped.map(|s| s.by), Some(admin));
        // The edit to 40%, then rolled back there: this halt does not lift that rollback.
        let mut edited_rolled = edited.clone();
        edited_rolled.rollback(now);
        edited_rolled.stopped = rolled.stopped.clone();
        let next = stop_on(&edited_rolled, &ours, "halt", now);
        assert_eq!((next.state, next.ppm), (State::RolledBack, 100_000));
        assert_eq!(next.stopped.map(|s| s.by), Some(guard));
    }
}
