//! One upstream server and its pooled HTTP/1.1 keep-alive connections (over TCP or TLS).
//!
//! Requests go out on ramp's own HTTP/1.1 client side ([`super::wire`]): ramp chooses the
//! upstream itself (round robin, health), keeps the request so that it can try another upstream
//! without ever sending it twice, and pays for no connection task. The WebSocket handshake and
//! the health probe use hyper's client connection API.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{PassiveHealth, UpstreamAddr, UpstreamSettings};

use super::body::{ReqBody, Sending};
use super::failure::{Failure, SendError, local, out_of_descriptors, slot};
use super::health::Health;
use super::wire::{self, Failed, Io, Outbound, Wire};
use super::{Slot, UpstreamBody};

pub type Sender = http1::SendRequest<ReqBody>;

/// How to reach upstreams: timeouts, pool sizes, and the TLS client for `https://` ones.
#[derive(Clone)]
pub struct Connector {
    pub settings: UpstreamSettings,
    pub passive: PassiveHealth,
    /// A response body that sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    pub fn new(
        settings: UpstreamSettings,
        passive: PassiveHealth,
        body_idle_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Connector {
            settings,
            passive,
            body_idle_timeout,
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }
}

#[derive(Debug)]
struct Idle {
    wire: Box<Wire>,
    /// When it went idle, on [`crate::clock::now_ms`]'s coarse clock.
    since_ms: u64,
}

#[derive(Debug)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    pub health: Health,
    idle: Mutex<VecDeque<Idle>>,
}

