//! Where the rollout state is kept: nowhere, a state file, or — in a fleet — an etcd key shared by
//! every instance (with the state file as this instance's cache of it). The controller does not
//! care which: it saves through [`Store::save`] before every reply.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::Config;
use crate::fleet::{self, Cas, Envelope, Etcd, FleetError, Kv};

use super::command::Source;
use super::state::RolloutState;
use super::store::{self, StoreError};
use super::writer::Writer;

/// How long a start waits for etcd (however many endpoints hang) before it serves the local
/// cache's state: a restart without `--takeover` has no listener meanwhile.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// This instance's link to the fleet's key.
#[derive(Debug)]
pub struct Link {
    pub etcd: Arc<Etcd>,
    pub key: String,
    pub instance: String,
    /// The local cache of the fleet's state (`state.file`), and its writer.
    pub cache: Option<(PathBuf, Writer)>,
    /// The key's revision the state in force corresponds to (0: no key yet).
    pub revision: i64,
    pub connected: bool,
    pub error: Option<String>,
    /// A halt or rollback (its command name and source) applied while etcd was unreachable:
    /// written when it is back, on top of whatever was written meanwhile.
    pub pending: Option<(&'static str, Source)>,
}

/// The fleet's standing, as status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub key: String,
    pub instance: String,
    /// etcd answers; changes can be made.
    pub connected: bool,
    pub revision: i64,
    pub error: Option<String>,
    /// A halt or rollback applied here while etcd was away, still to be written.
    pub pending: Option<String>,
}

#[derive(Debug)]
pub enum Store {
    Nothing,
    File(PathBuf, Writer),
    Fleet(Link),
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreStartError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cannot start the state file's writer thread: {0}")]
    Writer(#[from] std::io::Error),
}

/// What start-up found.
pub enum Restored {
    /// A state to continue from; `true` when it still needs saving.
    Found(RolloutState),
    /// Nothing saved yet: start fresh and save it.
    Nothing,
    /// The fleet's key is missing: the local cache's state, to be written back to it.
    Cached(RolloutState),
    /// The fleet's key is unreadable: the local cache's state, the last the fleet held that this
    /// instance knows of (as the instances that were running keep it in force), and why.
    Stale(RolloutState, String),
    /// Unreadable (or unreachable with no cache): everyone on stable, and why.
    Unusable(String),
}

impl Store {
    pub fn new(config: &Config) -> Result<Store, StoreStartError> {
        Ok(match (&config.fleet, &config.state_file) {
            (Some(f), cache) => Store::Fleet(Link {
                etcd: Arc::new(fleet::client(f)?),
                key: f.key.clone(),
                instance: fleet::instance(f),
                cache: match cache {
                    Some(path) => Some((path.clone(), Writer::start(path)?)),
                    None => None,
                },
                revision: 0,
                connected: false,
                error: None,
                pending: None,
            }),
            (None, Some(path)) => Store::File(path.clone(), Writer::start(path)?),
            (None, None) => Store::Nothing,
        })
    }

    /// The files the config in force (read from `path`) has ramp read: the state is never
    /// written over one, even through a link made after the config was checked.
    pub fn reads(&self, config: &Config, path: &Path) {
        let writer = match self {
            Store::File(_, w) => Some(w),
            Store::Fleet(l) => l.cache.as_ref().map(|(_, w)| w),
            Store::Nothing => None,
        };
        if let Some(w) = writer {
            w.reads(crate::config::files_read(config, path));
        }
    }

    pub fn link(&mut self) -> Option<&mut Link> {
        match self {
            Store::Fleet(l) => Some(l),
            Store::Nothing | Store::File(..) => None,
        }
    }

    pub fn status(&self) -> Option<FleetStatus> {
        match self {
            Store::Fleet(l) => Some(FleetStatus {
                key: l.key.clone(),
                instance: l.instance.clone(),
                connected: l.connected,
                revision: l.revision,
                error: l.error.clone(),
                pending: l.pending.as_ref().map(|(what, _)| (*what).to_owned()),
            }),
            Store::Nothing | Store::File(..) => None,
        }
    }

