//! Which pool answers a request. `decide` is pure: no I/O, no clock, no allocation. Everything it
//! reads is a routing type defined here, so the bench, the fuzz targets and the property tests
//! need nothing else.

pub mod bucket;
mod pools;
pub mod sticky;

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

pub use bucket::{BUCKETS, bucket};
pub use pools::{PerPool, PoolName};
pub use sticky::{MAX_ID_LEN, mint, set_cookie, user_id};

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
    pub const ALL: [State; 4] = [
        State::Running,
        State::Halted,
        State::RolledBack,
        State::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Halted => "halted",
            State::RolledBack => "rolled_back",
            State::Completed => "completed",
        }
    }
}

/// The rollout as routing sees it: the salt, the share and the state.
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
    /// `cookie=`, searched for in a Cookie field in one pass.
    pub cookie_pair: memchr::memmem::Finder<'static>,
    pub assign: bool,
    /// Everything after `name=value` in a minted Set-Cookie.
    pub cookie_attributes: Box<str>,
    /// The configured `Domain`, and the attributes without it: for a request to a host outside
    /// it, which a browser would refuse the cookie for (and so be a new user at every request).
    pub cookie_domain: Option<Box<str>>,
    pub host_only_attributes: Box<str>,
}

impl StickyRules {
    /// The rules from the configured header, cookie name and cookie attributes.
    pub fn new(
        header: Option<HeaderName>,
        cookie: &str,
        assign: bool,
        max_age_secs: u64,
        secure: bool,
        domain: Option<&str>,
    ) -> Self {
        let mut host_only = format!("; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax");
        let mut attributes = host_only.clone();
        if let Some(domain) = domain {
            attributes.push_str("; Domain=");
            attributes.push_str(domain);
        }
        if secure {
            attributes.push_str("; Secure");
            host_only.push_str("; Secure");
        }
        StickyRules {
            header,
            cookie: cookie.into(),
            cookie_pair: memchr::memmem::Finder::new(format!("{cookie}=").as_bytes()).into_owned(),
            assign,
            cookie_attributes: attributes.into(),
            cookie_domain: domain.map(Into::into),
            host_only_attributes: host_only.into(),
        }
    }
}

/// Everything `decide` reads.
#[derive(Debug)]
pub struct Routing {
    pub rollout: Rollout,
    pub sticky: StickyRules,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A user with an id: send it to `pool`. `user` is the id's hash (the bucket's source),
    /// which the analysis counts distinct users by without keeping any id.
    User { pool: PoolName, user: u64 },
    /// No id, and minting is off: send it to this pool.
    Anonymous(PoolName),
    /// The request carries no id: mint one ([`sticky::mint`]) and route by [`assign`].
    Mint,
}

/// The pool for a request from the id it carries.
#[inline]
pub fn decide(routing: &Routing, headers: &HeaderMap) -> Decision {
    match user_id(&routing.sticky, headers) {
        Some(id) => {
            let (pool, user) = assign_hashed(&routing.rollout, id);
            Decision::User { pool, user }
        }
        None if routing.sticky.assign => Decision::Mint,
        None => Decision::Anonymous(anonymous(&routing.rollout)),
    }
}

/// The pool of user `id` under `rollout`.
#[inline]
pub fn assign(rollout: &Rollout, id: &[u8]) -> PoolName {
    assign_hashed(rollout, id).0
}

/// The pool of user `id` under `rollout`, and the id's hash.
#[inline]
pub fn assign_hashed(rollout: &Rollout, id: &[u8]) -> (PoolName, u64) {
    let hash = bucket::hash(&rollout.salt, id);
    (assign_hash(rollout, hash), hash)
}

/// The pool of the user whose id hashes (with this rollout's salt) to `hash`.
#[inline]
pub fn assign_hash(rollout: &Rollout, hash: u64) -> PoolName {
    match rollout.state {
        State::RolledBack => PoolName::Stable,
        State::Completed => PoolName::Canary,
        State::Running | State::Halted => {
            if bucket::of_hash(hash) < rollout.ppm {
                PoolName::Canary
            } else {
                PoolName::Stable
            }
        }
    }
}

/// The pool of a request with no id when minting is off: stable, unless the rollout completed.
pub fn anonymous(rollout: &Rollout) -> PoolName {
    match rollout.state {
        State::Completed => PoolName::Canary,
        State::Running | State::Halted | State::RolledBack => PoolName::Stable,
    }
}
