//! Wiring: the listener, the controller with the first snapshot, the admin socket, the reload
//! triggers, health checks, metrics, and the graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::analysis::{self, Act, Analysis};
use crate::config::{Config, ConfigError, GuardAction, ppm_to_percent};
use crate::control::{Command, ControlError, Controller, Handle, Source, admin, probes, watcher};
use crate::metrics::{self, Metrics};
use crate::net;
use crate::proxy::{self, Proxy};
use crate::tls;
use crate::web;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("metrics.listen: cannot listen on {addr}: {error}")]
    MetricsBind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Start(#[from] crate::control::StartError),
    #[error("cannot make the config file's watcher: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot start the metrics exporter: {0}")]
    Metrics(String),
    #[error("cannot start the demo: {0}")]
    Demo(std::io::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("the admin socket {0} does not answer a command (out of descriptors?): not started")]
    AdminSilent(String),
}

/// How `serve` starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Take the admin socket over from a running ramp (the restart recipe).
    pub takeover: bool,
    /// Log lines dropped because stderr's reader fell behind.
    pub dropped_logs: Option<tracing_appender::non_blocking::ErrorCounter>,
    /// The open files limit ramp runs under, if known.
    pub open_files: Option<u64>,
}

/// The client connections ramp takes at most under `open_files`: beyond them the longest-idle
/// connection makes room, where accepting would otherwise fail for want of descriptors, with no
/// room left for the admin socket, the state file or upstream connections (which get the other
/// half: see [`crate::config::fit_open_files`]).
pub fn client_connections(max_connections: usize, open_files: Option<u64>) -> usize {
    match open_files {
        Some(limit) => crate::config::fit_open_files(max_connections, limit),
        None => max_connections,
    }
}

