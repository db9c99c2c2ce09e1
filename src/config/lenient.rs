//! What `ramp ctl --config` reads of a config file: only `admin.socket`, from a file that may be
//! half edited.

use std::path::{Path, PathBuf};

use super::{ConfigError, parse_error};

/// Only `admin.socket` of the file at `path` (relative to the file's directory), read leniently:
/// the rest of the file may be invalid (unknown keys, bad values), which is when `ramp ctl
/// status` is needed most. Only YAML that cannot be read at all is an error.
pub fn admin_socket(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    #[derive(serde::Deserialize)]
    struct Lenient {
        #[serde(default)]
        admin: Option<LenientAdmin>,
    }
    #[derive(serde::Deserialize)]
    struct LenientAdmin {
        #[serde(default)]
        socket: Option<String>,
    }
    let bytes = crate::files::read_regular(path, crate::files::MAX_FILE).map_err(|source| {
        ConfigError::Read {
            path: path.to_owned(),
            source,
        }
    })?;
    let text = String::from_utf8_lossy(&bytes);
    // Duplicate keys (a half-finished edit) must not stand between an operator and `halt`.
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    let lenient: Lenient = match serde_saphyr::from_str_with_options(&text, options) {
        Ok(l) => l,
        // YAML that does not parse at all: look for the socket line by line.
        Err(e) => match scan_admin_socket(&text) {
            Some(socket) => Lenient {
                admin: Some(LenientAdmin {
                    socket: Some(socket),
                }),
            },
            None => return Err(parse_error(e, path, &text)),
        },
    };
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(lenient
        .admin
        .and_then(|a| a.socket)
        .filter(|s| !s.trim().is_empty())
        .map(|s| base.join(s)))
}

/// `socket:` under a top-level `admin:`, found line by line in text that is not valid YAML.
fn scan_admin_socket(text: &str) -> Option<String> {
    let mut in_admin = false;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let trimmed = line.trim();
        if !indented {
            let rest = trimmed.strip_prefix("admin:").map(str::trim);
            // `admin: {socket: /run/ramp/admin.sock, mode: "0660"}`
            if let Some(flow) = rest.and_then(|r| r.strip_prefix('{')) {
                let value = flow
                    .split([',', '}'])
                    .find_map(|pair| pair.trim().strip_prefix("socket:"))
                    .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''));
                return value.filter(|v| !v.is_empty()).map(str::to_owned);
            }
            in_admin = rest.is_some_and(str::is_empty);
            continue;
        }
        if in_admin && let Some(value) = trimmed.strip_prefix("socket:") {
            let value = value.split(" #").next().unwrap_or_default().trim();
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            return (!value.is_empty()).then(|| value.to_owned());
        }
    }
    None
}