    /// What was saved before this start, and (in a fleet) the halt or rollback made here that
    /// etcd never took, from the local cache.
    pub async fn restore(&mut self, now: Instant) -> Restored {
        let wall = SystemTime::now();
        // The local cache, unless it holds another key's state (the instance moved to another
        // fleet, or its key was mistyped before): that is no state of this fleet's, nor a stop
        // made in it, and would otherwise be written over this fleet's key.
        let mut cache = None;
        if let Store::Fleet(link) = self
            && let Some((path, _)) = &link.cache
        {
            let notes = store::cache_notes(path);
            match notes.key {
                Some(k) if k != link.key => {
                    tracing::warn!(cache = %path.display(), of = %crate::shown::escaped(&k), key = %link.key, "the local cache holds the state of another fleet's key: not used, and replaced by this fleet's state");
                }
                _ => {
                    link.pending = notes.pending;
                    cache = Some(path.clone());
                }
            }
        }
        let cached = |now, wall| cache.as_deref().map(|p| store::read(p, now, wall));
        match self {
            Store::Nothing => Restored::Nothing,
            Store::File(path, _) => match store::read(path, now, wall) {
                Ok(None) => Restored::Nothing,
                Ok(Some(s)) => Restored::Found(s),
                Err(e) => Restored::Unusable(e.to_string()),
            },
            Store::Fleet(link) => {
                match link
                    .etcd
                    .get_within(&link.key, START_WAIT)
                    .await
                    .inspect(|_| {
                        metrics::gauge!("ramp_fleet_connected").set(1.0);
                    }) {
                    Ok((None, _)) => {
                        link.connected = true;
                        // The key is gone (deleted, or etcd's data wiped): this instance's cache is
                        // the last state the fleet held, and goes back into the key.
                        match cached(now, wall) {
                            Some(Ok(Some(s))) => Restored::Cached(s),
                            _ => Restored::Nothing,
                        }
                    }
                    Ok((Some(kv), _)) => {
                        link.connected = true;
                        match open(&kv, now) {
                            Ok((_, s)) => {
                                link.revision = kv.mod_revision;
                                match cached(now, wall).and_then(|r| r.ok().flatten()) {
                                    // More changes along than the key (written back after a wipe by
                                    // an instance with an older cache, or an older copy restored):
                                    // the cache's state, written over the key.
                                    Some(c) if c.generation > s.generation => Restored::Cached(c),
                                    _ => {
                                        // The cache holds it from the start, not only after the next
                                        // change.
                                        link.write_cache(&s);
                                        Restored::Found(s)
                                    }
                                }
                            }
                            Err(e) => {
                                // The next change made here replaces it.
                                link.revision = kv.mod_revision;
                                let why = format!("{}: {e}", link.key);
                                match cached(now, wall) {
                                    Some(Ok(Some(s))) => Restored::Stale(s, why),
                                    _ => Restored::Unusable(why),
                                }
                            }
                        }
                    }
                    Err(e) => {
                        metrics::gauge!("ramp_fleet_connected").set(0.0);
                        link.error = Some(e.to_string());
                        tracing::error!(error = %e, "etcd is unreachable at start: serving the last known state");
                        // The cache of the last known state, else everyone on stable.
                        match cached(now, wall) {
                            Some(Ok(Some(s))) => Restored::Found(s),
                            Some(Ok(None)) | None => {
                                Restored::Unusable(format!("etcd unreachable and no cache: {e}"))
                            }
                            Some(Err(c)) => {
                                Restored::Unusable(format!("etcd unreachable ({e}); {c}"))
                            }
                        }
                    }
                }
            }
        }
    }

