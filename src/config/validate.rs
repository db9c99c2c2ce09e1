//! Shape -> checked values. Collects every problem instead of stopping at the first.

mod rollout;
mod sticky;

use rollout::rollout;
pub use rollout::rollout_id;
use sticky::sticky;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::checker::{Checker, at};
use super::error::{Problem, Reason};
use super::file::{AdminFile, File, S};
use super::{Admin, CanaryUnavailable, Config, Pools, ServerCert, UpstreamAddr, UpstreamSettings};

/// The longest rollout id: it is hashed on every request and shown in status.
pub const MAX_ROLLOUT_ID: usize = 256;

/// Two listening addresses that would take the same connections: the same port (not 0) on the
/// same address (an IPv4-mapped IPv6 one is its IPv4 one), or on a wildcard address and another
/// it covers — `0.0.0.0` every IPv4 address, `[::]` every address (dual-stack, Linux's default).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |w: std::net::IpAddr, o: std::net::IpAddr| {
        w.is_unspecified() && (w.is_ipv6() || o.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (x == y || covers(x, y) || covers(y, x))
}

/// Whether `ip:port` reaches ramp's own listener at `listen` (on a wildcard address: through
/// loopback; other addresses of this machine cannot be told from another machine's).
fn is_own(listen: SocketAddr, ip: std::net::IpAddr, port: u16) -> bool {
    let (l, ip) = (listen.ip().to_canonical(), ip.to_canonical());
    let wildcard = l.is_unspecified() && (l.is_ipv6() || ip.is_ipv4());
    // Connecting to 0.0.0.0 (or ::) reaches this machine's loopback.
    let local = ip.is_loopback() || ip.is_unspecified();
    listen.port() == port
        && (l == ip || (wildcard && local) || (ip.is_unspecified() && l.is_loopback()))
}

