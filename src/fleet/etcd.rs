//! A small client for etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`,
//! `/v3/auth/authenticate`) over the hyper client ramp already has: no gRPC stack, so a fresh
//! machine still builds with cargo alone. What the gateway does, measured against etcd 3.4, is in
//! the comments: keys and values are base64, 64-bit numbers come as strings, and fields with
//! their default value are left out (an absent key has no `kvs`, a failed txn no `succeeded`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// How long one request may take (a token from the future makes etcd wait forever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd answered {status}: {message}{}", hint(message))]
    Refused { status: StatusCode, message: String },
    #[error("etcd sent something unreadable: {0}")]
    Garbled(String),
}

/// What an operator does about a refusal that is etcd's own state, not ramp's request.
fn hint(message: &str) -> &'static str {
    if message.contains("database space exceeded") {
        " (etcd's storage quota is full: compact and defragment it, then `etcdctl alarm disarm`; until then it takes no write)"
    } else {
        ""
    }
}

impl EtcdError {
    /// etcd gave no answer within `wait`, however many endpoints were tried.
    pub fn silent(wait: Duration) -> EtcdError {
        EtcdError::Unreachable {
            endpoint: "any endpoint".into(),
            reason: format!("no answer within {wait:?}"),
        }
    }
}

/// What etcd says to a request about auth while its auth is off.
const AUTH_OFF: &str = "authentication is not enabled";

/// Where etcd is and who ramp is to it.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://host:port` or `https://host:port`, tried in turn.
    pub urls: Vec<String>,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A key's value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// Written; the key's new revision.
    Done(i64),
    /// The key changed meanwhile: what it holds now (`None`: absent).
    Conflict(Option<Kv>),
}

/// An event on a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(i64),
}

#[derive(Debug)]
pub struct Etcd {
    endpoints: Endpoints,
    /// The endpoint that answered last (tried first).
    preferred: std::sync::atomic::AtomicUsize,
    token: Mutex<Option<String>>,
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => STANDARD
            .decode(s)
            .map_err(|e| EtcdError::Garbled(format!("base64: {e}"))),
    }
}

/// An int64 as the gateway sends it: a string, sometimes a number, absent when 0.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Result<Kv, EtcdError> {
    Ok(Kv {
        value: unb64(&v["value"])?,
        mod_revision: int(&v["mod_revision"]),
    })
}

/// The longest watch message read: a key's value is at most 1.5 MiB in etcd (its default
/// request limit), base64 in JSON a third more. Beyond, the stream is not etcd's.
const MAX_MESSAGE: usize = 4 << 20;

/// A stream of JSON messages, one per line (the watch).
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line break.
    scanned: usize,
}

impl Lines {
    /// The next message; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Value, EtcdError>> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=self.scanned + i).collect();
                self.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(
                    serde_json::from_slice(&line).map_err(|e| EtcdError::Garbled(e.to_string())),
                );
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_MESSAGE {
                return Some(Err(EtcdError::Garbled(format!(
                    "a watch message longer than {} MiB",
                    MAX_MESSAGE >> 20
                ))));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => {
                    return Some(Err(EtcdError::Unreachable {
                        endpoint: "watch".into(),
                        reason: e.to_string(),
                    }));
                }
                None if self.buf.iter().any(|b| !b.is_ascii_whitespace()) => {
                    // The closing error object has no newline after it.
                    let rest = std::mem::take(&mut self.buf);
                    return Some(
                        serde_json::from_slice(&rest)
                            .map_err(|e| EtcdError::Garbled(e.to_string())),
                    );
                }
                None => return None,
            }
        }
    }
}

/// One event message of a watch, or why the watch ended.
#[derive(Debug)]
pub enum Watched {
    Events(Vec<Event>),
    /// Nothing to act on (the `created` message, a progress notice).
    Quiet,
    /// The watch was cancelled (compaction, permissions) or the stream reported an error.
    Ended(String),
}

#[derive(Deserialize)]
struct AuthReply {
    token: String,
}

/// Whether an answer is etcd's to act on: JSON, as its gateway sends every answer on the paths
/// ramp asks (errors too), and no server error (which etcd sends when it cannot serve, as a proxy
/// in front of it does).
fn from_etcd<B>(resp: &http::Response<B>) -> bool {
    !resp.status().is_server_error()
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"))
}

