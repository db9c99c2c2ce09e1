//! The sticky settings: where a user's id comes from, and the cookie ramp mints.

use std::time::Duration;

use http::HeaderName;

use crate::config::Sticky;
use crate::config::checker::{Checker, parse_duration};
use crate::config::error::Reason;
use crate::config::file::File;

use super::{header_name, host_name};

/// The header a user id comes in: any name but the hop-by-hop ones (removed before the upstream
/// sees them: ramp and the app would disagree on the user), those ramp writes, the request's own
/// framing and Host, and Cookie (`sticky.cookie` reads it).
fn id_header_name(s: &str) -> Result<HeaderName, Reason> {
    let name = header_name(s)?;
    const NOT_AN_ID: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "host",
        "content-length",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
    ];
    if NOT_AN_ID.contains(&name.as_str()) {
        return Err(Reason::NotAnIdHeader(name.as_str().to_owned()));
    }
    Ok(name)
}

pub(super) fn sticky(c: &mut Checker, file: &File) -> Option<Sticky> {
    let s = file.sticky.as_ref();
    let header = s.and_then(|s| s.header.as_ref());
    let header = match header {
        Some(h) => c.check(h, "sticky.header", |s| id_header_name(s)).map(Some),
        None => Some(None),
    };
    let cookie = match s.and_then(|s| s.cookie.as_ref()) {
        Some(name) => c.check(name, "sticky.cookie", |n| cookie_name(n)),
        None => Some("uid".to_owned()),
    };
    let max_age = match s.and_then(|s| s.cookie_max_age.as_ref()) {
        // Max-Age counts whole seconds: under one, the minted cookie would be gone at once, and
        // every request a new user.
        Some(text) => c.check(text, "sticky.cookie_max_age", |t| {
            parse_duration(t).and_then(|d| {
                (d >= Duration::from_secs(1))
                    .then_some(d)
                    .ok_or(Reason::UnderSecond)
            })
        })?,
        None => Duration::from_secs(365 * 86_400),
    };
    let assign = s.and_then(|s| s.assign).unwrap_or(true);
    let secure = s.and_then(|s| s.cookie_secure).unwrap_or(false);
    let has_domain = s.is_some_and(|s| s.cookie_domain.is_some());
    // A browser refuses a cookie of these prefixes without what they promise (RFC 6265bis
    // §4.1.3): every request would be a new user.
    if let (Some(name), Some(given)) = (&cookie, s.and_then(|s| s.cookie.as_ref())) {
        let lower = name.to_ascii_lowercase();
        let needs = if lower.starts_with("__host-") && (!secure || has_domain) {
            Some("cookie_secure: true and no cookie_domain")
        } else if lower.starts_with("__secure-") && !secure {
            Some("cookie_secure: true")
        } else {
            None
        };
        if let Some(needs) = needs {
            c.check(given, "sticky.cookie", |_| -> Result<(), Reason> {
                Err(Reason::CookiePrefix(needs))
            });
        }
    }
    let domain = match s.and_then(|s| s.cookie_domain.as_ref()) {
        // A leading dot is what older specifications wrote; browsers ignore it.
        Some(d) => c
            .check(d, "sticky.cookie_domain", |d| {
                host_name(d.trim().trim_start_matches('.'))
            })
            .map(Some),
        None => Some(None),
    };
    Some(Sticky {
        header: header?,
        cookie: cookie?,
        assign,
        cookie_max_age: max_age,
        cookie_secure: secure,
        cookie_domain: domain?,
        // By default the cookie is ramp's where ramp mints it, the app's where it does not.
        app_sets_cookie: s.and_then(|s| s.app_sets_cookie).unwrap_or(!assign),
    })
}

/// RFC 6265 cookie-name: an RFC 9110 token.
fn cookie_name(n: &str) -> Result<String, Reason> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if n.is_empty() {
        return Err(Reason::Empty);
    }
    if n.bytes().all(token) {
        Ok(n.to_owned())
    } else {
        Err(Reason::CookieName(n.to_owned()))
    }
}
