//! Finding the user's id in a request, and minting one for a newcomer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use super::{Rollout, State, StickyRules};

use super::{PoolName, assign};

/// Ids longer than this (or empty) count as no id.
pub const MAX_ID_LEN: usize = 1024;

/// While halted, a newcomer's id is redrawn until it falls on stable, this many times at most
/// (only a halt at or near 100% can exhaust it; the user then follows the hash).
const HALTED_DRAWS: usize = 1024;

#[inline]
fn usable(id: &[u8]) -> Option<&[u8]> {
    (1..=MAX_ID_LEN).contains(&id.len()).then_some(id)
}

#[inline]
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The user's id: a non-empty configured header wins, then the cookie. Raw bytes as received.
#[inline]
pub fn user_id<'h>(rules: &StickyRules, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    if let Some(name) = &rules.header
        && let Some(id) = headers.get(name).and_then(|v| usable(v.as_bytes()))
    {
        return Some(id);
    }
    cookie(headers, rules.cookie.as_bytes())
}

/// The first usable value of cookie `name`, searching every Cookie header (HTTP/2 sends one per
/// cookie). Anything malformed is skipped, never an error.
fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    for value in headers.get_all(COOKIE) {
        let v = value.as_bytes();
        let mut start = 0;
        loop {
            // Each pair found with one vectorised search, not byte by byte.
            let end = memchr::memchr(b';', &v[start..]).map_or(v.len(), |e| start + e);
            if let Some(rest) = trim(&v[start..end])
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(b"="))
                && let Some(id) = usable(trim(rest))
            {
                return Some(id);
            }
            if end == v.len() {
                break;
            }
            start = end + 1;
        }
    }
    None
}

/// A fresh id: 128 random bits, base64url without padding (22 characters).
fn draw() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// An id for a user who brought none. While the rollout is halted the id is drawn so that it
/// lands on stable: no new user enters the canary during a halt, now or on later requests.
pub fn mint(rollout: &Rollout) -> String {
    let mut id = draw();
    if rollout.state == State::Halted {
        for _ in 0..HALTED_DRAWS {
            if assign(rollout, id.as_bytes()) == PoolName::Stable {
                break;
            }
            id = draw();
        }
    }
    id
}

/// The Set-Cookie value that gives a newcomer `id`. Every newcomer gets the same kind, whichever
/// pool they land in.
pub fn set_cookie(rules: &StickyRules, id: &str) -> Option<HeaderValue> {
    let text = format!("{}={id}{}", rules.cookie, rules.cookie_attributes);
    HeaderValue::try_from(text).ok()
}