impl Etcd {
    pub fn new(endpoints: Endpoints) -> Etcd {
        Etcd {
            endpoints,
            preferred: std::sync::atomic::AtomicUsize::new(0),
            token: Mutex::new(None),
        }
    }

    async fn connect(
        &self,
        url: &str,
    ) -> Result<(http1::SendRequest<Full<Bytes>>, String), String> {
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (false, url.strip_prefix("http://").unwrap_or(url)),
        };
        let authority = rest.trim_end_matches('/').to_owned();
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            let config = self
                .endpoints
                .tls
                .clone()
                .ok_or("https endpoint without a TLS client")?;
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |h| h.0);
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok((sender, authority))
    }

    /// POSTs `body` to `path` with the auth token (when configured).
    async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<http::Response<hyper::body::Incoming>, EtcdError> {
        let token = self.token().await?;
        self.send(path, body, token).await
    }

    /// POSTs `body` to `path` at the first endpoint that answers; gives the response.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        token: Option<String>,
    ) -> Result<http::Response<hyper::body::Incoming>, EtcdError> {
        let urls = &self.endpoints.urls;
        let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::from("no endpoint");
        for i in 0..urls.len() {
            let n = (start + i) % urls.len();
            let url = &urls[n];
            let attempt = async {
                let (mut sender, authority) = self.connect(url).await?;
                let mut req = Request::builder()
                    .method(Method::POST)
                    .uri(path)
                    .header(header::HOST, authority)
                    .header(header::CONTENT_TYPE, "application/json");
                if let Some(t) = &token
                    && let Ok(v) = HeaderValue::from_str(t)
                {
                    req = req.header(header::AUTHORIZATION, v);
                }
                let req = req
                    .body(Full::new(Bytes::from(body.to_string())))
                    .map_err(|e| e.to_string())?;
                sender.send_request(req).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(resp)) if from_etcd(&resp) => {
                    self.preferred
                        .store(n, std::sync::atomic::Ordering::Relaxed);
                    return Ok(resp);
                }
                // Not etcd's answer (a load balancer's 502 before a dead member, a web server
                // at the wrong port), or etcd's own "unavailable": the next endpoint may answer.
                Ok(Ok(resp)) => {
                    last = format!(
                        "{url}: answered {}{}, not an answer of a working etcd",
                        resp.status(),
                        resp.headers()
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .map(|t| format!(" ({t})"))
                            .unwrap_or_default()
                    );
                }
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: no answer within {REQUEST_TIMEOUT:?}"),
            }
        }
        Err(EtcdError::Unreachable {
            endpoint: urls.join(", "),
            reason: last,
        })
    }

    /// A unary call: the JSON answer, re-authenticating once on an expired token.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        for attempt in 0..2 {
            let resp = self.post(path, &body).await?;
            let status = resp.status();
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
                .await
                .map_err(|_| EtcdError::Garbled("the answer did not finish".into()))?
                .map_err(|e| EtcdError::Garbled(e.to_string()))?
                .to_bytes();
            let v: Value =
                serde_json::from_slice(&bytes).map_err(|e| EtcdError::Garbled(e.to_string()))?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.token.lock().await = None;
                continue;
            }
            if !status.is_success() && attempt == 0 && self.endpoints.credentials.is_some() {
                let mut token = self.token.lock().await;
                // A token sent after etcd's auth was turned off: on without one.
                if String::from_utf8_lossy(&bytes).contains(AUTH_OFF) {
                    *token = Some(String::new());
                    continue;
                }
                // None sent, as auth was off, and etcd now wants one ("user name is empty"):
                // authenticate.
                if token.as_deref() == Some("") {
                    *token = None;
                    continue;
                }
            }
            if !status.is_success() {
                return Err(EtcdError::Refused {
                    status,
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            return Ok(v);
        }
        Err(EtcdError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message: "authentication keeps failing".into(),
        })
    }

    async fn token(&self) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.endpoints.credentials else {
            return Ok(None);
        };
        let mut token = self.token.lock().await;
        if let Some(t) = &*token {
            // Empty: etcd's auth is off.
            return Ok(Some(t.clone()).filter(|t| !t.is_empty()));
        }
        let resp = self
            .send(
                "/v3/auth/authenticate",
                &json!({"name": name, "password": password}),
                None,
            )
            .await?;
        let status = resp.status();
        // Bounded like every answer: a body that stalls would hold the token's lock, and with
        // it every request, forever.
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| EtcdError::Garbled("the answer did not finish".into()))?
            .map_err(|e| EtcdError::Garbled(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            // Credentials given before etcd's auth is turned on (the order a migration takes):
            // requests go without a token until etcd asks for one (a 401 clears this).
            if message.contains(AUTH_OFF) {
                *token = Some(String::new());
                return Ok(None);
            }
            return Err(EtcdError::Refused { status, message });
        }
        let reply: AuthReply =
            serde_json::from_slice(&bytes).map_err(|e| EtcdError::Garbled(e.to_string()))?;
        *token = Some(reply.token.clone());
        Ok(Some(reply.token))
    }

    /// The key's value and revision (`None`: absent), and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(Option<Kv>, i64), EtcdError> {
        let v = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        let found = match v["kvs"].get(0) {
            Some(k) => Some(kv(k)?),
            None => None,
        };
        Ok((found, int(&v["header"]["revision"])))
    }

    /// Like [`Etcd::get`], within `total` however many endpoints hang: each is given its share
    /// of it in turn, so that a first endpoint that takes connections and never answers does not
    /// use it all up (at start, which waits that long at most, a healthy second one was never
    /// asked, and a stale cache was served meanwhile).
    pub async fn get_within(
        &self,
        key: &str,
        total: Duration,
    ) -> Result<(Option<Kv>, i64), EtcdError> {
        let n = self.endpoints.urls.len().max(1);
        let share = total / n as u32;
        for _ in 0..n {
            match tokio::time::timeout(share, self.get(key)).await {
                Ok(answer) => return answer,
                // The endpoint tried first hangs: the next one is tried first.
                Err(_) => {
                    let next = (self.preferred.load(std::sync::atomic::Ordering::Relaxed) + 1) % n;
                    self.preferred
                        .store(next, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Err(EtcdError::silent(total))
    }

    /// Writes `value` if the key still has `revision` (0: the key must be absent).
    pub async fn cas(&self, key: &str, revision: i64, value: &[u8]) -> Result<Cas, EtcdError> {
        let k = b64(key.as_bytes());
        let compare = if revision == 0 {
            json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        } else {
            json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()})
        };
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [compare],
                    "success": [{"request_put": {"key": k, "value": b64(value)}}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(Cas::Done(int(&v["header"]["revision"])));
        }
        let now = match v["responses"][0]["response_range"]["kvs"].get(0) {
            Some(k) => Some(kv(k)?),
            None => None,
        };
        Ok(Cas::Conflict(now))
    }

    /// Watches `key` from `revision`; the stream of its changes.
    pub async fn watch(&self, key: &str, revision: i64) -> Result<Lines, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(key.as_bytes()),
            "start_revision": revision.to_string(),
        }});
        let resp = self.post("/v3/watch", &body).await?;
        if !resp.status().is_success() {
            return Err(EtcdError::Refused {
                status: resp.status(),
                message: "watch refused".into(),
            });
        }
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            scanned: 0,
        })
    }
}

/// What one watch message says.
pub fn read_watch(message: &Value) -> Result<Watched, EtcdError> {
    if let Some(e) = message.get("error") {
        return Ok(Watched::Ended(
            e["message"].as_str().unwrap_or("stream error").to_owned(),
        ));
    }
    let r = &message["result"];
    if r["canceled"].as_bool().unwrap_or(false) {
        let why = r["cancel_reason"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("compacted at {}", int(&r["compact_revision"])));
        return Ok(Watched::Ended(why));
    }
    let Some(events) = r["events"].as_array() else {
        return Ok(Watched::Quiet);
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if e["type"].as_str() == Some("DELETE") {
            out.push(Event::Delete(int(&e["kv"]["mod_revision"])));
        } else {
            out.push(Event::Put(kv(&e["kv"])?));
        }
    }
    Ok(Watched::Events(out))
}

/// What a boxed stream to etcd must be.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[cfg(test)]
mod tests;