pub fn validate(file: File) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();
    let listen = c.check(&file.listen, "listen", |s| {
        s.trim()
            .parse::<SocketAddr>()
            .map_err(|_| Reason::ListenAddress(s.clone()))
    });
    let workers = match &file.workers {
        Some(w) => c.check(w, "workers", |&n| {
            if (1..=1024).contains(&n) {
                Ok(n as usize)
            } else {
                Err(Reason::OutOfRange {
                    min: 1.0,
                    max: 1024.0,
                    got: n as f64,
                })
            }
        }),
        None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let sticky = sticky(&mut c, &file);
    let stable = pool(&mut c, &file.pools.stable, "pools.stable", listen);
    let canary = pool(&mut c, &file.pools.canary, "pools.canary", listen);
    let rollout = rollout(&mut c, &file);
    let upstream = file.upstream.as_ref();
    let upstream = UpstreamSettings {
        connect_timeout: c.duration(
            upstream.and_then(|u| u.connect_timeout.as_ref()),
            "upstream.connect_timeout",
            Duration::from_secs(1),
        ),
        response_timeout: c.duration(
            upstream.and_then(|u| u.response_timeout.as_ref()),
            "upstream.response_timeout",
            Duration::from_secs(30),
        ),
        pool_idle_timeout: c.duration(
            upstream.and_then(|u| u.idle_timeout.as_ref()),
            "upstream.idle_timeout",
            Duration::from_secs(60),
        ),
        max_idle_per_upstream: upstream
            .and_then(|u| u.max_idle_per_upstream.as_ref())
            .and_then(|m| {
                c.check(m, "upstream.max_idle_per_upstream", |&n| {
                    if n <= 100_000 {
                        Ok(n as usize)
                    } else {
                        Err(Reason::OutOfRange {
                            min: 0.0,
                            max: 100_000.0,
                            got: n as f64,
                        })
                    }
                })
            })
            .unwrap_or(1024),
        max_connections: c.int(
            upstream.and_then(|u| u.max_connections.as_ref()),
            "upstream.max_connections",
            1,
            1_000_000,
            10_000,
        ) as usize,
    };
    let hide: Vec<HeaderName> = file
        .hide_response_headers
        .iter()
        .filter_map(|h| c.check(h, "hide_response_headers", |s| header_name(s)))
        .collect();

    let admin = file.admin.as_ref().map(|a| admin(&mut c, a));
    let upstream_ca = file
        .upstream
        .as_ref()
        .and_then(|u| u.ca.as_ref())
        .and_then(|p| c.check(p, "upstream.ca", |p| path(p)));
    let tls = file.tls.as_ref().map(|t| {
        let cert = c.check(&t.cert, "tls.cert", |p| path(p));
        let key = c.check(&t.key, "tls.key", |p| path(p));
        Some(ServerCert {
            cert: cert?,
            key: key?,
        })
    });
    let health = file
        .health
        .as_ref()
        .map(|h| super::resilience::active(&mut c, h));
    let passive_health = super::resilience::passive(&mut c, file.passive_health.as_ref());
    let limits = super::resilience::limits(&mut c, file.limits.as_ref());
    let canary_unavailable = match &file.canary_unavailable {
        Some(v) => c.check(v, "canary_unavailable", |v| match v.as_str() {
            "fallback" => Ok(CanaryUnavailable::Fallback),
            "error" => Ok(CanaryUnavailable::Error),
            other => Err(Reason::OneOf("fallback, error", other.to_owned())),
        }),
        None => Some(CanaryUnavailable::Fallback),
    };
    let shutdown_grace = c.duration(
        file.shutdown_grace.as_ref(),
        "shutdown_grace",
        Duration::from_secs(30),
    );
    let metrics = file.metrics.as_ref().and_then(|m| {
        let allowed_hosts = match &m.allowed_hosts {
            Some(list) => c.check(list, "metrics.allowed_hosts", |l| {
                l.iter()
                    .map(|h| host_name(h))
                    .collect::<Result<Vec<_>, _>>()
            })?,
            None => Vec::new(),
        };
        let listen = c.check(&m.listen, "metrics.listen", |s| {
            let addr = s
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| Reason::ListenAddress(s.clone()))?;
            // Both listeners take SO_REUSEPORT (for --takeover), so the kernel would let them
            // share a port and split connections between them.
            match listen {
                Some(l) if overlap(l, addr) => Err(Reason::SameAsListen(l)),
                _ => Ok(addr),
            }
        })?;
        Some(super::Metrics {
            listen,
            allowed_hosts,
        })
    });
    let analysis = super::analysis::analysis(&mut c, file.analysis.as_ref());
    let guard = super::analysis::guard(&mut c, file.rollout.value.guard.as_ref());
    let state_file = file
        .state
        .as_ref()
        .and_then(|s| s.file.as_ref())
        .and_then(|f| c.check(f, "state.file", |p| path(p)));
    let fleet = file
        .state
        .as_ref()
        .and_then(|s| s.etcd.as_ref())
        .and_then(|e| super::analysis::fleet(&mut c, e));

    match (listen, workers, sticky, stable, canary, rollout) {
        (Some(listen), Some(workers), Some(sticky), Some(stable), Some(canary), Some(rollout))
            if c.problems.is_empty() =>
        {
            Ok(Config {
                listen,
                workers,
                sticky,
                pools: Pools { stable, canary },
                rollout,
                upstream,
                hide_response_headers: hide,
                admin: admin.flatten(),
                state_file,
                tls: tls.flatten(),
                upstream_ca,
                health: health.flatten(),
                passive_health,
                canary_unavailable: canary_unavailable.unwrap_or(CanaryUnavailable::Fallback),
                limits,
                shutdown_grace,
                metrics,
                analysis,
                guard,
                fleet,
            })
        }
        _ => Err(c.problems),
    }
}

pub(super) fn header_name(s: &str) -> Result<HeaderName, Reason> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| Reason::HeaderName(s.to_owned()))
}

