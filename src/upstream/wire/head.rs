//! Request heads out, response heads in (RFC 9112 §3, §4, §6).

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, StatusCode, Version};
use smallvec::SmallVec;

use crate::framing::{Chunk, Framing, is, length, list};

use super::fields::{At, Fields};
use crate::upstream::Hide;

/// The most header fields an answer may have.
pub const MAX_HEADERS: usize = 100;
/// The largest answer head (status line and fields).
pub const MAX_HEAD: usize = 64 * 1024;

/// How the request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// No body.
    Nothing,
    /// No body, for a method that usually has one: `Content-Length: 0` is added when the client
    /// gave none (an HTTP/2 client need not), as some servers want a length on a POST.
    Zero,
    /// As framed by the client's Content-Length, which is forwarded.
    Length,
    /// Chunked (an HTTP/2 client's body of unknown length).
    Chunked,
}

/// Writes the request head into `out` (cleared first), with the `added` fields after the head's
/// own. The fields are already checked (a `HeaderValue` holds no CR or LF).
pub fn encode(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    added: &[(&str, &HeaderValue)],
    sending: Sending,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // An empty path is "/" (RFC 9112 §3.2.1), with or without a query after it.
    if target.is_empty() || target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        let mut value = value.as_bytes();
        if name == CONTENT_LENGTH {
            // Without leading zeros (the client's `010` goes up as `10`): an upstream that reads
            // a leading zero as octal would otherwise frame the body apart from ramp.
            while let [b'0', rest @ ..] = value
                && !rest.is_empty()
            {
                value = rest;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in added {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match sending {
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Sending::Zero if !parts.headers.contains_key(CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        Sending::Zero | Sending::Nothing | Sending::Length => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How to send a request's body: `streamed` says whether it has one.
pub fn sending(parts: &http::request::Parts, streamed: bool) -> Sending {
    if streamed {
        if parts.headers.contains_key(CONTENT_LENGTH) {
            Sending::Length
        } else {
            Sending::Chunked
        }
    } else if body_expected(&parts.method) {
        Sending::Zero
    } else {
        Sending::Nothing
    }
}

fn body_expected(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// An answer's head.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    /// The fields passed on.
    pub fields: Box<Fields>,
    pub framing: Framing,
    /// The connection may carry another exchange after this one.
    pub keep_alive: bool,
}

/// Why an answer's head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid answer: {0}")]
pub struct Invalid(pub &'static str);

/// What a field of an answer's head is to ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Passed on.
    Kept,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Passed on unless it sets the sticky cookie ([`Hide::drops_set_cookie`]).
    SetCookie,
    /// Not passed on: another hop-by-hop field (RFC 9110 §7.6.1), `Trailer` (trailers are not
    /// forwarded), or one of the configured fields to hide.
    Dropped,
}

fn role(name: &[u8], hide: &Hide) -> Role {
    let named = |known: &[u8]| is(name, known);
    match name.len() {
        14 if named(b"content-length") => Role::ContentLength,
        17 if named(b"transfer-encoding") => Role::TransferEncoding,
        10 if named(b"connection") => Role::Connection,
        10 if named(b"keep-alive") => Role::Dropped,
        10 if hide.own_cookie.is_some() && named(b"set-cookie") => Role::SetCookie,
        16 if named(b"proxy-connection") => Role::Dropped,
        2 if named(b"te") => Role::Dropped,
        7 if named(b"trailer") || named(b"upgrade") => Role::Dropped,
        // A configured name may hold any token byte: compared byte by byte.
        _ if hide
            .fields
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes())) =>
        {
            Role::Dropped
        }
        _ => Role::Kept,
    }
}

/// Where one field is in the head: name and value offsets and lengths, and its role.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
    role: Role,
}

/// Parses the answer to a `method` request at the start of `buf`, taking it out when complete;
/// interim (1xx) answers other than 101 are skipped. The answer's fields come without the
/// hop-by-hop ones and without `hide`. `Ok(None)`: more bytes are needed.
pub fn parse(buf: &mut BytesMut, method: &Method, hide: &Hide) -> Result<Option<Answer>, Invalid> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Invalid("head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Invalid("too many header fields")),
            Err(_) => return Err(Invalid("malformed head")),
        };
        let code = r.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            continue;
        }
        // Three digits, 100 to 599 (RFC 9110 §15): a 600 is no answer a client or the
        // comparison could judge.
        let status = StatusCode::from_u16(code)
            .ok()
            .filter(|_| code < 600)
            .ok_or(Invalid("bad status code"))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // One pass over the fields: framing, persistence, and what is passed on. The head is
        // frozen below, and the values passed on share its bytes.
        let mut spans: SmallVec<[Span; 32]> = SmallVec::new();
        let at = |s: &[u8]| (s.as_ptr() as usize - buf.as_ptr() as usize) as u32;
        let mut frame = Frame::default();
        let mut named: Vec<&[u8]> = Vec::new();
        for field in r.headers.iter() {
            let name = field.name.as_bytes();
            let mut role = role(name, hide);
            match role {
                Role::ContentLength => frame.length(field.value)?,
                Role::TransferEncoding => {
                    frame.coded = true;
                    for t in list(field.value) {
                        frame.chunked = is(t, b"chunked");
                        frame.undone |= !frame.chunked;
                    }
                }
                Role::Connection => {
                    for t in list(field.value) {
                        if is(t, b"close") {
                            frame.close = true;
                        } else if is(t, b"keep-alive") {
                            frame.keep_alive = true;
                        } else {
                            named.push(t);
                        }
                    }
                }
                Role::SetCookie => {
                    role = if hide.drops_set_cookie(field.value) {
                        Role::Dropped
                    } else {
                        Role::Kept
                    };
                }
                Role::Kept | Role::Dropped => {}
            }
            spans.push(Span {
                name: (at(name), name.len() as u32),
                value: (at(field.value), field.value.len() as u32),
                role,
            });
        }
        if !named.is_empty() {
            // Fields the Connection field names are this hop's only (RFC 9110 §7.6.1).
            for span in spans.iter_mut() {
                let name = &buf[span.name.0 as usize..(span.name.0 + span.name.1) as usize];
                if named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                    span.role = Role::Dropped;
                }
            }
        }
        let (framing, clean) = frame.framing(method, status);
        if frame.undone && !framing.is_done() {
            // gzip and the like: passed on decoded only of its chunks, the body would reach the
            // client still coded, with nothing to say so. Not undone here: a 502.
            return Err(Invalid("a transfer coding other than chunked"));
        }
        // An HTTP/1.0 answer with Transfer-Encoding has faulty framing: read as it says, but
        // the connection is closed after it (RFC 9112 §6.1).
        let keep_alive = clean
            && if version == Version::HTTP_10 {
                frame.keep_alive && !frame.coded
            } else {
                !frame.close
            };
        // Both framings at once: chunked wins, and the length is not passed on; nor is it on
        // an answer that never has a body (RFC 9110 §8.6). Repeated or listed lengths (all
        // equal) go on as one value.
        let no_length =
            frame.coded || status == StatusCode::NO_CONTENT || status.is_informational();
        let one_length = frame.length.filter(|_| !no_length && frame.lengths > 1);
        let drop_length = no_length || one_length.is_some();
        drop(named);
        let mut fields = Box::new(Fields {
            head: buf.split_to(len).freeze(),
            length: one_length,
            length_apart: one_length.is_some(),
            ..Fields::default()
        });
        for span in spans.iter() {
            match span.role {
                Role::Kept => {}
                // Only a length that goes on is told to the writer (one the Connection field
                // named is dropped, and the answer's framing gives the length instead).
                Role::ContentLength if !drop_length => fields.length = frame.length,
                _ => continue,
            }
            fields.dated |= span.name.1 == 4
                && is(
                    &fields.head[span.name.0 as usize..span.name.0 as usize + 4],
                    b"date",
                );
            fields.at.push(At {
                name: span.name,
                value: span.value,
            });
        }
        return Ok(Some(Answer {
            status,
            version,
            fields,
            framing,
            keep_alive,
        }));
    }
}

