//! Reading the config: the file's bytes, the YAML's shape, then its values; every error with its position.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Position, Problem, Reason, file, keys, same_file, validate};

/// The files `config` (read from `path`) has ramp read or serve, with what each is: never to be
/// written over with the state, at start, at a reload, or at a write through a link made since.
pub fn files_read(config: &Config, path: &Path) -> Vec<(PathBuf, &'static str)> {
    let tls = config.tls.as_ref();
    let fleet = config.fleet.as_ref();
    [
        (Some(path), "this config file"),
        (tls.map(|t| t.cert.as_path()), "the TLS certificate"),
        (tls.map(|t| t.key.as_path()), "the TLS key"),
        (config.upstream_ca.as_deref(), "the upstream CA file"),
        (fleet.and_then(|f| f.ca.as_deref()), "fleet.ca"),
        (
            fleet.and_then(|f| f.password_file.as_deref()),
            "fleet.password_file",
        ),
        (
            config.admin.as_ref().map(|a| a.socket.as_path()),
            "the admin socket",
        ),
    ]
    .into_iter()
    .filter_map(|(p, what)| p.map(|p| (p.to_path_buf(), what)))
    .collect()
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse_bytes(&read(path)?, path)
}

/// The config file's bytes (a regular file of at most 4 MiB).
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    // The paths the config names are relative to its directory, and are logged: a line break
    // in that directory's name would forge log lines (as one in a value of the file would,
    // which validation refuses).
    let control = |p: &Path| {
        p.as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|b| b.is_ascii_control())
    };
    if control(path) || std::fs::canonicalize(path).is_ok_and(|p| control(&p)) {
        return Err(ConfigError::Read {
            path: PathBuf::from(crate::shown::escaped(&path.to_string_lossy()).into_owned()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path holds a control character (a line break there would forge log lines): move the file",
            ),
        });
    }
    crate::files::read_regular(path, crate::files::MAX_FILE).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses and validates the file's bytes (read by the caller from `path`).
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    parse(text, path)
}

/// Parses and validates YAML text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    // Nothing but blank lines and comments (a file emptied by mistake, a failed template).
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            at: Position { line: 1, column: 1 },
            message: "the file holds no settings: it needs at least listen, pools and rollout"
                .to_owned(),
        });
    }
    let unknown = keys::unknown(text);
    let invalid = |mut problems: Vec<Problem>| {
        problems.sort_by_key(|p| (p.at.line, p.at.column));
        ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
    };
    let file: file::File = match serde_saphyr::from_str(text) {
        Ok(f) => f,
        Err(e) if unknown.is_empty() => return Err(parse_error(e, path, text)),
        Err(e) => {
            // Every unknown key, and what else stopped the parse.
            let mut problems = unknown;
            let (at, field, message) = described(&e, text);
            problems.push(Problem {
                at,
                field: field.unwrap_or_else(|| "(file)".into()),
                reason: Reason::Shape(message),
            });
            return Err(invalid(problems));
        }
    };
    let mut config = match validate::validate(file) {
        Ok(c) if unknown.is_empty() => c,
        Ok(_) => return Err(invalid(unknown)),
        Err(mut problems) => {
            problems.extend(unknown);
            return Err(invalid(problems));
        }
    };
    // Relative paths in the file are relative to the file's own directory.
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(admin) = &mut config.admin {
        admin.socket = base.join(&admin.socket);
    }
    let (cert, key) = match config.tls.as_mut() {
        Some(t) => (Some(&mut t.cert), Some(&mut t.key)),
        None => (None, None),
    };
    let (etcd_ca, etcd_password) = match config.fleet.as_mut() {
        Some(f) => (f.ca.as_mut(), f.password_file.as_mut()),
        None => (None, None),
    };
    for p in [
        config.state_file.as_mut(),
        config.upstream_ca.as_mut(),
        cert,
        key,
        etcd_ca,
        etcd_password,
    ]
    .into_iter()
    .flatten()
    {
        *p = base.join(&*p);
    }
    if let Some(state) = &config.state_file {
        for (other, what) in files_read(&config, path) {
            if same_file(state, &other) {
                return Err(ConfigError::StateFileClash {
                    path: path.to_owned(),
                    state: state.clone(),
                    what,
                });
            }
        }
        if in_system_files(state) {
            return Err(ConfigError::StateFileClash {
                path: path.to_owned(),
                state: state.clone(),
                what: "under /proc, /sys or /dev (a process's or the kernel's, not ramp's)",
            });
        }
    }
    Ok(config)
}

