//! The commands that change (or read) the rollout, where they came from, and the text protocol's
//! parser: one command per line, words separated by spaces (`set 2.5`).

use std::fmt;

use crate::config::{self, Reason};

/// The longest line the admin socket accepts.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    /// Bucket and pool of this user id now.
    Bucket(Vec<u8>),
    /// Set the canary share (parts per million).
    Set(u32),
    Halt,
    Resume,
    Rollback,
    Promote,
    /// A new rollout: new salt, new group; clears halt and rollback. Without an id, the rollout
    /// the config file names.
    Start {
        id: Option<String>,
        ppm: Option<u32>,
    },
    /// Re-read the configuration file now (SIGHUP, `reload`).
    Reload,
    /// The watcher saw the config file change and settle: this text, read twice the same across
    /// the quiet period (internal; never parsed from a line).
    FileChanged(Vec<u8>),
    /// A reload's file, read and parsed by the [`super::Handle`] that sent it (internal).
    Parsed(std::sync::Arc<super::controller::Parsed>),
    /// The fleet's key holds this now (internal: from the fleet watch).
    FleetState(crate::fleet::Kv),
    /// etcd answers again (`error` is `None`), or stopped answering (internal).
    FleetLink {
        error: Option<String>,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Bucket(_) => "bucket",
            Command::Set(_) => "set",
            Command::Halt => "halt",
            Command::Resume => "resume",
            Command::Rollback => "rollback",
            Command::Promote => "promote",
            Command::Start { .. } => "start",
            Command::Reload | Command::FileChanged(_) | Command::Parsed(_) => "reload",
            Command::FleetState(_) | Command::FleetLink { .. } => "fleet",
        }
    }

    /// Commands any permitted peer may run; the rest change the rollout.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Status | Command::Bucket(_))
    }
}

