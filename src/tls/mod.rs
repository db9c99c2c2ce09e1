//! TLS: the listener's certificate (re-read on reload) and the client side for `https://`
//! upstreams, read from the files the config names. One crypto provider (aws-lc-rs, rustls's
//! default: its x25519 and SHA-2 make new handshakes about a tenth cheaper than ring's), installed
//! explicitly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}: no certificate in it")]
    NoCert(PathBuf),
    #[error("{0}: the certificate and key do not go together or are not usable: {1}")]
    Unusable(PathBuf, rustls::Error),
    #[error("no root certificates for https:// upstreams (set upstream.ca)")]
    NoRoots,
    /// The setting that named the file.
    /// (Not a `source`: the message holds it already, and a report of the chain said it twice.)
    #[error("{field}: {inner}")]
    Field {
        field: &'static str,
        inner: Box<TlsError>,
    },
}

impl TlsError {
    fn of(self, field: &'static str) -> TlsError {
        TlsError::Field {
            field,
            inner: Box::new(self),
        }
    }
}

mod hkdf;
mod validity;

pub use validity::Validity;

/// aws-lc-rs with its TLS 1.3 suites on the cheaper HKDF of [`hkdf`].
fn provider() -> Arc<CryptoProvider> {
    Arc::new(faster_provider())
}

fn faster_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = hkdf::faster(&provider.cipher_suites);
    provider
}

/// Makes aws-lc-rs the process-wide provider (a second call changes nothing).
pub fn install_provider() {
    let _ = faster_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::files::read_regular(path, crate::files::MAX_FILE).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            reason: pem_reason(&error),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_owned()));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| TlsError::Pem {
        path: path.to_owned(),
        reason: pem_reason(&error),
    })
}

/// Whether any upstream is spoken to over TLS (`https://`).
fn any_https(config: &Config) -> bool {
    config
        .pools
        .stable
        .iter()
        .chain(&config.pools.canary)
        .any(|u| u.tls)
}

/// What is wrong with a PEM file, in words (the markers as text, not as bytes).
fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => format!(
            "cut short: no \"-----END {}-----\" line (a file still being written?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a malformed \"-----BEGIN\" line: {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::NoItemsFound => "no private key in it".to_owned(),
        other => other.to_string(),
    }
}

/// What a TLS setting was built from, to tell when the files changed.
pub type Fingerprint = Vec<u8>;

/// The listener's config, what it was built from, and when its certificate is valid.
#[derive(Debug, Clone)]
struct Served {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
    valid: Option<Validity>,
}

/// Said of a certificate rustls takes whose dates ramp cannot read (one valid from before 1970).
const UNREAD_VALIDITY: &str = "tls.cert: the certificate's dates cannot be read here, so its expiry is not watched (ramp_tls_certificate_expiry_timestamp_seconds is 0)";

/// The listener's TLS config from PEM files: ALPN h2, http/1.1 and http/1.0.
fn server(cert: &Path, key: &Path) -> Result<Served, TlsError> {
    let cert_pem = read(cert).map_err(|e| e.of("tls.cert"))?;
    let key_pem = read(key).map_err(|e| e.of("tls.key"))?;
    let chain = certs(&cert_pem, cert).map_err(|e| e.of("tls.cert"))?;
    let valid = chain.first().and_then(Validity::of);
    let private = private_key(&key_pem, key).map_err(|e| e.of("tls.key"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable(cert.to_owned(), e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Unusable(cert.to_owned(), e).of("tls.cert and tls.key"))?;
    // http/1.0 too: `curl --http1.0` offers only that, and rustls refuses a client none of whose
    // protocols it offers (as nginx does not).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    let mut fingerprint = cert_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok(Served {
        config: Arc::new(config),
        fingerprint,
        valid,
    })
}

/// The client config for `https://` upstreams: roots from `ca` (PEM), or the system's.
fn client(ca: Option<&Path>) -> Result<(Arc<ClientConfig>, Fingerprint), TlsError> {
    let mut roots = RootCertStore::empty();
    let fingerprint = match ca {
        Some(path) => {
            let pem = read(path)?;
            for cert in certs(&pem, path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Unusable(path.to_owned(), e))?;
            }
            pem
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
            b"system".to_vec()
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable(PathBuf::from("upstream.ca"), e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), fingerprint))
}

/// The TLS configs in force, with what each was built from (to tell when the files change).
#[derive(Debug, Default, Clone)]
pub struct TlsConfigs {
    server: Option<Served>,
    client: Option<(Arc<ClientConfig>, Fingerprint)>,
}

impl TlsConfigs {
    /// Reads what `config` names; keeps `prev`'s configs where the files did not change.
    pub fn load(config: &Config, prev: &TlsConfigs) -> Result<TlsConfigs, TlsError> {
        let server = match &config.tls {
            Some(t) => {
                let fresh = server(&t.cert, &t.key)?;
                Some(match &prev.server {
                    Some(old) if old.fingerprint == fresh.fingerprint => old.clone(),
                    _ => fresh,
                })
            }
            None => None,
        };
        Ok(TlsConfigs {
            server,
            client: Self::upstream(config, prev)?,
        })
    }

