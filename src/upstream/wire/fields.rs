//! An answer's fields as the upstream sent them, less those not passed on: the head's bytes and
//! where each field is in them. An HTTP/1.1 client gets them written as they came (names in the
//! upstream's case, as nginx and HAProxy pass them); only an HTTP/2 client's answer needs a
//! `HeaderMap` (`into_map`). Building one per answer cost about a thousand instructions that an
//! HTTP/1.1 client never needed.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Where one field is in the head: its name's and its value's offset and length.
#[derive(Debug, Clone, Copy)]
pub(super) struct At {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// The fields of an answer's head that go on to the client.
#[derive(Debug, Default)]
pub struct Fields {
    pub(super) head: Bytes,
    pub(super) at: SmallVec<[At; 16]>,
    /// What the Content-Length passed on says, if one is.
    pub length: Option<u64>,
    /// That length is not among the fields (the upstream repeated it): it goes after them.
    pub length_apart: bool,
    /// A Date field is among them.
    pub dated: bool,
}

impl Fields {
    /// Each field's name and value, in the upstream's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.at
            .iter()
            .map(|at| (self.slice(at.name), self.slice(at.value)))
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty() && !self.length_apart
    }

    fn slice(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.head[at as usize..(at + len) as usize]
    }

    /// The fields as a `HeaderMap` (names in lower case), the values sharing the head's bytes.
    pub fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.at.len() + usize::from(self.length_apart));
        for at in &self.at {
            let name = self.slice(at.name);
            let (v, vl) = at.value;
            // httparse let through only tokens as names and field-value bytes as values, which
            // is what both of these accept: neither fails.
            let Ok(name) = HeaderName::from_bytes(name) else {
                continue;
            };
            let value = self.head.slice(v as usize..(v + vl) as usize);
            let Ok(value) = HeaderValue::from_maybe_shared(value) else {
                continue;
            };
            map.append(name, value);
        }
        if let (true, Some(n)) = (self.length_apart, self.length) {
            map.append(CONTENT_LENGTH, HeaderValue::from(n));
        }
        map
    }
}
