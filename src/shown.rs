//! Text from outside ramp (a config key, a name read back from the state file or the fleet's
//! key, an id typed on the command line) as ramp shows it to people: control characters
//! escaped, so that none can move a terminal's cursor, retitle its window or begin a forged log
//! line.

use std::borrow::Cow;

/// `s` with every control character escaped as Rust writes it (`\n`, `\u{1b}`); `s` itself when
/// it has none.
pub fn escaped(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Text for a terminal: every control character escaped but the line breaks and tabs ramp's own
/// tables and multi-line errors are made of.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_lines: bool) -> Cow<'_, str> {
    let kept = |c: char| keep_lines && (c == '\n' || c == '\t');
    if !s.chars().any(|c| c.is_control() && !kept(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && !kept(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escaped("rollout-7 ünïcode"), Cow::Borrowed(_)));
        assert_eq!(escaped("a\u{1b}]0;T\u{7}b\nc"), "a\\u{1b}]0;T\\u{7}b\\nc");
        assert_eq!(escaped("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(for_terminal("row\tx\n\u{1b}[2J"), "row\tx\n\\u{1b}[2J");
    }
}
