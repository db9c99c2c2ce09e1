//! Prometheus metrics: handles registered once at start-up and kept here, so the request path
//! pays an atomic add, not a registry lookup. Labels come from small fixed sets only.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the Prometheus recorder for this process.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let resp = if req.uri().path() == "/metrics" {
                    handle.run_upkeep();
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(handle.render())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"Not Found\n")))
                };
                std::future::ready(
                    resp.or_else(|_| Ok::<_, Infallible>(Response::new(Full::default()))),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
