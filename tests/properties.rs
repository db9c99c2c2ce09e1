//! Property tests: user-id extraction and config parsing hold their promises for any input.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ramp::config::{self, ppm_to_percent};
use ramp::routing::{self, StickyRules};

fn rules() -> StickyRules {
    StickyRules::new(
        Some(HeaderName::from_static("x-user-id")),
        "uid",
        true,
        60,
        false,
        None,
    )
}

fn cookie_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,7}".prop_filter("not the id cookie", |n| n != "uid")
}

fn cookie_value() -> impl Strategy<Value = String> {
    // RFC 6265 cookie-octets (no space, quote, comma, semicolon, backslash).
    "[!#-+\\--:<-\\[\\]-~]{0,24}"
}

proptest! {
    #[test]
    fn the_id_cookie_is_found_among_any_others(
        before in prop::collection::vec((cookie_name(), cookie_value()), 0..6),
        after in prop::collection::vec((cookie_name(), cookie_value()), 0..6),
        id in "[A-Za-z0-9_\\-]{1,64}",
        split in any::<bool>(),
    ) {
        let rules = rules();
        let pairs: Vec<String> = before.iter().map(|(n, v)| format!("{n}={v}"))
            .chain(std::iter::once(format!("uid={id}")))
            .chain(after.iter().map(|(n, v)| format!("{n}={v}")))
            .collect();
        let mut headers = HeaderMap::new();
        if split {
            for p in &pairs {
                headers.append("cookie", HeaderValue::from_str(p).expect("value"));
            }
        } else {
            headers.insert("cookie", HeaderValue::from_str(&pairs.join("; ")).expect("value"));
        }
        prop_assert_eq!(routing::user_id(&rules, &headers), Some(id.as_bytes()));
    }

    #[test]
    fn a_non_empty_header_id_wins_over_the_cookie(header in "[ -~]{0,100}", cookie in "[A-Za-z0-9]{1,20}") {
        let rules = rules();
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_str(&format!("uid={cookie}")).expect("value"));
        // hyper hands ramp the value without surrounding whitespace, so an all-space header is
        // empty, and an empty one does not count: the cookie decides.
        let sent = header.trim_matches([' ', '\t']);
        headers.insert("x-user-id", HeaderValue::from_str(sent).expect("value"));
        let expected = if sent.is_empty() { cookie.as_bytes() } else { sent.as_bytes() };
        prop_assert_eq!(routing::user_id(&rules, &headers), Some(expected));
    }

    #[test]
    fn any_header_bytes_are_handled(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        ramp::fuzzing::id_extraction(&data);
    }

    #[test]
    fn any_admin_line_is_handled(data in prop::collection::vec(any::<u8>(), 0..256)) {
        ramp::fuzzing::admin_command(&data);
    }

    #[test]
    fn any_text_is_a_config_or_a_positioned_error(text in "[ -~\\n]{0,400}") {
        ramp::fuzzing::config_loader(text.as_bytes());
        if let Err(config::ConfigError::Parse { at, .. }) = config::parse(&text, Path::new("x.yaml")) {
            prop_assert!(at.line >= 1 || text.trim().is_empty(), "no position for {text:?}");
        }
    }

    #[test]
    fn generated_configs_parse_to_what_was_written(
        ppm in 0u32..=1_000_000,
        // (Written bare: "null" would be YAML's null, which ramp rightly refuses.)
        id in "[a-z][a-z0-9\\-]{0,30}".prop_filter("not YAML's null", |id| id != "null"),
        // Any port but the listener's own (8080): ramp refuses itself as an upstream.
        stable in prop::collection::btree_set((1u16..65535).prop_filter("not ramp's own", |p| *p != 8080), 1..4),
        canary in prop::collection::btree_set((1u16..65535).prop_filter("not ramp's own", |p| *p != 8080), 1..3),
        // Any name but those ramp refuses to read an id from (hop-by-hop, its own, the framing).
        header in proptest::option::of("[a-z][a-z\\-]{0,15}".prop_filter("can carry an id", |h| ![
            "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
            "trailer", "host", "content-length", "cookie", "x-forwarded-for", "x-forwarded-proto",
        ].contains(&h.as_str()))),
    ) {
        let list = |ports: &std::collections::BTreeSet<u16>| ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(", ");
        let sticky = header.as_ref().map(|h| format!("sticky: {{header: {h}}}\n")).unwrap_or_default();
        let yaml = format!(
            "listen: 127.0.0.1:8080\n{sticky}pools:\n  stable: [{}]\n  canary: [{}]\nrollout:\n  id: {id}\n  percent: {}\n",
            list(&stable), list(&canary), ppm_to_percent(ppm)
        );
        let c = config::parse(&yaml, Path::new("g.yaml")).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(c.rollout.plan.first_ppm(), ppm);
        prop_assert_eq!(&c.rollout.id, &id);
        prop_assert_eq!(c.pools.stable.iter().map(|u| u.port).collect::<Vec<_>>(), stable.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(c.pools.canary.len(), canary.len());
        prop_assert_eq!(c.sticky.header.map(|h| h.to_string()), header);
    }
}

/// What the id cookie means, spelled out the slow way: the Cookie headers in order, each split
/// at `;`, each pair trimmed of blanks; the first `uid=` pair whose trimmed value is 1 to
/// MAX_ID_LEN bytes.
fn reference_cookie(values: &[Vec<u8>]) -> Option<Vec<u8>> {
    let trim = |s: &[u8]| -> Vec<u8> {
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let start = s.iter().position(|b| !blank(b)).unwrap_or(s.len());
        let end = s.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
        s[start..end.max(start)].to_vec()
    };
    for value in values {
        for pair in value.split(|&b| b == b';') {
            let pair = trim(pair);
            if let Some(v) = pair.strip_prefix(b"uid=") {
                let v = trim(v);
                if (1..=routing::MAX_ID_LEN).contains(&v.len()) {
                    return Some(v);
                }
            }
        }
    }
    None
}

proptest! {
    #[test]
    fn any_cookie_header_yields_the_id_the_plain_reading_gives(
        values in prop::collection::vec(
            prop::collection::vec(prop::sample::select(&b"uid=;; \txU9"[..]), 0..40),
            1..3,
        )
    ) {
        let mut headers = HeaderMap::new();
        for v in &values {
            headers.append("cookie", HeaderValue::from_bytes(v).expect("value"));
        }
        let rules = StickyRules::new(None, "uid", true, 60, false, None);
        prop_assert_eq!(
            routing::user_id(&rules, &headers).map(<[u8]>::to_vec),
            reference_cookie(&values)
        );
    }
}

#[test]
fn every_ppm_survives_the_percent_round_trip() {
    for ppm in 0..=1_000_000u32 {
        assert_eq!(config::percent_to_ppm(ppm_to_percent(ppm)), Ok(ppm));
    }
}

#[test]
fn an_empty_or_all_space_header_leaves_the_cookie_to_decide() {
    for sent in ["", "   ", "\t"] {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("uid=from-cookie"));
        // What hyper delivers for that header: the value without surrounding whitespace.
        let value = HeaderValue::from_str(sent.trim()).expect("value");
        headers.insert("x-user-id", value);
        assert_eq!(
            routing::user_id(&rules(), &headers),
            Some(&b"from-cookie"[..]),
            "header {sent:?}"
        );
    }
}
