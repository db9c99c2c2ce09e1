//! Header rewriting in both directions (RFC 9110 §7.6.1 hop-by-hop fields, X-Forwarded-*).
//! One pass over a header section finds what needs doing, so the common case does no lookups.

use http::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};

use crate::upstream::Hide;

// Constants, not statics: comparisons against them compile to cheap checks on the known names.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Fields that never cross ramp: those that describe one connection (RFC 9110 §7.6.1), and
/// `Trailer`, because trailers are not forwarded (a `Trailer` field announcing fields that never
/// come would be a lie).
pub const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    TRAILER,
];

/// What one pass over a header section found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Bytes of the section, counted as `name: value\r\n`.
    pub bytes: usize,
    pub hosts: u32,
    /// A Host field that cannot be a `host[:port]`.
    pub bad_host: bool,
    /// An empty Host field (a target without an authority, RFC 9112 §3.2).
    pub empty_host: bool,
    pub content_lengths: u32,
    pub transfer_encoding: bool,
    /// `Cookie` fields (HTTP/2 sends one per cookie).
    pub cookies: u32,
    /// An `Upgrade` field is present (a WebSocket handshake, perhaps).
    pub upgrade: bool,
    /// Which of [`HOP_BY_HOP`] are present, one bit each.
    hop: u8,
    /// Whether a header to hide is present.
    hide: bool,
    pub forwarded_for: bool,
    pub forwarded_proto: bool,
    /// A field name with `_` (one that may pass for a field ramp sets or routes by, see
    /// [`drop_lookalikes`]).
    underscore: bool,
}

/// The bytes a `uri-host [ ":" port ]` may hold (RFC 9110 §7.2, RFC 3986 §3.2.2): those of a
/// registered name, an IP literal or a port; no userinfo, space, path or query.
const HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let marks = b"-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < marks.len() {
        t[marks[j] as usize] = true;
        j += 1;
    }
    t
};

/// Whether `host` could be a Host field's value (empty is allowed: a target without an
/// authority).
pub fn valid_host(host: &[u8]) -> bool {
    if !host.iter().all(|&b| HOST_BYTES[b as usize]) {
        return false;
    }
    // The port, if any, is digits (RFC 3986 §3.2.3) naming a TCP port (at most 65535): after an
    // IP literal's `]`, else after the only colon.
    let port = match host.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => match &literal[end + 1..] {
                [] => &[][..],
                [b':', port @ ..] => port,
                _ => return false,
            },
            None => return false,
        },
        // A name or IPv4 address: not empty when a port follows (RFC 9110 §4.2.1), and no
        // brackets, which belong to IP literals.
        None if host.iter().any(|&b| b == b'[' || b == b']') => return false,
        None => match host.iter().position(|&b| b == b':') {
            Some(0) => return false,
            Some(colon) => &host[colon + 1..],
            None => &[][..],
        },
    };
    port.iter()
        .try_fold(0u32, |n, &d| {
            let n = n * 10 + u32::from(d.wrapping_sub(b'0'));
            (d.is_ascii_digit() && n <= 65535).then_some(n)
        })
        .is_some()
}

/// Looks at every field once; `hide` are the names the caller will remove as well.
#[inline]
pub fn scan(headers: &HeaderMap, hide: &[HeaderName]) -> Scan {
    let mut s = Scan::default();
    for (name, value) in headers {
        s.bytes += name.as_str().len() + value.len() + 4;
        if name == HOST {
            s.hosts += 1;
            s.bad_host |= !valid_host(value.as_bytes());
            s.empty_host |= value.is_empty();
        } else if name == CONTENT_LENGTH {
            s.content_lengths += 1;
        } else if name == COOKIE {
            s.cookies += 1;
        } else if name == X_FORWARDED_FOR {
            s.forwarded_for = true;
        } else if name == X_FORWARDED_PROTO {
            s.forwarded_proto = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            s.hop |= 1 << i;
            s.transfer_encoding |= name == TRANSFER_ENCODING;
            s.upgrade |= name == UPGRADE;
        } else {
            s.hide |= hide.contains(name);
            s.underscore |= name.as_str().as_bytes().contains(&b'_');
        }
    }
    s
}

