//! The YAML configuration: read, parse (shape), validate (values), with positions for every error.

mod analysis;
mod checker;
mod error;
mod file;
mod keys;
mod lenient;
mod load;
pub mod names;
mod resilience;
mod statuses;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use checker::parse_duration;
pub use error::{ConfigError, Position, Problem, Reason};
pub use lenient::admin_socket;
use load::parse_error;
pub use load::{files_read, load, parse, parse_bytes, read};
pub use statuses::StatusSet;
pub use validate::{rollout_id, upstream_addr};

/// The metrics listener (`metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub listen: SocketAddr,
    /// Host names (lowercase) the status page and its JSON answer to, besides an IP address and
    /// `localhost`: any other name may be a DNS-rebinding page reading the rollout id.
    pub allowed_hosts: Vec<String>,
}

/// A validated configuration. Everything in it has been checked; building a snapshot cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub sticky: Sticky,
    pub pools: Pools,
    pub rollout: RolloutPlan,
    pub upstream: UpstreamSettings,
    pub hide_response_headers: Vec<HeaderName>,
    pub admin: Option<Admin>,
    /// Where the runtime rollout state is kept across restarts (with `fleet`: the local cache of
    /// the fleet's state).
    pub state_file: Option<PathBuf>,
    /// The fleet's shared rollout state in etcd (`state.etcd`).
    pub fleet: Option<Fleet>,
    /// Certificate and key for HTTPS on the listener.
    pub tls: Option<ServerCert>,
    /// Roots for `https://` upstreams (PEM); the system's roots when absent.
    pub upstream_ca: Option<PathBuf>,
    /// Active health checks; passive ejection is always on.
    pub health: Option<ActiveHealth>,
    pub passive_health: PassiveHealth,
    pub canary_unavailable: CanaryUnavailable,
    pub limits: Limits,
    /// How long a SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Where Prometheus metrics, the status page and its JSON are served.
    pub metrics: Option<Metrics>,
    /// How the two pools are measured and compared.
    pub analysis: Analysis,
    /// The guard that halts or rolls back a regressed canary by itself (`rollout.guard`).
    pub guard: Option<Guard>,
}

/// How the two pools are measured and compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The sliding window of the charts and window figures.
    pub window: Duration,
    /// Answers that count as errors (default every 5xx, ramp's own 502/503/504 included).
    pub error_statuses: StatusSet,
    /// Goals counted per pool, for A/B comparison (at most [`MAX_GOALS`]).
    pub goals: Vec<Goal>,
}

/// Where a fleet keeps its shared rollout state.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// `http://host:port` or `https://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    pub key: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Roots for `https://` endpoints (PEM); the system's otherwise.
    pub ca: Option<PathBuf>,
    /// This instance's name in logs and in the state it writes (default: host name and pid).
    pub instance: Option<String>,
}

/// The most goals a config may name.
pub const MAX_GOALS: usize = 8;

/// A request that counts as one conversion for its pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub name: String,
    /// Any method when `None`.
    pub method: Option<http::Method>,
    /// The request path, exactly (no query).
    pub path: String,
    /// Answers that count (default 2xx).
    pub status: StatusSet,
}

/// What the guard does when the canary regressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    Halt,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// Largest accepted increase of the canary's error rate over stable's (0.01 = 1 point).
    pub max_error_rate_increase: f64,
    /// Largest accepted canary p99 / stable p99.
    pub max_p99_ratio: f64,
    /// A canary answer is slow only if also at least this much slower than stable's p99 (a
    /// ratio alone calls a millisecond on a sub-millisecond service a regression). Default 0.
    pub min_p99_increase: Duration,
    /// Requests per pool before any verdict.
    pub min_requests: u64,
    /// Distinct canary users a regression (errors, or slow answers) must show for.
    pub min_users: u64,
    pub action: GuardAction,
    /// A schedule advances only after `min_requests` on both sides at the current step.
    pub require_data: bool,
}

/// The listener's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealth {
    /// `GET` this path (2xx or 3xx is healthy); without it a TCP connect is the probe.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassiveHealth {
    /// Consecutive connect failures or 5xx answers that eject an upstream.
    pub eject_after: u32,
    /// The first ejection's length; each further one doubles, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Answers that count as failures (default 502, 503, 504: the gateway kind; an application's
    /// 500 for one bad endpoint must not take an upstream out).
    pub failure_statuses: StatusSet,
    /// When fewer than this percent of a pool's upstreams are healthy, requests go to all of them
    /// (Envoy's panic threshold; 0 turns it off).
    pub panic_threshold: u32,
}