impl Upstream {
    pub fn new(addr: UpstreamAddr) -> Self {
        Upstream {
            addr,
            health: Health::default(),
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends the request (`request`, and `body`) on a pooled connection (or a new one) and gives
    /// the answer, its hop-by-hop fields removed; its body puts the connection back in the pool
    /// once it has been read to the end. The request stays the caller's.
    pub async fn send(
        self: &Arc<Self>,
        request: Outbound<'_>,
        body: &mut ReqBody,
        connector: &Connector,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let settings = &connector.settings;
        // One loop in one async fn: a nested future here would be copied on every request.
        loop {
            let (mut wire, reused) = match self.checkout(settings) {
                Some(w) => (w, true),
                // Boxed: the connect path is rare and large; inline it would make every
                // request's future bigger (and slower to move).
                None => match Box::pin(self.connect(connector)).await {
                    Ok(w) => (w, false),
                    Err(error) => {
                        break Err(Failure {
                            error,
                            wrote: false,
                        });
                    }
                },
            };
            let limit = settings.response_timeout;
            let body_done = body.times();
            let mut timer = wire.timer.take();
            let exchange = wire::exchange(&mut wire, request, body, connector.body_idle_timeout);
            let result = match body_done {
                None => within(&mut timer, limit, exchange).await,
                // Boxed: only requests with a body take this path; inline it would enlarge every
                // request's future.
                Some(done) => Box::pin(respond_after_body(exchange, limit, done)).await,
            };
            wire.timer = timer;
            let Some(result) = result else {
                break Err(Failure {
                    error: SendError::Timeout(limit),
                    wrote: true,
                });
            };
            match result {
                Ok((answer, out)) => {
                    // Answered before the whole request went out: the rest goes with the
                    // answer's body (unless the answer has none, or writing failed).
                    let more = !out.sent && out.error.is_none() && !answer.framing.is_done();
                    // Not after an answer that has no body by definition (to HEAD, 204, 304): an
                    // upstream that wrongly sends one anyway (a common bug) would have those
                    // bytes, arriving late, read as the answer to the next user's request on
                    // this connection.
                    let bodiless = request.parts.method == http::Method::HEAD
                        || matches!(answer.status.as_u16(), 204 | 304);
                    let keep_alive = answer.keep_alive && (out.sent || more) && !bodiless;
                    let sending = more.then(|| {
                        Box::new(Sending {
                            out,
                            body: std::mem::replace(body, ReqBody::Empty),
                        })
                    });
                    // Near `upstream.max_connections`, a connection is not kept idle: pooled
                    // ones count too, and those of one upstream must not keep another from
                    // opening the connection it needs.
                    let crowded = Slot::open() >= settings.max_connections / 10 * 9;
                    let mut body = UpstreamBody::new(
                        wire,
                        answer.framing,
                        keep_alive && !crowded,
                        sending,
                        Arc::clone(self),
                        settings.max_idle_per_upstream,
                        connector.body_idle_timeout,
                    );
                    // The fields ride with the body: written as they are to an HTTP/1.1
                    // client, made a `HeaderMap` only for HTTP/2 (`Fields::into_map`).
                    body.fields = Some(answer.fields);
                    let mut resp = Response::new(body);
                    *resp.status_mut() = answer.status;
                    *resp.version_mut() = answer.version;
                    break Ok(resp);
                }
                // A pooled connection that failed before a byte of the request went out (the
                // upstream closed it meanwhile): the request goes on a fresh connection.
                Err(Failed::Exchange { wrote: false, .. }) if reused => {}
                Err(Failed::Exchange { error, wrote }) => {
                    break Err(Failure {
                        error: SendError::Exchange(error),
                        wrote,
                    });
                }
                Err(Failed::ClientBody(e)) => {
                    break Err(Failure {
                        error: SendError::ClientBody(e),
                        wrote: true,
                    });
                }
            }
        }
    }

    /// A pooled connection ready for a request, the most recently used first (it is the least
    /// likely to have been closed by the upstream); stale and closed ones are dropped.
    fn checkout(&self, settings: &UpstreamSettings) -> Option<Box<Wire>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::now_ms();
        let limit = settings.pool_idle_timeout.as_millis() as u64;
        while idle
            .front()
            .is_some_and(|e| now.saturating_sub(e.since_ms) > limit)
        {
            idle.pop_front();
        }
        while let Some(mut entry) = idle.pop_back() {
            if entry.wire.is_reusable() {
                return Some(entry.wire);
            }
        }
        None
    }

    /// Drops the pooled connections that are past the idle timeout or that the upstream has
    /// closed: without requests to take them, they would sit open (in CLOSE-WAIT) until the
    /// next one. Reads nothing from a connection that is not readable.
    pub fn sweep_idle(&self, settings: &UpstreamSettings) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::clock::now_ms();
        let limit = settings.pool_idle_timeout.as_millis() as u64;
        idle.retain_mut(|e| now.saturating_sub(e.since_ms) <= limit && e.wire.is_reusable());
    }

    /// Puts a connection whose last answer was read to the end back in the pool.
    pub(super) fn release(&self, wire: Box<Wire>, max_idle: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < max_idle {
            idle.push_back(Idle {
                wire,
                since_ms: crate::clock::now_ms(),
            });
        }
    }

