//! Fleets: several ramp instances sharing one rollout state through etcd (the existing
//! distributed engine; ramp runs no consensus of its own). A change made at any instance is a
//! compare-and-swap on the key's revision; every instance watches the key and applies what the
//! others wrote through its own controller.

pub mod etcd;

use serde::{Deserialize, Serialize};

use crate::config::Fleet as Settings;
use crate::tls::TlsError;

pub use etcd::{Cas, Etcd, EtcdError, Event, Kv, Watched};

/// What the key holds: the state in the state file's format, and the instance that wrote it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub instance: String,
    pub state: serde_json::Value,
}

impl Envelope {
    pub fn wrap(instance: &str, state_json: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
        let state = serde_json::from_slice(state_json)?;
        serde_json::to_vec(&Envelope {
            instance: instance.to_owned(),
            state,
        })
    }

    /// The instance that wrote it (at most [`INSTANCE_SHOWN`] bytes of its name: a key written
    /// by hand could name one of megabytes, logged at every change) and the state's JSON.
    pub fn open(bytes: &[u8]) -> Result<(String, Vec<u8>), serde_json::Error> {
        let mut e: Envelope = serde_json::from_slice(bytes)?;
        if e.instance.len() > INSTANCE_SHOWN {
            let mut end = INSTANCE_SHOWN;
            while !e.instance.is_char_boundary(end) {
                end -= 1;
            }
            e.instance.truncate(end);
            e.instance.push('…');
        }
        Ok((e.instance, serde_json::to_vec(&e.state)?))
    }
}

/// How much of the writing instance's name a key's reader keeps.
pub const INSTANCE_SHOWN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("state.etcd.password_file {path}: {error}")]
    Password { path: String, error: std::io::Error },
    #[error("state.etcd.ca: {0}")]
    Tls(#[from] TlsError),
}

/// This instance's name: the configured one, else host name and pid.
pub fn instance(settings: &Settings) -> String {
    settings.instance.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "ramp".into());
        format!("{host}-{}", std::process::id())
    })
}

/// The client for the configured endpoints.
pub fn client(settings: &Settings) -> Result<Etcd, FleetError> {
    let credentials = match (&settings.username, &settings.password_file) {
        (Some(user), Some(path)) => {
            let bytes = crate::files::read_regular(path, 64 * 1024).map_err(|error| {
                FleetError::Password {
                    path: path.display().to_string(),
                    error,
                }
            })?;
            let password = String::from_utf8_lossy(&bytes).trim_end().to_owned();
            Some((user.clone(), password))
        }
        _ => None,
    };
    // A CA named is read even for http:// endpoints: a file ramp was told of must be there.
    let https = settings.endpoints.iter().any(|u| u.starts_with("https://"));
    let tls = if https || settings.ca.is_some() {
        Some(crate::tls::client_config(settings.ca.as_deref())?)
    } else {
        None
    };
    Ok(Etcd::new(etcd::Endpoints {
        urls: settings.endpoints.clone(),
        credentials,
        tls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_naming_a_huge_instance_is_read_with_its_name_cut() {
        let name = "é".repeat(1_000_000);
        let bytes = Envelope::wrap(&name, br#"{"version":2}"#).expect("wrap");
        let (instance, state) = Envelope::open(&bytes).expect("open");
        assert!(
            instance.len() <= INSTANCE_SHOWN + '…'.len_utf8(),
            "{}",
            instance.len()
        );
        assert!(instance.starts_with("éé") && instance.ends_with('…'));
        assert_eq!(state, br#"{"version":2}"#);
        let (short, _) =
            Envelope::open(&Envelope::wrap("ramp-a", b"{}").expect("wrap")).expect("open");
        assert_eq!(short, "ramp-a");
    }
}
