//! `routing::decide`: cookie parse + hash + compare, the per-request routing cost.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use ramp::routing::{self, Rollout, Routing, State, StickyRules};

fn routing() -> Routing {
    Routing {
        rollout: Rollout::new("checkout-v2", 50_000, State::Running),
        sticky: StickyRules::new(None, "uid", true, 365 * 86_400, false, None),
    }
}

fn headers(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "shop.example".parse().expect("host"));
    h.insert("user-agent", "bench/1.0".parse().expect("ua"));
    h.insert("cookie", cookie.parse().expect("cookie"));
    h
}

fn bench(c: &mut Criterion) {
    let snap = routing();
    let simple = headers("uid=user-4242");
    let busy = headers(
        "_ga=GA1.2.1234567890.1234567890; theme=dark; session=abcdef0123456789abcdef; uid=QfA0PCnFnOWpVoovUEU8hg; lang=en",
    );
    let none = headers("theme=dark");
    c.bench_function("decide/cookie-only", |b| {
        b.iter(|| routing::decide(black_box(&snap), black_box(&simple)))
    });
    c.bench_function("decide/cookie-among-five", |b| {
        b.iter(|| routing::decide(black_box(&snap), black_box(&busy)))
    });
    c.bench_function("decide/no-id", |b| {
        b.iter(|| routing::decide(black_box(&snap), black_box(&none)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
