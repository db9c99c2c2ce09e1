//! A set of HTTP statuses, written in the file as a list of codes and classes: `[5xx, 429]`.

use std::fmt;

use super::error::Reason;

/// Statuses 100 to 599, one bit each: a lookup is a shift and a mask.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet {
    bits: [u64; 10],
}

impl StatusSet {
    /// The set of `codes`.
    pub fn of(codes: &[u16]) -> Self {
        let mut s = StatusSet::default();
        for &c in codes {
            s.insert(c);
        }
        s
    }

    fn insert(&mut self, code: u16) {
        if (100..=599).contains(&code) {
            self.bits[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&b| b == 0)
    }

    pub fn contains(&self, code: u16) -> bool {
        code < 640 && self.bits[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }

    /// Parses the entries: a code (100 to 599) or a class (`1xx` to `5xx`).
    pub fn parse(entries: &[&str]) -> Result<Self, Reason> {
        let mut s = StatusSet::default();
        for entry in entries {
            let e = entry.trim().to_ascii_lowercase();
            if let Some(class) = e.strip_suffix("xx")
                && let Ok(c @ 1..=5) = class.parse::<u16>()
            {
                for code in c * 100..c * 100 + 100 {
                    s.insert(code);
                }
            } else if let Ok(code @ 100..=599) = e.parse::<u16>() {
                s.insert(code);
            } else {
                return Err(Reason::Status((*entry).to_owned()));
            }
        }
        Ok(s)
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<u16> = (100..600).filter(|c| self.contains(*c)).collect();
        f.debug_list().entries(codes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_classes() {
        let s = StatusSet::parse(&["5xx", "429"]).expect("valid");
        assert!(s.contains(500) && s.contains(599) && s.contains(429));
        assert!(!s.contains(499) && !s.contains(200) && !s.contains(600) && !s.contains(65535));
        assert_eq!(
            StatusSet::of(&[502, 503, 504]),
            StatusSet::parse(&["502", "503", "504"]).expect("valid")
        );
        for bad in ["6xx", "99", "600", "abc", "", "0xx"] {
            assert!(StatusSet::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