/// What canary users get when no canary upstream is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryUnavailable {
    /// Served by stable (the default).
    Fallback,
    /// 503.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Request header fields, in bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// The request target, in bytes (beyond: 414).
    pub max_uri_bytes: usize,
    /// Request header fields, by count (beyond: 431).
    pub max_headers: usize,
    /// A client must send its whole request head within this (else the connection is closed).
    pub header_read_timeout: Duration,
    /// A body (either way) that sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    /// An HTTP/2 connection without a stream for this long is closed (GOAWAY).
    pub h2_idle_timeout: Duration,
    /// A WebSocket tunnel with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Client connections served at once; beyond, the longest-idle one is closed to make room.
    pub max_connections: usize,
    /// WebSocket tunnels open at once (beyond: 503); `None`: [`Limits::most_tunnels`]'s default.
    pub max_tunnels: Option<usize>,
    pub h2_max_concurrent_streams: u32,
}

impl Limits {
    /// The most WebSocket tunnels open at once: `max_tunnels`, else half of what the client and
    /// the upstream connection limits allow (`upstream_max`), so that tunnels, which last, never
    /// take the places requests need.
    pub fn most_tunnels(&self, upstream_max: usize) -> usize {
        self.max_tunnels
            .unwrap_or((self.max_connections.min(upstream_max) / 2).max(1))
    }
}

/// The admin socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub socket: PathBuf,
    /// File mode of the socket (default 0600).
    pub mode: u32,
    /// Group that owns the socket, if set.
    pub group: Option<u32>,
    /// Peers (by uid) that may run every command. Default: root and ramp's own uid.
    pub allowed_uids: Vec<u32>,
    /// Peers that may run only `status` and `bucket`.
    pub readonly_uids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    /// A request header carrying the user id; a non-empty value wins over the cookie.
    pub header: Option<HeaderName>,
    pub cookie: String,
    /// Mint an id for users that bring none.
    pub assign: bool,
    pub cookie_max_age: Duration,
    pub cookie_secure: bool,
    /// The minted cookie's `Domain` (shared by a site's subdomains); none: the host's only.
    pub cookie_domain: Option<String>,
    /// Upstreams' `Set-Cookie` for `cookie` reach the client (the app sets ids itself); else
    /// they are dropped, so that no upstream can move users between pools or make many users one.
    pub app_sets_cookie: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pools {
    pub stable: Vec<UpstreamAddr>,
    pub canary: Vec<UpstreamAddr>,
}

/// `host:port` of one upstream server, spoken to over TLS when `tls`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tls {
            f.write_str("https://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    pub id: String,
    pub plan: Plan,
}

/// How the canary share is set: one fixed percent, or a schedule of steps.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Parts per million on canary.
    Percent(u32),
    Steps(Vec<Step>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Parts per million on canary during this step.
    pub ppm: u32,
    /// How long the step lasts before the next one; `None` (or ignored) on the last step.
    pub hold: Option<Duration>,
}

impl Plan {
    /// The share the plan starts at.
    pub fn first_ppm(&self) -> u32 {
        match self {
            Plan::Percent(ppm) => *ppm,
            Plan::Steps(steps) => steps.first().map_or(0, |s| s.ppm),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// A pooled keep-alive connection idle longer than this is closed instead of reused.
    pub pool_idle_timeout: Duration,
    pub max_idle_per_upstream: usize,
    /// Upstream connections open at once, all upstreams together (in use and pooled): beyond,
    /// a request that needs a new one gets 503, so no number of client streams can take all of
    /// ramp's file descriptors.
    pub max_connections: usize,
}

/// The longest duration any setting takes (100 years): long enough to mean "never", short enough
/// that no clock arithmetic overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parts per million (the unit of the percent everywhere inside ramp) from a percent value,
/// or the reason it is not an acceptable percent (0 to 100 in steps of 0.0001).
pub fn percent_to_ppm(percent: f64) -> Result<u32, Reason> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(Reason::OutOfRange {
            min: 0.0,
            max: 100.0,
            got: percent,
        });
    }
    let scaled = percent * 10_000.0;
    let ppm = scaled.round();
    if (scaled - ppm).abs() > 1e-6 {
        return Err(Reason::PercentStep(percent));
    }
    Ok(ppm as u32)
}