    /// As [`TlsConfigs::load`], but the listener's certificates stay as `prev` loaded them, not
    /// read again: a reload that turns TLS off, which waits for a restart.
    pub fn keeping_server(config: &Config, prev: &TlsConfigs) -> Result<TlsConfigs, TlsError> {
        Ok(TlsConfigs {
            server: prev.server.clone(),
            client: Self::upstream(config, prev)?,
        })
    }

    /// The client config for `https://` upstreams.
    fn upstream(
        config: &Config,
        prev: &TlsConfigs,
    ) -> Result<Option<(Arc<ClientConfig>, Fingerprint)>, TlsError> {
        let https = any_https(config);
        Ok(match (https, &prev.client, &config.upstream_ca) {
            // Unused until a pool is `https://`, and read all the same: a mistake shows now.
            (false, _, Some(ca)) => {
                client(Some(ca)).map_err(|e| e.of("upstream.ca"))?;
                None
            }
            (false, _, None) => None,
            // The system's roots are read once.
            (true, Some((old, fp)), None) if fp.as_slice() == b"system" => {
                Some((Arc::clone(old), fp.clone()))
            }
            (true, _, ca) => {
                let (fresh, fp) = client(ca.as_deref()).map_err(|e| match ca {
                    Some(_) => e.of("upstream.ca"),
                    None => e,
                })?;
                Some(match &prev.client {
                    Some((old, old_fp)) if *old_fp == fp => (Arc::clone(old), fp),
                    _ => (fresh, fp),
                })
            }
        })
    }

    /// Every problem with the files `config` names, each file on its own (`ramp check`), where
    /// [`TlsConfigs::load`] stops at the first.
    pub fn problems(config: &Config) -> Vec<TlsError> {
        let mut out = Vec::new();
        if let Some(t) = &config.tls {
            let cert = read(&t.cert).and_then(|pem| certs(&pem, &t.cert));
            let key = read(&t.key).and_then(|pem| private_key(&pem, &t.key));
            match (cert, key) {
                (Ok(_), Ok(_)) => out.extend(server(&t.cert, &t.key).err()),
                (cert, key) => {
                    out.extend(cert.err().map(|e| e.of("tls.cert")));
                    out.extend(key.err().map(|e| e.of("tls.key")));
                }
            }
        }
        let https = any_https(config);
        match &config.upstream_ca {
            Some(ca) => out.extend(client(Some(ca)).err().map(|e| e.of("upstream.ca"))),
            None if https => out.extend(client(None).err()),
            None => {}
        }
        out
    }

    /// Whether the listener's certificates differ.
    pub fn server_differs(&self, other: &TlsConfigs) -> bool {
        self.server.as_ref().map(|s| &s.fingerprint)
            != other.server.as_ref().map(|s| &s.fingerprint)
    }

    /// Whether the roots trusted for `https://` upstreams differ.
    pub fn upstream_differs(&self, other: &TlsConfigs) -> bool {
        self.client.as_ref().map(|c| &c.1) != other.client.as_ref().map(|c| &c.1)
    }

    /// The listener's config, if it serves HTTPS.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.server.as_ref().map(|s| Arc::clone(&s.config))
    }

    /// Logs a warning of a listener's certificate clients refuse (or will within 14 days), and
    /// sets `ramp_tls_certificate_expiry_timestamp_seconds`: at start, and when a reload brings
    /// another certificate.
    pub fn note_certificate(&self) {
        let Some(served) = &self.server else {
            return;
        };
        let gauge = metrics::gauge!("ramp_tls_certificate_expiry_timestamp_seconds");
        let Some(valid) = served.valid else {
            // Not the last certificate's expiry: 0, which any alert on it calls due.
            tracing::warn!("{UNREAD_VALIDITY}");
            gauge.set(0.0);
            return;
        };
        if let Some(warning) = valid.warning(SystemTime::now()) {
            tracing::warn!("{warning}");
        }
        let expiry = valid
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge.set(expiry);
    }

    /// Warnings of the listener's certificate that `config` names (`ramp check`): one that
    /// clients refuse, or will within 14 days.
    pub fn warnings(config: &Config) -> Vec<String> {
        let Some(t) = &config.tls else {
            return Vec::new();
        };
        let first = read(&t.cert)
            .and_then(|pem| certs(&pem, &t.cert))
            .ok()
            .and_then(|chain| chain.into_iter().next());
        let Some(first) = first else {
            return Vec::new();
        };
        match Validity::of(&first) {
            Some(v) => v.warning(SystemTime::now()).into_iter().collect(),
            None => vec![UNREAD_VALIDITY.to_owned()],
        }
    }

    /// The client config for `https://` upstreams, if any pool has one.
    pub fn client(&self) -> Option<Arc<ClientConfig>> {
        self.client.as_ref().map(|c| Arc::clone(&c.0))
    }
}

/// A client config trusting `ca` (PEM), or the system's roots (for etcd over `https://`).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    client(ca).map(|(config, _)| config)
}