/// Removes every field whose name, with `_` read as `-`, is one ramp sets, frames by or routes
/// by, under another spelling (`X_Forwarded_For`, `Content_Length`, `X_User_Id`; `X-User-Id`
/// where the sticky header is `x_user_id`): CGI, WSGI, Rack and PHP give both spellings one name
/// (`HTTP_X_FORWARDED_FOR`), so the app could take the client's lookalike for the real field —
/// a forged client address, another user than the one ramp routed.
fn drop_lookalikes(headers: &mut HeaderMap, id_header: Option<&HeaderName>) {
    let dashed = |name: &HeaderName| -> Vec<u8> {
        name.as_str()
            .bytes()
            .map(|b| if b == b'_' { b'-' } else { b })
            .collect()
    };
    // (A rare path: a request with such a name, or a sticky header spelled with `_`.)
    let owned: Vec<(HeaderName, Vec<u8>)> = [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        HOST,
        CONTENT_LENGTH,
        COOKIE,
    ]
    .into_iter()
    .chain(HOP_BY_HOP)
    .chain(id_header.cloned())
    .map(|n| {
        let d = dashed(&n);
        (n, d)
    })
    .collect();
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let spelled = dashed(name);
            owned.iter().any(|(n, d)| *d == spelled && n != *name)
        })
        .cloned()
        .collect();
    for name in &lookalikes {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop fields `scan` found, every field the Connection header names (but Host,
/// Cookie and `id_header`: the fields the user's id and the target come in, which ramp routed on
/// and the app must see as well), and the `hide` names.
pub fn strip(
    headers: &mut HeaderMap,
    scan: &Scan,
    hide: &[HeaderName],
    id_header: Option<&HeaderName>,
) {
    if scan.hop & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                // Host and the id's fields are never connection options: a client naming them
                // must not strip them (ramp routed on the id; the app would see another user).
                if let Ok(name) = HeaderName::from_bytes(token)
                    && name != HOST
                    && name != COOKIE
                    && Some(&name) != id_header
                {
                    named.push(name);
                }
            }
        }
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if scan.hop & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if scan.hide {
        for name in hide {
            headers.remove(name);
        }
    }
}

/// Marks an `OPTIONS http://host` request, which asks about the server as a whole: it goes on
/// as `OPTIONS *` (RFC 9112 §3.2.4). Set by the HTTP/1.1 parser, which still has the target as it
/// came (`http` makes an empty path "/"); the request is checked as it came.
#[derive(Debug, Clone, Copy)]
pub struct WholeServer;

/// Prepares a client's request head for the upstream: HTTP/1.1 in origin form with the Host the
/// client asked for, hop-by-hop fields removed, and the client's own X-Forwarded-Proto dropped.
/// The X-Forwarded-* fields ramp sets are [`forwarded`]'s, added by the caller.
///
/// A request that names no host at all (HTTP/1.0 without Host, HTTP/2 without :authority) gets
/// `fallback_host`, the upstream's address.
pub fn request_head(
    parts: &mut http::request::Parts,
    scan: &Scan,
    fallback_host: &HeaderValue,
    id_header: Option<&HeaderName>,
) {
    strip(&mut parts.headers, scan, &[], id_header);
    if scan.underscore || id_header.is_some_and(|h| h.as_str().contains('_')) {
        drop_lookalikes(&mut parts.headers, id_header);
    }
    if scan.cookies > 1 {
        join_cookies(&mut parts.headers);
    }
    if scan.forwarded_proto {
        parts.headers.remove(X_FORWARDED_PROTO);
    }
    // No Host, or an empty one: ramp's own, the same for both pools, so that the upstream does
    // not fall back to a name of its own that would tell its pool.
    if parts.uri.authority().is_none() && (scan.hosts == 0 || scan.empty_host) {
        parts.headers.insert(HOST, fallback_host.clone());
    }
    if parts.uri.authority().is_some() {
        // HTTP/2 (:authority) or an HTTP/1.1 absolute-form target: the target's authority is the
        // Host (RFC 9112 §3.2.2), and the upstream gets the origin form.
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str().rsplit('@').next()?).ok())
        {
            parts.headers.insert(HOST, host);
        }
        let origin = if parts.extensions.get::<WholeServer>().is_some() {
            Uri::from_static("*")
        } else {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
        };
        parts.uri = origin;
    }
    parts.version = Version::HTTP_11;
}

