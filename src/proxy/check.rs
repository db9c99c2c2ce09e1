//! Requests refused before routing: ambiguous framing (smuggling), missing or doubled Host,
//! oversized targets and header sections. hyper already refuses what it cannot parse (bare CR,
//! obs-fold, whitespace before a colon, invalid Content-Length).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, StatusCode, Version};

use crate::config::Limits;

/// Why a request is refused, as the status the client gets.
pub fn request<B>(req: &Request<B>, limits: &Limits) -> Result<(), StatusCode> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(StatusCode::URI_TOO_LONG);
    }
    let h = req.headers();
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if bytes > limits.max_header_bytes {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let hosts = h.get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let lengths = h.get_all(CONTENT_LENGTH).iter().count();
    if lengths > 1 || (lengths == 1 && h.contains_key(TRANSFER_ENCODING)) {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(())
}
