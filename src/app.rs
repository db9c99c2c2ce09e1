//! Wiring: the listener, the first snapshot, and the tasks around them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, ppm_to_percent};
use crate::proxy::{self, Proxy};
use crate::snapshot::{Rollout, Shared, Snapshot, State};
use crate::upstream::Registry;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the demo upstreams: {0}")]
    Demo(std::io::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let addr = config.listen;
    let bind_err = |error| AppError::Bind { addr, error };
    let listener = TcpListener::from_std(proxy::bind(addr).map_err(bind_err)?).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;

    let registry = Registry::new();
    let rollout = Rollout::new(
        &config.rollout.id,
        config.rollout.plan.first_ppm(),
        State::Running,
    );
    let snapshot = Snapshot::build(Arc::new(config), rollout, &registry);
    tracing::info!(
        addr = %local,
        rollout = %snapshot.rollout.id,
        percent = ppm_to_percent(snapshot.rollout.ppm),
        state = snapshot.rollout.state.as_str(),
        "listening"
    );
    let proxy = Arc::new(Proxy {
        shared: Arc::new(Shared::new(snapshot)),
    });

    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        () = proxy::serve(listener, proxy) => {}
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, AppError> {
    tokio::signal::unix::signal(kind).map_err(AppError::Signal)
}