    async fn tcp(&self, connector: &Connector) -> Result<TcpStream, SendError> {
        let target = (self.addr.host.as_str(), self.addr.port);
        let stream = tokio::time::timeout(
            connector.settings.connect_timeout,
            TcpStream::connect(target),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(|e| {
            if local(&e) || (e.raw_os_error().is_none() && out_of_descriptors()) {
                SendError::Local(e)
            } else {
                SendError::Connect(e)
            }
        })?;
        // Latency matters more than packet count for a proxy; a failure here is harmless.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn tls(
        &self,
        tcp: TcpStream,
        connector: &Connector,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
        let tls = connector
            .tls
            .as_ref()
            .ok_or_else(|| SendError::Tls(std::io::Error::other("no TLS client configured")))?;
        let name = ServerName::try_from(self.addr.host.clone())
            .map_err(|e| SendError::Tls(std::io::Error::other(e)))?;
        tokio::time::timeout(connector.settings.connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Tls)
    }

    async fn connect(&self, connector: &Connector) -> Result<Box<Wire>, SendError> {
        let slot = slot(connector)?;
        let tcp = self.tcp(connector).await?;
        let io = if self.addr.tls {
            Io::Tls(Box::new(self.tls(tcp, connector).await?))
        } else {
            Io::Tcp(tcp)
        };
        Ok(Wire::new(io, slot))
    }

    /// A fresh connection (never pooled) that can be upgraded: for a WebSocket handshake. Its
    /// slot is the caller's to keep while the connection (or the tunnel it becomes) lives.
    pub async fn connect_upgradable(
        &self,
        connector: &Connector,
    ) -> Result<(Sender, Slot), SendError> {
        let slot = slot(connector)?;
        let tcp = self.tcp(connector).await?;
        let sender = if self.addr.tls {
            handshake(self.tls(tcp, connector).await?, &self.addr, true).await
        } else {
            handshake(tcp, &self.addr, true).await
        }?;
        Ok((sender, slot))
    }

    /// A health probe: a connection (TCP, and TLS for `https://`), then `GET path` when given,
    /// answered below 400. `None` when ramp could not open a connection for want of file
    /// descriptors, memory or ports: that says nothing of the upstream.
    pub async fn probe(&self, connector: &Connector, path: Option<&str>) -> Option<bool> {
        let tcp = match self.tcp(connector).await {
            Ok(tcp) => tcp,
            // ramp's own shortage says nothing of the upstream.
            Err(SendError::Local(_)) => return None,
            Err(_) => return Some(false),
        };
        Some(self.probe_on(tcp, connector, path).await)
    }

    async fn probe_on(&self, tcp: TcpStream, connector: &Connector, path: Option<&str>) -> bool {
        let Some(path) = path else {
            return !self.addr.tls || self.tls(tcp, connector).await.is_ok();
        };
        let sender = if self.addr.tls {
            match self.tls(tcp, connector).await {
                Ok(s) => handshake(s, &self.addr, false).await,
                Err(e) => Err(e),
            }
        } else {
            handshake(tcp, &self.addr, false).await
        };
        let Ok(mut sender) = sender else {
            return false;
        };
        let req = Request::get(path)
            .header(
                http::header::HOST,
                self.addr.to_string().trim_start_matches("https://"),
            )
            .header(http::header::USER_AGENT, "ramp-health")
            .header(http::header::CONNECTION, "close")
            .body(ReqBody::Empty);
        let Ok(req) = req else { return false };
        match sender.send_request(req).await {
            Ok(resp) => resp.status() < StatusCode::BAD_REQUEST,
            Err(_) => false,
        }
    }
}

/// Waits for `response` for at most `limit` after the request body was sent (a body still
/// uploading does not count; a stalled one is the body idle timeout's business). `None` on
/// timeout.
/// Runs `work` for at most `limit` on `timer` (made on first use, then moved later in place).
async fn within<F: std::future::Future>(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    work: F,
) -> Option<F::Output> {
    let deadline = tokio::time::Instant::now() + limit;
    let timer = match timer {
        Some(t) => {
            t.as_mut().reset(deadline);
            t
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

async fn respond_after_body<F: std::future::Future>(
    response: F,
    limit: Duration,
    times: Arc<super::body::BodyTimes>,
) -> Option<F::Output> {
    let mut response = std::pin::pin!(response);
    let limit_us = limit.as_micros() as u64;
    let mut wait = limit;
    loop {
        if let Ok(out) = tokio::time::timeout(wait, response.as_mut()).await {
            return Some(out);
        }
        wait = match times.done.load(Ordering::Relaxed) {
            0 => limit,
            at => {
                let since = crate::clock::now_us().saturating_sub(at);
                if since >= limit_us {
                    return None;
                }
                Duration::from_micros(limit_us - since)
            }
        };
    }
}

async fn handshake<IO>(io: IO, addr: &UpstreamAddr, upgrades: bool) -> Result<Sender, SendError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        // Read an upstream answer in small pieces: a client that reads slowly then holds at most
        // this much per download, whatever the upstream sends.
        .read_buf_exact_size(Some(16 * 1024))
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Handshake)?;
    let addr = addr.to_string();
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}
