//! The controller's side of a fleet: taking what other instances wrote to the shared key, and
//! the watch that brings it. A change from the fleet is one more source through the one
//! `commit`, stamped by the instance that made it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Etcd, Event, Kv, Watched, etcd};

use super::command::{Command, Source};
use super::controller::{Controller, Durability, Handle};
use super::persist;

/// How long a retry of a pending halt or rollback waits for etcd to answer a read before it
/// gives up until the next try.
const PENDING_PROBE: Duration = Duration::from_millis(250);

/// The longest wait between attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Controller {
    /// Takes the fleet's state from `kv` (what another instance wrote, or what a conflict
    /// revealed), unless this instance already has it.
    pub(super) async fn adopt(&mut self, kv: Kv) {
        let Some(link) = self.store.link() else {
            return;
        };
        if kv.mod_revision <= link.revision {
            return;
        }
        let (instance, state) = match persist::open(&kv, Instant::now()) {
            Ok(found) => found,
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
                return;
            }
        };
        // The state keeps its own stamp (who changed it, when); the log says it came by the fleet.
        let source = Source::Fleet { instance };
        let revision = kv.mod_revision;
        if let Err(e) = self
            .commit(state, None, source, "fleet", Durability::Adopted(revision))
            .await
        {
            tracing::error!(error = %e, "cannot take the fleet's state");
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
        }
    }

    /// Writes the halt or rollback made here while etcd was away, on top of whatever the fleet
    /// holds now (a halt or rollback always wins). Tried again later if etcd still does not
    /// answer.
    pub(super) async fn write_pending(&mut self) {
        let Some(link) = self.store.link() else {
            return;
        };
        let Some((what, source)) = link.pending.take() else {
            return;
        };
        let etcd = Arc::clone(&link.etcd);
        let key = link.key.clone();
        // A quick look first: while etcd hangs, each try holds commands and status up this long
        // at most, not the seconds a write may take.
        match tokio::time::timeout(PENDING_PROBE, etcd.get(&key)).await {
            Ok(Ok((Some(kv), _))) => self.adopt(kv).await,
            Ok(Ok((None, _))) => {}
            Ok(Err(_)) | Err(_) => {
                if let Some(link) = self.store.link() {
                    link.pending.get_or_insert((what, source));
                }
                return;
            }
        }
        let command = match what {
            "rollback" => Command::Rollback,
            _ => Command::Halt,
        };
        tracing::info!(
            command = what,
            "writing the halt or rollback made while etcd was away"
        );
        let mut next = self.rollout.clone();
        let now = Instant::now();
        match command {
            Command::Rollback => next.rollback(now),
            _ => {
                let _ = next.halt(now);
            }
        }
        self.unsaved = true;
        if let Err(e) = self
            .change(next, None, source.clone(), what, Durability::BestEffort)
            .await
        {
            tracing::error!(error = %e, "the halt or rollback could not be written yet");
            if let Some(link) = self.store.link() {
                link.pending.get_or_insert((what, source));
            }
        }
    }

    /// The client and key the fleet watch needs, in a fleet.
    pub fn fleet(&mut self) -> Option<(Arc<Etcd>, String)> {
        self.store
            .link()
            .map(|l| (Arc::clone(&l.etcd), l.key.clone()))
    }
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
                follow(&etcd, &key, revision + 1, &handle).await
            }
        };
        let _ = handle
            .send(Command::FleetLink { error: Some(why) }, Source::Startup)
            .await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows the key from `revision` until the watch ends; gives why it ended.
async fn follow(etcd: &Etcd, key: &str, revision: i64, handle: &Handle) -> String {
    let mut lines = match etcd.watch(key, revision).await {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    loop {
        let message = match lines.next().await {
            None => return "the watch stream ended".into(),
            Some(Err(e)) => return e.to_string(),
            Some(Ok(m)) => m,
        };
        match etcd::read_watch(&message) {
            Err(e) => return e.to_string(),
            Ok(Watched::Ended(why)) => return why,
            Ok(Watched::Quiet) => {}
            Ok(Watched::Events(events)) => {
                for e in events {
                    match e {
                        Event::Put(kv) => {
                            let _ = handle.send(Command::FleetState(kv), Source::Startup).await;
                        }
                        Event::Delete(revision) => {
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
