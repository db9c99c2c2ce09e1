//! Shape -> checked values. Collects every problem instead of stopping at the first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::checker::{Checker, at, parse_duration};
use super::error::{Problem, Reason};
use super::file::{AdminFile, File, S, StepFile};
use super::{
    Admin, CanaryUnavailable, Config, Plan, Pools, RolloutPlan, ServerCert, Step, Sticky,
    UpstreamAddr, UpstreamSettings, percent_to_ppm,
};

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

fn header_name(s: &str) -> Result<HeaderName, Reason> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| Reason::HeaderName(s.to_owned()))
}

/// The header a user id comes in: any name but the hop-by-hop ones (removed before the upstream
/// sees them: ramp and the app would disagree on the user), those ramp writes, the request's own
/// framing and Host, and Cookie (`sticky.cookie` reads it).
fn id_header_name(s: &str) -> Result<HeaderName, Reason> {
    let name = header_name(s)?;
    const NOT_AN_ID: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "host",
        "content-length",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
    ];
    if NOT_AN_ID.contains(&name.as_str()) {
        return Err(Reason::NotAnIdHeader(name.as_str().to_owned()));
    }
    Ok(name)
}

fn sticky(c: &mut Checker, file: &File) -> Option<Sticky> {
    let s = file.sticky.as_ref();
    let header = s.and_then(|s| s.header.as_ref());
    let header = match header {
        Some(h) => c.check(h, "sticky.header", |s| id_header_name(s)).map(Some),
        None => Some(None),
    };
    let cookie = match s.and_then(|s| s.cookie.as_ref()) {
        Some(name) => c.check(name, "sticky.cookie", |n| cookie_name(n)),
        None => Some("uid".to_owned()),
    };
    let max_age = match s.and_then(|s| s.cookie_max_age.as_ref()) {
        // Max-Age counts whole seconds: under one, the minted cookie would be gone at once, and
        // every request a new user.
        Some(text) => c.check(text, "sticky.cookie_max_age", |t| {
            parse_duration(t).and_then(|d| {
                (d >= Duration::from_secs(1))
                    .then_some(d)
                    .ok_or(Reason::UnderSecond)
            })
        })?,
        None => Duration::from_secs(365 * 86_400),
    };
    let assign = s.and_then(|s| s.assign).unwrap_or(true);
    let secure = s.and_then(|s| s.cookie_secure).unwrap_or(false);
    let has_domain = s.is_some_and(|s| s.cookie_domain.is_some());
    // A browser refuses a cookie of these prefixes without what they promise (RFC 6265bis
    // §4.1.3): every request would be a new user.
    if let (Some(name), Some(given)) = (&cookie, s.and_then(|s| s.cookie.as_ref())) {
        let lower = name.to_ascii_lowercase();
        let needs = if lower.starts_with("__host-") && (!secure || has_domain) {
            Some("cookie_secure: true and no cookie_domain")
        } else if lower.starts_with("__secure-") && !secure {
            Some("cookie_secure: true")
        } else {
            None
        };
        if let Some(needs) = needs {
            c.check(given, "sticky.cookie", |_| -> Result<(), Reason> {
                Err(Reason::CookiePrefix(needs))
            });
        }
    }
    let domain = match s.and_then(|s| s.cookie_domain.as_ref()) {
        // A leading dot is what older specifications wrote; browsers ignore it.
        Some(d) => c
            .check(d, "sticky.cookie_domain", |d| {
                host_name(d.trim().trim_start_matches('.'))
            })
            .map(Some),
        None => Some(None),
    };
    Some(Sticky {
        header: header?,
        cookie: cookie?,
        assign,
        cookie_max_age: max_age,
        cookie_secure: secure,
        cookie_domain: domain?,
        // By default the cookie is ramp's where ramp mints it, the app's where it does not.
        app_sets_cookie: s.and_then(|s| s.app_sets_cookie).unwrap_or(!assign),
    })
}