/// The X-Forwarded-For value: what earlier proxies said, one list, with `peer` last. The
/// client's own X-Forwarded-For fields leave `headers` (this value replaces them).
pub fn forwarded_for(headers: &mut HeaderMap, scan: &Scan, peer: &HeaderValue) -> HeaderValue {
    if !scan.forwarded_for {
        return peer.clone();
    }
    let mut joined = Vec::with_capacity(64);
    for value in headers.get_all(X_FORWARDED_FOR) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    headers.remove(X_FORWARDED_FOR);
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
}

/// Adds the X-Forwarded-For and -Proto fields to a head prepared by [`request_head`] (for a head
/// that hyper's client sends; ramp's own client writes them as it sends the head).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    scan: &Scan,
    peer: &HeaderValue,
    proto: &HeaderValue,
) {
    let xff = forwarded_for(headers, scan, peer);
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, proto.clone());
}

/// Several `Cookie` fields become one, joined with "; " (RFC 9113 §8.2.3: an HTTP/2 client
/// sends one per cookie; an HTTP/1.1 upstream expects one field).
fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Gives the upstream the id ramp minted for this request, as the cookie the client will send
/// from now on, in place of any pair of that name the request had (one ramp found unusable:
/// empty, too long): the app and ramp agree on the user from the first request.
pub fn add_minted(headers: &mut HeaderMap, cookie: &str, id: &str) {
    let mut value = Vec::with_capacity(cookie.len() + id.len() + 1);
    value.extend_from_slice(cookie.as_bytes());
    value.push(b'=');
    value.extend_from_slice(id.as_bytes());
    // After `request_head`: one Cookie field at most.
    if let Some(theirs) = headers.get(COOKIE) {
        for pair in theirs.as_bytes().split(|&b| b == b';') {
            let name = pair.split(|&b| b == b'=').next().unwrap_or_default();
            if pair.trim_ascii().is_empty() || name.trim_ascii() == cookie.as_bytes() {
                continue;
            }
            value.extend_from_slice(b"; ");
            value.extend_from_slice(pair.trim_ascii());
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(COOKIE, value);
    }
}

/// Prepares an upstream's response head for the client: hop-by-hop fields and the configured
/// version-revealing headers removed, and a `Set-Cookie` for the sticky cookie where upstreams may
/// not set it. An answer framed by both Content-Length and
/// Transfer-Encoding loses its Content-Length (chunked wins, RFC 9112 §6.3) and gives true: its
/// connection must not be reused.
#[inline]
pub fn response_head(headers: &mut HeaderMap, hide: &Hide) -> bool {
    let s = scan(headers, &hide.fields);
    if s.hop != 0 || s.hide {
        strip(headers, &s, &hide.fields, None);
    }
    if hide.own_cookie.is_some()
        && let http::header::Entry::Occupied(cookies) = headers.entry(http::header::SET_COOKIE)
    {
        let (_, all) = cookies.remove_entry_mult();
        let kept: Vec<HeaderValue> = all
            .filter(|v| !hide.drops_set_cookie(v.as_bytes()))
            .collect();
        for v in kept {
            headers.append(http::header::SET_COOKIE, v);
        }
    }
    let conflict = s.transfer_encoding && s.content_lengths > 0;
    if conflict {
        headers.remove(CONTENT_LENGTH);
    }
    conflict
}
