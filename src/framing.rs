//! How an HTTP/1.1 body ends (RFC 9112 §6.3), an upstream's answer or a client's request, and
//! taking it out of the read buffer piece by piece: by length, chunked (§7.1; extensions and
//! trailers are read and dropped), or until the connection closes.

use bytes::{Buf, Bytes, BytesMut};

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `bytes` (a field name, or an item of a field's value, as httparse let it through) is
/// `lower` in any case; `lower` holds only lower-case letters, digits and '-'. Setting bit 5 of a
/// byte lowers a letter's case and leaves a digit or '-' as it is, and no other byte a field may
/// hold (no control byte but tab) becomes one of those by it: so eight bytes compare at once,
/// where `eq_ignore_ascii_case` maps both sides byte by byte.
pub fn is(bytes: &[u8], lower: &[u8]) -> bool {
    debug_assert!(
        lower
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    if bytes.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (bytes.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        if word(x) | 0x2020_2020_2020_2020 != word(y) {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x | 0x20 == *y)
}

fn word(eight: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(eight);
    u64::from_ne_bytes(w)
}

/// One Content-Length value: decimal digits only (RFC 9110 §8.6), within `i64`.
pub fn length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        // At most 2^63 - 1: what a signed 64-bit length (most servers') can hold, so that no
        // upstream reads a length ramp accepted as negative or wrapped.
        .filter(|&n| n <= i64::MAX as u64)
}

/// The longest chunk-size line (with its extensions) accepted.
const MAX_SIZE_LINE: usize = 4 * 1024;
/// The most trailer bytes accepted (they are dropped).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// The body has ended.
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines (this many bytes read so far), up to an empty line.
    Trailers(usize),
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// More bytes must be read first.
    More,
    /// The body has ended.
    End,
}

/// The body does not follow its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct Invalid(pub &'static str);

impl Framing {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        loop {
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(chunk) => match chunked(chunk, buf)? {
                    Some(Step::End) => *self = Framing::Done,
                    Some(step) => return Ok(step),
                    None => {}
                },
            }
        }
    }

    /// The connection ended: the body is whole only when framed by the close.
    pub fn at_eof(&mut self) -> bool {
        if matches!(self, Framing::Close) {
            *self = Framing::Done;
        }
        self.is_done()
    }
}

