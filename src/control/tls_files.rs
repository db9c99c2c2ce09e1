//! The TLS material the controller reads from disk, and whether it changed since last time.

use std::sync::Arc;

use crate::config::Config;
use crate::proxy::tls::{self, Fingerprint, TlsError};
use crate::snapshot::Tls;

#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    server: Option<(Arc<rustls::ServerConfig>, Fingerprint)>,
    client: Option<(Arc<rustls::ClientConfig>, Fingerprint)>,
}

impl TlsFiles {
    /// Reads what `config` names; keeps `prev`'s configs where the files did not change.
    pub fn load(config: &Config, prev: &TlsFiles) -> Result<TlsFiles, TlsError> {
        let server = match &config.tls {
            Some(t) => {
                let (fresh, fp) = tls::server(&t.cert, &t.key)?;
                Some(match &prev.server {
                    Some((old, old_fp)) if *old_fp == fp => (Arc::clone(old), fp),
                    _ => (fresh, fp),
                })
            }
            None => None,
        };
        let https = config
            .pools
            .stable
            .iter()
            .chain(&config.pools.canary)
            .any(|u| u.tls);
        let client = match (https, &prev.client, &config.upstream_ca) {
            (false, _, _) => None,
            // The system's roots are read once.
            (true, Some((old, fp)), None) if fp.as_slice() == b"system" => {
                Some((Arc::clone(old), fp.clone()))
            }
            (true, _, ca) => {
                let (fresh, fp) = tls::client(ca.as_deref())?;
                Some(match &prev.client {
                    Some((old, old_fp)) if *old_fp == fp => (Arc::clone(old), fp),
                    _ => (fresh, fp),
                })
            }
        };
        Ok(TlsFiles { server, client })
    }

    /// Whether the files behind `self` and `other` differ.
    pub fn differs(&self, other: &TlsFiles) -> bool {
        let fp = |t: &TlsFiles| {
            (
                t.server.as_ref().map(|s| s.1.clone()),
                t.client.as_ref().map(|c| c.1.clone()),
            )
        };
        fp(self) != fp(other)
    }

    pub fn material(&self) -> Tls {
        Tls {
            server: self.server.as_ref().map(|s| Arc::clone(&s.0)),
            client: self.client.as_ref().map(|c| Arc::clone(&c.0)),
        }
    }
}
