//! Real parts for the integration tests: HTTP upstreams on 127.0.0.1:0 and the real `ramp`
//! binary started on a temporary config, plus small HTTP clients.
#![allow(dead_code)]

pub mod load;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const RAMP: &str = env!("CARGO_BIN_EXE_ramp");

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_bytes: u64,
    /// The body ended in an error (the sender went away mid-body).
    pub body_error: bool,
    /// The ramp side of the connection the request came on.
    pub peer: SocketAddr,
}

/// Shared state of one backend.
#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// Every answer is a 503 while set.
    unhealthy: std::sync::atomic::AtomicBool,
    /// `/download/N` bodies that ended (sent whole, or dropped by the reader going away).
    downloads_ended: Arc<std::sync::atomic::AtomicUsize>,
    /// This percent of answers (spread evenly, not at random) are 500s.
    failing: std::sync::atomic::AtomicU64,
    /// Requests answered, for `failing`'s spread.
    answered: std::sync::atomic::AtomicU64,
}

/// A real HTTP/1.1 upstream on 127.0.0.1:0 (plain or TLS) that answers with its own name.
///
/// Paths: `/slow/MS` answers after MS milliseconds; `/upload` reads the whole body and answers
/// with its length; `/download/N` streams N bytes; `/hop` answers with hop-by-hop headers;
/// `/status/N` answers status N; `/reset` sends part of a body and drops the connection;
/// after [`Backend::set_unhealthy`] every path answers 503; anything else answers
/// `NAME` with an `x-app-version: NAME` header.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

type BackendBody = Either<Full<Bytes>, Either<Repeat, Breaks>>;

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Self::start_with(name, None).await
    }

    /// An HTTPS upstream with this certificate chain and key (PEM).
    pub async fn start_tls(name: &'static str, cert_pem: &str, key_pem: &str) -> Backend {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        Self::start_with(
            name,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    /// A plain upstream on `addr` (one that comes back where an earlier one was).
    pub async fn start_at(name: &'static str, addr: SocketAddr) -> Backend {
        Self::start_on(name, None, addr).await
    }

    async fn start_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(name, tls, any).await
    }

    async fn start_on(
        name: &'static str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        addr: SocketAddr,
    ) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(name, Arc::clone(&state), peer, req));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                shared
                    .conns
                    .lock()
                    .expect("conns")
                    .push(conn.abort_handle());
            }
        });
        Backend {
            addr,
            name,
            state,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend saw no request")
    }

    /// Stops like a killed process: the listener and every connection close at once.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.state.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }

    /// The most requests it was ever serving at once.
    pub fn max_in_flight(&self) -> usize {
        self.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `/download/N` bodies that have ended, whole or cut.
    pub fn downloads_ended(&self) -> usize {
        self.state
            .downloads_ended
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests it is serving now.
    pub fn in_flight(&self) -> usize {
        self.state
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on `percent` of answers (evenly spread: exactly that share) are 500s.
    pub fn set_failing(&self, percent: u64) {
        self.state
            .failing
            .store(percent, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_unhealthy(&self, unhealthy: bool) {
        self.state
            .unhealthy
            .store(unhealthy, std::sync::atomic::Ordering::SeqCst);
    }
}

struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn new(s: &'a State) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = s.in_flight.fetch_add(1, SeqCst) + 1;
        s.max_in_flight.fetch_max(now, SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn answer(
    name: &'static str,
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    let _busy = InFlight::new(&state);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let mut body_bytes = 0u64;
    let mut body_error = false;
    if path == "/upload" {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => {
                    body_error = true;
                    break;
                }
            }
        }
    }
    state.seen.lock().expect("seen lock").push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_bytes,
        body_error,
        peer,
    });
    let text = |s: String| Either::Left(Full::new(Bytes::from(s)));
    let mut resp = Response::new(text(name.to_owned()));
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else if path == "/upload" {
        *resp.body_mut() = text(body_bytes.to_string());
    } else if let Some(n) = path.strip_prefix("/download/") {
        *resp.body_mut() = Either::Right(Either::Left(Repeat {
            left: n.parse().unwrap_or(0),
            ended: Some(Arc::clone(&state.downloads_ended)),
        }));
    } else if let Some(code) = path.strip_prefix("/status/") {
        *resp.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    } else if path == "/reset" {
        resp.headers_mut()
            .insert("content-length", "100000".parse().expect("value"));
        *resp.body_mut() = Either::Right(Either::Right(Breaks { pause: None }));
    }
    let failing = state.failing.load(std::sync::atomic::Ordering::SeqCst);
    let n = state
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if failing > 0 && (n * failing) % 100 < failing {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    if state.unhealthy.load(std::sync::atomic::Ordering::SeqCst) {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    } else if path == "/hop" {
        let h = resp.headers_mut();
        h.insert("connection", "x-secret-hop".parse().expect("value"));
        h.insert("x-secret-hop", "1".parse().expect("value"));
        h.insert("keep-alive", "timeout=5".parse().expect("value"));
        h.insert("proxy-connection", "keep-alive".parse().expect("value"));
        h.insert("upgrade", "h2c".parse().expect("value"));
    }
    resp.headers_mut()
        .insert("x-app-version", name.parse().expect("name"));
    Ok(resp)
}

/// A body that sends 1000 bytes, waits a moment (so they are on the wire), then fails: the
/// connection is dropped mid-body.
pub struct Breaks {
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Breaks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.pause {
            None => {
                self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(200))));
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..1000])))))
            }
            Some(pause) => match pause.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("upstream breaks")))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// A body of `left` bytes of `x`, produced as it is read; counts itself in `ended` when dropped.
