//! What `ramp check` finds by resolving the upstreams' names on the machine it runs on: a name
//! that does not resolve (a misspelling: every request sent there would get a 502), and one
//! server in both pools under two spellings (`localhost:8080` and `127.0.0.1:8080`), which the
//! warning on the file's text alone misses.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::routing::PoolName;

use super::{Config, UpstreamAddr};

fn resolve(u: &UpstreamAddr) -> std::io::Result<BTreeSet<SocketAddr>> {
    Ok((u.host.as_str(), u.port).to_socket_addrs()?.collect())
}

/// Warnings, one a line, for `ramp check`.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut resolved: Vec<(PoolName, &UpstreamAddr, BTreeSet<SocketAddr>)> = Vec::new();
    for pool in PoolName::BOTH {
        let upstreams = match pool {
            PoolName::Stable => &config.pools.stable,
            PoolName::Canary => &config.pools.canary,
        };
        for u in upstreams {
            match resolve(u) {
                Ok(addrs) if !addrs.is_empty() => resolved.push((pool, u, addrs)),
                Ok(_) => out.push(format!(
                    "pools.{}: {u} resolves to no address here: its requests would get 502",
                    pool.as_str()
                )),
                Err(e) => out.push(format!(
                    "pools.{}: {u} does not resolve here ({e}): its requests would get 502",
                    pool.as_str()
                )),
            }
        }
    }
    for (_, c, caddrs) in resolved.iter().filter(|r| r.0 == PoolName::Canary) {
        for (_, s, saddrs) in resolved.iter().filter(|r| r.0 == PoolName::Stable) {
            // The same spelling is warned of already (Config::warnings).
            if c == s || c.tls != s.tls {
                continue;
            }
            if let Some(shared) = caddrs.intersection(saddrs).next() {
                out.push(format!(
                    "pools: canary's {c} and stable's {s} are the same server here ({shared}): the pools share it, and the comparison compares it with itself"
                ));
            }
        }
    }
    out
}