/// What an answer's fields say about its framing and its connection.
#[derive(Debug, Default)]
struct Frame {
    length: Option<u64>,
    /// How many values the Content-Length fields gave (all equal to `length`).
    lengths: u32,
    /// A Transfer-Encoding field is present.
    coded: bool,
    /// Its last coding is chunked.
    chunked: bool,
    /// A coding other than chunked (gzip, deflate…), which ramp does not undo.
    undone: bool,
    close: bool,
    keep_alive: bool,
}

impl Frame {
    /// One Content-Length field: every value in it, and in earlier ones, must be the same.
    fn length(&mut self, value: &[u8]) -> Result<(), Invalid> {
        let mut any = false;
        for part in value.split(|&b| b == b',') {
            let n = length(part.trim_ascii()).ok_or(Invalid("bad content-length"))?;
            if self.length.is_some_and(|l| l != n) {
                return Err(Invalid("conflicting content-length"));
            }
            self.length = Some(n);
            self.lengths += 1;
            any = true;
        }
        if any {
            Ok(())
        } else {
            Err(Invalid("bad content-length"))
        }
    }

    /// The body's framing, and whether it leaves the connection usable (RFC 9112 §6.3).
    fn framing(&self, method: &Method, status: StatusCode) -> (Framing, bool) {
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return (Framing::Done, true);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Whatever follows is another protocol: this connection carries no more HTTP.
            return (Framing::Done, false);
        }
        if self.coded {
            // With a length as well, the connection is not trusted again.
            let clean = self.length.is_none();
            return if self.chunked {
                (Framing::Chunked(Chunk::Size), clean)
            } else {
                (Framing::Close, false)
            };
        }
        match self.length {
            Some(n) => (Framing::Length(n), true),
            None => (Framing::Close, false),
        }
    }
}

#[cfg(test)]
mod tests;