/// RFC 6265 cookie-name: an RFC 9110 token.
fn cookie_name(n: &str) -> Result<String, Reason> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if n.is_empty() {
        return Err(Reason::Empty);
    }
    if n.bytes().all(token) {
        Ok(n.to_owned())
    } else {
        Err(Reason::CookieName(n.to_owned()))
    }
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

/// A rollout id: the salt of the assignment hash; one word (it is typed in `ramp ctl start`).
pub fn rollout_id(id: &str) -> Result<String, Reason> {
    if id.is_empty() {
        return Err(Reason::Empty);
    }
    if id.len() > MAX_ROLLOUT_ID {
        return Err(Reason::TooLong {
            max: MAX_ROLLOUT_ID,
            got: id.len(),
        });
    }
    if id
        .chars()
        .any(|ch| ch.is_control() || ch.is_whitespace() || invisible(ch))
    {
        return Err(Reason::Printable(id.to_owned()));
    }
    Ok(id.to_owned())
}

/// Characters that show nothing: Unicode's default-ignorable code points and its other format
/// characters (category Cf), such as U+200B, U+FEFF, U+034F, the variation selectors, and the
/// ones that turn text around (U+202E). An id holding one looks like another id while salting the
/// hash differently.
fn invisible(ch: char) -> bool {
    matches!(
        ch,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{16FE4}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

fn rollout(c: &mut Checker, file: &File) -> Option<RolloutPlan> {
    let r = &file.rollout.value;
    let id = c.check(&r.id, "rollout.id", |s| rollout_id(s));
    let plan = match (&r.percent, &r.steps) {
        (Some(p), None) => c
            .check(p, "rollout.percent", |&p| percent_to_ppm(p))
            .map(Plan::Percent),
        (None, Some(steps)) => self::steps(c, steps).map(Plan::Steps),
        (Some(p), Some(_)) => {
            c.fail(at(p), "rollout", Reason::PercentAndSteps);
            None
        }
        (None, None) => {
            c.fail(at(&file.rollout), "rollout", Reason::NoPercent);
            None
        }
    };
    Some(RolloutPlan {
        id: id?,
        plan: plan?,
    })
}

fn steps(c: &mut Checker, steps: &S<Vec<StepFile>>) -> Option<Vec<Step>> {
    if steps.value.is_empty() {
        c.fail(at(steps), "rollout.steps", Reason::Empty);
        return None;
    }
    let before = c.problems.len();
    let mut out = Vec::with_capacity(steps.value.len());
    for (i, step) in steps.value.iter().enumerate() {
        let field = format!("rollout.steps[{i}].percent");
        let Some(ppm) = c.check(&step.percent, &field, |&p| percent_to_ppm(p)) else {
            continue;
        };
        let last = i + 1 == steps.value.len();
        let hold = match &step.hold {
            Some(h) => c.check(h, &format!("rollout.steps[{i}].hold"), |s| {
                parse_duration(s)
            }),
            None if last => None,
            None => {
                c.fail(
                    at(&step.percent),
                    &format!("rollout.steps[{i}]"),
                    Reason::MissingHold,
                );
                None
            }
        };
        if let Some(prev) = out.last().map(|s: &Step| s.ppm)
            && ppm <= prev
        {
            c.fail(
                at(&step.percent),
                &field,
                Reason::StepsNotRising {
                    prev: super::ppm_to_percent(prev),
                    next: step.percent.value,
                },
            );
        }
        out.push(Step { ppm, hold });
    }
    (c.problems.len() == before).then_some(out)
}

fn path(p: &str) -> Result<PathBuf, Reason> {
    if p.trim().is_empty() {
        return Err(Reason::Empty);
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
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g.trim()) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(Reason::Group(g.to_owned())),
    }
}

/// A DNS name as a Host field carries it (RFC 1123 labels), lowercased, without a trailing dot.
fn host_name(s: &str) -> Result<String, Reason> {
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
