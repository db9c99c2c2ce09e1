//! The `ramp` command line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_appender::non_blocking::ErrorCounter;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ramp::config::{self, ppm_to_percent};
use ramp::routing;
use ramp::routing::{Rollout, State};
use ramp::shown;

/// mimalloc: fewer instructions per allocation than glibc's, and no per-thread arenas that keep
/// freed memory (measured in benches; see the README's performance section).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` (index 4 of v3's `mi_option_e`; the crate names only the stable
/// options). Committing arenas lazily held 9,800 idle connections in 48.6 MiB instead of 66.5, with
/// no CPU cost measured (README, performance).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs before `main`, after mimalloc has read its environment and before Rust's first allocation
/// reserves an arena (later would be too late for that arena). `set_default` leaves an option the
/// environment set alone, so `MIMALLOC_ARENA_EAGER_COMMIT=1` still turns eager commit on.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_LAZILY: extern "C" fn() = commit_lazily;

#[cfg(target_os = "linux")]
extern "C" fn commit_lazily() {
    // SAFETY: a plain store into mimalloc's option table; only this thread runs before main.
    unsafe { libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
}

#[derive(Parser)]
#[command(name = "ramp", version, about = "A staged-rollout reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Restart recipe: take the admin socket over from the ramp already running on it
        /// (the listener is shared through SO_REUSEPORT); then SIGTERM the old one.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a configuration file; print every problem with its line and column.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Check the file alone, without reading the files it names (certificates, keys, the
        /// etcd password file): for a machine that does not have them, such as CI.
        #[arg(long)]
        config_only: bool,
    },
    /// Start two demo upstreams (v1, v2) and the proxy in front of them, 10% on v2.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Send a command to a running ramp's admin socket: status, set PERCENT, halt, resume,
    /// rollback, promote, start [ROLLOUT_ID [PERCENT]], reload, bucket USER_ID.
    Ctl {
        /// The admin socket (default: admin.socket of --config, else $RAMP_SOCKET unless empty).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Read the socket path (only admin.socket) from this config file; the rest of the file
        /// may be invalid.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        /// How long to wait for the reply (e.g. 5s, 2m). A ramp that is stopped reads the
        /// command when it runs again.
        #[arg(long, default_value = "60s", value_parser = wait)]
        timeout: std::time::Duration,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// A tiny page server for demos and compose files: answers every request with a page
    /// naming its version.
    DemoUpstream {
        /// The version the page names (e.g. v1).
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Exit 0 if GET URL answers 2xx within 3 s (for container health checks).
    Probe { url: String },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Print each user id's bucket, the percent from which it is on canary, and its pool.
    Bucket {
        /// The rollout id (the hash salt).
        #[arg(long)]
        rollout: String,
        /// Show the pool at this canary percent (2.5 or 2.5%).
        #[arg(long, allow_hyphen_values = true)]
        percent: Option<String>,
        #[arg(required = true)]
        user_ids: Vec<OsString>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` when set; otherwise info, but only errors from rustls: its warnings describe what
/// a client sent (an IP address as SNI, say), one line per connection for any client to trigger.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error,notify=error";

/// Log lines waiting for stderr before more are dropped (about 2 MB of lines).
const LOG_LINES_WAITING: usize = 10_000;

/// Logs go to stderr from a thread of their own. A reader of stderr that stalls (journald on a
/// hung disk, a blocking log driver, a stopped `| tee`) would otherwise stop every thread that
/// logs, the proxy's and the controller's too, once the pipe is full: past
/// [`LOG_LINES_WAITING`] lines waiting, lines are dropped and counted instead. The guard writes
/// out what waits when it is dropped ([`ramp::logs::flush`]). Lines stderr refuses (a full disk
/// under the file it goes to) are counted too.
fn init_logs(format: LogFormat) -> ErrorCounter {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_WAITING)
        .thread_name("ramp-log")
        .finish(ramp::logs::Stderr::default());
    let dropped = writer.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    ramp::logs::keep_until_exit(guard);
    dropped
}

/// Fails, saying why, unless the system lets ramp start the threads it runs on: the runtime's
/// workers (none for `workers: 1`, which runs on this one), the log writer, the state file's
/// writer, the config file's watcher, the metrics listener if configured, and one for blocking
/// work. Each would otherwise fail where it starts — inside the log writer's crate or the
/// runtime's, which panic (the runtime's left the process hanging unserved) — under a limit on
/// processes (`ulimit -u`, systemd's `TasksMax=`, a container's pids limit).
fn threads_left(workers: usize, metrics: bool) -> anyhow::Result<()> {
    let workers = if workers == 1 { 0 } else { workers };
    let needed = workers + 4 + usize::from(metrics);
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut started = Vec::with_capacity(needed);
    let mut refused = None;
    for _ in 0..needed {
        let release = release.clone();
        let spawned = std::thread::Builder::new()
            .name("ramp-start".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                while !release.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::park();
                }
            });
        match spawned {
            Ok(t) => started.push(t),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    release.store(true, std::sync::atomic::Ordering::Release);
    for t in started {
        t.thread().unpark();
        let _ = t.join();
    }
    match refused {
        None => Ok(()),
        Some(e) => {
            let mut what = Vec::new();
            if workers > 0 {
                what.push(format!("{workers} runtime workers"));
            }
            what.extend(
                [
                    "logs",
                    "the state file's writer",
                    "the config watcher",
                    "blocking work",
                ]
                .map(String::from),
            );
            if metrics {
                what.push("the metrics listener".to_owned());
            }
            anyhow::bail!(
                "cannot start the {needed} threads ramp runs on ({}): {e}; raise the limit on processes (ulimit -u, systemd's LimitNPROC= or TasksMax=, a container's pids limit) or lower `workers`",
                what.join(", ")
            )
        }
    }
}

/// One worker: a single-threaded runtime, whose one first-in first-out run queue serves every
/// connection in turn and needs no cross-thread synchronisation. (With the work-stealing
/// runtime on one worker, a few of 512 busy connections waited far longer than the rest: p99
/// 1.9x HAProxy's, against 1.0x here; see the README's Performance section.)
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Below this open files limit ramp does not start. About 20 descriptors are its own before
/// any connection; with 22 to 24 it started, and then refused every `set` and could not save a
/// halt for want of one.
const MIN_OPEN_FILES: u64 = 64;

/// Raises the soft limit on open files to the hard one (as Go's runtime does): each client
/// connection, each upstream connection and each admin or metrics peer take a descriptor, and the
/// usual soft limit, 1024, is far below `limits.max_connections`' default. Says so if the limit
/// stays too low for `limits.max_connections` and `upstream.max_connections`; fails below
/// [`MIN_OPEN_FILES`].
fn open_files(max_connections: usize, max_upstream: usize) -> anyhow::Result<Option<u64>> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(None);
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
                soft
            }
        }
    } else {
        soft
    };
    if limit < MIN_OPEN_FILES {
        anyhow::bail!(
            "the open files limit ({limit}) is below the {MIN_OPEN_FILES} ramp needs: its own files (listeners, the admin socket, the state file, the config watcher, the runtime's) take about 20, and a halt must still find one to be saved; raise it (LimitNOFILE=, ulimit -n)"
        );
    }
    if let Some(needed) = ramp::config::open_files_short(limit, max_connections, max_upstream) {
        tracing::warn!(limit, needed, "{}", ramp::config::OPEN_FILES_SHORT);
    }
    Ok(Some(limit))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under `--log-format json` the reason ramp could not start is a log line like the others,
    // so that a collector parsing each line as JSON keeps it rather than dropping it.
    let json = matches!(
        cli.command,
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        } | Command::Demo {
            log_format: LogFormat::Json,
            ..
        }
    );
    let ran = run(cli.command);
    // The log lines still waiting go out before anything else is said.
    ramp::logs::flush();
    match ran {
        Ok(code) => code,
        Err(e) => {
            let said = format!("{e:#}");
            if json {
                let line = serde_json::json!({
                    "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                    "level": "ERROR",
                    "fields": {"message": format!("ramp: {said}")},
                    "target": "ramp",
                });
                eprintln!("{line}");
            } else {
                eprintln!("ramp: {}", shown::for_terminal(&said));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            log_format,
            takeover,
        } => {
            // A SIGHUP (a reload racing a restart), SIGUSR1 or SIGUSR2 sent while ramp starts
            // waits until ramp can take it, rather than ending the process.
            ramp::app::hold_signals();
            let path = config;
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    let lines = e.lines();
                    let more = match e.count() {
                        0 | 1 => String::new(),
                        n => format!(" (and {} more: run `ramp check`)", n - 1),
                    };
                    anyhow::bail!("invalid config: {}{more}", lines.first().map_or("", |l| l));
                }
            };
            threads_left(config.workers, config.metrics.is_some())?;
            let dropped_logs = init_logs(log_format);
            let open_files = open_files(
                config.limits.max_connections,
                config.upstream.max_connections,
            )?;
            let options = ramp::app::Options {
                takeover,
                dropped_logs: Some(dropped_logs),
                open_files,
            };
            runtime(config.workers)?.block_on(ramp::app::serve(path, config, options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            config_only,
        } => match config::load(&config) {
            Ok(c) => {
                let mut warnings = c.warnings();
                let mut problems = Vec::new();
                if !config_only {
                    problems = ramp::control::Controller::check(&c);
                    warnings.extend(config::names::warnings(&c));
                    warnings.extend(ramp::tls::TlsConfigs::warnings(&c));
                    warnings.extend(
                        ramp::control::watcher::unwatchable(&config, &c)
                            .into_iter()
                            .map(|dir| format!("cannot watch {dir}: changes to the files there are read only at a reload (ramp ctl reload, SIGHUP)")),
                    );
                }
                for warning in warnings {
                    let warning = shown::for_terminal(&warning);
                    eprintln!("{}: warning: {warning}", config.display());
                }
                if !problems.is_empty() {
                    for e in problems {
                        let e = e.to_string();
                        eprintln!("{}: {}", config.display(), shown::for_terminal(&e));
                    }
                    return Ok(ExitCode::FAILURE);
                }
                // A reader that went away (`| true`) is no reason to fail: the exit code says it.
                print_out(
                    &format!(
                        "{}: ok (listen {}, {} stable and {} canary upstreams, rollout {:?} from {}%)",
                        config.display(),
                        c.listen,
                        c.pools.stable.len(),
                        c.pools.canary.len(),
                        c.rollout.id,
                        ppm_to_percent(c.rollout.plan.first_ppm())
                    ),
                    "the result",
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                for line in e.lines() {
                    eprintln!("{}", shown::for_terminal(&line));
                }
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { listen, log_format } => {
            init_logs(log_format);
            runtime(1)?.block_on(ramp::demo::run(listen))?;
            Ok(ExitCode::SUCCESS)
        }
        // `ramp ctl help`: what a newcomer types first; here, not sent to a ramp as a command.
        Command::Ctl { command, .. } if command == ["help"] => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Built, so that its usage line says `ramp ctl`.
            cmd.build();
            if let Some(ctl) = cmd.find_subcommand_mut("ctl") {
                let help = ctl.render_long_help().to_string();
                print_out(&help, "the help")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl {
            socket,
            config,
            json,
            timeout,
            command,
        } => ctl(
            socket,
            config,
            json,
            timeout,
            &ramp::control::client::command_line(&command)?,
        ),
        Command::Bucket {
            rollout,
            percent,
            user_ids,
        } => bucket(&rollout, percent.as_deref(), &user_ids),
        Command::DemoUpstream { name, listen } => {
            init_logs(LogFormat::Text);
            runtime(1)?.block_on(ramp::demo::upstream(&name, listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url } => Ok(match ramp::demo::probe(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ramp probe: {e}");
                ExitCode::FAILURE
            }
        }),
        Command::Completions { shell } => {
            use std::io::Write;
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Made in memory: clap_complete panics on a failed write, and a reader that went
            // away (`| head`) is no reason to.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ramp", &mut script);
            Ok(match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("ramp completions: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            })
        }
    }
}

/// `ramp ctl --timeout`: a duration of at least a millisecond.
fn wait(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= std::time::Duration::from_millis(1) => Ok(d),
        Ok(_) => Err("at least 1ms".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `text` and a line break to stdout: a reader that went away (`| head`, `| true`) is no
/// error, a stdout that refuses it (a full disk) is, naming `what` could not be written.
fn print_out(text: &str, what: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            anyhow::bail!("cannot write {what}: {e}")
        }
        _ => Ok(()),
    }
}

fn ctl(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
    timeout: std::time::Duration,
    line: &str,
) -> anyhow::Result<ExitCode> {
    // An empty RAMP_SOCKET counts as unset, as an empty variable usually does.
    let from_env = std::env::var_os("RAMP_SOCKET")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    // What is on the command line wins over the environment: an operator who names a config
    // means that ramp, whatever RAMP_SOCKET an earlier session left set.
    let socket = match (socket, config, from_env) {
        (Some(s), _, _) => s,
        (None, Some(path), _) => match config::admin_socket(&path) {
            Ok(Some(socket)) => socket,
            Ok(None) => anyhow::bail!("{} has no admin.socket; give --socket PATH", path.display()),
            Err(e) => anyhow::bail!("{e} (give --socket PATH)"),
        },
        (None, None, Some(s)) => s,
        (None, None, None) => {
            anyhow::bail!("give --socket PATH, --config PATH or set RAMP_SOCKET")
        }
    };
    let answer = ramp::control::client::request(&socket, line, timeout)?;
    // The JSON line has its control characters escaped already; the table shows names from
    // the state file and the fleet's key, which anyone who can write those may fill.
    let text = if json {
        answer.line.clone()
    } else {
        let table = ramp::control::client::human(&answer.reply);
        shown::for_terminal(table.trim_end()).into_owned()
    };
    // A reader that stopped early (`ramp ctl status | head -1`) is no error of the command.
    print_out(&text, "the reply")?;
    Ok(if answer.ok() {
        ExitCode::SUCCESS
    } else if answer.in_effect() {
        // In force, not saved: told apart from a command that failed.
        ExitCode::from(3)
    } else {
        ExitCode::FAILURE
    })
}

fn bucket(rollout: &str, percent: Option<&str>, ids: &[OsString]) -> anyhow::Result<ExitCode> {
    let id = config::rollout_id(rollout).map_err(|e| anyhow::anyhow!("--rollout: {e}"))?;
    let ppm = percent
        .map(ramp::control::command::percent)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--percent: {e}"))?;
    let r = Rollout::new(&id, ppm.unwrap_or(0), State::Running);
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = (|| {
        writeln!(
            out,
            "{:<24} {:>7} {:>13}  pool",
            "user id", "bucket", "canary from"
        )?;
        for user in ids {
            let bytes = user.as_bytes();
            // Ids are pasted from logs and cookies: shown escaped, one per line.
            let lossy = user.to_string_lossy();
            let name = shown::escaped(&lossy);
            if !(1..=routing::MAX_ID_LEN).contains(&bytes.len()) {
                writeln!(
                    out,
                    "{name:<24} {:>7} {:>13}  (not an id: 1 to 1024 bytes)",
                    "-", "-"
                )?;
                continue;
            }
            let b = routing::bucket(&r.salt, bytes);
            let pool = ppm.map_or("-", |_| routing::assign(&r, bytes).as_str());
            let from = format!("{}%", ppm_to_percent(b + 1));
            writeln!(out, "{name:<24} {b:>7} {from:>13}  {pool}")?;
        }
        out.flush()
    })();
    match written {
        // A reader that stopped early (`| head`) is no error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            anyhow::bail!("cannot write the buckets: {e}")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::ARENA_EAGER_COMMIT;

    #[test]
    fn arenas_are_committed_lazily_unless_the_environment_says_otherwise() {
        // SAFETY: reads mimalloc's option table.
        let value = unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) };
        match std::env::var("MIMALLOC_ARENA_EAGER_COMMIT") {
            Err(_) => assert_eq!(value, 0),
            Ok(set) if set == "1" => assert_eq!(value, 1),
            Ok(_) => {}
        }
    }
}
