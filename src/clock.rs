//! A cheap process-local millisecond clock, for timestamps kept in atomics.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process (never 0 after the first millisecond;
/// callers that use 0 as "unset" store `now_ms().max(1)`).
#[inline]
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}
