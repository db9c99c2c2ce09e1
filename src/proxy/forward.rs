//! Header rewriting in both directions (RFC 9110 §7.6.1 hop-by-hop fields, X-Forwarded-*).

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Fields that describe one connection and never cross a proxy.
pub const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the hop-by-hop fields, including every field the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Prepares a client's request head for the upstream: HTTP/1.1 in origin form with the Host the
/// client asked for, hop-by-hop fields removed, then X-Forwarded-For / -Proto from the socket.
pub fn request_head(parts: &mut http::request::Parts, peer: &HeaderValue, proto: &HeaderValue) {
    strip_hop_by_hop(&mut parts.headers);
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
        let origin = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        parts.uri = origin;
    }
    parts.version = Version::HTTP_11;
    let mut prior = parts.headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let xff = if prior.peek().is_none() {
        peer.clone()
    } else {
        // Keep what earlier proxies said, one list, with this peer last.
        let mut joined = Vec::with_capacity(64);
        for value in prior {
            joined.extend_from_slice(value.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
    };
    parts.headers.insert(X_FORWARDED_FOR, xff);
    parts.headers.insert(X_FORWARDED_PROTO, proto.clone());
}

/// Prepares an upstream's response head for the client: hop-by-hop fields and the configured
/// version-revealing headers removed.
pub fn response_head(headers: &mut HeaderMap, hide: &[HeaderName]) {
    strip_hop_by_hop(headers);
    for name in hide {
        headers.remove(name);
    }
}
