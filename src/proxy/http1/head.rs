//! A client's request head (RFC 9112 §2–§3, §6): parsed out of the read buffer into the parts
//! of an `http::Request`, with how its body is framed and whether the connection may carry
//! another request after it.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use smallvec::SmallVec;

use crate::framing::{Chunk, Framing, is, length, list};

/// Up to this many fields are parsed into room on the stack; a higher `limits.max_headers`
/// takes room from the heap.
const STACK_FIELDS: usize = 128;

/// A request head and what it says of its connection.
#[derive(Debug)]
pub struct Head {
    pub parts: Parts,
    pub framing: Framing,
    /// The connection may carry another request after this one (as far as the request says).
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body to come.
    pub expect_continue: bool,
    /// The request asks to switch protocols (`Connection: upgrade` with an `Upgrade` field).
    pub upgrade: bool,
}

/// Whether an absolute-form target has an empty path and no query (`http://host`): nothing
/// after its authority.
fn asks_for_server(target: &[u8]) -> bool {
    let Some(at) = target.windows(3).position(|w| w == b"://") else {
        return false;
    };
    !target[at + 3..].iter().any(|&b| matches!(b, b'/' | b'?'))
}

/// Where one field is in the buffer.
#[derive(Debug)]
struct Span {
    name: HeaderName,
    value: (u32, u32),
}

/// What the fields say of framing and persistence.
#[derive(Debug, Default)]
struct Frame {
    length: Option<u64>,
    coded: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    has_upgrade: bool,
    expect_continue: bool,
}

/// Parses the request head at the start of `buf`, taking it out when complete. `Ok(None)`: more
/// bytes are needed. `max_head`: the most bytes a head may take (431 beyond).
pub fn parse(
    buf: &mut BytesMut,
    max_fields: usize,
    max_head: usize,
) -> Result<Option<Head>, StatusCode> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let fields = if max_fields <= STACK_FIELDS {
        &mut stack[..max_fields]
    } else {
        heap.resize(max_fields, MaybeUninit::uninit());
        &mut heap[..]
    };
    let mut r = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut r, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Err(httparse::Error::Version) => return Err(version_refused(buf)),
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    if len > max_head {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    let target = at(r.path.unwrap_or_default().as_bytes());
    let mut frame = Frame::default();
    let mut spans: SmallVec<[Span; 32]> = SmallVec::new();
    for field in r.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
        if !frame.read(&name, field.value)? {
            continue;
        }
        spans.push(Span {
            name,
            value: at(field.value),
        });
    }
    let head = buf.split_to(len).freeze();
    let slice = |(at, len): (u32, u32)| head.slice(at as usize..(at + len) as usize);
    let uri = Uri::from_maybe_shared(slice(target)).map_err(|_| {
        // `http` takes targets up to 64 KiB.
        if target.1 >= u32::from(u16::MAX) - 1 {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::BAD_REQUEST
        }
    })?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans.drain(..) {
        let value = HeaderValue::from_maybe_shared(slice(span.value))
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        headers.append(span.name, value);
    }
    // `OPTIONS http://host` asks about the server as a whole: marked here, where the target is
    // still as it came, to go on as `OPTIONS *` once it has been checked.
    let whole_server = method == Method::OPTIONS
        && uri.scheme().is_some()
        && asks_for_server(&head[target.0 as usize..][..target.1 as usize]);
    let (mut parts, ()) = Request::new(()).into_parts();
    if whole_server {
        parts.extensions.insert(crate::proxy::forward::WholeServer);
    }
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    let (framing, clean) = frame.framing(version)?;
    // HTTP/1.0 persists only when asked to (`Connection: keep-alive`, RFC 9112 §9.3 and
    // appendix C.2.2), as ApacheBench's `-k` does.
    let keep_alive = clean && !frame.close && (version == Version::HTTP_11 || frame.keep_alive);
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        // Never to an HTTP/1.0 client (RFC 9110 §10.1.1).
        expect_continue: frame.expect_continue && !framing.is_done() && version == Version::HTTP_11,
        upgrade: frame.upgrade && frame.has_upgrade,
    }))
}

/// 505 for a request line that names a version ramp does not speak (`HTTP/2.0`, `HTTP/1.2`);
/// 400 for one that is malformed (a space in the target, a lowercase `http/1.1`).
fn version_refused(buf: &[u8]) -> StatusCode {
    let line = buf
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    let mut words = line.split(|&b| b == b' ');
    let named = matches!(
        (words.next(), words.next(), words.next(), words.next()),
        (Some(_), Some(_), Some(v), None) if v.len() == 8 && v.starts_with(b"HTTP/")
    );
    if named {
        StatusCode::HTTP_VERSION_NOT_SUPPORTED
    } else {
        StatusCode::BAD_REQUEST
    }
}