/// One step of chunked decoding: `None` to go on (a state changed), else what to give.
fn chunked(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Option<Step>, Invalid> {
    match chunk {
        Chunk::Size => {
            if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                return Err(Invalid("chunk size is not hexadecimal"));
            }
            // The size line ends at CRLF and holds no other control byte but HTAB (RFC 9112
            // §7.1.1: an extension is tokens and quoted strings). httparse lets any byte into an
            // extension, a bare LF too, where a parser that ends lines at LF would see the
            // chunk's data begin: the two would split the body differently.
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                if buf.len() > MAX_SIZE_LINE {
                    return Err(Invalid("chunk size line too long"));
                }
                return Ok(Some(Step::More));
            };
            let line = &buf[..lf];
            if line.last() != Some(&b'\r')
                || line[..line.len() - 1]
                    .iter()
                    .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(Invalid(
                    "chunk size line with a control character or a bare LF",
                ));
            }
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *chunk = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                    Ok(None)
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_SIZE_LINE => {
                    Err(Invalid("chunk size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(Some(Step::More)),
                Err(_) => Err(Invalid("bad chunk size line")),
            }
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Some(Step::More));
            }
            let n = (*left).min(buf.len() as u64);
            *left -= n;
            let data = buf.split_to(n as usize).freeze();
            if *left == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(Some(Step::Data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Some(Step::More));
            }
            if &buf[..2] != b"\r\n" {
                return Err(Invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(None)
        }
        Chunk::Trailers(seen) => {
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                if *seen + buf.len() > MAX_TRAILERS {
                    return Err(Invalid("trailers too large"));
                }
                return Ok(Some(Step::More));
            };
            // Each line ends in CRLF (RFC 9112 §7.1.2). A bare LF or CR is refused, as in a
            // head: read as a line end by one parser and not by another, it would let the next
            // request hide in the trailers.
            if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
                return Err(Invalid("bad trailer line"));
            }
            let end = lf - 1;
            buf.advance(lf + 1);
            if end == 0 {
                return Ok(Some(Step::End));
            }
            *seen += end + 2;
            if *seen > MAX_TRAILERS {
                return Err(Invalid("trailers too large"));
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; gives the body and whether it ended.
    fn decode_all(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, bool), Invalid> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step.max(1));
        loop {
            match framing.decode(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::End => return Ok((body, true)),
                Step::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Ok((body, framing.at_eof())),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (body, ended) = decode_all(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert!(ended);
        }
    }

    #[test]
    fn a_chunked_body_cut_short_has_not_ended() {
        let wire = b"5\r\nhel";
        let (body, ended) = decode_all(Framing::Chunked(Chunk::Size), wire, 2).unwrap();
        assert_eq!(body, b"hel");
        assert!(!ended);
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for wire in [
            &b"\r\n"[..],
            b"zz\r\nab\r\n0\r\n\r\n",
            b"2\r\nabXY",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
            // A bare LF, NUL or DEL in an extension: another parser would end the line there.
            b"2;\nXX\r\nab\r\n0\r\n\r\n",
            b"2;a\x00b\r\nab\r\n0\r\n\r\n",
            b"2;a=\x7f\r\nab\r\n0\r\n\r\n",
            b"2;\"q\nx\"\r\nab\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked(Chunk::Size), wire, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert!(decode_all(Framing::Chunked(Chunk::Size), &long_line, 100).is_err());
        for bare in [
            &b"5\r\nhello\r\n0\r\nX-T: 1\n\r\nGET / HTTP/1.1\r\n\r\n"[..],
            b"0\r\nX-T: 1\r\n\n",
            b"0\r\nX-T: 1\rX: 2\r\n\r\n",
        ] {
            for step in [1, 1000] {
                assert!(
                    decode_all(Framing::Chunked(Chunk::Size), bare, step).is_err(),
                    "{}",
                    String::from_utf8_lossy(bare)
                );
            }
        }
        let trailers = [b"0\r\n".as_slice(), &b"a: b\r\n".repeat(3000)].concat();
        assert!(decode_all(Framing::Chunked(Chunk::Size), &trailers, 1000).is_err());
    }

    #[test]
    fn a_length_ends_the_body_and_leaves_what_follows() {
        let mut framing = Framing::Length(5);
        let mut buf = BytesMut::from(&b"helloEXTRA"[..]);
        assert_eq!(
            framing.decode(&mut buf),
            Ok(Step::Data(Bytes::from_static(b"hello")))
        );
        assert!(framing.is_done());
        assert_eq!(framing.decode(&mut buf), Ok(Step::End));
        assert_eq!(&buf[..], b"EXTRA");
        let (body, ended) = decode_all(Framing::Length(10), b"short", 2).unwrap();
        assert_eq!(body, b"short");
        assert!(!ended, "a length body cut short has not ended");
    }

    #[test]
    fn lengths_are_digits_within_i64_and_lists_skip_empty_elements() {
        assert_eq!(length(b"0003"), Some(3));
        assert_eq!(length(b"9223372036854775807"), Some(i64::MAX as u64));
        for bad in [
            &b""[..],
            b"+3",
            b"-3",
            b"0x3",
            b"3 ",
            b"9223372036854775808",
            b"18446744073709551615",
            b"18446744073709551616",
        ] {
            assert_eq!(length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(list(b" a, ,b ,").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
    }

    #[test]
    fn a_close_framed_body_ends_at_eof() {
        let (body, ended) = decode_all(Framing::Close, b"until the end", 4).unwrap();
        assert_eq!(body, b"until the end");
        assert!(ended);
    }

    #[test]
    fn names_compare_in_any_case_and_nothing_else_matches() {
        for (bytes, lower, same) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"TRANSFER-ENCODING", b"transfer-encoding", true),
            (b"keep-alive", b"keep-alive", true),
            (b"te", b"te", true),
            (b"Content-Lengti", b"content-length", false),
            (b"content_length", b"content-length", false),
            (b"content-lengthx", b"content-length", false),
            (b"CHUNKED", b"chunked", true),
            (b"chunked\t", b"chunked-", false),
        ] {
            assert_eq!(
                is(bytes, lower),
                same,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Every byte a name may hold against every byte `lower` may hold, one at a time.
        for x in (0u8..=255).filter(|b| *b == b'\t' || (32..127).contains(b) || *b >= 128) {
            for y in (b'a'..=b'z').chain(b'0'..=b'9').chain([b'-']) {
                assert_eq!(is(&[x; 9], &[y; 9]), x.eq_ignore_ascii_case(&y), "{x} {y}");
            }
        }
    }
}
