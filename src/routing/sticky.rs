//! Finding the user's id in a request, and minting one for a newcomer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Method};

use super::{Rollout, State, StickyRules};

use super::{PoolName, assign};

/// Whether a request that carries no id is a newcomer's, for whom an id is minted, as a browser
/// tells it with Fetch Metadata (`Sec-Fetch-Mode`, `-Site`, `-Dest`, sent by every current
/// browser): a top-level navigation — except a cross-site POST (or other unsafe method) one. Those, and a browser's subresource, `fetch()` or WebSocket request without
/// the cookie, come from a client that has an id it did not send or cannot keep one: a
/// `SameSite=Lax` cookie never goes with a cross-site POST (a payment provider's or a login's
/// return) nor into a cross-site frame, and a browser that blocks cookies sends none after the
/// first. Minting for them would replace the user's id (and maybe version) for good, or scatter
/// one page's requests over both versions; they go to stable, as requests without an id do with
/// `assign: false`. Without Fetch Metadata (curl, API clients, old browsers) every request is a
/// newcomer's.
pub fn newcomer(method: &Method, headers: &HeaderMap) -> bool {
    let Some(mode) = headers.get("sec-fetch-mode") else {
        return true;
    };
    if mode.as_bytes() != b"navigate" {
        return false;
    }
    // A frame's navigation: the page around it was a navigation that got the cookie first, so a
    // frame without it is in another site's page (`Sec-Fetch-Site` tells the frame's own
    // initiator, not the top-level site: a link clicked inside a cross-site frame says
    // same-origin).
    let top_level = headers
        .get("sec-fetch-dest")
        .is_none_or(|v| v.as_bytes() == b"document");
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    top_level && (!cross_site || method == Method::GET || method == Method::HEAD)
}

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
    cookie(headers, rules)
}

/// The first usable value of the id cookie, searching every Cookie header (HTTP/2 sends one per
/// cookie). Anything malformed is skipped, never an error.
fn cookie<'h>(headers: &'h HeaderMap, rules: &StickyRules) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        let v = value.as_bytes();
        if v.len() <= ONE_SEARCH_FROM {
            pair_by_pair(v, rules.cookie.as_bytes())
        } else {
            one_search(v, &rules.cookie_pair)
        }
    })
}

/// A Cookie field at least this long is searched for `name=` in one pass rather than pair by
/// pair: a browser's field of several cookies (a vectorised search beats a search for each `;`),
/// not a client's one or two.
const ONE_SEARCH_FROM: usize = 48;

/// The id in one Cookie field, read pair by pair.
fn pair_by_pair<'v>(v: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    let mut start = 0;
    loop {
        let end = memchr::memchr(b';', &v[start..]).map_or(v.len(), |e| start + e);
        if let Some(rest) = trim(&v[start..end])
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(b"="))
            && let Some(id) = usable(trim(rest))
        {
            return Some(id);
        }
        if end == v.len() {
            return None;
        }
        start = end + 1;
    }
}

/// The id in one Cookie field, found with one search for `name=` (`pair`): a match counts where
/// it begins a pair (after the field's start or a `;`, and blanks), which a cookie name (a token:
/// no `;`, `=` or blank) cannot do inside another pair.
fn one_search<'v>(v: &'v [u8], pair: &memchr::memmem::Finder<'_>) -> Option<&'v [u8]> {
    let skip = pair.needle().len();
    pair.find_iter(v).find_map(|at| {
        if !matches!(trim(&v[..at]).last(), None | Some(b';')) {
            return None;
        }
        let rest = &v[at + skip..];
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        usable(trim(&rest[..end]))
    })
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
/// `domain_fits`: [`domain_fits`] for the request's host (else the cookie goes without the
/// configured `Domain`).
pub fn set_cookie(rules: &StickyRules, id: &str, domain_fits: bool) -> Option<HeaderValue> {
    let attributes = if domain_fits {
        &rules.cookie_attributes
    } else {
        &rules.host_only_attributes
    };
    let text = format!("{}={id}{attributes}", rules.cookie);
    HeaderValue::try_from(text).ok()
}

/// Whether a minted cookie may carry the configured `Domain` for a request to `host`: the host
/// is that domain or one of its subdomains, as a browser requires (RFC 6265 §5.3 step 6); a
/// browser refuses the cookie otherwise, and would be a new user at every request.
pub fn domain_fits(rules: &StickyRules, host: Option<&[u8]>) -> bool {
    match &rules.cookie_domain {
        Some(domain) => host.is_some_and(|h| within(h, domain.as_bytes())),
        None => true,
    }
}

/// Whether `host` (a Host field's value, maybe with a port) is `domain` or one of its
/// subdomains.
fn within(host: &[u8], domain: &[u8]) -> bool {
    let name = match host.iter().rposition(|&b| b == b':') {
        // A port, unless it is an IPv6 literal's colon.
        Some(i) if !host.starts_with(b"[") => &host[..i],
        _ => host,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    name.eq_ignore_ascii_case(domain)
        || (name.len() > domain.len()
            && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
            && name[name.len() - domain.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    /// The id as RFC 6265 reads a Cookie field: pair by pair, split at `;`.
    fn split_at_semicolons<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
        headers.get_all(COOKIE).iter().find_map(|value| {
            value.as_bytes().split(|&b| b == b';').find_map(|pair| {
                trim(pair)
                    .strip_prefix(name)
                    .and_then(|r| r.strip_prefix(b"="))
                    .and_then(|r| usable(trim(r)))
            })
        })
    }

    proptest! {
        // Fields made of the name's own bytes, `=`, `;` and blanks: names inside values, names
        // that end another name, empty and blank values, pairs without `=`; short fields are
        // read pair by pair, long ones with one search, and both ways must agree on every field.
        #[test]
        fn the_one_search_finds_what_reading_pair_by_pair_finds(
            fields in prop::collection::vec("[uid=; \tx]{0,120}", 1..3),
        ) {
            let rules = StickyRules::new(None, "uid", true, 60, false, None);
            let mut headers = HeaderMap::new();
            for f in &fields {
                headers.append(COOKIE, HeaderValue::from_str(f).expect("value"));
            }
            prop_assert_eq!(cookie(&headers, &rules), split_at_semicolons(&headers, b"uid"));
            for f in &fields {
                prop_assert_eq!(
                    one_search(f.as_bytes(), &rules.cookie_pair),
                    pair_by_pair(f.as_bytes(), b"uid")
                );
            }
        }
    }

    #[test]
    fn a_name_that_ends_another_or_sits_in_a_value_is_not_the_id() {
        let rules = StickyRules::new(None, "uid", true, 60, false, None);
        let field = b"xuid=a; b=uid=c;uid=;  \tuid = d; uid=\t e ;uid=f";
        assert_eq!(pair_by_pair(field, b"uid"), Some(&b"e"[..]));
        assert_eq!(one_search(field, &rules.cookie_pair), Some(&b"e"[..]));
    }
}
