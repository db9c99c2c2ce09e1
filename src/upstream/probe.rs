//! The health task: probes upstreams (all of them with active checks; otherwise only those whose
//! ejection backoff has ended) and logs every change.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::snapshot::Shared;

use super::Upstream;
use super::health::Transition;

/// How often ejected upstreams are looked at when active checks are off.
const PASSIVE_TICK: Duration = Duration::from_millis(250);

pub fn log(up: &Upstream, pool: &str, t: Transition) {
    let upstream = up.addr.to_string();
    match t {
        Transition::Ejected(backoff) => {
            metrics::counter!("ramp_upstream_ejections_total", "pool" => pool.to_owned())
                .increment(1);
            tracing::warn!(
                upstream,
                pool,
                backoff_ms = backoff.as_millis() as u64,
                "upstream ejected"
            )
        }
        Transition::Reinstated => {
            tracing::info!(upstream, pool, "upstream reinstated after a good probe")
        }
        Transition::Down => tracing::warn!(upstream, pool, "upstream failed its health checks"),
        Transition::Up => tracing::info!(upstream, pool, "upstream passed its health checks"),
    }
}

/// Runs forever, reading the current snapshot on every round.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let snap = shared.load();
        let active = snap.config.health.clone();
        let passive = snap.config.passive_health;
        let now = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for (pool, list) in [("stable", &snap.stable), ("canary", &snap.canary)] {
            for up in list.upstreams() {
                if !up.health.wants_probe(now, active.is_some()) {
                    continue;
                }
                let (up, connector, active) =
                    (Arc::clone(up), snap.connector.clone(), active.clone());
                let limit = active
                    .as_ref()
                    .map_or(connector.settings.connect_timeout, |a| a.timeout);
                probes.spawn(async move {
                    let path = active.as_ref().and_then(|a| a.path.as_deref());
                    let ok = tokio::time::timeout(limit, up.probe(&connector, path))
                        .await
                        .unwrap_or(false);
                    if let Some(t) = up
                        .health
                        .probed(ok, Instant::now(), active.as_ref(), &passive)
                    {
                        log(&up, pool, t);
                    }
                });
            }
        }
        let tick = active.as_ref().map_or(PASSIVE_TICK, |a| a.interval);
        drop(snap);
        while probes.join_next().await.is_some() {}
        tokio::time::sleep(tick).await;
    }
}
