//! How ramp recognises a user: header, cookie, or a minted cookie, and nothing that reveals a pool.

mod support;

use ramp::routing::{self, PoolName};
use ramp::routing::{Rollout, State};
use support::{Backend, Client, Proxy, config, raw};

const STICKY: &str = "sticky:\n  header: x-user-id\n  cookie: uid\n";

fn pool_of(rollout: &str, ppm: u32, id: &str) -> &'static str {
    match routing::assign(&Rollout::new(rollout, ppm, State::Running), id.as_bytes()) {
        PoolName::Stable => "stable",
        PoolName::Canary => "canary",
    }
}

/// Two ids on different pools at 50% in rollout "ids".
fn one_of_each() -> (String, String) {
    let mut stable = None;
    let mut canary = None;
    for i in 0.. {
        let id = format!("p{i}");
        match pool_of("ids", 500_000, &id) {
            "stable" => stable = stable.or(Some(id)),
            _ => canary = canary.or(Some(id)),
        }
        if let (Some(s), Some(c)) = (&stable, &canary) {
            return (s.clone(), c.clone());
        }
    }
    unreachable!()
}

async fn start(extra: &str) -> (Backend, Backend, Proxy) {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        "id: ids\npercent: 50",
        extra,
    ));
    (stable, canary, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_gets_a_cookie_and_keeps_its_pool_with_it() {
    let (_s, _c, proxy) = start(STICKY).await;
    let client = Client::http1();
    let mut seen_pools = std::collections::HashSet::new();
    for _ in 0..40 {
        let first = client.get(&proxy.url("/"), &[]).await;
        assert_eq!(first.status, 200);
        let cookies = first.cookies();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        let cookie = &cookies[0];
        let (pair, attributes) = cookie.split_once("; ").expect("attributes");
        assert_eq!(
            attributes,
            "Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
        );
        let id = pair.strip_prefix("uid=").expect("uid cookie");
        assert_eq!(id.len(), 22, "128 bits in base64url: {id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        // The first answer already came from the pool the id hashes to, and so do later ones.
        assert_eq!(first.body, pool_of("ids", 500_000, id));
        for _ in 0..3 {
            let again = client.get(&proxy.url("/"), &[("cookie", pair)]).await;
            assert_eq!(again.body, first.body);
            assert!(
                again.cookies().is_empty(),
                "a returning user got a new cookie"
            );
        }
        seen_pools.insert(first.body);
    }
    assert_eq!(
        seen_pools.len(),
        2,
        "40 newcomers at 50% all landed on one pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_on_either_pool_get_the_same_kind_of_response_headers() {
    let (_s, _c, proxy) = start(&format!("{STICKY}hide_response_headers: [X-App-Version]\n")).await;
    let client = Client::http1();
    let mut shapes = std::collections::HashMap::new();
    for _ in 0..40 {
        let r = client.get(&proxy.url("/"), &[]).await;
        let mut names: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        let cookie = r.cookies()[0].split_once(';').expect("cookie").1.to_owned();
        shapes.insert(r.body.clone(), (names, cookie));
        assert!(
            r.headers.get("x-app-version").is_none(),
            "hidden header leaked"
        );
    }
    assert_eq!(shapes.len(), 2, "both pools answered");
    assert_eq!(
        shapes["stable"], shapes["canary"],
        "the pools can be told apart"
    );
    let names = &shapes["stable"].0;
    assert!(
        !names
            .iter()
            .any(|n| n.contains("pool") || n.contains("ramp") || n.contains("canary")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_wins_over_the_cookie_unless_it_is_empty() {
    let (_s, _c, proxy) = start(STICKY).await;
    let (on_stable, on_canary) = one_of_each();
    let client = Client::http1();
    let cookie = format!("uid={on_stable}");
    let r = client
        .get(
            &proxy.url("/"),
            &[("x-user-id", &on_canary), ("cookie", &cookie)],
        )
        .await;
    assert_eq!(r.body, "canary");
    assert!(r.cookies().is_empty());
    let r = client
        .get(&proxy.url("/"), &[("x-user-id", ""), ("cookie", &cookie)])
        .await;
    assert_eq!(r.body, "stable");
    let r = client
        .get(&proxy.url("/"), &[("x-user-id", &on_canary)])
        .await;
    assert_eq!(r.body, "canary");
    assert!(
        r.cookies().is_empty(),
        "an id from the header needs no cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_found_among_others_and_across_http2_cookie_headers() {
    let (_s, _c, proxy) = start(STICKY).await;
    let (_, on_canary) = one_of_each();
    let h1 = Client::http1();
    let mixed = format!("theme=dark; uid2=zzz; uid={on_canary}; lang=en");
    let r = h1.get(&proxy.url("/"), &[("cookie", &mixed)]).await;
    assert_eq!(r.body, "canary");
    assert!(r.cookies().is_empty());
    let h2 = Client::http2();
    let own = format!("uid={on_canary}");
    let r = h2
        .get(
            &proxy.url("/"),
            &[
                ("cookie", "theme=dark"),
                ("cookie", &own),
                ("cookie", "a=b"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "canary");
    assert!(r.cookies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_oversized_ids_are_never_an_error() {
    let (_s, _c, proxy) = start(STICKY).await;
    let client = Client::http1();
    let long = format!("uid={}", "a".repeat(1025));
    for cookie in [
        ";;;",
        "uid",
        "uid=",
        "=;=;",
        "uid=;uid",
        "\"uid\"=\"x\"",
        long.as_str(),
    ] {
        let r = client.get(&proxy.url("/"), &[("cookie", cookie)]).await;
        assert_eq!(r.status, 200, "cookie {cookie:?}");
        assert_eq!(
            r.cookies().len(),
            1,
            "no usable id in {cookie:?}: a new one is minted"
        );
    }
    let exact = format!("uid={}", "a".repeat(1024));
    let r = client.get(&proxy.url("/"), &[("cookie", &exact)]).await;
    assert!(r.cookies().is_empty(), "1024 bytes is a usable id");
    // Non-UTF-8 bytes are id bytes like any others.
    let reply = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: uid=\xff\xfe\x80abc\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("set-cookie"),
        "{reply}"
    );
    let expected = {
        let r = Rollout::new("ids", 500_000, State::Running);
        routing::assign(&r, b"\xff\xfe\x80abc").as_str()
    };
    assert!(reply.ends_with(expected), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_assign_off_users_without_an_id_get_stable_and_no_cookie() {
    let (_s, _c, proxy) = start("sticky:\n  cookie: uid\n  assign: false\n").await;
    let client = Client::http1();
    for _ in 0..20 {
        let r = client.get(&proxy.url("/"), &[]).await;
        assert_eq!(r.body, "stable");
        assert!(r.cookies().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minted_cookie_carries_secure_the_configured_max_age_and_domain() {
    let (_s, _c, proxy) =
        start("sticky:\n  cookie: sid\n  cookie_max_age: 2h\n  cookie_secure: true\n").await;
    let r = Client::http1().get(&proxy.url("/"), &[]).await;
    let cookie = &r.cookies()[0];
    assert!(cookie.starts_with("sid="), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/; Max-Age=7200; HttpOnly; SameSite=Lax; Secure"),
        "{cookie}"
    );
    // One id for www.shop.example and shop.example alike.
    let (_s, _c, proxy) = start("sticky:\n  cookie_domain: .Shop.Example\n").await;
    for host in ["www.shop.example", "Shop.Example:8080"] {
        let r = Client::http1()
            .get(&proxy.url("/"), &[("host", host)])
            .await;
        let cookie = &r.cookies()[0];
        assert!(
            cookie.ends_with("; SameSite=Lax; Domain=shop.example"),
            "{host}: {cookie}"
        );
    }
    // A host outside it gets a cookie of its own host's, which a browser keeps (one with the
    // Domain it would refuse, and be a new user at every request).
    for host in ["other.example", "evilshop.example"] {
        let r = Client::http1()
            .get(&proxy.url("/"), &[("host", host)])
            .await;
        let cookie = &r.cookies()[0];
        assert!(cookie.ends_with("; SameSite=Lax"), "{host}: {cookie}");
    }
}

const PINNING: &[u8] =
    b"HTTP/1.1 200 OK\r\nSet-Cookie: uid=pinned; Max-Age=99999\r\nSet-Cookie: cart=3\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_set_ramp_s_cookie_unless_the_app_sets_it_itself() {
    // A canary that gives every user the same id: all its users would be one, kept on it.
    let up = support::RawUpstream::start(PINNING, false).await;
    let proxy = Proxy::start(&support::single(up.addr, STICKY));
    for client in [Client::http1(), Client::http2()] {
        // A newcomer gets ramp's minted cookie, and the app's others.
        let r = client.get(&proxy.url("/"), &[]).await;
        let cookies = r.cookies();
        let ids: Vec<&String> = cookies.iter().filter(|c| c.starts_with("uid=")).collect();
        assert_eq!(ids.len(), 1, "{cookies:?}");
        assert!(!ids[0].starts_with("uid=pinned"), "{cookies:?}");
        assert!(cookies.iter().any(|c| c == "cart=3"), "{cookies:?}");
        // A user with an id gets no uid cookie at all.
        let r = client.get(&proxy.url("/"), &[("cookie", "uid=mine")]).await;
        assert_eq!(r.cookies(), ["cart=3"], "{:?}", r.headers);
    }
    // Where the app sets the cookie itself (its own login id, say), its Set-Cookie goes on.
    let proxy = Proxy::start(&support::single(
        up.addr,
        &format!("{STICKY}  app_sets_cookie: true\n"),
    ));
    let r = Client::http1()
        .get(&proxy.url("/"), &[("cookie", "uid=mine")])
        .await;
    assert_eq!(r.cookies(), ["uid=pinned; Max-Age=99999", "cart=3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_minted_id_and_no_shared_cache_keeps_its_cookie() {
    let (s, c, proxy) = start(STICKY).await;
    // What the upstream that answered got.
    let upstream_of = |r: &support::Reply| {
        if r.body == "stable" {
            s.last()
        } else {
            c.last()
        }
    };
    for client in [Client::http1(), Client::http2()] {
        let r = client
            .get(&proxy.url("/"), &[("cookie", "theme=dark")])
            .await;
        let cookie = r.cookies().pop().expect("a minted cookie");
        let pair = cookie.split(';').next().expect("name=value");
        // The upstream that answered got the same id, first among the client's cookies.
        let seen = upstream_of(&r);
        let sent = seen.headers.get("cookie").expect("a cookie");
        assert_eq!(sent, &format!("{pair}; theme=dark")[..], "{seen:?}");
        for field in ["cache-control", "cdn-cache-control"] {
            assert_eq!(
                r.headers.get(field).map(|v| v.as_bytes()),
                Some(&b"private"[..]),
                "{field}: {:?}",
                r.headers
            );
        }
        // An unusable id of that name (empty, here) gives way to the minted one.
        let r = client
            .get(&proxy.url("/"), &[("cookie", "uid=; theme=dark")])
            .await;
        let cookie = r.cookies().pop().expect("a minted cookie");
        let minted = cookie.split(';').next().expect("name=value");
        let seen = upstream_of(&r);
        assert_eq!(
            seen.headers.get("cookie").expect("a cookie"),
            &format!("{minted}; theme=dark")[..]
        );
        // A user with an id: nothing added either way.
        let r = client.get(&proxy.url("/"), &[("cookie", pair)]).await;
        assert!(r.headers.get("cache-control").is_none(), "{:?}", r.headers);
        assert!(
            r.headers.get("cdn-cache-control").is_none(),
            "{:?}",
            r.headers
        );
        let seen = upstream_of(&r);
        assert_eq!(seen.headers.get("cookie").expect("cookie"), pair);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_minted_for_newcomers_navigating_not_for_browsers_that_lost_or_hold_back_theirs() {
    // Every newcomer with an id goes to the canary; a request without one, to stable.
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(&config(
        &[&stable],
        &[&canary],
        "id: ids\npercent: 100",
        STICKY,
    ));
    let client = Client::http1();
    let fetch = |mode: &'static str, site: &'static str, dest: &'static str| {
        [
            ("sec-fetch-mode", mode),
            ("sec-fetch-site", site),
            ("sec-fetch-dest", dest),
        ]
    };
    type Case<'a> = (http::Method, Vec<(&'a str, &'a str)>, bool);
    let cases: [Case; 8] = [
        // curl, an API client, an old browser: a newcomer.
        (http::Method::GET, vec![], true),
        // A first visit, typed or from a search engine's link.
        (
            http::Method::GET,
            fetch("navigate", "none", "document").to_vec(),
            true,
        ),
        (
            http::Method::GET,
            fetch("navigate", "cross-site", "document").to_vec(),
            true,
        ),
        // A payment provider's or login's return: a SameSite=Lax cookie stays behind.
        (
            http::Method::POST,
            fetch("navigate", "cross-site", "document").to_vec(),
            false,
        ),
        // The shop in another site's frame, where a Lax cookie is never sent; a link clicked
        // inside that frame says same-origin.
        (
            http::Method::GET,
            fetch("navigate", "cross-site", "iframe").to_vec(),
            false,
        ),
        (
            http::Method::GET,
            fetch("navigate", "same-origin", "iframe").to_vec(),
            false,
        ),
        // A page's asset or API call without the cookie: the browser did not keep it.
        (
            http::Method::GET,
            fetch("no-cors", "same-origin", "image").to_vec(),
            false,
        ),
        (
            http::Method::GET,
            fetch("cors", "same-origin", "empty").to_vec(),
            false,
        ),
    ];
    for (method, headers, newcomer) in cases {
        let r = client
            .send(
                method.clone(),
                &proxy.url("/"),
                &headers,
                bytes::Bytes::new(),
            )
            .await;
        let minted = !r.cookies().is_empty();
        assert_eq!(
            (minted, r.body.as_str()),
            (newcomer, if newcomer { "canary" } else { "stable" }),
            "{method} {headers:?}"
        );
    }
}
