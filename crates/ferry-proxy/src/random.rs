//! Per-thread pseudo-random numbers (SplitMix64) and the mixing function
//! behind them, shared by routing (random and sticky buckets) and the
//! request headers (new trace ids). Depends on no other module.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// SplitMix64's output function. Sticky buckets ([`bucket_of`]) depend on
/// it: changing it would move sticky users between revisions.
///
/// [`bucket_of`]: crate::routing::bucket_of
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A fast per-thread pseudo-random number (SplitMix64), no locks.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(&h as *const _ as usize);
            s = h.finish() | 1;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        mix(s)
    })
}
