//! The one writer of rollout state. Every change arrives here as a [`Command`]; the controller
//! validates it, persists the new state, publishes the new snapshot, and only then replies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{self, Config, ppm_to_percent};
use crate::snapshot::{self, Shared, Snapshot, State};
use crate::upstream::Registry;

use super::command::{Command, Source};
use super::state::{FileEffect, RolloutState};
use super::status::{self, Notes, Reply};
use super::store;
use super::tls_files::TlsFiles;
use crate::proxy::tls::TlsError;

struct Request {
    command: Command,
    source: Source,
    reply: oneshot::Sender<Reply>,
}

/// How the rest of ramp talks to the controller.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.command)
            .finish()
    }
}

impl Handle {
    /// Sends a command and waits for its reply: by then the change is live and persisted.
    pub async fn send(&self, command: Command, source: Source) -> Reply {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            command,
            source,
            reply,
        };
        if self.tx.send(req).await.is_err() {
            return status::error("ramp is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| status::error("ramp is shutting down"))
    }
}

pub struct Controller {
    config_path: PathBuf,
    config: Arc<Config>,
    rollout: RolloutState,
    registry: Registry,
    shared: Arc<Shared>,
    tls: TlsFiles,
    notes: Notes,
    rx: mpsc::Receiver<Request>,
    /// A schedule step that could not be persisted is tried again then, not before.
    schedule_retry: Option<Instant>,
}

/// How long a schedule step waits after its state could not be written.
const SCHEDULE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Controller {
    /// Restores the rollout (state file, else the config's plan) and publishes the first snapshot.
    pub fn start(
        config_path: PathBuf,
        config: Config,
    ) -> Result<(Controller, Arc<Shared>, Handle), TlsError> {
        let tls = TlsFiles::load(&config, &TlsFiles::default())?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut notes = Notes {
            state_file: config.state_file.as_ref().map(|p| p.display().to_string()),
            ..Notes::default()
        };
        let fresh = || RolloutState::fresh(config.rollout.clone(), now, Source::Startup);
        let (rollout, write) = match &config.state_file {
            None => {
                tracing::warn!(
                    "no state.file configured: rollout changes will not survive a restart"
                );
                (fresh(), false)
            }
            Some(path) => match store::read(path, now, wall) {
                Ok(None) => (fresh(), true),
                Ok(Some(mut saved)) => {
                    let effect = saved.file_plan(config.rollout.clone(), now);
                    if effect != FileEffect::Unchanged {
                        saved.changed_at = wall;
                        saved.changed_by = Source::File;
                        tracing::info!(source = "file", effect = ?effect, rollout = %saved.id, "the config file changed while ramp was down");
                    }
                    tracing::info!(rollout = %saved.id, state = saved.state.as_str(), percent = ppm_to_percent(saved.ppm), "state restored");
                    (saved, effect != FileEffect::Unchanged)
                }
                Err(e) => {
                    tracing::error!(error = %e, "STATE FILE UNREADABLE: serving everyone from stable (rolled_back) until an operator acts; the file is left as it is");
                    notes.state_file_error = Some(e.to_string());
                    let mut s = fresh();
                    s.rollback(now);
                    (s, false)
                }
            },
        };
        let registry = Registry::new();
        let config = Arc::new(config);
        let shared = Arc::new(Shared::new(build(&config, &rollout, &registry, &tls)));
        let (tx, rx) = mpsc::channel(256);
        let mut c = Controller {
            config_path,
            config,
            rollout,
            registry,
            shared: Arc::clone(&shared),
            tls,
            notes,
            rx,
            schedule_retry: None,
        };
        if write && let Err(e) = c.persist_now(&c.rollout.clone()) {
            tracing::error!(error = %e, "cannot write the state file");
            c.notes.state_file_error = Some(e.to_string());
        }
        Ok((c, shared, Handle { tx }))
    }

    /// Serves commands and the schedule until every handle is dropped.
    pub async fn run(mut self) {
        loop {
            let deadline = self
                .rollout
                .next_deadline()
                .map(|d| self.schedule_retry.map_or(d, |r| d.max(r)));
            tokio::select! {
                req = self.rx.recv() => {
                    let Some(req) = req else { return };
                    let reply = self.handle(req.command, req.source).await;
                    let _ = req.reply.send(reply);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.advance().await;
                }
            }
        }
    }

    /// The schedule's hold expired: move to the next step, persisted first like any change. If
    /// the state cannot be written the step waits and is tried again.
    async fn advance(&mut self) {
        let mut next = self.rollout.clone();
        if !next.advance(Instant::now()) {
            // Nothing to advance to; `advance` may have stopped a stray clock.
            self.rollout = next;
            return;
        }
        let reply = self.commit(next, "advance", Source::Schedule, false).await;
        self.schedule_retry = match reply.get("ok") {
            Some(serde_json::Value::Bool(true)) => None,
            _ => Some(Instant::now() + SCHEDULE_RETRY),
        };
    }

    async fn handle(&mut self, command: Command, source: Source) -> Reply {
        let now = Instant::now();
        let mut next = self.rollout.clone();
        let refused = match &command {
            Command::Status => return self.status(),
            Command::Bucket(user) => return status::bucket(&self.shared.load(), user),
            Command::Reload => return self.reload(&source).await,
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
            Command::Advance => Ok(()),
        };
        if let Err(refusal) = refused {
            return status::error(refusal);
        }
        // A halt or rollback takes effect even if the disk fails: stopping exposure comes first.
        let safety = matches!(command, Command::Halt | Command::Rollback);
        self.commit(next, command.name(), source, safety).await
    }

    fn status(&self) -> Reply {
        status::status(
            &self.rollout,
            &self.shared.load(),
            &self.notes,
            Instant::now(),
        )
    }

    /// Persists `next`, publishes it, and gives the reply. With `even_unsaved`, a failed write
    /// still applies the change (and says so); otherwise nothing changes.
    async fn commit(
        &mut self,
        mut next: RolloutState,
        what: &str,
        source: Source,
        even_unsaved: bool,
    ) -> Reply {
        if next == self.rollout {
            let mut reply = self.status();
            reply.insert("changed".into(), false.into());
            return reply;
        }
        next.changed_at = SystemTime::now();
        next.changed_by = source.clone();
        let saved = self.persist(&next).await;
        if let Err(e) = &saved {
            tracing::error!(error = %e, command = what, "cannot persist the rollout state");
            self.notes.state_file_error = Some(e.to_string());
            if !even_unsaved {
                return status::error(format!("not applied: {e}"));
            }
        }
        let before = std::mem::replace(&mut self.rollout, next);
        self.publish();
        let now = &self.rollout;
        tracing::info!(
            source = source.kind(), by = %source, command = what, rollout = %now.id,
            from_state = before.state.as_str(), from_percent = ppm_to_percent(before.ppm),
            to_state = now.state.as_str(), to_percent = ppm_to_percent(now.ppm),
            "rollout changed"
        );
        match saved {
            Ok(()) => {
                let mut reply = self.status();
                reply.insert("changed".into(), true.into());
                reply
            }
            Err(e) => status::error(format!(
                "{what} is in effect, but the state file could not be written ({e}): it will not survive a restart"
            )),
        }
    }

    async fn reload(&mut self, trigger: &Source) -> Reply {
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let mut new = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let message = e.to_string();
                tracing::error!(trigger = trigger.kind(), error = %message, "reload rejected: the running config stays");
                self.notes.last_reload_error = Some(message.clone());
                return status::error(message);
            }
            Err(e) => return status::error(format!("reload failed: {e}")),
        };
        let restart_required = keep_restart_only(&self.config, &mut new);
        let tls = match TlsFiles::load(&new, &self.tls) {
            Ok(t) => t,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(trigger = trigger.kind(), error = %message, "reload rejected: the running config stays");
                self.notes.last_reload_error = Some(message.clone());
                return status::error(message);
            }
        };
        let tls_changed = tls.differs(&self.tls);
        self.notes.last_reload_error = None;
        self.notes.restart_required = restart_required;
        if !self.notes.restart_required.is_empty() {
            tracing::warn!(fields = ?self.notes.restart_required, "these changes need a restart; everything else was applied");
        }
        let mut next = self.rollout.clone();
        let effect = next.file_plan(new.rollout.clone(), Instant::now());
        let config_changed = new != *self.config || tls_changed;
        if effect != FileEffect::Unchanged {
            next.changed_at = SystemTime::now();
            next.changed_by = Source::File;
            if let Err(e) = self.persist(&next).await {
                self.notes.state_file_error = Some(e.to_string());
                return status::error(format!("reload not applied: {e}"));
            }
            tracing::info!(
                source = "file", trigger = trigger.kind(), effect = ?effect, rollout = %next.id,
                from_state = self.rollout.state.as_str(), from_percent = ppm_to_percent(self.rollout.ppm),
                to_state = next.state.as_str(), to_percent = ppm_to_percent(next.ppm),
                "rollout changed"
            );
        }
        self.config = Arc::new(new);
        self.rollout = next;
        self.tls = tls;
        if config_changed || effect != FileEffect::Unchanged {
            self.publish();
            tracing::info!(trigger = trigger.kind(), "config reloaded");
        }
        let mut reply = self.status();
        reply.insert("reload".into(), format!("{effect:?}").to_lowercase().into());
        reply
    }

    fn publish(&self) {
        self.shared.publish(build(
            &self.config,
            &self.rollout,
            &self.registry,
            &self.tls,
        ));
    }

    async fn persist(&mut self, next: &RolloutState) -> Result<(), store::StoreError> {
        let Some(path) = self.config.state_file.clone() else {
            return Ok(());
        };
        let bytes = store::encode(next, Instant::now(), SystemTime::now())?;
        let written = tokio::task::spawn_blocking(move || store::write_atomic(&path, &bytes)).await;
        let result = written.unwrap_or_else(|e| {
            Err(store::StoreError::Write {
                path: self.config.state_file.clone().unwrap_or_default(),
                error: std::io::Error::other(e),
            })
        });
        if result.is_ok() {
            self.notes.state_file_error = None;
        }
        result
    }

    fn persist_now(&self, next: &RolloutState) -> Result<(), store::StoreError> {
        let Some(path) = &self.config.state_file else {
            return Ok(());
        };
        store::write_atomic(
            path,
            &store::encode(next, Instant::now(), SystemTime::now())?,
        )
    }
}

fn build(config: &Arc<Config>, r: &RolloutState, registry: &Registry, tls: &TlsFiles) -> Snapshot {
    let rollout = snapshot::Rollout::new(&r.id, r.ppm, r.state);
    metrics::gauge!("ramp_rollout_percent").set(ppm_to_percent(r.ppm));
    for state in [
        State::Running,
        State::Halted,
        State::RolledBack,
        State::Completed,
    ] {
        let on = if state == r.state { 1.0 } else { 0.0 };
        metrics::gauge!("ramp_rollout_state", "state" => state.as_str()).set(on);
    }
    Snapshot::build(Arc::clone(config), rollout, registry, &tls.material())
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
        new.metrics = running.metrics;
    }
    changed
}
