//! An answer written to an HTTP/1.1 client (RFC 9112 §4, §6): the head, then the body framed by
//! its length, chunked, or (to an HTTP/1.0 client) by the connection's close. A short answer
//! goes out in one write with its head.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::Write;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWriteExt;

use crate::inbound::ClientWrite;

use super::super::body::ProxyBody;

/// Data frames up to this size are copied next to what is already waiting to go out; larger
/// ones are written as they are.
const COPY: usize = 8 * 1024;

/// Buffers for what goes out kept per thread: an answer takes one, and gives it back when done.
const SPARES: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// What is about to be written to the client: a buffer from the thread's spares.
#[derive(Debug)]
pub struct Out(Vec<u8>);

impl Out {
    pub fn take() -> Out {
        Out(SPARE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(1024)))
    }
}

impl std::ops::Deref for Out {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Out {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        // One grown for a large answer is not kept.
        if self.0.capacity() > 8 * COPY {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < SPARES
            {
                spare.push(buf);
            }
        });
    }
}

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// No body (HEAD, 1xx, 204, 304).
    Nothing,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Why an answer could not be sent whole.
#[derive(Debug, thiserror::Error)]
pub enum SendFailed {
    #[error("writing to the client: {0}")]
    Io(#[from] std::io::Error),
    #[error("the answer's body failed: {0}")]
    Body(crate::upstream::BodyError),
    #[error("the answer's body does not match its length")]
    Length,
}

/// Writes the answer's head into `out`; gives how its body goes out, and whether the connection
/// closes after it (`close` asks for that; an answer's `Connection: close` or a body framed by
/// the close does too).
pub fn head(
    out: &mut Vec<u8>,
    resp: &Response<ProxyBody>,
    version: Version,
    head_request: bool,
    mut close: bool,
) -> (Framed, bool) {
    let status = resp.status();
    let headers = resp.headers();
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut dated, mut connection) = (None, false, false);
    if let Some(fields) = resp.body().upstream_fields() {
        // The upstream's fields as they came (never a Connection field: that is hop-by-hop).
        for (name, value) in fields.iter() {
            field(out, name, value);
        }
        if let (true, Some(n)) = (fields.length_apart, fields.length) {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        (length, dated) = (fields.length, fields.dated);
    }
    for (name, value) in headers {
        let value = value.as_bytes();
        field(out, name.as_str().as_bytes(), value);
        if *name == CONTENT_LENGTH {
            length = crate::framing::length(value);
        } else if *name == DATE {
            dated = true;
        } else if *name == CONNECTION {
            connection = true;
            close |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framed = if bodiless || head_request {
        Framed::Nothing
    } else if let Some(n) = length {
        Framed::Length(n)
    } else if let Some(n) = resp.body().size_hint().exact() {
        let _ = write!(out, "content-length: {n}\r\n");
        Framed::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framed::Chunked
    } else {
        Framed::Close
    };
    close |= framed == Framed::Close;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if close && version == Version::HTTP_11 && !switching && !connection {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !close && version == Version::HTTP_10 && !connection {
        // An HTTP/1.0 client that asked to keep the connection is told it is kept.
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !dated && !switching {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framed, close)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Now as an HTTP date, formatted once a second.
fn date() -> [u8; 29] {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            }
        }
        *text
    })
}

/// Writes what `out` holds.
pub async fn flush(w: &mut ClientWrite, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    w.flush().await
}

/// Sends the body after the head already in `out`. An error leaves the answer cut short: the
/// connection must close without another byte.
pub async fn body(
    w: &mut ClientWrite,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    framed: Framed,
) -> Result<(), SendFailed> {
    if framed == Framed::Nothing {
        return Ok(flush(w, out).await?);
    }
    let mut left = match framed {
        Framed::Length(n) => Some(n),
        Framed::Nothing | Framed::Chunked | Framed::Close => None,
    };
    loop {
        // What the body has ready goes out with what waits in `out`; before waiting for more,
        // what waits is written.
        let ready = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let frame = match ready {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(w, out).await?;
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // What came before the failure still goes out where the client can tell the
                // answer is cut short (by its length, or by the missing last chunk); framed by
                // the close, it could not, and nothing more is sent.
                if framed != Framed::Close {
                    let _ = flush(w, out).await;
                }
                return Err(SendFailed::Body(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not forwarded.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if let Some(left) = left.as_mut() {
            *left = left
                .checked_sub(data.len() as u64)
                .ok_or(SendFailed::Length)?;
        }
        if framed == Framed::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() <= COPY {
            out.extend_from_slice(&data);
        } else {
            w.write_all(out).await?;
            out.clear();
            w.write_all(&data).await?;
        }
        if framed == Framed::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= 4 * COPY {
            w.write_all(out).await?;
            out.clear();
        }
    }
    if left.is_some_and(|l| l != 0) {
        return Err(SendFailed::Length);
    }
    if framed == Framed::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    Ok(flush(w, out).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error_response;

    fn written(
        resp: &Response<ProxyBody>,
        version: Version,
        head: bool,
        close: bool,
    ) -> (String, Framed, bool) {
        let mut out = Vec::new();
        let (framed, close) = super::head(&mut out, resp, version, head, close);
        (String::from_utf8(out).expect("ascii"), framed, close)
    }

    #[test]
    fn an_answer_head_carries_its_framing_and_a_date() {
        let resp = error_response(StatusCode::BAD_GATEWAY);
        let (text, framed, close) = written(&resp, Version::HTTP_11, false, false);
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 12\r\n"), "{text}");
        assert!(
            text.contains("\r\ndate: ") && text.ends_with(" GMT\r\n\r\n"),
            "{text}"
        );
        assert_eq!((framed, close), (Framed::Length(12), false));
        let (text, _, close) = written(&resp, Version::HTTP_11, false, true);
        assert!(
            close && text.contains("\r\nconnection: close\r\n"),
            "{text}"
        );
    }

    #[test]
    fn bodiless_answers_and_head_requests_send_no_body() {
        let resp = error_response(StatusCode::BAD_GATEWAY);
        let (text, framed, _) = written(&resp, Version::HTTP_11, true, false);
        assert_eq!(framed, Framed::Nothing);
        assert!(!text.contains("content-length: 0"), "{text}");
        let mut resp = error_response(StatusCode::NOT_MODIFIED);
        resp.headers_mut()
            .insert(CONTENT_LENGTH, http::HeaderValue::from(42));
        let (text, framed, _) = written(&resp, Version::HTTP_11, false, false);
        assert_eq!(framed, Framed::Nothing);
        assert!(
            text.contains("content-length: 42\r\n"),
            "a 304 keeps its length: {text}"
        );
    }

    #[test]
    fn an_http_1_0_client_gets_its_version_and_the_close_is_read_from_the_answer() {
        let mut resp = error_response(StatusCode::OK);
        resp.headers_mut()
            .insert(CONNECTION, http::HeaderValue::from_static("Close"));
        let (text, framed, close) = written(&resp, Version::HTTP_10, false, false);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert_eq!((framed, close), (Framed::Length(6), true));
        assert_eq!(text.matches("onnection").count(), 1, "{text}");
    }

    #[test]
    fn an_http_1_0_client_kept_alive_is_told_so_unless_the_answer_ends_with_the_close() {
        let resp = error_response(StatusCode::OK);
        let (text, framed, close) = written(&resp, Version::HTTP_10, false, false);
        assert_eq!((framed, close), (Framed::Length(6), false));
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
        let (text, _, close) = written(&resp, Version::HTTP_10, false, true);
        assert!(close && !text.contains("onnection"), "{text}");
    }
}