pub struct Repeat {
    pub left: u64,
    pub ended: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl Drop for Repeat {
    fn drop(&mut self) {
        if let Some(e) = &self.ended {
            e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl Body for Repeat {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// A config for `stable` and `canary` backends; `extra` is appended (top-level YAML keys).
pub fn config(stable: &[&Backend], canary: &[&Backend], rollout: &str, extra: &str) -> String {
    let list = |bs: &[&Backend]| {
        bs.iter()
            .map(|b| b.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools:\n  stable: [{}]\n  canary: [{}]\nrollout:\n{}\n{}",
        list(stable),
        list(canary),
        rollout
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        extra
    )
}

/// The real `ramp serve` process on a config in its own temporary directory.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts ramp on `yaml` and waits until it listens.
    pub fn start(yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ramp.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Self::start_in(dir, path)
    }

    pub fn start_in(dir: impl Into<Arc<tempfile::TempDir>>, config_path: PathBuf) -> Proxy {
        Self::start_with(dir.into(), config_path, &[])
    }

    /// As [`Proxy::start_in`], with ramp's own default log filter (no `RUST_LOG`).
    pub fn start_in_with_default_logs(
        dir: impl Into<Arc<tempfile::TempDir>>,
        config_path: PathBuf,
    ) -> Proxy {
        Self::start_with(dir.into(), config_path, &["--default-logs-for-test"])
    }

    /// As [`Proxy::start`], run under an open files limit of `limit` (soft and hard).
    pub fn start_with_open_files(yaml: &str, limit: u64) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ramp.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let arg = format!("--open-files-for-test={limit}");
        Self::start_with(dir.into(), path, &[&arg])
    }

    /// A second ramp on this one's config and directory (the restart recipe: `--takeover`).
    pub fn start_successor(&self) -> Proxy {
        Self::start_with(
            Arc::clone(&self.dir),
            self.config_path.clone(),
            &["--takeover"],
        )
    }

    fn start_with(dir: Arc<tempfile::TempDir>, config_path: PathBuf, extra: &[&str]) -> Proxy {
        let default_logs = extra.contains(&"--default-logs-for-test");
        let open_files = extra
            .iter()
            .find_map(|a| a.strip_prefix("--open-files-for-test="))
            .map(|n| n.parse::<u64>().expect("a number"));
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != "--default-logs-for-test" && !a.starts_with("--open-files-for-test="))
            .collect();
        let mut command = Command::new(RAMP);
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        command
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&config_path)
            .args(&extra);
        if default_logs {
            command.env_remove("RUST_LOG");
        } else {
            command.env(
                "RUST_LOG",
                std::env::var("RAMP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ramp");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                sink.lock().expect("logs").push_back(line);
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let status = child.wait().ok();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "ramp did not start ({status:?}); its log:\n{}",
                logs.lock()
                    .expect("logs")
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        };
        Proxy {
            addr,
            dir,
            config_path,
            child,
            logs,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").iter().cloned().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the ramp process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// A reply as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The Set-Cookie values.
    pub fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("cookie text").to_owned())
            .collect()
    }
}

/// A keep-alive HTTP/1.1 client (or HTTP/2 with prior knowledge).
#[derive(Clone)]
pub struct Client {
    inner: LegacyClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn http1() -> Client {
        Client {
            inner: LegacyClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn http2() -> Client {
        Client {
            inner: LegacyClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// A GET that reports failure instead of panicking.
    pub async fn try_get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut req = Request::builder().uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("request");
        let resp = self.inner.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// `raw` from an async test (on a blocking thread, so the proxy's runtime keeps running).
pub async fn raw_reply(addr: SocketAddr, request: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || raw(addr, request))
        .await
        .expect("client")
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or 10 s pass).
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `requests` on one keep-alive connection and reads what comes back until `wait` passes
/// quietly or the server closes.
pub fn on_one_connection(addr: SocketAddr, requests: &[u8], wait: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(requests).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the ramp binary with `args`; gives (exit code, stdout, stderr).
pub fn ramp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(RAMP).args(args).output().expect("run ramp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `dir/name` and gives the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// The admin section every control-plane test uses: socket and state file beside the config.
pub const CONTROL: &str = "admin:\n  socket: admin.sock\nstate:\n  file: state.json\n";

impl Proxy {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// One command on the admin socket; the parsed reply.
    pub fn admin(&self, line: &str) -> serde_json::Value {
        admin_at(&self.socket(), line)
    }

    /// `ramp ctl --socket … ARGS`.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let socket = self.socket();
        let mut all = vec!["ctl", "--socket", socket.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        ramp(&all)
    }

    /// Kills ramp with SIGKILL (no chance to clean up) and gives back its directory.
    pub fn kill9(self) -> (Arc<tempfile::TempDir>, PathBuf) {
        let (dir, path) = (Arc::clone(&self.dir), self.config_path.clone());
        drop(self);
        (dir, path)
    }

    /// Waits up to `limit` for ramp to exit on its own; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Writes the port ramp listens on into its config file, as an operator's config has it (for
    /// a successor started on the same file).
    pub fn pin_port(&self) {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        std::fs::write(
            &self.config_path,
            text.replacen("127.0.0.1:0", &self.addr.to_string(), 1),
        )
        .expect("pin the port");
    }

    /// Sends a signal to ramp (by number, e.g. 1 for SIGHUP).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (up to 20 s) until `status` satisfies `done`; gives the last status.
    pub fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..400 {
            let s = self.admin("status");
            if done(&s) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{what}: never happened; last status {}",
            self.admin("status")
        );
    }

    /// Waits (up to 20 s) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        for _ in 0..400 {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no log line with {needle:?}:\n{}", self.logs().join("\n"));
    }
}

/// One command on an admin socket, failing the test if no reply comes within `limit` (a reply
/// that never comes must not hang the test).
pub fn admin_within(socket: &Path, line: &str, limit: Duration) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect admin socket");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.write_all(format!("{line}\n").as_bytes()).expect("write");
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .unwrap_or_else(|e| panic!("no reply to {line:?} within {limit:?}: {e}"));
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// One command on an admin socket; the parsed reply.
pub fn admin_at(socket: &Path, line: &str) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect admin socket");
    s.write_all(line.as_bytes()).expect("write");
    s.write_all(b"\n").expect("write");
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).expect("read reply");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// Replaces `path` the way editors do: write a new file beside it, rename it over.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).expect("write new");
    std::fs::rename(&tmp, path).expect("rename over");
}

impl Proxy {
    /// The metrics listener's address, as ramp logs it (the config needs `metrics: {listen:
    /// 127.0.0.1:0}`).
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self.wait_log("metrics at /metrics");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log");
        v["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("addr")
    }

    /// The metrics endpoint's text (the config needs `metrics: {listen: 127.0.0.1:0}`).
    pub async fn metrics(&self) -> String {
        let addr = self.metrics_addr();
        Client::http1()
            .get(&format!("http://{addr}/metrics"), &[])
            .await
            .body
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Proxy {
    /// Sends SIGHUP and waits for the reload to be rejected; gives the rejection's log line.
    pub fn admin_fallback_reload(&self) -> String {
        let before = self.logs().len();
        self.signal(1);
        for _ in 0..400 {
            if let Some(l) = self
                .logs()
                .iter()
                .skip(before)
                .find(|l| l.contains("reload rejected"))
            {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no rejected reload:\n{}", self.logs().join("\n"));
    }
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after 20 s.
/// Waits until `count` is above zero and stays the same for 300 ms; gives that count.
pub async fn settled(mut count: impl FnMut() -> usize) -> usize {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count();
        if now == last && now > 0 {
            return now;
        }
        last = now;
    }
}

pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < end, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that speaks raw bytes: for every request head it reads on a connection it records
/// the head and writes `answer`; with `close` it then closes the connection. For answers no
/// well-behaved server would give.
pub struct RawUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream of the test's own making on 127.0.0.1:0: `serve` runs for every connection it
/// accepts, with ramp on the other end.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn));
        }
    });
    addr
}

/// The next request head read from `conn` (its text, up to the blank line), whatever follows it
/// kept in `buf` (pipelined requests, the start of a body); `None` once the peer closes.
pub async fn next_head(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match conn.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

impl RawUpstream {
    pub async fn start(answer: &'static [u8], close: bool) -> RawUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(head) = next_head(&mut s, &mut buf).await {
                        seen.lock().expect("heads").push(format!("{head}\r\n\r\n"));
                        if s.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            heads,
            accepted,
            task,
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A config with `stable` as the only upstream of both pools, everyone on stable.
pub fn single(stable: SocketAddr, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nworkers: 1\npools: {{stable: ['{stable}'], canary: ['{stable}']}}\nrollout: {{id: edge, percent: 0}}\n{extra}"
    )
}

/// The status code of a raw HTTP answer.
pub fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

/// A port on 127.0.0.1 that refuses connections while this lives: bound but never listening, so
/// no other test's server can take it meanwhile. (A port found by binding and closing again can
/// be taken by a server of a test running beside, which then answers in a dead upstream's
/// place: it once answered 431 where a test awaited 502.)
pub struct DeadPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

pub fn dead_port() -> DeadPort {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IP address");
    DeadPort {
        _socket: socket,
        addr,
    }
}

impl DeadPort {
    /// The address, dead for the rest of the test binary's run.
    pub fn forever(self) -> SocketAddr {
        let addr = self.addr;
        std::mem::forget(self);
        addr
    }
}
