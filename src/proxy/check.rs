//! Requests refused before routing: TRACE, PRI, a missing (HTTP/1.1) or doubled Host, oversized targets and
//! header sections, and any framing ambiguity that gets this far. The HTTP/1.1 head parser
//! already refuses what it cannot parse (bare CR, obs-fold, whitespace before a colon, invalid or
//! differing Content-Length) and reads no body it cannot frame; Content-Length together with
//! Transfer-Encoding is refused here, and the connection closes after the answer.

use http::header::{HOST, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};

use crate::config::Limits;

use super::forward::Scan;

/// Why a request is refused, as the status the client gets.
pub fn request<B>(req: &Request<B>, scan: &Scan, limits: &Limits) -> Result<(), StatusCode> {
    let uri = req.uri();
    if req.method() == Method::CONNECT && super::tunnel::wanted(req, scan).is_none() {
        // A reverse proxy opens no tunnels to arbitrary hosts; the only CONNECT ramp serves is a
        // WebSocket over HTTP/2 (extended CONNECT, RFC 8441).
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    if req.method() == Method::TRACE {
        // TRACE echoes the request as the upstream received it: the headers ramp adds, and
        // cookies a page's script must not read (cross-site tracing). nginx refuses it the same way.
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    if req.method().as_str() == "PRI" {
        // HTTP/2's connection preface, not a method (RFC 9113 §3.4): an HTTP/2 upstream reading
        // it would take it for one.
        return Err(StatusCode::BAD_REQUEST);
    }
    // Origin form (/path), absolute form (http://host/path), or * for OPTIONS; an authority
    // alone (`GET abc`) is for CONNECT only.
    let asterisk = uri.path() == "*";
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if authority_form || (asterisk && req.method() != Method::OPTIONS) {
        return Err(StatusCode::BAD_REQUEST);
    }
    // An absolute-form target names a resource ramp serves: http or https (RFC 9110 §4.2).
    if uri
        .scheme()
        .is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS)
    {
        return Err(StatusCode::BAD_REQUEST);
    }
    if scan.transfer_encoding && !chunked_only(req) {
        // A coding ramp would have to undo to forward (gzip, chunked): RFC 9112 §6.1 allows 501.
        return Err(StatusCode::NOT_IMPLEMENTED);
    }
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(StatusCode::URI_TOO_LONG);
    }
    // The HTTP/1.1 parser counts fields itself; HTTP/2 bounds only their bytes, so count here too
    // (its cookies, one field each (RFC 9113 §8.2.3), as the one field HTTP/1.1 sends them in).
    let fields = req.headers().len() - (scan.cookies as usize).saturating_sub(1);
    if scan.bytes > limits.max_header_bytes || fields > limits.max_headers {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // An HTTP/2 field value with whitespace at either end is malformed (RFC 9113 §8.2.1): passed
    // on, an HTTP/1.1 upstream would read it trimmed, and a sticky id unlike ramp's.
    if req.version() == Version::HTTP_2
        && req
            .headers()
            .values()
            .any(|v| matches!(v.as_bytes(), [b' ' | b'\t', ..] | [.., b' ' | b'\t']))
    {
        return Err(StatusCode::BAD_REQUEST);
    }
    // None (HTTP/1.1), two, or one that is not a host[:port]: 400 (RFC 9112 §3.2); the same for
    // the target's authority (absolute form, HTTP/2's :authority), which becomes the Host.
    if scan.hosts > 1
        || scan.bad_host
        || (scan.hosts == 0 && req.version() == Version::HTTP_11)
        || uri
            .authority()
            .is_some_and(|a| !super::forward::valid_host(a.as_str().as_bytes()))
    {
        return Err(StatusCode::BAD_REQUEST);
    }
    // An HTTP/2 request whose Host names another server than its :authority is malformed (RFC
    // 9113 §8.3.1): the upstream would get the authority as Host, an app reading both another.
    if req.version() == Version::HTTP_2
        && scan.hosts == 1
        && let (Some(authority), Some(host)) = (uri.authority(), req.headers().get(HOST))
        && !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    {
        return Err(StatusCode::BAD_REQUEST);
    }
    if scan.content_lengths > 1 || (scan.content_lengths == 1 && scan.transfer_encoding) {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(())
}

/// Whether the request's Transfer-Encoding is exactly `chunked`.
fn chunked_only<B>(req: &Request<B>) -> bool {
    let mut values = req.headers().get_all(TRANSFER_ENCODING).iter();
    let one = values.next();
    values.next().is_none()
        && one.is_some_and(|v| {
            v.to_str()
                .is_ok_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
}
