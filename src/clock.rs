//! A cheap process-local millisecond clock, for timestamps kept in atomics: the kernel's coarse
//! monotonic clock, which advances once per scheduler tick (1–4 ms) and is read from memory
//! the kernel maps into the process, without the CPU's time-stamp counter — a few nanoseconds,
//! where a precise reading costs several times that. For timeouts of milliseconds and more
//! (idle connections, the watchdog); a latency is measured with `Instant`.

use std::sync::OnceLock;
use std::time::Instant;

use nix::time::{ClockId, clock_gettime};

/// Milliseconds on the coarse monotonic clock; where the kernel has none, on `Instant`.
fn raw_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000,
        Err(_) => START.get_or_init(Instant::now).elapsed().as_millis() as u64,
    }
}

fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(raw_ms)
}

/// Milliseconds since the first call in this process (never 0 after the first millisecond;
/// callers that use 0 as "unset" store `now_ms().max(1)`).
#[inline]
pub fn now_ms() -> u64 {
    let epoch = epoch();
    raw_ms().saturating_sub(epoch)
}

/// Microseconds on the precise monotonic clock since its first reading in this process: a moment
/// kept in an atomic, to be measured against `now_us()` later (callers that use 0 as "unset"
/// store `now_us().max(1)`).
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}
