//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the test that replays their
//! committed corpora (`tests/fuzz_corpus.rs`). Each checks the invariants a user relies on, and
//! panics (a finding) when one breaks.

use std::path::Path;
use std::sync::OnceLock;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{self, ConfigError};
use crate::control::command;
use crate::routing::{self, Decision, MAX_ID_LEN, Rollout, Routing, State, StickyRules};

fn routing() -> &'static Routing {
    static ROUTING: OnceLock<Routing> = OnceLock::new();
    ROUTING.get_or_init(|| Routing {
        rollout: Rollout::new("fuzz", 500_000, State::Running),
        sticky: StickyRules::new(
            Some(HeaderName::from_static("x-user-id")),
            "uid",
            true,
            86_400,
            false,
            None,
        ),
    })
}

/// Header values from `data` (one per line: the first is `x-user-id`, the rest `cookie`): the id
/// found is 1..=1024 bytes copied from the input, and routing never fails.
pub fn id_extraction(data: &[u8]) {
    let routing = routing();
    let mut headers = HeaderMap::new();
    let user = HeaderName::from_static("x-user-id");
    for (i, line) in data.split(|&b| b == b'\n').enumerate().take(32) {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        headers.append(if i == 0 { user.clone() } else { COOKIE }, value);
    }
    if let Some(id) = routing::user_id(&routing.sticky, &headers) {
        assert!(
            (1..=MAX_ID_LEN).contains(&id.len()),
            "id of {} bytes",
            id.len()
        );
        assert!(
            data.windows(id.len()).any(|w| w == id),
            "the id is not from the input"
        );
        let (pool, user) = routing::assign_hashed(&routing.rollout, id);
        assert_eq!(
            routing::decide(routing, &headers),
            Decision::User { pool, user }
        );
    } else {
        assert_eq!(routing::decide(routing, &headers), Decision::Mint);
    }
}

/// An admin line: parsing never panics, and what parses has a name that parses back.
pub fn admin_command(data: &[u8]) {
    if let Ok(cmd) = command::parse(data) {
        let again = command::parse(cmd.name().as_bytes());
        let takes_no_argument = matches!(
            cmd,
            command::Command::Status
                | command::Command::Halt
                | command::Command::Resume
                | command::Command::Rollback
                | command::Command::Promote
                | command::Command::Reload
        );
        if takes_no_argument {
            assert_eq!(again, Ok(cmd));
        }
    }
}

/// A config file: loading never panics; what validates holds in-range values, and errors carry a
/// position.
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, Path::new("fuzz.yaml")) {
        Ok(c) => {
            assert!(c.rollout.plan.first_ppm() <= 1_000_000);
            assert!(!c.pools.stable.is_empty() && !c.pools.canary.is_empty());
            assert!((1..=1024).contains(&c.workers));
        }
        Err(ConfigError::Parse { at, message, .. }) => {
            assert!(!message.is_empty(), "a parse error without a message");
            // An empty document has no position to point at; anything else does.
            assert!(
                at.line >= 1 || text.trim().is_empty(),
                "no position for {text:?}: {message}"
            );
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "invalid without a problem");
            for p in &problems {
                assert!(p.at.line >= 1, "no position for {p} in {text:?}");
            }
        }
        Err(ConfigError::Read { .. }) => panic!("parse does not read files"),
        // A state file named like the config, its admin socket or a file it names.
        Err(ConfigError::StateFileClash { .. }) => {}
    }
}
