//! `ramp demo`: two small built-in upstreams (v1 and v2) and the proxy in front of them.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::app::{self, AppError};
use crate::config;

/// The canary share the demo starts with.
pub const DEMO_PERCENT: u32 = 10;

fn page(version: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>shop {version}</title></head>\n\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>Hello from {version}</h1>\n\
         <p>This page is served by version <b>{version}</b> of the demo shop.</p></body></html>\n"
    )
}

/// Starts a tiny page server on an ephemeral loopback port; gives its address.
pub async fn page_server(version: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_page(listener, version.to_owned()));
    Ok(addr)
}

/// `ramp demo-upstream`: the demo's page server on `listen`, in the foreground.
pub async fn upstream(version: &str, listen: SocketAddr) -> Result<(), AppError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|error| AppError::Bind {
            addr: listen,
            error,
        })?;
    tracing::info!(addr = %listen, version, "demo upstream serving");
    serve_page(listener, version.to_owned()).await;
    Ok(())
}

/// `ramp probe URL`: whether `GET URL` (plain http) answers 2xx within 3 seconds.
pub fn probe(url: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed (the metrics listener's /healthz or /readyz, say)")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Without a port, HTTP's own.
    let with_port = match authority.rsplit_once(':') {
        Some((_, port))
            if port.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']') =>
        {
            authority.to_owned()
        }
        _ => format!("{authority}:80"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {authority} has no address"))?;
    let timeout = std::time::Duration::from_secs(3);
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("{url}: no answer within 3 s")
        }
        _ => format!("{url}: {e}"),
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(failed)?;
    s.set_read_timeout(Some(timeout)).map_err(failed)?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(failed)?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(failed)?;
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(code) => Err(format!("{url} answered {code}")),
        None => Err(format!("{url} did not answer HTTP")),
    }
}

/// Answers every request on `listener` with the page naming `version`.
async fn serve_page(listener: TcpListener, version: String) {
    let body = Bytes::from(page(&version));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let resp = Response::builder()
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .body(Full::new(body.clone()));
                async move { resp }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The demo's configuration: v1 as stable, v2 as canary at [`DEMO_PERCENT`].
pub fn config_text(listen: SocketAddr, v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "listen: {listen}\n\
         sticky:\n  header: x-user-id\n  cookie: uid\n\
         pools:\n  stable: [{v1}]\n  canary: [{v2}]\n\
         rollout:\n  id: demo\n  percent: {DEMO_PERCENT}\n\
         admin:\n  socket: admin.sock\n\
         state:\n  file: state.json\n"
    )
}

/// How to run this same program from the directory the demo was started in: `ramp` when that is
/// what the shell finds, else its path (`target/release/ramp` from a checkout).
fn this_program() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "ramp".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::canonicalize(d.join("ramp")).is_ok_and(|p| Some(p) == exe.canonicalize().ok())
        })
    });
    if on_path {
        return "ramp".into();
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| exe.clone());
    // A bare name would be looked up on PATH, and could run another ramp.
    match shown.parent() {
        Some(p) if p.as_os_str().is_empty() => format!("./{}", shown.display()),
        _ => shown.display().to_string(),
    }
}

pub async fn run(listen: SocketAddr) -> Result<(), AppError> {
    // The address first: the advice printed below is no use if the proxy cannot start.
    if let Err(error) = std::net::TcpListener::bind(listen) {
        return Err(AppError::Demo(std::io::Error::new(
            error.kind(),
            format!(
                "{listen}: {error} (another program listens there? try `ramp demo --listen 127.0.0.1:8090`)"
            ),
        )));
    }
    let v1 = page_server("v1").await.map_err(AppError::Demo)?;
    let v2 = page_server("v2").await.map_err(AppError::Demo)?;
    // A real file in a private directory, so hot reload and `ramp ctl` can be tried too.
    let dir = std::env::temp_dir().join(format!("ramp-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(AppError::Demo)?;
    let path = dir.join("ramp.yaml");
    std::fs::write(&path, config_text(listen, v1, v2)).map_err(AppError::Demo)?;
    let config = config::load(&path)?;
    let socket = dir.join("admin.sock");
    let ramp = this_program();
    println!(
        "ramp demo: stable v1 on {v1}, canary v2 on {v2}, {DEMO_PERCENT}% of users on v2.\n\
         \n  Open http://{listen}/ in a browser: you get a cookie and stay on one version.\n  \
         See the split over 20 users:\n    \
         for i in $(seq 1 20); do curl -s -H \"x-user-id: user-$i\" http://{listen}/ | grep -o 'v[12]' | head -1; done | sort | uniq -c\n  \
         Which pool a user gets: {ramp} bucket --rollout demo --percent {DEMO_PERCENT} user-1 user-2\n  \
         Drive the rollout: {ramp} ctl --socket {socket} status   (then set 50, halt, resume, rollback, promote)\n  \
         Edit {path} and it reloads by itself.\n  \
         Stop with Ctrl-C.\n",
        socket = socket.display(),
        path = path.display(),
    );
    let result = app::serve(path, config, app::Options::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