/// How long a successor waits for the process it replaces to leave the metrics address: past
/// the second it takes to notice, with room for a busy machine.
const METRICS_HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the proxy on `config` (read from `config_path`) until SIGTERM or SIGINT, then drains.
pub async fn serve(config_path: PathBuf, config: Config, options: Options) -> Result<(), AppError> {
    tls::install_provider();
    // Taken first, so that a SIGHUP (a reload racing a restart), or a SIGUSR1 or SIGUSR2 (a
    // logrotate script), sent while ramp starts is kept for later rather than ending the process,
    // as it would with no handler yet.
    let hup = signal(tokio::signal::unix::SignalKind::hangup())?;
    // SIGUSR1 and SIGUSR2 mean something to other servers (nginx reopens its logs on USR1, and a
    // logrotate script may send it to every process it knows): here they are logged and
    // ignored, rather than ending ramp as their default action would.
    for (kind, name) in [
        (tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1"),
        (tokio::signal::unix::SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        let mut s = signal(kind)?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                tracing::info!(signal = name, "ignored: ramp has no use for it");
            }
        });
    }
    held_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
    // Every file the config names is read before anything is taken from a running ramp: a
    // restart with --takeover that cannot start leaves the old one its ports and admin socket.
    Controller::preflight(&config)?;
    let addr = config.listen;
    let bind_err = |error| AppError::Bind { addr, error };
    let listener = net::bind(addr, options.takeover).and_then(TcpListener::from_std);
    let listener = listener.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let metrics_listener = match config.metrics.as_ref().map(|m| m.listen) {
        Some(addr) => Some((
            net::bind_quiet(addr, options.takeover)
                .map_err(|error| AppError::MetricsBind { addr, error })?,
            addr,
        )),
        None => None,
    };
    let exporter = match &metrics_listener {
        Some(_) => Some(metrics::install().map_err(|e| AppError::Metrics(e.to_string()))?),
        None => None,
    };
    let admin_config = config.admin.clone();
    let page_hosts: Arc<[String]> = config
        .metrics
        .as_ref()
        .map(|m| m.allowed_hosts.clone().into())
        .unwrap_or_default();
    // Made before the admin socket is taken: a restart that cannot watch files (no inotify
    // instance left) leaves the running ramp as it was.
    let watcher = watcher::prepare()?;
    let admin_bound = admin_config
        .as_ref()
        .map(|a| admin::bind(a, options.takeover))
        .transpose()?;
    let (mut limits, tls_on) = (config.limits, config.tls.is_some());
    if let Some(limit) = options.open_files {
        crate::config::run_under_open_files(limit);
    }
    let fit = client_connections(limits.max_connections, options.open_files);
    if fit < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            in_force = fit,
            open_files = options.open_files,
            "limits.max_connections is lowered to what the open files limit leaves room for: beyond it the longest-idle connection makes room, and the admin socket, the state file and upstreams keep descriptors"
        );
        limits.max_connections = fit;
    }

    let analysis = Arc::new(Analysis::new());
    // A restart takes the state file's handover lock to read it: a change the old process was
    // writing lands first, and any later one is refused there (see `handover`).
    let handover = match (&config.state_file, options.takeover) {
        (Some(state), true) => Some(crate::control::handover::lock(state).await),
        _ => None,
    };
    let (mut controller, current, handle) =
        Controller::start(config_path.clone(), config, Arc::clone(&analysis)).await?;
    drop(handover);
    if let Some((_, owned, _)) = &admin_bound
        && let Some(admin) = &admin_config
    {
        controller.own(admin.socket.clone(), owned.clone());
    }
    if let Some((etcd, key)) = controller.fleet() {
        tokio::spawn(crate::control::watch_fleet(etcd, key, handle.clone()));
    }
    let _watcher = watcher::watch(watcher, &config_path, Arc::clone(&current), handle.clone());
    watcher::on_sighup(handle.clone(), hup);
    // Set once a successor has taken over: the metrics listener then leaves its address to the
    // successor's, so that a scrape never reads this process's counters after the other's.
    let handed_over = tokio::sync::watch::Sender::new(false);
    if let (Some((socket, addr)), Some(exporter)) = (metrics_listener, exporter) {
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        let web = web::Web {
            exporter,
            handle: handle.clone(),
            analysis: Arc::clone(&analysis),
            allowed_hosts: page_hosts,
        };
        // On a thread and runtime of its own: a scrape, or a flood of requests to the page, never
        // waits in line with the proxy's requests (with `workers: 1` there is one such line).
        let serve = move |socket: socket2::Socket, handed_over| {
            socket.listen(4096)?;
            tracing::info!(addr = %addr, "metrics at /metrics");
            web::spawn(socket.into(), web, handed_over)
        };
        if options.takeover && admin_config.is_none() {
            tracing::warn!(addr = %addr, "--takeover without admin.socket: the process this one replaces never learns of it, and both answer on the metrics address until it exits (a scrape may read either)");
        }
        if options.takeover {
            // The process this one replaces answers there until it notices the successor (within
            // a second of the admin socket's takeover) and closes its listener. Listening only
            // then, no scrape reads its counters after this one's, which would look like a reset
            // and a jump; for that second a scrape finds only the old process, or (between the
            // two) nothing.
            let handed_over = handed_over.subscribe();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                while net::listened_on(addr) {
                    if start.elapsed() > METRICS_HANDOVER_WAIT {
                        tracing::warn!(addr = %addr, "another process still listens on the metrics address: this one listens beside it (a scrape may read either)");
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                if let Err(e) = serve(socket, handed_over) {
                    tracing::error!(addr = %addr, error = %e, "cannot serve the metrics address");
                }
            });
        } else {
            serve(socket, handed_over.subscribe()).map_err(|e| {
                AppError::Metrics(format!("cannot start the metrics listener: {e}"))
            })?;
        }
    }
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    // Everything that can fail has: from here this process serves the admin socket (a start
    // that failed before gave a running ramp's socket back).
    let mut takeback = None;
    let admin_task = match (admin_bound, admin_config.clone()) {
        (Some((listener, owned, back)), Some(admin)) => {
            let task = tokio::spawn(admin::serve(
                listener,
                admin.clone(),
                owned.clone(),
                handle.clone(),
            ));
            takeback = Some(back);
            Some((task, admin, owned))
        }
        _ => None,
    };
    let stop = admin_task.as_ref().map(|_| controller.stop_when());
    let controller_task = tokio::spawn(controller.run());
    if let (Some(back), Some((task, admin, _))) = (takeback, &admin_task) {
        // Taken over only once it answers (a process that bound the socket but cannot accept on
        // it, short of descriptors, would hold it unanswered): else the running ramp gets it back.
        let path = admin.socket.clone();
        // On a thread of its own, started here, so that one the system refuses (under a limit
        // on processes that another process reached since `serve` checked it) is a socket not
        // answered, handed back, rather than a panic of the runtime's blocking pool.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let asked = std::thread::Builder::new()
            .name("ramp-takeover".to_owned())
            .spawn(move || {
                let _ = tx.send(admin::answers(&path));
            });
        let answered = match asked {
            Ok(_) => rx.await.unwrap_or(false),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a thread to ask the new admin socket");
                false
            }
        };
        if !answered {
            task.abort();
            controller_task.abort();
            drop(back);
            // The socket made here goes too (unless the running ramp's was given back over it).
            if let Some((_, admin, owned)) = &admin_task {
                admin::remove(&admin.socket, owned);
            }
            return Err(AppError::AdminSilent(admin.socket.display().to_string()));
        }
        tracing::info!(path = %admin.socket.display(), "admin socket ready");
        back.done();
    }
    if let (Some((_, admin, owned)), Some(stop)) = (&admin_task, stop) {
        // A successor started with --takeover owns the rollout state from now on: this process
        // stops changing it (a schedule step or a guard action written over a change made at the
        // successor) and drains, as at a SIGTERM: serving on with the state it has, it would keep
        // some users from every change made at the successor for as long as nobody stopped it.
        // (Every change checks first, and the state file's writer again as it writes: this ends
        // the rest.)
        let (path, owned) = (admin.socket.clone(), owned.clone());
        let handed_over = handed_over.clone();
        tokio::spawn(async move {
            admin::taken_over(path, owned).await;
            tracing::warn!(
                "a newer ramp has taken the admin socket over: this one makes no more changes (no schedule step, guard action or state file write), leaves the metrics address to it, and drains: it stops accepting, finishes the requests in flight and exits"
            );
            let _ = stop.send(());
            handed_over.send_replace(true);
        });
    }
    tokio::spawn(probes::run(Arc::clone(&current)));
    if let Some(dropped) = options.dropped_logs.clone() {
        tokio::spawn(count_dropped_logs(dropped));
    }
    let (act_tx, act_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(analysis::run(
        Arc::clone(&analysis),
        Arc::clone(&current),
        act_tx,
    ));
    tokio::spawn(guard_actions(act_rx, handle.clone()));

    let first = current.load();
    let rollout = &first.routing.rollout;
    tracing::info!(
        addr = %local,
        tls = tls_on,
        rollout = %rollout.id,
        percent = ppm_to_percent(rollout.ppm),
        state = rollout.state.as_str(),
        "listening"
    );
    drop(first);
    let proxy = Arc::new(Proxy::new(current, Metrics::new(), analysis, local));

    let mut successor = handed_over.subscribe();
    let shutdown = async move {
        let taken_over = async {
            if successor.wait_for(|&taken| taken).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let signalled = tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); true }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); true }
            () = taken_over => false,
        };
        // No more changes from this process: a successor may already own the rollout state.
        controller_task.abort();
        if let Some((task, admin, owned)) = admin_task {
            task.abort();
            admin::remove(&admin.socket, &owned);
        }
        drop(handle);
        // A second SIGTERM or SIGINT while draining: stop now. After a takeover the first one
        // is the operator's (or systemd's) stop, which the drain under way already does.
        tokio::spawn(async move {
            if !signalled {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!(
                    "draining already, since the takeover: a second signal exits at once"
                );
            }
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!(
                "a second signal: exiting now, without waiting for the connections still open"
            );
            crate::logs::flush();
            std::process::exit(1);
        });
    };
    proxy::serve(listener, tls_on, proxy, limits, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Holds SIGHUP, SIGUSR1 and SIGUSR2 back (on this thread, and the threads it starts) until
/// [`serve`] has handlers for them: any of them with no handler ends the process.
pub fn hold_signals() {
    held_signals(nix::sys::signal::SigmaskHow::SIG_BLOCK);
}

fn held_signals(how: nix::sys::signal::SigmaskHow) {
    use nix::sys::signal::Signal::{SIGHUP, SIGUSR1, SIGUSR2};
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [SIGHUP, SIGUSR1, SIGUSR2] {
        set.add(s);
    }
    if let Err(e) = nix::sys::signal::pthread_sigmask(how, Some(&set), None) {
        tracing::warn!(error = %e, "cannot change the signal mask for SIGHUP, SIGUSR1 and SIGUSR2");
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, AppError> {
    tokio::signal::unix::signal(kind).map_err(AppError::Signal)
}

/// Applies what the guard asks for through the controller, like any other change.
async fn guard_actions(mut acts: tokio::sync::mpsc::Receiver<Act>, handle: Handle) {
    let [halts, rollbacks] = ["halt", "rollback"]
        .map(|a| ::metrics::counter!("ramp_guard_actions_total", "action" => a));
    halts.increment(0);
    rollbacks.increment(0);
    while let Some(act) = acts.recv().await {
        let (command, name, counter) = match act.action {
            GuardAction::Halt => (Command::Halt, "halt", &halts),
            GuardAction::Rollback => (Command::Rollback, "rollback", &rollbacks),
        };
        tracing::warn!(action = name, reason = %act.reason, "the guard acts: the canary regressed");
        let source = Source::Guard {
            reason: act.reason,
            rollout: act.rollout.to_string(),
        };
        match handle.send(command, source).await {
            Ok(_) => counter.increment(1),
            Err(e @ ControlError::GuardLate { .. }) => {
                tracing::info!(action = name, reason = %e, "the guard's action is dropped");
            }
            // In force, and written to the fleet when etcd answers again.
            Err(e @ ControlError::UnsavedInFleet { .. }) => {
                counter.increment(1);
                tracing::warn!(action = name, error = %e, "the guard's action is in force here, not yet in the fleet");
            }
            Err(e) => {
                // A halt or rollback is in force even when it could not be saved: it counts.
                if matches!(e, ControlError::Unsaved { .. }) {
                    counter.increment(1);
                }
                tracing::error!(action = name, error = %e, "the guard's action failed");
            }
        }
    }
}

/// `ramp_log_lines_dropped_total`, once a second, and one line once stderr takes lines again
/// (a second with no line dropped: a line said while it is still behind would be dropped too).
async fn count_dropped_logs(dropped: tracing_appender::non_blocking::ErrorCounter) {
    let (mut said, mut before) = (0, 0);
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let n = dropped.dropped_lines() as u64 + crate::logs::unwritten_lines();
        ::metrics::counter!("ramp_log_lines_dropped_total").absolute(n);
        if n > said && n == before {
            tracing::warn!(
                dropped = n - said,
                "log lines dropped: stderr's reader fell behind, or stderr could not be written (a full disk?); ramp never waits for it"
            );
            said = n;
        }
        before = n;
    }
}

#[cfg(test)]
mod tests {
    use super::client_connections;

    #[test]
    fn client_connections_leave_room_under_the_open_files_limit() {
        assert_eq!(client_connections(10_000, None), 10_000);
        assert_eq!(client_connections(10_000, Some(65_536)), 10_000);
        assert_eq!(client_connections(10_000, Some(1024)), 384);
        assert_eq!(client_connections(10_000, Some(64)), 16);
        assert_eq!(client_connections(10, Some(64)), 10);
        assert_eq!(client_connections(10_000, Some(1)), 1);
    }
}
