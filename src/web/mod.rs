//! The metrics listener: Prometheus text at `GET /metrics`, the live status page at `GET /`, its
//! JSON at `GET /api/status`, and `GET /healthz` / `GET /readyz`. Read-only: nothing here changes
//! the rollout.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::analysis::Analysis;
use crate::control::{Command, Handle, Outcome, Source};

/// The page: one self-contained file, no external assets.
const PAGE: &str = include_str!("page.html");

/// What the listener serves from.
#[derive(Clone)]
pub struct Web {
    pub exporter: PrometheusHandle,
    pub handle: Handle,
    pub analysis: Arc<Analysis>,
    /// `metrics.allowed_hosts`: names the page and its JSON answer to, besides an IP address and
    /// `localhost`.
    pub allowed_hosts: Arc<[String]>,
}

fn reply(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    // Never cached, never sniffed as another type, never framed by another site's page, no
    // referrer out.
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        r.headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The status as the page reads it: the controller's status with the analysis's series.
async fn status_json(web: &Web) -> Response<Full<Bytes>> {
    let status = match web.handle.send(Command::Status, Source::Page).await {
        Ok(Outcome::Status(s)) => s,
        Ok(_) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "unexpected reply\n",
            );
        }
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
    };
    let mut status = status;
    status.analysis = web
        .analysis
        .view()
        .filter(|v| v.rollout == status.rollout)
        .map(|v| (*v).clone());
    match serde_json::to_vec(&status) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

/// Ready: the config is loaded, the listeners are bound (both before this serves), and the
/// controller answers. An etcd that does not answer leaves an instance ready (it serves the last
/// known state, as its users need): readiness failing on every instance at once would take the
/// whole fleet out of its load balancer. The text says so; status and `ramp_fleet_connected` too.
async fn ready(web: &Web) -> Response<Full<Bytes>> {
    match web.handle.send(Command::Status, Source::Page).await {
        Ok(Outcome::Status(s)) => match s.fleet {
            Some(f) if !f.connected => reply(
                StatusCode::OK,
                TEXT,
                format!(
                    "ready; etcd does not answer ({}): serving the last known state\n",
                    f.error.unwrap_or_default()
                ),
            ),
            _ => reply(StatusCode::OK, TEXT, "ready\n"),
        },
        Ok(_) | Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
    }
}

async fn route(web: Web, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "read-only: GET only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // One Host at most (RFC 9112, 3.2): two could be read one way here and another by
    // whatever sits in front.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return reply(StatusCode::BAD_REQUEST, TEXT, "more than one Host header\n");
    }
    let path = req.uri().path();
    if matches!(path, "/" | "/api/status") && !page_host(&req, &web.allowed_hosts) {
        // A page on another site whose name was made to resolve here (DNS rebinding) would be
        // same-origin with this one and could read the rollout id, the assignment's salt.
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "the status page answers to an IP address, localhost, or a name in metrics.allowed_hosts\n",
        );
    }
    match path {
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/api/status" => status_json(&web).await,
        "/metrics" => {
            web.exporter.run_upkeep();
            let mut text = web.exporter.render();
            text.push_str(&crate::metrics::render_durations(&web.analysis.lifetime()));
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => ready(&web).await,
        _ => reply(StatusCode::NOT_FOUND, TEXT, "Not Found\n"),
    }
}

/// Whether the request's Host is one the status page answers to: none (not a browser), an IP
/// address, `localhost` (or a name under it), or an allowed name; any port.
/// A target in absolute form names the host itself, and Host is then ignored (RFC 9112,
/// 3.2.2).
fn page_host<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let host = match (req.uri().authority(), req.headers().get(header::HOST)) {
        (Some(target), _) => target.as_str(),
        (None, None) => return true,
        (None, Some(host)) => match host.to_str() {
            Ok(host) => host,
            Err(_) => return false,
        },
    };
    // No user information: `user@host` is no Host.
    if host.contains('@') {
        return false;
    }
    let port =
        |p: &str| p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok();
    if host.starts_with('[') {
        // An IPv6 literal, with or without a port.
        return host.split_once(']').is_some_and(|(ip, rest)| {
            ip[1..].parse::<std::net::Ipv6Addr>().is_ok()
                && (rest.is_empty() || rest.strip_prefix(':').is_some_and(port))
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, p)) if port(p) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

/// Connections the metrics listener serves at once; beyond, the oldest is closed for a newcomer
/// (as the proxy makes room at `max_connections`), so that nobody can take the proxy's
/// descriptors through it, nor keep a probe of `/healthz` out by holding every place.
const MAX_PEERS: usize = 256;

/// The listener's open connections, oldest first.
#[derive(Default)]
struct Peers {
    next: u64,
    open: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// Serves `listener` on a thread of its own, with a single-threaded runtime, for as long as the
/// process lives or until `handed_over` turns true (a successor serves the address then).
pub fn spawn(
    listener: std::net::TcpListener,
    web: Web,
    handed_over: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The runtime is made on its thread: one made here and dropped with a thread that could not
    // start would be dropped inside the caller's runtime, which panics.
    let (started, told) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ramp-web".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, web, handed_over).await,
                    Err(e) => tracing::error!(error = %e, "the metrics listener cannot be served"),
                }
            });
        })?;
    told.recv().unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the metrics thread ended as it started",
        ))
    })
}

/// Completes once a successor has taken over (never, if nobody can tell any more).
async fn handed_over_to_successor(handed_over: &mut tokio::sync::watch::Receiver<bool>) {
    if handed_over.wait_for(|h| *h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long connections open at a handover may take to finish the request in hand.
const HANDOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `handed_over` turns true: then the listener closes (new connections reach the
/// successor's), and each open connection closes once its request in hand is answered.
async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    mut handed_over: tokio::sync::watch::Receiver<bool>,
) {
    let peers = Arc::new(std::sync::Mutex::new(Peers::default()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = handed_over_to_successor(&mut handed_over) => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let id = {
            let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
            if p.open.len() >= MAX_PEERS
                && let Some((_, oldest)) = p.open.pop_front()
            {
                tracing::debug!("metrics listener full: its oldest connection is closed");
                oldest.abort();
            }
            p.next += 1;
            p.next
        };
        let web = web.clone();
        let (listed, on_list) = tokio::sync::oneshot::channel::<()>();
        let mine = Arc::clone(&peers);
        let mut handed = handed_over.clone();
        let task = tokio::spawn(async move {
            // Served once listed, so that it always leaves the list after it was put on it.
            let _ = on_list.await;
            let _leave = Leave { peers: mine, id };
            let svc = service_fn(move |req| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(route(web, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = handed_over_to_successor(&mut handed) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .push_back((id, task.abort_handle()));
        let _ = listed.send(());
    }
    drop(listener);
    // The runtime ends with this function: open connections get a moment to finish.
    let end = tokio::time::Instant::now() + HANDOVER_GRACE;
    while !peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .open
        .is_empty()
        && tokio::time::Instant::now() < end
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Takes a connection off the list when its task ends (an evicted one is off it already).
struct Leave {
    peers: Arc<std::sync::Mutex<Peers>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut p = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = p.open.iter().position(|(id, _)| *id == self.id) {
            p.open.remove(i);
        }
    }
}
