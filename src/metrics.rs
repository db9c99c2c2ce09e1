//! Prometheus metrics: handles registered once at start-up and kept here, so the request path
//! pays an atomic add, not a registry lookup. Labels come from small fixed sets only.

use http::StatusCode;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::analysis::histogram;

use crate::routing::{PerPool, PoolName};

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
pub struct Metrics {
    /// Responses by pool that served them and status class.
    responses: PerPool<[Counter; 5]>,
    /// Requests of canary users served by stable because no canary upstream was healthy.
    pub canary_fallback: Counter,
    /// Requests answered by ramp itself because the chosen pool had no healthy upstream.
    pub no_upstream: PerPool<Counter>,
    /// Requests retried on another upstream (or connection).
    pub retries: Counter,
    /// Requests rejected before routing (malformed, oversized).
    pub rejected: Counter,
    /// Requests sent upstream whose client gave up before the answer's head, by pool.
    pub abandoned: PerPool<Counter>,
    /// Ids minted for newcomers.
    pub ids_minted: Counter,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Upstream failures by pool and kind: `[connect, timeout, reset, protocol]`.
    upstream_errors: PerPool<[Counter; 4]>,
    /// WebSocket tunnels open, by pool.
    pub tunnels: PerPool<Gauge>,
    /// Bytes carried by tunnels, by pool: `[to upstream, to client]`.
    pub tunnel_bytes: PerPool<[Counter; 2]>,
}

impl Metrics {
    /// Registers every handle with the installed recorder (a no-op without one).
    pub fn new() -> Self {
        Metrics {
            responses: PerPool::from_fn(|p| {
                CLASSES.map(|c| {
                    metrics::counter!("ramp_responses_total", "pool" => p.as_str(), "class" => c)
                })
            }),
            canary_fallback: metrics::counter!("ramp_canary_fallback_total"),
            no_upstream: PerPool::from_fn(
                |p| metrics::counter!("ramp_no_healthy_upstream_total", "pool" => p.as_str()),
            ),
            retries: metrics::counter!("ramp_retries_total"),
            rejected: metrics::counter!("ramp_rejected_requests_total"),
            abandoned: PerPool::from_fn(
                |p| metrics::counter!("ramp_abandoned_requests_total", "pool" => p.as_str()),
            ),
            ids_minted: {
                // Registered now so the series exist before the first event.
                for p in PoolName::BOTH {
                    metrics::counter!("ramp_upstream_ejections_total", "pool" => p.as_str())
                        .increment(0);
                }
                metrics::counter!("ramp_ids_minted_total")
            },
            open_connections: metrics::gauge!("ramp_open_connections"),
            upstream_errors: PerPool::from_fn(|p| {
                ["connect", "timeout", "reset", "protocol"].map(|k| {
                    metrics::counter!("ramp_upstream_errors_total", "pool" => p.as_str(), "kind" => k)
                })
            }),
            tunnels: PerPool::from_fn(
                |p| metrics::gauge!("ramp_tunnels_open", "pool" => p.as_str()),
            ),
            tunnel_bytes: PerPool::from_fn(|p| {
                ["to_upstream", "to_client"].map(|d| {
                    metrics::counter!("ramp_tunnel_bytes_total", "pool" => p.as_str(), "direction" => d)
                })
            }),
        }
    }

    #[inline]
    pub fn response(&self, pool: PoolName, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[pool][class].increment(1);
    }
}

/// Kinds of upstream failure, for `ramp_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl Metrics {
    /// Counts a failed exchange with an upstream of `pool`.
    pub fn upstream_error(&self, pool: PoolName, kind: UpstreamError) {
        let i = match kind {
            UpstreamError::Connect => 0,
            UpstreamError::Timeout => 1,
            UpstreamError::Reset => 2,
            UpstreamError::Protocol => 3,
        };
        self.upstream_errors[pool][i].increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the Prometheus recorder for this process.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    Ok(handle)
}

