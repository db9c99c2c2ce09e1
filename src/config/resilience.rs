//! Validation of the resilience settings: health checks, limits.

use std::time::Duration;

use super::checker::Checker;
use super::error::Reason;
use super::file::{HealthFile, LimitsFile, PassiveFile};
use super::{ActiveHealth, Limits, PassiveHealth, StatusSet};

pub(super) fn active(c: &mut Checker, h: &HealthFile) -> Option<ActiveHealth> {
    let path = match &h.path {
        Some(p) => Some(c.check(p, "health.path", |p| {
            if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() {
                Ok(p.clone())
            } else {
                Err(Reason::AbsolutePath(p.clone()))
            }
        })?),
        None => None,
    };
    Some(ActiveHealth {
        path,
        interval: c.duration(
            h.interval.as_ref(),
            "health.interval",
            Duration::from_secs(2),
        ),
        timeout: c.duration(h.timeout.as_ref(), "health.timeout", Duration::from_secs(1)),
        unhealthy_after: c.int(
            h.unhealthy_after.as_ref(),
            "health.unhealthy_after",
            1,
            1000,
            3,
        ) as u32,
        healthy_after: c.int(h.healthy_after.as_ref(), "health.healthy_after", 1, 1000, 2) as u32,
    })
}

pub(super) fn passive(c: &mut Checker, p: Option<&PassiveFile>) -> PassiveHealth {
    PassiveHealth {
        eject_after: c.int(
            p.and_then(|p| p.eject_after.as_ref()),
            "passive_health.eject_after",
            1,
            1000,
            5,
        ) as u32,
        backoff: c.duration(
            p.and_then(|p| p.backoff.as_ref()),
            "passive_health.backoff",
            Duration::from_secs(1),
        ),
        max_backoff: c.duration(
            p.and_then(|p| p.max_backoff.as_ref()),
            "passive_health.max_backoff",
            Duration::from_secs(60),
        ),
        failure_statuses: p
            .and_then(|p| p.failure_statuses.as_ref())
            .and_then(|list| {
                c.check(list, "passive_health.failure_statuses", |l| {
                    StatusSet::parse(&l.iter().map(String::as_str).collect::<Vec<_>>())
                })
            })
            .unwrap_or(StatusSet::of(&[502, 503, 504])),
        panic_threshold: c.int(
            p.and_then(|p| p.panic_threshold.as_ref()),
            "passive_health.panic_threshold",
            0,
            100,
            50,
        ) as u32,
    }
}

pub(super) fn limits(c: &mut Checker, l: Option<&LimitsFile>) -> Limits {
    Limits {
        max_header_bytes: c.int(
            l.and_then(|l| l.max_header_bytes.as_ref()),
            "limits.max_header_bytes",
            1024,
            1 << 20,
            16_384,
        ) as usize,
        max_uri_bytes: c.int(
            l.and_then(|l| l.max_uri_bytes.as_ref()),
            "limits.max_uri_bytes",
            256,
            1 << 20,
            8_192,
        ) as usize,
        max_headers: c.int(
            l.and_then(|l| l.max_headers.as_ref()),
            "limits.max_headers",
            8,
            10_000,
            100,
        ) as usize,
        header_read_timeout: c.duration(
            l.and_then(|l| l.header_read_timeout.as_ref()),
            "limits.header_read_timeout",
            Duration::from_secs(10),
        ),
        body_idle_timeout: c.duration(
            l.and_then(|l| l.body_idle_timeout.as_ref()),
            "limits.body_idle_timeout",
            Duration::from_secs(60),
        ),
        h2_idle_timeout: c.duration(
            l.and_then(|l| l.h2_idle_timeout.as_ref()),
            "limits.h2_idle_timeout",
            Duration::from_secs(60),
        ),
        tunnel_idle_timeout: c.duration(
            l.and_then(|l| l.tunnel_idle_timeout.as_ref()),
            "limits.tunnel_idle_timeout",
            Duration::from_secs(3600),
        ),
        max_connections: c.int(
            l.and_then(|l| l.max_connections.as_ref()),
            "limits.max_connections",
            1,
            1_000_000,
            10_000,
        ) as usize,
        max_tunnels: l
            .and_then(|l| l.max_tunnels.as_ref())
            .map(|s| c.int(Some(s), "limits.max_tunnels", 1, 1_000_000, 1) as usize),
        h2_max_concurrent_streams: c.int(
            l.and_then(|l| l.h2_max_concurrent_streams.as_ref()),
            "limits.h2_max_concurrent_streams",
            1,
            10_000,
            100,
        ) as u32,
    }
}
