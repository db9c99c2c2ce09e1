//! What ramp takes out of every upstream answer besides the hop-by-hop fields: the configured
//! `hide_response_headers`, and an upstream's `Set-Cookie` for ramp's own sticky cookie unless
//! the app sets that cookie itself (`sticky.app_sets_cookie`). Otherwise any upstream — a buggy
//! or hostile canary — could give its users ids of its choosing: keep them on the canary, or
//! make them all one user, whose errors the guard then takes for one client's.

use http::HeaderName;

#[derive(Debug, Default)]
pub struct Hide {
    pub fields: Box<[HeaderName]>,
    /// The sticky cookie's name, where an upstream may not set it.
    pub own_cookie: Option<Box<[u8]>>,
}

impl Hide {
    /// Whether a `Set-Cookie` of this value is dropped: it sets the sticky cookie (RFC 6265
    /// §5.2: the name is what comes before the first `=` of the first `;`-part, trimmed).
    pub fn drops_set_cookie(&self, value: &[u8]) -> bool {
        let Some(own) = &self.own_cookie else {
            return false;
        };
        let pair = value.split(|&b| b == b';').next().unwrap_or_default();
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return false;
        };
        pair[..eq].trim_ascii() == &own[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sticky_cookie_is_dropped() {
        let hide = Hide {
            fields: Box::new([]),
            own_cookie: Some(b"uid".as_slice().into()),
        };
        for value in [
            "uid=u1",
            "uid=u1; Path=/; Max-Age=999999",
            " uid =u1",
            "uid=",
            "uid=\"x=y\"; HttpOnly",
        ] {
            assert!(hide.drops_set_cookie(value.as_bytes()), "{value}");
        }
        for value in [
            "session=abc",
            "UID=u1",
            "uidx=u1",
            "xuid=u1",
            "__Host-uid=u1",
            "session=uid=u1",
            "a=b; uid=u1",
            "uid",
        ] {
            assert!(!hide.drops_set_cookie(value.as_bytes()), "{value}");
        }
        let app = Hide::default();
        assert!(!app.drops_set_cookie(b"uid=u1"));
    }
}
