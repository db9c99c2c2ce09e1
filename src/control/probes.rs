//! The health task: probes upstreams (all of them with active checks; otherwise only those whose
//! ejection backoff has ended) and logs every change; on each round it also drops the pooled
//! connections the upstreams closed or that idled too long. It lives beside the controller because it
//! reads the snapshot in force, as the controller publishes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::snapshot::Current;
use crate::upstream::health;

/// How often ejected upstreams are looked at when active checks are off.
const PASSIVE_TICK: Duration = Duration::from_millis(250);

/// Runs forever, reading the current snapshot on every round.
pub async fn run(current: Arc<Current>) {
    loop {
        // Subscribed before the snapshot is read: a publish from here on is seen below.
        let mut published = current.watch();
        let snap = current.load();
        let active = snap.config.health.clone();
        let passive = snap.config.passive_health;
        let now = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for (pool, list) in snap.pools.iter() {
            for up in list.upstreams() {
                up.sweep_idle(&snap.connector.settings);
                if active.is_none()
                    && let Some(t) = up.health.unchecked()
                {
                    health::log(&up.addr, pool, t);
                }
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
                    let Some(ok) = tokio::time::timeout(limit, up.probe(&connector, path))
                        .await
                        .unwrap_or(Some(false))
                    else {
                        return;
                    };
                    if let Some(t) = up
                        .health
                        .probed(ok, Instant::now(), active.as_ref(), &passive)
                    {
                        health::log(&up.addr, pool, t);
                    }
                });
            }
        }
        let tick = active.as_ref().map_or(PASSIVE_TICK, |a| a.interval);
        drop(snap);
        while probes.join_next().await.is_some() {}
        // The next round at the interval, or at once when a reload changed the checks (a
        // shorter interval, a fixed path, checks turned off): not after the old interval.
        let next = tokio::time::sleep(tick);
        tokio::pin!(next);
        loop {
            tokio::select! {
                () = &mut next => break,
                changed = published.changed() => {
                    if changed.is_err() || current.load().config.health != active {
                        break;
                    }
                }
            }
        }
    }
}
