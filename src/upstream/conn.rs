//! One upstream server and its pooled HTTP/1.1 keep-alive connections.
//!
//! Built on hyper's connection API rather than hyper-util's pooled client: ramp must choose the
//! upstream itself (round robin, health) and must keep the request when a connection cannot be
//! made, so that it can try another upstream without ever sending a request twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{UpstreamAddr, UpstreamSettings};

use super::UpstreamBody;

/// The body ramp sends upstream: the client's, streamed.
pub type ReqBody = Incoming;

type Sender = http1::SendRequest<ReqBody>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("exchange: {0}")]
    Exchange(hyper::Error),
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Debug)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    idle: Mutex<VecDeque<Idle>>,
}

impl Upstream {
    pub fn new(addr: UpstreamAddr) -> Self {
        Upstream {
            addr,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends `req` on a pooled connection (or a new one) and gives the response; its body puts
    /// the connection back in the pool once it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
        settings: &UpstreamSettings,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(settings) {
                Some(s) => (s, true),
                None => (self.connect(settings).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let up = Arc::clone(self);
                    let max_idle = settings.max_idle_per_upstream;
                    return Ok(resp.map(|b| UpstreamBody::new(b, up, sender, max_idle)));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection that closed before our request went out: nothing
                    // was sent, so the request goes on a fresh connection.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// A pooled connection ready for a request, oldest first; stale and closed ones are dropped.
    fn checkout(&self, settings: &UpstreamSettings) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for _ in 0..idle.len() {
            let entry = idle.pop_front()?;
            if entry.sender.is_closed() || now.duration_since(entry.since) > settings.idle_timeout {
                continue;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            // Still finishing its last exchange: keep it for later.
            idle.push_back(entry);
        }
        None
    }

    /// Puts a connection whose last response was read to the end back in the pool.
    pub(super) fn release(&self, sender: Sender, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, settings: &UpstreamSettings) -> Result<Sender, SendError> {
        let target = (self.addr.host.as_str(), self.addr.port);
        let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        // Latency matters more than packet count for a proxy; a failure here is harmless.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Handshake)?;
        let addr = self.addr.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}