/// Who asked for a change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A peer on the admin socket.
    Admin { uid: u32, pid: Option<i32> },
    /// The configuration file (watched, SIGHUP, or `reload`).
    File,
    /// The staged schedule.
    Schedule,
    /// ramp itself at start-up (first start, or a state file it could not read).
    Startup,
    /// The analysis guard, with the figures that made it act and the rollout they are of.
    Guard {
        reason: String,
        #[serde(default)]
        rollout: String,
    },
    /// Another instance of the fleet, through the shared store.
    Fleet { instance: String },
    /// The status page and its JSON (reads only).
    Page,
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Admin { .. } => "admin",
            Source::File => "file",
            Source::Schedule => "schedule",
            Source::Startup => "startup",
            Source::Guard { .. } => "guard",
            Source::Fleet { .. } => "fleet",
            Source::Page => "page",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Admin {
                uid,
                pid: Some(pid),
            } => write!(f, "admin (uid {uid}, pid {pid})"),
            Source::Admin { uid, pid: None } => write!(f, "admin (uid {uid})"),
            // Both may come from the state file or the fleet's key, which anyone who can write
            // them may fill: shown escaped.
            Source::Guard { reason, .. } => write!(f, "guard ({})", crate::shown::escaped(reason)),
            Source::Fleet { instance } => {
                write!(f, "fleet (instance {})", crate::shown::escaped(instance))
            }
            Source::File | Source::Schedule | Source::Startup | Source::Page => {
                f.write_str(self.kind())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command; try `status`")]
    Empty,
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error(
        "unknown command {0:?}; commands: status, set PERCENT, halt, resume, rollback, promote, start [ROLLOUT_ID [PERCENT]], reload, bucket USER_ID"
    )]
    Unknown(String),
    #[error("`{0}` needs {1}")]
    Missing(&'static str, &'static str),
    #[error("`{0}` takes no more words, got {1:?}")]
    Extra(&'static str, String),
    #[error("bad percent {0:?}: {1}")]
    Percent(String, Reason),
    #[error("bad percent {0:?}: not a number (give 0 to 100, e.g. 2.5)")]
    NotANumber(String),
    #[error("bad rollout id: {0}")]
    RolloutId(Reason),
    #[error("bad user id: {0}")]
    UserId(&'static str),
}

/// A percent as typed (`2.5`, `5%`), in parts per million.
pub fn percent(word: &str) -> Result<u32, ParseError> {
    // `5%` as people write it.
    let value: f64 = word
        .strip_suffix('%')
        .unwrap_or(word)
        .parse()
        .map_err(|_| ParseError::NotANumber(word.to_owned()))?;
    config::percent_to_ppm(value).map_err(|r| ParseError::Percent(word.to_owned(), r))
}

/// Parses one line (without its newline; a trailing `\r` is ignored).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let rest = rest.trim();
    let mut args = rest.split_whitespace();
    let no_more = |name: &'static str, rest: &str| {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Extra(name, rest.to_owned()))
        }
    };
    let cmd = match word.to_ascii_lowercase().as_str() {
        "" => return Err(ParseError::Empty),
        "status" => Command::Status,
        "halt" => Command::Halt,
        "resume" => Command::Resume,
        "rollback" => Command::Rollback,
        "promote" => Command::Promote,
        "reload" => Command::Reload,
        "set" => {
            let p = args
                .next()
                .ok_or(ParseError::Missing("set", "a percent, e.g. `set 2.5`"))?;
            no_more("set", args.collect::<Vec<_>>().join(" ").as_str())?;
            return Ok(Command::Set(percent(p)?));
        }
        "start" => {
            let id = args
                .next()
                .map(|id| config::rollout_id(id).map_err(ParseError::RolloutId))
                .transpose()?;
            let ppm = args.next().map(percent).transpose()?;
            no_more("start", args.collect::<Vec<_>>().join(" ").as_str())?;
            return Ok(Command::Start { id, ppm });
        }
        "bucket" => {
            // The user id is the rest of the line, as typed.
            if rest.is_empty() {
                return Err(ParseError::Missing("bucket", "a user id"));
            }
            if rest.len() > crate::routing::MAX_ID_LEN {
                return Err(ParseError::UserId("longer than 1024 bytes"));
            }
            return Ok(Command::Bucket(rest.as_bytes().to_vec()));
        }
        _ => return Err(ParseError::Unknown(word.chars().take(64).collect())),
    };
    no_more(cmd.name(), rest)?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_id_that_looks_like_another_is_refused() {
        // Invisible or direction-changing characters: the id would read as "checkout-v2" while
        // salting the hash differently.
        for id in [
            "checkout\u{200B}-v2",
            "\u{FEFF}checkout-v2",
            "checkout-\u{202E}2v",
            "check\u{2060}out-v2",
            "checkout\u{00AD}-v2",
            "checkout-v2\u{034F}",
            "checkout-v2\u{FE0F}",
            "checkout\u{3164}-v2",
            "checkout-v2\u{E0100}",
        ] {
            let line = format!("start {id}");
            assert!(
                matches!(parse(line.as_bytes()), Err(ParseError::RolloutId(_))),
                "{id:?}"
            );
        }
        assert!(parse("start déploiement-été".as_bytes()).is_ok());
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(b"status"), Ok(Command::Status));
        assert_eq!(parse(b"  HALT \r"), Ok(Command::Halt));
        assert_eq!(parse(b"set 2.5"), Ok(Command::Set(25_000)));
        assert_eq!(parse(b"set 0.0001"), Ok(Command::Set(1)));
        assert_eq!(
            parse(b"start checkout-v3 0.01"),
            Ok(Command::Start {
                id: Some("checkout-v3".into()),
                ppm: Some(100)
            })
        );
        assert_eq!(
            parse(b"start v4"),
            Ok(Command::Start {
                id: Some("v4".into()),
                ppm: None
            })
        );
        assert_eq!(
            parse(b"start"),
            Ok(Command::Start {
                id: None,
                ppm: None
            })
        );
        // The percent as people write it.
        assert_eq!(parse(b"set 5%"), Ok(Command::Set(50_000)));
        assert_eq!(
            parse(b"start v5 0.5%"),
            Ok(Command::Start {
                id: Some("v5".into()),
                ppm: Some(5_000)
            })
        );
        assert!(matches!(parse(b"set 5%%"), Err(ParseError::NotANumber(_))));
        assert_eq!(
            parse(b"bucket alice smith"),
            Ok(Command::Bucket(b"alice smith".to_vec()))
        );
        for (line, cmd) in [
            ("resume", Command::Resume),
            ("rollback", Command::Rollback),
            ("promote", Command::Promote),
            ("reload", Command::Reload),
        ] {
            assert_eq!(parse(line.as_bytes()), Ok(cmd));
        }
    }

    #[test]
    fn rejects_bad_lines_with_reasons() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::NotUtf8));
        assert!(matches!(parse(b"launch"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse(b"set"), Err(ParseError::Missing("set", _))));
        assert_eq!(
            parse(b"set abc").map_err(|e| e.to_string()),
            Err("bad percent \"abc\": not a number (give 0 to 100, e.g. 2.5)".into())
        );
        assert!(matches!(parse(b"set 101"), Err(ParseError::Percent(..))));
        assert!(matches!(
            parse(b"set 1.00001"),
            Err(ParseError::Percent(..))
        ));
        assert!(matches!(parse(b"set NaN"), Err(ParseError::Percent(..))));
        assert!(matches!(parse(b"set inf"), Err(ParseError::Percent(..))));
        assert!(matches!(
            parse(b"set 5 6"),
            Err(ParseError::Extra("set", _))
        ));
        assert!(matches!(
            parse(b"halt now"),
            Err(ParseError::Extra("halt", _))
        ));
        assert!(matches!(
            parse(b"start x 5 6"),
            Err(ParseError::Extra("start", _))
        ));
        assert!(matches!(
            parse(b"bucket"),
            Err(ParseError::Missing("bucket", _))
        ));
        assert_eq!(parse(&vec![b'a'; MAX_LINE + 1]), Err(ParseError::TooLong));
    }
}