/// The percent a ppm value stands for (exact to 4 decimals).
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

/// Whether two paths name one file: the same path, or (where both exist) the same file through
/// links.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Two spellings of one path that does not exist yet (`./admin.sock`, `admin.sock`, a
    // directory reached through a link): the same name in the same directory.
    let place = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some((std::fs::canonicalize(dir).ok()?, p.file_name()?.to_owned()))
    };
    a == b
        || matches!(
            (std::fs::metadata(a), std::fs::metadata(b)),
            (Ok(x), Ok(y)) if x.dev() == y.dev() && x.ino() == y.ino()
        )
        || place(a).is_some_and(|x| place(b).is_some_and(|y| x == y))
}

impl Config {
    /// Settings that are valid but most likely a mistake: `ramp check` prints them, and `serve`
    /// logs them at start and at each reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shared in self
            .pools
            .canary
            .iter()
            .filter(|c| self.pools.stable.contains(c))
        {
            out.push(format!(
                "pools: {shared} is in both stable and canary: the pools share its health, and the comparison compares it with itself"
            ));
        }
        if self.analysis.error_statuses.is_empty() {
            out.push("analysis.error_statuses is empty: no answer counts as an error, so the comparison shows no errors and the guard never acts on them".to_owned());
        }
        if let Some(margin) = self
            .guard
            .as_ref()
            .map(|g| g.max_error_rate_increase)
            .filter(|&m| m >= 0.2)
        {
            out.push(format!(
                "rollout.guard.max_error_rate_increase: {margin} is {:.2} points over stable's error rate: the guard acts only on a canary failing that much more often (it is a fraction: 0.01 is one point)",
                margin * 100.0
            ));
        }
        let p = &self.passive_health;
        if p.backoff > p.max_backoff {
            out.push(format!(
                "passive_health.backoff ({}) is longer than max_backoff ({}): every ejection lasts max_backoff",
                humantime::format_duration(p.backoff),
                humantime::format_duration(p.max_backoff)
            ));
        }
        out
    }
}

/// What `limits.max_connections` and `upstream.max_connections` need of the open files limit
/// (a descriptor for each client and each upstream connection, and 256 for the rest), when
/// `limit` is below it: said at start and when a reload raises `upstream.max_connections`.
pub fn open_files_short(limit: u64, max_connections: usize, max_upstream: usize) -> Option<u64> {
    let needed = (max_connections as u64)
        .saturating_add(max_upstream as u64)
        .saturating_add(256);
    (limit < needed).then_some(needed)
}

/// The open files limit `serve` runs under, once known.
static OPEN_FILES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Says the open files limit `serve` runs under: from then on [`Config::fit_upstreams`] lowers
/// `upstream.max_connections` to what it leaves room for.
pub fn run_under_open_files(limit: u64) {
    let _ = OPEN_FILES.set(limit);
}

/// `max` connections, lowered to what the open files limit `limit` leaves them: half of what is
/// left after a reserve (half the limit, at most 256) for the admin socket, the state file and
/// ramp's own files. Client connections get one half, upstream connections the other (an
/// HTTP/1.1 client holds one upstream connection at a time; an HTTP/2 one past half of the
/// upstreams' share a few).
pub fn fit_open_files(max: usize, limit: u64) -> usize {
    let reserve = (limit / 2).min(256);
    let fit = usize::try_from(limit.saturating_sub(reserve) / 2).unwrap_or(usize::MAX);
    max.min(fit.max(1))
}

impl Config {
    /// Lowers `upstream.max_connections` to what the open files limit leaves upstream
    /// connections (see [`fit_open_files`]): the configured value when it was lowered.
    pub fn fit_upstreams(&mut self) -> Option<usize> {
        let limit = *OPEN_FILES.get()?;
        let configured = self.upstream.max_connections;
        self.upstream.max_connections = fit_open_files(configured, limit);
        (self.upstream.max_connections < configured).then_some(configured)
    }
}

/// The words for [`open_files_short`].
pub const OPEN_FILES_SHORT: &str = "the open files limit is below limits.max_connections + upstream.max_connections + 256; raise it (LimitNOFILE=, ulimit -n) or lower those";
