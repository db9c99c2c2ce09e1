//! Requests refused before routing: a missing (HTTP/1.1) or doubled Host, oversized targets and
//! header sections, and any framing ambiguity that gets this far. hyper already refuses what it
//! cannot parse (bare CR, obs-fold, whitespace before a colon, invalid or differing
//! Content-Length) and settles Content-Length + Transfer-Encoding itself: Transfer-Encoding wins,
//! Content-Length is dropped, and the connection closes after the answer.

use http::{Request, StatusCode, Version};

use crate::config::Limits;

use super::forward::Scan;

/// Why a request is refused, as the status the client gets.
pub fn request<B>(req: &Request<B>, scan: &Scan, limits: &Limits) -> Result<(), StatusCode> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(StatusCode::URI_TOO_LONG);
    }
    if scan.bytes > limits.max_header_bytes {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    if scan.hosts > 1 || (scan.hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(StatusCode::BAD_REQUEST);
    }
    if scan.content_lengths > 1 || (scan.content_lengths == 1 && scan.transfer_encoding) {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(())
}
