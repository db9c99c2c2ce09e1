//! The one immutable view of everything a request needs, behind one `ArcSwap`.
//!
//! Requests load it once; the controller (the only writer) builds a new one and [`Shared::publish`]es
//! it. A swap takes effect on the next request; in-flight requests finish on the one they loaded.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;

use crate::config::Config;
use crate::routing::bucket;
use crate::upstream::{Connector, Pool, Registry};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The percent applies.
    Running,
    /// Percent frozen; no newly minted id enters the canary; users already there stay.
    Halted,
    /// Everyone on stable.
    RolledBack,
    /// Everyone on canary.
    Completed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Halted => "halted",
            State::RolledBack => "rolled_back",
            State::Completed => "completed",
        }
    }
}

/// The routing part of the snapshot: what `routing::decide` reads.
#[derive(Debug)]
pub struct Rollout {
    pub id: Arc<str>,
    /// `id ‖ 0x00`, the prefix of every hash input.
    pub salt: Box<[u8]>,
    /// Parts per million on canary (0..=1,000,000).
    pub ppm: u32,
    pub state: State,
}

impl Rollout {
    pub fn new(id: &str, ppm: u32, state: State) -> Self {
        Rollout {
            id: Arc::from(id),
            salt: bucket::salt(id),
            ppm: ppm.min(bucket::BUCKETS),
            state,
        }
    }
}

/// How users are recognised and, when new, labelled.
#[derive(Debug)]
pub struct StickyRules {
    pub header: Option<HeaderName>,
    pub cookie: Box<str>,
    pub assign: bool,
    /// Everything after `name=value` in a minted Set-Cookie.
    pub cookie_attributes: Box<str>,
}

/// TLS settings read from files: the listener's certificate, the client for `https://` upstreams.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub client: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub rollout: Rollout,
    pub sticky: StickyRules,
    pub stable: Pool,
    pub canary: Pool,
    pub hide_response_headers: Box<[HeaderName]>,
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
        tls: &Tls,
    ) -> Snapshot {
        let s = &config.sticky;
        let mut attributes = format!(
            "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            s.cookie_max_age.as_secs()
        );
        if s.cookie_secure {
            attributes.push_str("; Secure");
        }
        Snapshot {
            rollout,
            sticky: StickyRules {
                header: s.header.clone(),
                cookie: s.cookie.as_str().into(),
                assign: s.assign,
                cookie_attributes: attributes.into(),
            },
            stable: Pool::new(registry.get_all(&config.pools.stable)),
            canary: Pool::new(registry.get_all(&config.pools.canary)),
            hide_response_headers: config.hide_response_headers.clone().into(),
            connector: Connector::new(
                config.upstream,
                config.passive_health,
                config.limits.body_idle_timeout,
                tls.client.clone(),
            ),
            tls: tls.server.clone(),
            config,
        }
    }
}

/// The shared handle: one `ArcSwap<Snapshot>`.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
}

impl Shared {
    pub fn new(first: Snapshot) -> Self {
        Shared {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// The current snapshot, owned: safe to keep across `.await`.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `next` current. Only the controller calls this; the next request sees it.
    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
    }
}
