//! `ramp ctl`: sends one command line to the admin socket and shows the reply, read back into
//! the same types the controller answered with.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::reply::{self, Decoded};

mod human;
pub use human::human;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {error} (is ramp serving with admin.socket set to this path? An admin.socket edited in the file moves at ramp's next restart: until then, --socket with the old path reaches it. A ramp that is shutting down removes its socket at once, while it drains)"
    )]
    Connect { path: String, error: std::io::Error },
    #[error(
        "cannot connect to {path}: permission denied: the socket's mode and group (admin.mode, admin.group) do not let this user (uid {uid}) in, whatever admin.allowed_uids says"
    )]
    Denied { path: String, uid: u32 },
    #[error(
        "cannot connect to {path}: permission denied: this user (uid {uid}) may not enter a directory on its path"
    )]
    DirectoryDenied { path: String, uid: u32 },
    #[error("{path} is {what}, not a socket: give the admin socket's path (admin.socket)")]
    NotASocket { path: String, what: &'static str },
    #[error("talking to {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "argument {0:?}: empty, or holds a space, line break or other control character; ramp ctl sends each argument as one word of one line"
    )]
    BadArgument(String),
    #[error(
        "{0} comes after the command, where it would be sent as a word of it: put it before the command (ramp ctl {0} ... COMMAND)"
    )]
    LateOption(String),
    #[error(
        "{0} is not an option of ramp ctl (it takes --socket, --config, --json and --timeout, before the command; `ramp ctl --help` says more)"
    )]
    UnknownOption(String),
    #[error(
        "{0} after the command looks like an option, and would be sent as a word of the command (a rollout id beginning with - is taken for one too): nothing was sent; `ramp ctl --help` says what the commands take"
    )]
    OptionWord(String),
    #[error(
        "bucket takes one user id, and was given {0}: ask for each in turn, or use `ramp bucket --rollout ID USER_ID...`, which takes several"
    )]
    BucketIds(usize),
    #[error("ramp closed the connection without replying")]
    NoReply,
    #[error(
        "ramp at {path} did not answer within {} (stopped, or stuck?); the command was sent, and takes effect if ramp reads it later: check with `ramp ctl status`",
        humantime::format_duration(*wait)
    )]
    NoAnswer { path: String, wait: Duration },
    #[error(
        "{path} sent a reply longer than {max} bytes: not ramp's (its replies are a line of a few kilobytes)"
    )]
    TooLong { path: String, max: u64 },
    #[error("unreadable reply {:?}: {error}", first(line))]
    BadReply {
        line: String,
        error: serde_json::Error,
    },
}

/// The most of a reply ctl reads: a peer that is not ramp could send without end.
const MAX_REPLY: u64 = 4 << 20;

