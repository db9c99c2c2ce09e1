//! Configuration errors: every one names the file and, where it can, the line and column.

use std::fmt;
use std::path::PathBuf;

/// A position in the YAML file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a value that parsed as YAML is still not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange { min: f64, max: f64, got: f64 },
    #[error("must be a multiple of 0.0001 (parts per million), got {0}")]
    PercentStep(f64),
    #[error("not a socket address like 127.0.0.1:8080: {0:?}")]
    ListenAddress(String),
    #[error("not an upstream address like 127.0.0.1:9101 or host:port: {0:?}")]
    UpstreamAddress(String),
    #[error("not an etcd endpoint like http://127.0.0.1:2379 or https://etcd:2379: {0:?}")]
    EtcdEndpoint(String),
    #[error("listed twice in this pool: {0:?}")]
    DuplicateUpstream(String),
    #[error("another goal has this name: {0:?}")]
    DuplicateGoal(String),
    #[error("not an HTTP method (a token such as GET, POST or PURCHASE): {0:?}")]
    Method(String),
    #[error(
        "a path like /checkout/done, starting with / and without a query (?...) or fragment (#...), which requests do not carry: {0:?}"
    )]
    GoalPath(String),
    #[error("ramp answers {0} itself (405), so a goal on it would never count")]
    NeverCounted(String),
    #[error("give both or neither")]
    BothOrNeither,
    #[error("not a duration like 500ms, 30s, 10m or 365d: {0}")]
    Duration(String),
    #[error("must be from {min} to {max}, got {got:?}")]
    DurationRange {
        min: &'static str,
        max: &'static str,
        got: String,
    },
    #[error("must be whole seconds, got {0:?}")]
    WholeSeconds(String),
    #[error("must be longer than zero")]
    ZeroDuration,
    #[error("must be at least 1ms: ramp keeps its timeouts in milliseconds")]
    UnderMillisecond,
    #[error("must not be empty")]
    Empty,
    #[error(
        "a fraction of answers, not a percent: 0.01 is one point over stable's error rate; {0} could never be exceeded (from 0 to below 1)"
    )]
    NotAFraction(f64),
    #[error("must be at most {max} bytes, got {got}")]
    TooLong { max: usize, got: usize },
    #[error("not a valid HTTP header name: {0:?}")]
    HeaderName(String),
    #[error(
        "{0:?} cannot carry a user id: hop-by-hop fields never reach the upstream, ramp writes X-Forwarded-For and -Proto, Host and Content-Length are the request's own, and the cookie is sticky.cookie"
    )]
    NotAnIdHeader(String),
    #[error("must be at least 1s: a cookie's Max-Age counts whole seconds")]
    UnderSecond,
    #[error("a cookie of this prefix needs {0}: browsers refuse it otherwise")]
    CookiePrefix(&'static str),
    #[error("not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~): {0:?}")]
    CookieName(String),
    #[error(
        "must not contain control characters, invisible or direction-changing characters, or whitespace: {0:?}"
    )]
    Printable(String),
    #[error(
        "a goal's name is 1 to 64 printable ASCII characters (letters, digits, punctuation; no spaces or accented letters): {0:?}"
    )]
    GoalName(String),
    #[error("give either `percent` or `steps`, not both")]
    PercentAndSteps,
    #[error("give `percent` or `steps`")]
    NoPercent,
    #[error("step percents must rise: {prev} then {next}")]
    StepsNotRising { prev: f64, next: f64 },
    #[error("every step but the last needs a `hold`")]
    MissingHold,
    #[error("a file mode in octal like 0600 or 0660: {0:?}")]
    Mode(String),
    #[error(
        "{0:o} does not let the socket's owner read and write it, and ramp's own user uses it (its start asks the socket for status): give at least 0600, e.g. 0600 or 0660"
    )]
    OwnerCannotUse(u32),
    #[error("must not contain control characters: {0:?}")]
    Control(String),
    #[error(
        "4294967295 is no group: chown reads it as \"leave the group as it is\", so the socket would keep ramp's own"
    )]
    NoGroup,
    #[error("must be one of {0}, got {1:?}")]
    OneOf(&'static str, String),
    #[error("must start with /: {0:?}")]
    AbsolutePath(String),
    #[error("no such group: {0:?}")]
    Group(String),
    #[error("unknown key; this section takes: {0}")]
    UnknownKey(String),
    #[error("{0}")]
    Shape(String),
    #[error(
        "is empty: nobody could run any command, not even status; leave it out for the default (root and ramp's own user)"
    )]
    NobodyAllowed,
    #[error(
        "lists uid {0}, which may run every command already (allowed_uids: by default root and ramp's own user)"
    )]
    BothLists(u32),
    #[error(
        "is the proxy's own address ({0}): the status page and the metrics, which show the rollout id, would be served to users"
    )]
    SameAsListen(std::net::SocketAddr),
    #[error(
        "is ramp's own address ({0}): every request would come back to ramp, each taking another connection"
    )]
    OwnAddress(std::net::SocketAddr),
    #[error("not a status (100 to 599) or a class (1xx to 5xx): {0:?}")]
    Status(String),
    #[error("not a host name (letters, digits, '-' and '.', no port): {0:?}")]
    HostName(String),
}

/// One problem found while validating, with where it is and which field it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Position,
    pub field: String,
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A key is the file's own text: an unknown one may hold anything.
        let field = crate::shown::escaped(&self.field);
        write!(f, "{}: {field}: {}", self.at, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not YAML of the expected shape (unknown key, wrong type, syntax).
    #[error("{path}:{at}: {}", crate::shown::for_terminal(message))]
    Parse {
        path: PathBuf,
        at: Position,
        message: String,
    },
    /// The YAML has the right shape but some values are not acceptable.
    #[error("{}", render(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    /// `state.file` names a file ramp reads: writing the state would destroy it.
    #[error("{path}: state.file {} is {what}: ramp would write its state over it", state.display())]
    StateFileClash {
        path: PathBuf,
        state: PathBuf,
        what: &'static str,
    },
}

/// The most problems told one by one: a file of a hundred thousand bad keys would otherwise make
/// an error as large as thirty files (kept in status, and in every reply that carries it).
pub const MOST_PROBLEMS_TOLD: usize = 50;

fn render(path: &std::path::Path, problems: &[Problem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(MOST_PROBLEMS_TOLD)
        .map(|p| format!("{}:{p}", path.display()))
        .collect();
    if problems.len() > MOST_PROBLEMS_TOLD {
        lines.push(format!(
            "{}: and {} more problems",
            path.display(),
            problems.len() - MOST_PROBLEMS_TOLD
        ));
    }
    lines.join("\n")
}

impl ConfigError {
    /// Every problem as its own line, `path:line:column field: reason`.
    pub fn lines(&self) -> Vec<String> {
        self.to_string().lines().map(str::to_owned).collect()
    }

    /// How many problems were found (more than [`Self::lines`] tells past
    /// [`MOST_PROBLEMS_TOLD`]).
    pub fn count(&self) -> usize {
        match self {
            ConfigError::Invalid { problems, .. } => problems.len(),
            _ => self.lines().len(),
        }
    }
}