    /// Saves `next` before it is put in force: the file written whole, or the fleet's key
    /// swapped only if nobody changed it since this instance last saw it. `keep`: the file is to
    /// hold it even if the write outlasts the wait (a halt, a rollback, the state in force).
    ///
    /// `base` is the generation of the state `next` was made from (its own when re-published): a
    /// key at an older revision than this instance has seen (etcd's data wiped or restored) is
    /// written over only if it holds nothing later than that — else it holds a change made since
    /// that this one knew nothing of, and the conflict is reported.
    pub async fn save(
        &mut self,
        next: &RolloutState,
        base: u64,
        keep: bool,
    ) -> Result<(), StoreError> {
        let bytes = store::encode(next, Instant::now(), SystemTime::now())?;
        match self {
            Store::Nothing => Ok(()),
            Store::File(path, writer) => writer.write(path.clone(), bytes, keep).await,
            Store::Fleet(link) => {
                let value = Envelope::wrap(&link.instance, &bytes).map_err(StoreError::Encode)?;
                match link.etcd.cas(&link.key, link.revision, &value).await {
                    Ok(Cas::Done(revision)) => {
                        link.revision = revision;
                        link.connected = true;
                        link.error = None;
                        link.write_cache(next);
                        Ok(())
                    }
                    Ok(Cas::Conflict(None)) if link.revision != 0 => {
                        // The key was deleted (by hand, or a cleanup): it is written anew.
                        tracing::warn!(key = %link.key, "the fleet's key was deleted; writing it again");
                        link.revision = 0;
                        Box::pin(self.save(next, base, keep)).await
                    }
                    Ok(Cas::Conflict(Some(now)))
                        if now.mod_revision < link.revision
                            && open(&now, Instant::now())
                                .is_ok_and(|(_, s)| s.generation <= base) =>
                    {
                        // An older revision than this instance has seen (etcd's data was wiped
                        // or restored from a copy), holding no later state: written over.
                        tracing::warn!(key = %link.key, seen = link.revision, now = now.mod_revision, "etcd's revision went back (its data was wiped or restored); writing the change over what it holds");
                        link.revision = now.mod_revision;
                        Box::pin(self.save(next, base, keep)).await
                    }
                    Ok(Cas::Conflict(now)) => {
                        link.connected = true;
                        Err(StoreError::Conflict(now))
                    }
                    Err(e) => {
                        // An answer that refuses the write (a full storage quota) is etcd
                        // answering: only silence is etcd away.
                        if matches!(e, fleet::EtcdError::Unreachable { .. }) {
                            link.connected = false;
                        }
                        link.error = Some(e.to_string());
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// A state file moved by a config edit (`state.file` from one path to another): the state in
    /// force is written at `to` — in full, before the reply — and kept there from now on, so a
    /// restart finds it. The old file is left as it was. Does nothing for a fleet or no file.
    pub async fn move_file(&mut self, to: &Path, state: &RolloutState) -> Result<bool, StoreError> {
        let Store::File(path, writer) = self else {
            return Ok(false);
        };
        if path == to {
            return Ok(false);
        }
        let bytes = store::encode(state, Instant::now(), SystemTime::now())?;
        writer.write(to.to_owned(), bytes, true).await?;
        tracing::info!(from = %path.display(), to = %to.display(), "the state file moved; the old one is left as it was");
        *path = to.to_owned();
        Ok(true)
    }

    /// Writes the state in force again, before the reload's reply: after a reload, the state
    /// file's path may lead somewhere new (a `current` link switched between release
    /// directories), and a restart right after must find the state there. A failure is logged
    /// (the file is written again at the next change).
    pub async fn rewrite(&self, state: &RolloutState) {
        if let (Store::File(path, writer), Ok(bytes)) = (
            self,
            store::encode(state, Instant::now(), SystemTime::now()),
        ) && let Err(e) = writer.write(path.clone(), bytes, true).await
        {
            tracing::warn!(error = %e, "cannot write the state file again after the reload");
        }
    }

    /// Records a state the fleet already holds at `revision`: only the local cache is written.
    pub async fn adopted(&mut self, next: &RolloutState, revision: i64) {
        if let Store::Fleet(link) = self {
            link.revision = revision;
            link.write_cache(next);
        }
    }

    /// The halt or rollback kept as pending was written to etcd with `state`: the cache says so.
    pub fn written(&mut self, state: &RolloutState) {
        if let Store::Fleet(link) = self {
            link.pending = None;
            link.write_cache(state);
        }
    }

    /// A halt or rollback (`what`, by `source`) is in force here but etcd did not take it: it is
    /// written to the fleet when etcd answers, and kept in the local cache meanwhile (with the
    /// state `next`) so that a restart does not lose it — written before the reply, like the
    /// state file, so that even a `kill -9` right after it keeps it.
    pub async fn pending(&mut self, next: &RolloutState, what: &'static str, source: Source) {
        if let Store::Fleet(link) = self {
            if let (Some((cache, writer)), Ok(bytes)) = (
                &link.cache,
                store::encode_cache(
                    next,
                    &link.key,
                    Some((what, &source)),
                    Instant::now(),
                    SystemTime::now(),
                ),
            ) && let Err(e) = writer.write(cache.clone(), bytes, true).await
            {
                tracing::warn!(error = %e, "cannot keep the pending halt or rollback in the local cache: a restart before etcd answers would lose it");
            }
            link.pending = Some((what, source));
        }
    }
}

impl Link {
    /// Writes the local cache (if any): `state`, and the halt or rollback still pending.
    fn write_cache(&self, state: &RolloutState) {
        let pending = self.pending.as_ref().map(|(what, by)| (*what, by));
        if let (Some((cache, writer)), Ok(bytes)) = (
            &self.cache,
            store::encode_cache(state, &self.key, pending, Instant::now(), SystemTime::now()),
        ) {
            writer.write_quietly(cache.clone(), bytes);
        }
    }
}

/// The instance that wrote `kv` and the state in it.
pub fn open(kv: &Kv, now: Instant) -> Result<(String, RolloutState), StoreError> {
    let (instance, bytes) = Envelope::open(&kv.value).map_err(StoreError::Envelope)?;
    let state = store::decode_from(&bytes, "the fleet's key", now, SystemTime::now())?;
    Ok((instance, state))
}