/// The start of an unreadable reply, for its error: a peer that is not ramp may send megabytes.
fn first(line: &str) -> String {
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

/// A reply: the raw line (for `--json`) and what it says.
#[derive(Debug)]
pub struct Answer {
    pub line: String,
    pub reply: Decoded,
}

impl Answer {
    pub fn ok(&self) -> bool {
        !matches!(self.reply, Decoded::Error(_) | Decoded::InEffect(_))
    }

    /// A halt or rollback in force, though not saved where it should be.
    pub fn in_effect(&self) -> bool {
        matches!(self.reply, Decoded::InEffect(_))
    }
}

/// The one line `ramp ctl` sends for its arguments. Each must be a word: not empty, with no
/// whitespace or control character, so that no argument (a user id from a script, say) can split
/// into two or carry a second command onto a line of its own.
pub fn command_line(words: &[String]) -> Result<String, ClientError> {
    if let Some(bad) = words
        .iter()
        .find(|w| w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ClientError::BadArgument(bad.clone()));
    }
    // `ramp ctl halt --json`: an option of ctl's own typed after the command. Sent, it would make
    // the command refuse (or, worse, mean something else); said here, nothing is sent. After
    // `bucket --`, every word is a user id, as with `ramp bucket`.
    let options_end = match words {
        [bucket, rest @ ..] if bucket == "bucket" => {
            1 + rest.iter().position(|w| w == "--").unwrap_or(rest.len())
        }
        _ => words.len(),
    };
    if let Some(option) = words[..options_end].iter().skip(1).find_map(|w| {
        let name = w.split('=').next().unwrap_or(w);
        ["--json", "--timeout", "--socket", "--config"]
            .contains(&name)
            .then(|| name.to_owned())
    }) {
        return Err(ClientError::LateOption(option));
    }
    // `ramp ctl start --help`, `ramp ctl --jsn status`: taken as words they would start a
    // rollout named `--help`, or be an unknown command. A negative number (`set -5`) is left
    // to ramp, which says why it is refused.
    // Dashes other than `-` too: an em dash is what autocorrect makes of `--` in documents and
    // chat, and nobody types one in a number.
    let unicode_dash = |c: char| {
        matches!(
            c,
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe58}' | '\u{fe63}' | '\u{ff0d}'
        )
    };
    let option_like = |w: &str| {
        w.starts_with(unicode_dash)
            || w.strip_prefix('-').is_some_and(|rest| {
                rest.starts_with(|c: char| c == '-' || c.is_ascii_alphabetic() || unicode_dash(c))
            })
    };
    match words {
        [first, ..] if option_like(first) => {
            return Err(ClientError::UnknownOption(first.clone()));
        }
        // A user id may begin with `-` (one minted id in 64 does): `bucket` only reads. A `--`
        // among its words, as `ramp bucket` needs before such an id, is the usual end of
        // options, not an id.
        [bucket, rest @ ..] if bucket == "bucket" => {
            let ids: Vec<&String> = rest[..options_end - 1]
                .iter()
                .chain(rest.get(options_end..).unwrap_or_default())
                .collect();
            return match ids[..] {
                [id] => Ok(format!("{bucket} {id}")),
                _ => Err(ClientError::BucketIds(ids.len())),
            };
        }
        [_, rest @ ..] if let Some(w) = rest.iter().find(|w| option_like(w)) => {
            return Err(ClientError::OptionWord(w.clone()));
        }
        // `start -9`: a rollout id, not a number, so never one beginning with a dash.
        [start, id, ..] if start == "start" && id.starts_with('-') => {
            return Err(ClientError::OptionWord(id.clone()));
        }
        _ => {}
    }
    Ok(words.join(" "))
}

/// Sends `line` and reads the reply, waiting for it at most `wait` (not zero).
pub fn request(socket: &Path, line: &str, wait: Duration) -> Result<Answer, ClientError> {
    // A uid's connections crowded (a script of the operator's user flooding the socket): the
    // refusal comes before the command is read, so it is sent again, within `wait`.
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let answer = request_once(socket, line, wait)?;
        let crowded = matches!(&answer.reply,
            Decoded::Error(e) if e.starts_with("too many admin connections"));
        if !crowded || start.elapsed() + pause >= wait {
            return Ok(answer);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn request_once(socket: &Path, line: &str, wait: Duration) -> Result<Answer, ClientError> {
    let path = socket.display().to_string();
    let io = |error| ClientError::Io {
        path: path.clone(),
        error,
    };
    let mut stream = UnixStream::connect(socket).map_err(|error| {
        match std::fs::metadata(socket).map(|m| m.file_type()) {
            Ok(t) if !t.is_socket() => ClientError::NotASocket {
                path: path.clone(),
                what: if t.is_dir() { "a directory" } else { "a file" },
            },
            // The socket's directory may not be entered: nothing about the socket itself.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                ClientError::DirectoryDenied {
                    path: path.clone(),
                    uid: nix::unistd::getuid().as_raw(),
                }
            }
            _ if error.kind() == std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                path: path.clone(),
                uid: nix::unistd::getuid().as_raw(),
            },
            _ => ClientError::Connect {
                path: path.clone(),
                error,
            },
        }
    })?;
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    let mut text = Vec::with_capacity(line.len() + 1);
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    // ramp may answer (a refusal) and close before reading: the reply still tells why.
    let sent = stream.write_all(&text);
    let mut reply = String::new();
    let read = BufReader::new(std::io::Read::take(stream, MAX_REPLY)).read_line(&mut reply);
    if reply.len() as u64 >= MAX_REPLY && !reply.ends_with('\n') {
        return Err(ClientError::TooLong {
            path,
            max: MAX_REPLY,
        });
    }
    if reply.is_empty() {
        sent.map_err(io)?;
        if let Err(e) = &read
            && matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            return Err(ClientError::NoAnswer { path, wait });
        }
        read.map_err(io)?;
        return Err(ClientError::NoReply);
    }
    let is_bucket = line
        .split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("bucket"));
    let line = reply.trim_end().to_owned();
    match reply::decode(&line, is_bucket) {
        Ok(reply) => Ok(Answer { line, reply }),
        Err(error) => Err(ClientError::BadReply { line, error }),
    }
}
