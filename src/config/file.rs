//! The serde mirror of the YAML file: shapes only, positions kept. Unknown keys are not refused
//! here but by `keys`, which names every one of them (serde would stop at the first).
//! `validate` turns this into the checked [`crate::config::Config`].

use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
pub struct File {
    pub listen: S<String>,
    #[serde(default)]
    pub workers: Option<S<u64>>,
    #[serde(default)]
    pub sticky: Option<StickyFile>,
    pub pools: PoolsFile,
    pub rollout: S<RolloutFile>,
    #[serde(default)]
    pub upstream: Option<UpstreamFile>,
    #[serde(default)]
    pub hide_response_headers: Vec<S<String>>,
    #[serde(default)]
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub state: Option<StateFile>,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub health: Option<HealthFile>,
    #[serde(default)]
    pub passive_health: Option<PassiveFile>,
    #[serde(default)]
    pub canary_unavailable: Option<S<String>>,
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    #[serde(default)]
    pub shutdown_grace: Option<S<String>>,
    #[serde(default)]
    pub metrics: Option<MetricsFile>,
    #[serde(default)]
    pub analysis: Option<AnalysisFile>,
}

#[derive(Debug, Deserialize)]
pub struct AnalysisFile {
    #[serde(default)]
    pub window: Option<S<String>>,
    #[serde(default)]
    pub error_statuses: Option<S<Vec<String>>>,
    #[serde(default)]
    pub goals: Option<S<Vec<GoalFile>>>,
}

#[derive(Debug, Deserialize)]
pub struct GoalFile {
    pub name: S<String>,
    #[serde(default)]
    pub method: Option<S<String>>,
    pub path: S<String>,
    #[serde(default)]
    pub status: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct GuardFile {
    #[serde(default)]
    pub max_error_rate_increase: Option<S<f64>>,
    #[serde(default)]
    pub max_p99_ratio: Option<S<f64>>,
    #[serde(default)]
    pub min_p99_increase: Option<S<String>>,
    #[serde(default)]
    pub min_requests: Option<S<u64>>,
    #[serde(default)]
    pub min_users: Option<S<u64>>,
    #[serde(default)]
    pub action: Option<S<String>>,
    #[serde(default)]
    pub require_data: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct TlsFile {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
pub struct HealthFile {
    #[serde(default)]
    pub path: Option<S<String>>,
    #[serde(default)]
    pub interval: Option<S<String>>,
    #[serde(default)]
    pub timeout: Option<S<String>>,
    #[serde(default)]
    pub unhealthy_after: Option<S<u64>>,
    #[serde(default)]
    pub healthy_after: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
pub struct PassiveFile {
    #[serde(default)]
    pub eject_after: Option<S<u64>>,
    #[serde(default)]
    pub backoff: Option<S<String>>,
    #[serde(default)]
    pub max_backoff: Option<S<String>>,
    #[serde(default)]
    pub failure_statuses: Option<S<Vec<String>>>,
    #[serde(default)]
    pub panic_threshold: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
pub struct LimitsFile {
    #[serde(default)]
    pub max_header_bytes: Option<S<u64>>,
    #[serde(default)]
    pub max_uri_bytes: Option<S<u64>>,
    #[serde(default)]
    pub max_headers: Option<S<u64>>,
    #[serde(default)]
    pub header_read_timeout: Option<S<String>>,
    #[serde(default)]
    pub body_idle_timeout: Option<S<String>>,
    /// Was `idle_timeout` before 0.2; the old name is still read.
    #[serde(default, alias = "idle_timeout")]
    pub h2_idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub tunnel_idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub max_connections: Option<S<u64>>,
    #[serde(default)]
    pub max_tunnels: Option<S<u64>>,
    #[serde(default)]
    pub h2_max_concurrent_streams: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
pub struct MetricsFile {
    pub listen: S<String>,
    #[serde(default)]
    pub allowed_hosts: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
pub struct AdminFile {
    pub socket: S<String>,
    #[serde(default)]
    pub mode: Option<S<String>>,
    #[serde(default)]
    pub group: Option<S<String>>,
    #[serde(default)]
    pub allowed_uids: Option<S<Vec<u32>>>,
    #[serde(default)]
    pub readonly_uids: Option<S<Vec<u32>>>,
}

#[derive(Debug, Deserialize)]
pub struct StateFile {
    #[serde(default)]
    pub file: Option<S<String>>,
    #[serde(default)]
    pub etcd: Option<EtcdFile>,
}

#[derive(Debug, Deserialize)]
pub struct EtcdFile {
    pub endpoints: S<Vec<S<String>>>,
    pub key: S<String>,
    #[serde(default)]
    pub username: Option<S<String>>,
    #[serde(default)]
    pub password_file: Option<S<String>>,
    #[serde(default)]
    pub ca: Option<S<String>>,
    #[serde(default)]
    pub instance: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct StickyFile {
    #[serde(default)]
    pub header: Option<S<String>>,
    #[serde(default)]
    pub cookie: Option<S<String>>,
    #[serde(default)]
    pub assign: Option<bool>,
    #[serde(default)]
    pub cookie_max_age: Option<S<String>>,
    #[serde(default)]
    pub cookie_secure: Option<bool>,
    #[serde(default)]
    pub app_sets_cookie: Option<bool>,
    #[serde(default)]
    pub cookie_domain: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct PoolsFile {
    pub stable: S<Vec<S<String>>>,
    pub canary: S<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
pub struct RolloutFile {
    pub id: S<String>,
    #[serde(default)]
    pub percent: Option<S<f64>>,
    #[serde(default)]
    pub steps: Option<S<Vec<StepFile>>>,
    #[serde(default)]
    pub guard: Option<GuardFile>,
}

#[derive(Debug, Deserialize)]
pub struct StepFile {
    pub percent: S<f64>,
    #[serde(default)]
    pub hold: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamFile {
    #[serde(default)]
    pub connect_timeout: Option<S<String>>,
    #[serde(default)]
    pub response_timeout: Option<S<String>>,
    #[serde(default)]
    pub idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub max_idle_per_upstream: Option<S<u64>>,
    #[serde(default)]
    pub max_connections: Option<S<u64>>,
    #[serde(default)]
    pub ca: Option<S<String>>,
}
