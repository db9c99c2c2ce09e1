//! The documented assignment hash. Changing anything here moves users between pools: the golden
//! tests pin it.
//!
//! bucket = XXH3-64 (seed 0) of (rollout id bytes ‖ 0x00 ‖ user id bytes) mod 1,000,000.
//! A user is on canary iff bucket < parts-per-million on canary.

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

/// How many buckets users are spread over: one per part per million.
pub const BUCKETS: u32 = 1_000_000;

/// Inputs up to this size are hashed from a stack buffer in one shot; longer ones stream.
const STACK_INPUT: usize = 160;

/// The hash prefix for a rollout: its id followed by one zero byte.
pub fn salt(rollout_id: &str) -> Box<[u8]> {
    let mut s = Vec::with_capacity(rollout_id.len() + 1);
    s.extend_from_slice(rollout_id.as_bytes());
    s.push(0);
    s.into_boxed_slice()
}

/// The bucket (0..1,000,000) of `user` under a rollout whose [`salt`] is `salt`.
#[inline]
pub fn bucket(salt: &[u8], user: &[u8]) -> u32 {
    of_hash(hash(salt, user))
}

/// The bucket of a [`hash`].
#[inline]
pub fn of_hash(hash: u64) -> u32 {
    (hash % u64::from(BUCKETS)) as u32
}

/// XXH3-64 (seed 0) of `salt ‖ user`: the bucket's source, and the user's anonymous tally key.
#[inline]
pub fn hash(salt: &[u8], user: &[u8]) -> u64 {
    let len = salt.len() + user.len();
    if len <= STACK_INPUT {
        let mut buf = [0u8; STACK_INPUT];
        buf[..salt.len()].copy_from_slice(salt);
        buf[salt.len()..len].copy_from_slice(user);
        xxh3_64(&buf[..len])
    } else {
        let mut h = Xxh3Default::new();
        h.update(salt);
        h.update(user);
        h.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_one_shot_agree_across_the_stack_limit() {
        let salt = salt("checkout-v2");
        for len in [1, 100, STACK_INPUT - salt.len(), STACK_INPUT, 1024] {
            let user = vec![b'x'; len];
            let mut joined = salt.to_vec();
            joined.extend_from_slice(&user);
            let expect = (xxh3_64(&joined) % 1_000_000) as u32;
            assert_eq!(bucket(&salt, &user), expect, "user id of {len} bytes");
        }
    }
}
