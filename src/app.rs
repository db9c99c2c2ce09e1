//! Wiring: the listener, the controller with the first snapshot, the admin socket, the reload
//! triggers, and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, ppm_to_percent};
use crate::control::{Controller, admin, watcher};
use crate::proxy::{self, Proxy};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot start the demo: {0}")]
    Demo(std::io::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the proxy on `config` (read from `config_path`) until SIGTERM or SIGINT.
pub async fn serve(config_path: PathBuf, config: Config) -> Result<(), AppError> {
    let addr = config.listen;
    let bind_err = |error| AppError::Bind { addr, error };
    let listener = TcpListener::from_std(proxy::bind(addr).map_err(bind_err)?).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let admin_config = config.admin.clone();
    let admin_listener = admin_config.as_ref().map(admin::bind).transpose()?;

    let (controller, shared, handle) = Controller::start(config_path.clone(), config);
    let _watcher = watcher::watch(&config_path, handle.clone())?;
    watcher::on_sighup(handle.clone()).map_err(AppError::Signal)?;
    if let (Some(listener), Some(admin)) = (admin_listener, admin_config.clone()) {
        tracing::info!(path = %admin.socket.display(), "admin socket ready");
        tokio::spawn(admin::serve(listener, admin, handle.clone()));
    }
    tokio::spawn(controller.run());

    let first = shared.load();
    tracing::info!(
        addr = %local,
        rollout = %first.rollout.id,
        percent = ppm_to_percent(first.rollout.ppm),
        state = first.rollout.state.as_str(),
        "listening"
    );
    drop(first);
    let proxy = Arc::new(Proxy { shared });

    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        () = proxy::serve(listener, proxy) => {}
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    if let Some(admin) = admin_config {
        admin::remove(&admin.socket);
    }
    drop(handle);
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, AppError> {
    tokio::signal::unix::signal(kind).map_err(AppError::Signal)
}
