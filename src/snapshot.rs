//! The one immutable view of everything a request needs, behind one `ArcSwap`.
//!
//! Requests load it once; the controller (the only writer) builds a new one and
//! [`Current::publish`]es it. A swap takes effect on the next request; in-flight requests finish
//! on the one they loaded.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{CanaryUnavailable, Config};
use crate::routing::{PerPool, Rollout, Routing, StickyRules};
use crate::tls::TlsConfigs;
use crate::upstream::{Connector, Hide, Pool, Registry};

#[derive(Debug)]
pub struct Snapshot {
    /// What `routing::decide` reads.
    pub routing: Routing,
    pub pools: PerPool<Pool>,
    /// What of an upstream's answer never reaches the client.
    pub hide: Hide,
    pub connector: Connector,
    /// The listener's TLS config (certificates rotate with reloads).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The validated configuration this snapshot was built from.
    pub config: Arc<Config>,
}

impl Snapshot {
    /// Builds a snapshot; upstreams already known to `registry` keep their pooled connections
    /// and their health.
    pub fn build(
        config: Arc<Config>,
        rollout: Rollout,
        registry: &Registry,
        tls: &TlsConfigs,
    ) -> Snapshot {
        let s = &config.sticky;
        let sticky = StickyRules::new(
            s.header.clone(),
            &s.cookie,
            s.assign,
            s.cookie_max_age.as_secs(),
            s.cookie_secure,
            s.cookie_domain.as_deref(),
        );
        let stable = registry.get_all(&config.pools.stable);
        let canary = registry.get_all(&config.pools.canary);
        // A canary that falls back to stable may lose its last upstream to ejection: its users
        // are served by stable meanwhile — unless that upstream serves stable too.
        let canary_may_empty = config.canary_unavailable == CanaryUnavailable::Fallback
            && !canary
                .iter()
                .any(|c| stable.iter().any(|s| Arc::ptr_eq(c, s)));
        Snapshot {
            routing: Routing { rollout, sticky },
            pools: PerPool {
                stable: Pool::new(stable, false),
                canary: Pool::new(canary, canary_may_empty),
            },
            hide: Hide {
                fields: config.hide_response_headers.clone().into(),
                own_cookie: (!s.app_sets_cookie).then(|| s.cookie.as_bytes().into()),
            },
            connector: Connector::new(
                config.upstream,
                config.passive_health,
                config.limits.body_idle_timeout,
                tls.client(),
            ),
            tls: tls.server(),
            config,
        }
    }
}

/// The snapshot in force: one `ArcSwap<Snapshot>`, shared by the data plane and the controller.
#[derive(Debug)]
pub struct Current {
    inner: ArcSwap<Snapshot>,
    /// Told of every publish, for what outlives a request (a WebSocket tunnel) and has to follow
    /// its user when the rollout moves them.
    published: tokio::sync::watch::Sender<()>,
}

impl Current {
    pub fn new(first: Snapshot) -> Self {
        Current {
            inner: ArcSwap::from_pointee(first),
            published: tokio::sync::watch::Sender::new(()),
        }
    }

    /// A receiver whose `changed()` completes at the next publish after this call.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.published.subscribe()
    }

    /// The current snapshot, owned: safe to keep across `.await`.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.inner.load_full()
    }

    /// Makes `next` current. Only the controller calls this; the next request sees it.
    pub fn publish(&self, next: Snapshot) {
        self.inner.store(Arc::new(next));
        self.published.send_replace(());
    }
}
