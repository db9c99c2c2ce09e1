//! The validator's notebook: checks one value at a time and collects every problem with its
//! position, instead of stopping at the first.

use std::time::Duration;

use super::error::{Position, Problem, Reason};
use super::file::S;

#[derive(Debug, Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

pub(super) fn at<T>(s: &S<T>) -> Position {
    Position {
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

impl Checker {
    pub(super) fn fail(&mut self, at: Position, field: &str, reason: Reason) {
        self.problems.push(Problem {
            at,
            field: field.to_owned(),
            reason,
        });
    }

    /// Runs `check` on the value; on failure records the problem and gives `None`.
    pub(super) fn check<T, U>(
        &mut self,
        s: &S<T>,
        field: &str,
        check: impl FnOnce(&T) -> Result<U, Reason>,
    ) -> Option<U> {
        match check(&s.value) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.fail(at(s), field, reason);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        s: Option<&S<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        s.and_then(|s| self.check(s, field, |text| parse_duration(text)))
            .unwrap_or(default)
    }
}

/// Like [`parse_duration`], and zero (`0`, `0s`, `0ms`) too: for a setting whose default is 0.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, Reason> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, Reason> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| Reason::Duration(format!("{text:?} ({e})")))?;
    if d.is_zero() {
        return Err(Reason::ZeroDuration);
    }
    if d < Duration::from_millis(1) {
        return Err(Reason::UnderMillisecond);
    }
    if d > super::MAX_DURATION {
        return Err(Reason::Duration(format!(
            "{text:?} is longer than 100 years"
        )));
    }
    Ok(d)
}

impl Checker {
    /// An integer setting within `min..=max`, or `default` when absent.
    pub(super) fn int(
        &mut self,
        s: Option<&S<u64>>,
        field: &str,
        min: u64,
        max: u64,
        default: u64,
    ) -> u64 {
        s.and_then(|s| {
            self.check(s, field, |&n| {
                if (min..=max).contains(&n) {
                    Ok(n)
                } else {
                    Err(Reason::OutOfRange {
                        min: min as f64,
                        max: max as f64,
                        got: n as f64,
                    })
                }
            })
        })
        .unwrap_or(default)
    }
}