/// Whether `path` as written, or the directory it names, with its links followed, is under
/// /proc, /sys or /dev (but /dev/shm, a tmpfs for files of anyone's): `/proc/self/fd/1` had
/// ramp write its state over its own log. (A state file that is a link to a device or a FIFO
/// is the state file's own trouble: ramp starts with everyone on stable, and says why.)
fn in_system_files(path: &Path) -> bool {
    let system = |p: &Path| {
        ["/proc", "/sys", "/dev"].iter().any(|s| p.starts_with(s)) && !p.starts_with("/dev/shm")
    };
    let dir = path.parent().and_then(|d| std::fs::canonicalize(d).ok());
    system(path) || dir.as_deref().is_some_and(system)
}

/// The parser's error `e`, in words for the file's author; where `text` (the file's) shows which
/// setting the position is in, the message begins with it.
pub(super) fn parse_error(e: serde_saphyr::Error, path: &Path, text: &str) -> ConfigError {
    let (at, field, message) = described(&e, text);
    ConfigError::Parse {
        path: path.to_owned(),
        at,
        message: match field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        },
    }
}

/// Where the parser's error `e` is in `text`, the setting there (if `text` shows one), and what
/// is wrong, in words for the file's author.
fn described(e: &serde_saphyr::Error, text: &str) -> (Position, Option<String>, String) {
    let at = e.location().map_or(Position::default(), |l| Position {
        line: l.line(),
        column: l.column(),
    });
    // The crate's message reads "error: line L column C: what"; we print the position ourselves.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default();
    let what = match first.strip_prefix("error: line ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, what)| what),
        None => first,
    };
    let what = what
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(what);
    // The parser's own advice is for programmers ("use Option<String>"): say what is wrong in
    // the file instead.
    let message = if what.contains("multiple YAML documents") {
        "more than one YAML document (a `---` line between them): the config is one".to_owned()
    } else if what.contains("budget breached: Depth") {
        "nested too deep (more than 64 levels)".to_owned()
    } else if what.contains("budget breached") {
        "too large: over 250,000 values, counting those its anchors and aliases expand to (a config has a few hundred)".to_owned()
    } else if what.starts_with("cannot deserialize null") {
        "empty (null) where a value is needed".to_owned()
    } else if let Some(kind) = what.strip_prefix("invalid ")
        && let Some(whole) = match kind.trim() {
            "u8" => Some(format!("not a whole number from 0 to {}", u8::MAX)),
            "u16" => Some(format!("not a whole number from 0 to {}", u16::MAX)),
            "u32" => Some(format!("not a whole number from 0 to {}", u32::MAX)),
            "u64" | "usize" => Some("not a whole number (like 5: no sign, no fraction)".to_owned()),
            _ => None,
        }
    {
        whole
    } else if what.starts_with("invalid floating point") {
        "not a number (like 5, 0.5 or 0.01)".to_owned()
    } else if what.starts_with("expected string scalar") {
        "expected one value here (text or a number), not a list or a map".to_owned()
    } else if what.starts_with("expected mapping start") {
        "expected settings here (`key: value`, or `{key: value}`)".to_owned()
    } else if what.starts_with("expected sequence start") {
        "expected a list here, like [a, b] or one `- item` per line".to_owned()
    } else {
        what.split("; use ")
            .next()
            .unwrap_or(what)
            .trim()
            .to_owned()
    };
    if message.starts_with("missing field") {
        // Reported at a key of the section it is missing from: named by that section.
        let section = keys::field_at(text, at, true)
            .and_then(|key| key.rsplit_once('.').map(|(section, _)| section.to_owned()));
        return (at, section, message);
    }
    let field = keys::field_at(text, at, false);
    let message = if field.is_some() && message.starts_with("duplicate mapping key") {
        "given twice in its section (a duplicate key: the last one would win unseen)".to_owned()
    } else {
        message
    };
    (at, field, message)
}