impl Frame {
    /// Takes in one field; false for a field not to keep (a repeated, equal length).
    fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, StatusCode> {
        if *name == CONTENT_LENGTH {
            // Digits only (RFC 9110 §8.6). The same length twice is one length (RFC 9112
            // §6.3); a different one is refused.
            let n = length(value).ok_or(StatusCode::BAD_REQUEST)?;
            match self.length {
                Some(l) if l != n => return Err(StatusCode::BAD_REQUEST),
                Some(_) => return Ok(false),
                None => self.length = Some(n),
            }
        } else if *name == TRANSFER_ENCODING {
            self.coded = true;
            self.chunked = list(value).last().is_some_and(|t| is(t, b"chunked"));
        } else if *name == CONNECTION {
            for t in list(value) {
                if is(t, b"close") {
                    self.close = true;
                } else if is(t, b"keep-alive") {
                    self.keep_alive = true;
                } else if is(t, b"upgrade") {
                    self.upgrade = true;
                }
            }
        } else if *name == UPGRADE {
            self.has_upgrade = true;
        } else if *name == EXPECT {
            // A list, possibly over several fields (RFC 9110 §10.1.1); other expectations are
            // passed on.
            if list(value).any(|t| is(t, b"100-continue")) {
                self.expect_continue = true;
            }
        }
        Ok(true)
    }

    /// How the body is framed (RFC 9112 §6.3), and whether the connection can be trusted with
    /// another request after it. A coding other than a final `chunked` cannot be read: there is
    /// no body to read, the request check refuses it (501), and the connection closes.
    fn framing(&self, version: Version) -> Result<(Framing, bool), StatusCode> {
        if self.coded {
            if version == Version::HTTP_10 {
                // Transfer-Encoding is HTTP/1.1's (RFC 9112 §6.1).
                return Err(StatusCode::BAD_REQUEST);
            }
            // With a Content-Length too the request check refuses it (400): read nothing.
            if self.chunked && self.length.is_none() {
                return Ok((Framing::Chunked(Chunk::Size), true));
            }
            return Ok((Framing::Done, false));
        }
        Ok((Framing::Length(self.length.unwrap_or(0)), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &[u8]) -> Result<Option<Head>, StatusCode> {
        let mut buf = BytesMut::from(wire);
        parse(&mut buf, 100, 64 * 1024)
    }

    #[test]
    fn a_request_head_becomes_parts_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            &b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabcGET"[..],
        );
        let h = parse(&mut buf, 100, 64 * 1024).unwrap().unwrap();
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.headers["x-a"], "1");
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaa"[..]);
        assert_eq!(
            parse(&mut buf, 100, 32).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let many = [
            b"GET / HTTP/1.1\r\n".as_slice(),
            &b"a: b\r\n".repeat(9),
            b"\r\n",
        ]
        .concat();
        let mut buf = BytesMut::from(&many[..]);
        assert_eq!(
            parse(&mut buf, 8, 64 * 1024).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            chunked.unwrap().unwrap().framing,
            Framing::Chunked(Chunk::Size)
        );
        let gzip = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((gzip.framing, gzip.keep_alive), (Framing::Done, false));
        let both =
            head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(!both.unwrap().unwrap().keep_alive);
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            head(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        for bad in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"GET /a http/1.1\r\n\r\n",
        ] {
            assert_eq!(head(bad).unwrap_err(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn persistence_continue_and_upgrade_are_read() {
        let h = head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            h.keep_alive,
            "an HTTP/1.0 client that asks keeps its connection"
        );
        let h = head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked not to");
        let h = head(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(h.unwrap().unwrap().expect_continue);
        for expect in [
            "Expect: 100-Continue",
            "Expect: 100-continue, foo",
            "Expect: foo,100-continue",
            "Expect: 100-continue\r\nExpect: foo",
            "Expect: foo\r\nExpect:  100-continue ",
        ] {
            let text = format!("PUT / HTTP/1.1\r\n{expect}\r\nContent-Length: 1\r\n\r\n");
            let h = head(text.as_bytes()).unwrap().unwrap();
            assert!(h.expect_continue, "{expect:?}");
        }
        let h = head(b"PUT / HTTP/1.1\r\nExpect: 100-continued\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.unwrap().unwrap().expect_continue);
        let h = head(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue, "no body, nothing to continue");
        let h = head(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(
            !h.unwrap().unwrap().expect_continue,
            "not to an HTTP/1.0 client"
        );
        let h = head(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(h.unwrap().unwrap().upgrade);
    }
}