/// Every series' `# HELP` line (what README's Metrics table says of it).
fn describe() {
    use metrics::{describe_counter as counter, describe_gauge as gauge};
    counter!(
        "ramp_responses_total",
        "Answers, by the pool that served them and status class."
    );
    counter!(
        "ramp_upstream_errors_total",
        "Failed exchanges with upstreams (those a retry saved too), by pool and kind."
    );
    counter!("ramp_goal_total", "Goal conversions, by pool and goal.");
    counter!(
        "ramp_guard_actions_total",
        "Halts and rollbacks the guard applied."
    );
    counter!("ramp_config_reloads_total", "Config reloads, ok or error.");
    counter!(
        "ramp_log_lines_dropped_total",
        "Log lines dropped because stderr's reader fell behind, or stderr refused them."
    );
    counter!("ramp_ids_minted_total", "User ids minted for newcomers.");
    counter!(
        "ramp_canary_fallback_total",
        "Canary requests sent to stable (no healthy canary upstream, or a retry), each once."
    );
    counter!(
        "ramp_no_healthy_upstream_total",
        "Requests that found no healthy upstream in their pool."
    );
    counter!(
        "ramp_retries_total",
        "Requests sent again to another upstream."
    );
    counter!(
        "ramp_rejected_requests_total",
        "Requests ramp answered itself, in no pool's ramp_responses_total: refused before routing (limits, malformed), a client's body that failed, or no upstream connection to be had (upstream.max_connections, descriptors)."
    );
    counter!(
        "ramp_connections_waited_total",
        "New client connections that waited for a place: every connection under limits.max_connections was busy."
    );
    counter!(
        "ramp_abandoned_requests_total",
        "Requests sent upstream whose client gave up (closed its connection, reset its HTTP/2 stream) before the answer's head, by pool."
    );
    counter!(
        "ramp_upstream_ejections_total",
        "Upstreams ejected by passive health, by pool."
    );
    counter!(
        "ramp_tunnel_bytes_total",
        "Bytes through WebSocket tunnels, by pool and direction."
    );
    gauge!("ramp_fleet_connected", "In a fleet: 1 while etcd answers.");
    gauge!(
        "ramp_guard_verdict",
        "The guard's verdict per metric: 0 ok, 1 regressed, -1 improved, 2 not enough data."
    );
    gauge!("ramp_open_connections", "Client connections open.");
    gauge!(
        "ramp_upstreams_available",
        "Upstreams of each pool neither ejected nor failing their health checks (once a second)."
    );
    gauge!(
        "ramp_rollout_percent",
        "The share of users on canary now (0 rolled back, 100 completed)."
    );
    gauge!(
        "ramp_rollout_state",
        "1 for the rollout's state, 0 for the others."
    );
    gauge!(
        "ramp_tls_certificate_expiry_timestamp_seconds",
        "With tls: when the listener's certificate expires (Unix time)."
    );
    gauge!("ramp_tunnels_open", "WebSocket tunnels open, by pool.");
    gauge!(
        "ramp_users",
        "Distinct users over the analysis window, by pool (estimate)."
    );
}

/// The explicit buckets (seconds) of `ramp_request_duration_seconds`.
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `ramp_request_duration_seconds{pool}` in Prometheus text, from the analysis's log-linear
/// histograms since start-up. A fine bucket counts under the first explicit bucket its whole
/// range fits (so a count is exact up to the fine buckets' 6% width at each boundary); the sum
/// is taken at the fine buckets' midpoints.
pub fn render_durations(per_pool: &PerPool<Box<[u64]>>) -> String {
    let mut out = String::from(
        "# HELP ramp_request_duration_seconds Time from the request's end (its head, or its body's last byte) to the response head, of the answers the comparison counts (a user's share of each second, requests with a user id).\n# TYPE ramp_request_duration_seconds histogram\n",
    );
    for (pool, counts) in per_pool.iter() {
        let mut cumulative = [0u64; DURATION_BUCKETS.len()];
        let (mut total, mut sum) = (0u64, 0.0f64);
        for (i, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            total += n;
            sum += n as f64 * histogram::midpoint(i) / 1e6;
            let upper = histogram::upper_bound(i) / 1e6;
            for (b, le) in DURATION_BUCKETS.iter().enumerate() {
                if upper <= *le {
                    cumulative[b] += n;
                }
            }
        }
        let pool = pool.as_str();
        for (le, n) in DURATION_BUCKETS.iter().zip(cumulative) {
            out.push_str(&format!(
                "ramp_request_duration_seconds_bucket{{pool=\"{pool}\",le=\"{le}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "ramp_request_duration_seconds_bucket{{pool=\"{pool}\",le=\"+Inf\"}} {total}\n\
             ramp_request_duration_seconds_sum{{pool=\"{pool}\"}} {sum}\n\
             ramp_request_duration_seconds_count{{pool=\"{pool}\"}} {total}\n"
        ));
    }
    out
}
