//! A reload: the config file a [`Handle`](super::Handle) read and parsed, put in force.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::Config;
use crate::control::command::Source;
use crate::control::reply::{ControlError, Outcome, Reply};
use crate::control::state::FileEffect;
use crate::control::status::Notes;
use crate::control::store::StoreError;
use crate::tls::TlsConfigs;

use super::commit::{Durability, NewConfig};
use super::{Controller, Parsed};

impl Controller {
    /// Puts the config file a [`Handle`] read and parsed in force.
    pub(super) async fn reload(&mut self, parsed: Parsed, trigger: Source) -> Reply {
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
        self.reload_awaits_etcd = false;
        let failed = &self.reloads[1];
        let rejected = |notes: &mut Notes, e: ControlError| {
            notes.file_refused = true;
            failed.increment(1);
            tracing::error!(trigger = trigger.kind(), error = %e, "reload rejected: the running config stays");
            notes.last_reload_error = Some(e.to_string());
            Err(e)
        };
        let mut new = match parsed.loaded {
            Ok(c) => c,
            Err(e) => return rejected(&mut self.notes, e.into()),
        };
        // As at start: what the open files limit leaves upstream connections (said below when
        // the edit asks for more than is in force).
        let asked_upstreams = new.fit_upstreams().unwrap_or(new.upstream.max_connections);
        // Every file the new config names must be usable, those of parts that wait for a restart
        // too (a new TLS section, a fleet's password): a config a restart could not start from
        // is refused now, not at the restart.
        if let Err(e) = Controller::preflight(&new) {
            return rejected(&mut self.notes, ControlError::Unstartable(e.to_string()));
        }
        // A state file moved to another path: the state in force goes there now, so that the
        // restart the edit is made for finds it (a restart would otherwise begin the config's
        // plan afresh, undoing a halt or rollback). It moves last, once nothing else can refuse
        // the reload: a refused reload leaves the state where it was.
        let moved_to = match (&self.config.state_file, &new.state_file) {
            (Some(from), Some(to)) if from != to => Some(to.clone()),
            _ => None,
        };
        let mut restart_required = keep_restart_only(&self.config, &mut new);
        // TLS turned off waits for a restart: the certificates in force stay loaded as they
        // are, not read again (they may be retired already).
        let tls = if restart_required.contains(&"tls") {
            TlsConfigs::keeping_server(&new, &self.tls)
        } else {
            TlsConfigs::load(&new, &self.tls)
        };
        let tls = match tls {
            Ok(t) => t,
            Err(e) => return rejected(&mut self.notes, e.into()),
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
        if moved {
            restart_required.retain(|&part| part != "state");
            new.state_file = moved_to;
        }
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        if asked_upstreams > self.config.upstream.max_connections
            && let Ok((limit, _)) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            && let Some(needed) =
                crate::config::open_files_short(limit, new.limits.max_connections, asked_upstreams)
        {
            tracing::warn!(limit, needed, "{}", crate::config::OPEN_FILES_SHORT);
        }
        if !restart_required.is_empty() {
            tracing::warn!(fields = ?restart_required, "these changes need a restart; everything else was applied");
        }
        let mut applied = applied(&self.config, &new);
        let guard_changed = self.config.guard != new.guard;
        for (differs, name) in [
            (tls.server_differs(&self.tls), "tls"),
            (tls.upstream_differs(&self.tls), "upstream"),
        ] {
            if differs && !applied.contains(&name) {
                applied.push(name);
            }
        }
        let differs = !applied.is_empty();
        let new = Arc::new(new);
        // In a fleet, another instance may have changed the rollout meanwhile — most often with
        // the same edit, pushed to every instance and taken from another one first. Its state is
        // in force here by then, and the file is judged again on top of it by the rules of any
        // edit, as a reload a moment later would be: the same plan changes nothing more (the
        // file's other sections apply all the same), and no edit undoes a halt or rollback.
        let mut attempt = 0;
        let (committed, effect) = loop {
            attempt += 1;
            let mut next = self.rollout.clone();
            let effect = next.file_plan(new.rollout.clone(), Instant::now());
            let config = NewConfig {
                config: Arc::clone(&new),
                tls: tls.clone(),
                differs,
            };
            match self
                .change(
                    next,
                    Some(config),
                    Source::File,
                    "reload",
                    Durability::Required,
                )
                .await
            {
                Err(ControlError::ChangedMeanwhile { .. }) if attempt < 3 => continue,
                committed => break (committed, effect),
            }
        };
        // The file's plan is the one in force already (taken from the fleet, or the same edit
        // read twice): "rollout" is not among what this reload changed, unless its guard did.
        if effect == FileEffect::Unchanged && !guard_changed {
            applied.retain(|&part| part != "rollout");
        }
        // etcd did not answer: the file is read again when it answers again (an answer that
        // refuses the write, such as etcd's full database, is the operator's to see to).
        let committed = committed.map_err(|e| match e {
            ControlError::NotSaved {
                error: error @ StoreError::Fleet(crate::fleet::EtcdError::Unreachable { .. }),
                ..
            } => ControlError::ReloadAwaitsEtcd(error),
            other => other,
        });
        // The rollout's change waits for etcd; the file's other settings (a pool's upstreams, the
        // guard, limits) need no one's agreement and apply now.
        let committed = match committed {
            Err(ControlError::ReloadAwaitsEtcd(error))
                if applied.iter().any(|&part| part != "rollout") =>
            {
                let config = NewConfig {
                    config: Arc::clone(&new),
                    tls: tls.clone(),
                    differs,
                };
                let unchanged = self.rollout.clone();
                match self
                    .change(
                        unchanged,
                        Some(config),
                        Source::File,
                        "reload",
                        Durability::Required,
                    )
                    .await
                {
                    Ok(_) => Err(ControlError::RolloutAwaitsEtcd(error)),
                    Err(_) => Err(ControlError::ReloadAwaitsEtcd(error)),
                }
            }
            other => other,
        };
        self.reloads[usize::from(committed.is_err())].increment(1);
        if let Err(e) = &committed {
            self.reload_awaits_etcd = matches!(
                e,
                ControlError::ReloadAwaitsEtcd(_) | ControlError::RolloutAwaitsEtcd(_)
            );
            if let ControlError::RolloutAwaitsEtcd(_) = e {
                // In force but for the rollout: the file's other settings are the config's now.
                self.noted_in_force(restart_required.clone());
                tracing::warn!(trigger = trigger.kind(), error = %e, "config reloaded but for the rollout, which waits for etcd");
            } else {
                // Not in force: the state goes back where the config in force keeps it.
                if moved
                    && let Some(from) = &self.config.state_file
                    && let Err(e) = self.store.move_file(from, &self.rollout).await
                {
                    tracing::error!(error = %e, "cannot write the state file back where the config in force keeps it");
                }
                tracing::error!(trigger = trigger.kind(), error = %e, "reload not applied: the running config stays");
            }
            self.notes.last_reload_error = Some(e.to_string());
        }
        committed?;
        self.notes.last_reload_error = None;
        let was_refused = std::mem::take(&mut self.notes.file_refused);
        self.noted_in_force(restart_required);
        // The state file's path may lead somewhere new (a `current` link switched between
        // release directories): the state is written there too.
        if self.ours().is_ok() {
            self.store.rewrite(&self.rollout).await;
        }
        if differs {
            tracing::info!(trigger = trigger.kind(), effect = ?effect, applied = ?applied, "config reloaded");
        } else if was_refused {
            // Else the log's last word on the file would be its refusal.
            tracing::info!(
                trigger = trigger.kind(),
                "config reloaded: the file is valid again, and what it says is in force already"
            );
        }
        Ok(Outcome::Reloaded {
            effect,
            applied: applied.into_iter().map(str::to_owned).collect(),
            status: self.status(),
        })
    }

    /// Status notes of the config just put in force: what waits for a restart, where the state
    /// file is.
    fn noted_in_force(&mut self, restart_required: Vec<&'static str>) {
        self.notes.restart_required = restart_required;
        self.notes.state_file = self
            .config
            .state_file
            .as_ref()
            .map(|p| p.display().to_string());
    }
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
    // The etcd client and its watch are made at start.
    if new.fleet != running.fleet {
        changed.push("state.etcd");
        new.fleet = running.fleet.clone();
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

/// The settings a reload changes (the restart-only ones already put back), by their names in the
/// file; the certificates' content is compared apart.
fn applied(running: &Config, new: &Config) -> Vec<&'static str> {
    let sections = [
        (running.sticky != new.sticky, "sticky"),
        (running.pools != new.pools, "pools"),
        (
            running.rollout != new.rollout || running.guard != new.guard,
            "rollout",
        ),
        (
            running.upstream != new.upstream || running.upstream_ca != new.upstream_ca,
            "upstream",
        ),
        (
            running.hide_response_headers != new.hide_response_headers,
            "hide_response_headers",
        ),
        (running.tls != new.tls, "tls"),
        (running.health != new.health, "health"),
        (
            running.passive_health != new.passive_health,
            "passive_health",
        ),
        (
            running.canary_unavailable != new.canary_unavailable,
            "canary_unavailable",
        ),
        (
            running.shutdown_grace != new.shutdown_grace,
            "shutdown_grace",
        ),
        (running.analysis != new.analysis, "analysis"),
        // Only a moved state file is left changed here (the rest waits for a restart).
        (running.state_file != new.state_file, "state"),
    ];
    let mut changed: Vec<_> = sections
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect();
    // Anything else the comparison of the whole finds (a field added without a name here).
    if changed.is_empty() && running != new {
        changed.push("other settings");
    }
    changed
}