fn pool(
    c: &mut Checker,
    list: &S<Vec<S<String>>>,
    field: &str,
    listen: Option<SocketAddr>,
) -> Option<Vec<UpstreamAddr>> {
    if list.value.is_empty() {
        c.fail(at(list), field, Reason::Empty);
        return None;
    }
    let mut out: Vec<UpstreamAddr> = Vec::with_capacity(list.value.len());
    let mut ok = true;
    for item in &list.value {
        // ramp itself as an upstream: every request would come back to it, each taking another
        // connection, until descriptors run out.
        let own = |addr: UpstreamAddr| match (listen, addr.host.parse::<std::net::IpAddr>()) {
            (Some(l), Ok(ip)) if is_own(l, ip, addr.port) => Err(Reason::OwnAddress(l)),
            _ => Ok(addr),
        };
        match c.check(item, field, |s| upstream_addr(s).and_then(own)) {
            Some(addr) if out.contains(&addr) => {
                c.fail(
                    at(item),
                    field,
                    Reason::DuplicateUpstream(item.value.clone()),
                );
                ok = false;
            }
            Some(addr) => out.push(addr),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `host:port`, `[v6]:port`, or the same behind `http://`.
pub fn upstream_addr(s: &str) -> Result<UpstreamAddr, Reason> {
    let bad = || Reason::UpstreamAddress(s.to_owned());
    let rest = s.trim();
    let (tls, rest) = match rest.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, rest.strip_prefix("http://").unwrap_or(rest)),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: http::uri::Authority = rest.parse().map_err(|_| bad())?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let port = authority.port_u16().ok_or_else(bad)?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(UpstreamAddr {
        host: host.to_ascii_lowercase(),
        port,
        tls,
    })
}

fn path(p: &str) -> Result<PathBuf, Reason> {
    if p.trim().is_empty() {
        return Err(Reason::Empty);
    }
    // A path is shown in logs, `ramp check` and status: no escape sequence or line break there.
    if p.chars().any(char::is_control) {
        return Err(Reason::Control(p.to_owned()));
    }
    Ok(PathBuf::from(p))
}

fn admin(c: &mut Checker, a: &AdminFile) -> Option<Admin> {
    let socket = c.check(&a.socket, "admin.socket", |p| path(p));
    let mode = match &a.mode {
        Some(m) => c.check(m, "admin.mode", |m| {
            u32::from_str_radix(m.trim(), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| Reason::Mode(m.clone()))
                .and_then(|m| {
                    if m & 0o600 == 0o600 {
                        Ok(m)
                    } else {
                        Err(Reason::OwnerCannotUse(m))
                    }
                })
        }),
        None => Some(0o600),
    };
    let group = match &a.group {
        Some(g) => c.check(g, "admin.group", |g| group_id(g)).map(Some),
        None => Some(None),
    };
    let own = nix::unistd::getuid().as_raw();
    let allowed = match &a.allowed_uids {
        Some(list) => c.check(list, "admin.allowed_uids", |l| {
            if l.is_empty() {
                Err(Reason::NobodyAllowed)
            } else {
                Ok(l.clone())
            }
        }),
        None => Some(vec![0, own]),
    };
    let readonly = match (&a.readonly_uids, &allowed) {
        (Some(list), Some(allowed)) => c.check(list, "admin.readonly_uids", |l| {
            match l.iter().find(|u| allowed.contains(u)) {
                Some(&uid) => Err(Reason::BothLists(uid)),
                None => Ok(l.clone()),
            }
        }),
        (Some(list), None) => Some(list.value.clone()),
        (None, _) => Some(Vec::new()),
    };
    let mut allowed = allowed?;
    allowed.dedup();
    Some(Admin {
        socket: socket?,
        mode: mode?,
        group: group?,
        allowed_uids: allowed,
        readonly_uids: readonly?,
    })
}

/// A group name from the system's group database, or a numeric gid.
fn group_id(g: &str) -> Result<u32, Reason> {
    if let Ok(gid) = g.trim().parse::<u32>() {
        return if gid == u32::MAX {
            Err(Reason::NoGroup)
        } else {
            Ok(gid)
        };
    }
    match nix::unistd::Group::from_name(g.trim()) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(Reason::Group(g.to_owned())),
    }
}

/// A DNS name as a Host field carries it (RFC 1123 labels), lowercased, without a trailing dot.
pub(super) fn host_name(s: &str) -> Result<String, Reason> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(Reason::HostName(s.to_owned()));
    }
    Ok(name)
}
