//! Per-client rate limiting (GCRA: a token bucket kept as one timestamp per
//! client), in sharded maps so concurrent requests rarely share a lock.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderName;

/// What identifies a client for rate limiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (after PROXY protocol / trusted `X-Forwarded-For`).
    ClientIp,
    /// The value of this request header; requests without it are keyed by
    /// the client's address.
    Header(HeaderName),
}

/// A per-client limit: `per_second` requests per second on average, with
/// bursts of up to `burst` requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitOptions {
    pub per_second: f64,
    pub burst: u32,
    pub key: RateLimitKey,
}

const SHARDS: usize = 16;
/// A shard is swept of expired clients when it grows past this.
const SWEEP_AT: usize = 4096;

/// Identity hasher for keys that are already hashes.
#[derive(Default)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Shard {
    /// Key hash → theoretical arrival time, in nanoseconds since `epoch`.
    tat: HashMap<u64, u64, BuildHasherDefault<PreHashed>>,
    next_sweep: usize,
}

pub(crate) struct RateLimiter {
    pub(crate) options: RateLimitOptions,
    epoch: Instant,
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the TAT may run before requests are refused.
    tolerance: u64,
    shards: Vec<Mutex<Shard>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub(crate) fn new(options: RateLimitOptions) -> RateLimiter {
        let per_second = if options.per_second > 0.0 {
            options.per_second
        } else {
            f64::MIN_POSITIVE
        };
        let interval = (1e9 / per_second).min(u64::MAX as f64 / 4.0) as u64;
        let interval = interval.max(1);
        let tolerance = interval.saturating_mul(u64::from(options.burst.max(1) - 1));
        RateLimiter {
            options,
            epoch: Instant::now(),
            interval,
            tolerance,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tat: HashMap::default(),
                        next_sweep: SWEEP_AT,
                    })
                })
                .collect(),
        }
    }

    /// Count a request from the client whose key hashes to `key`: `Ok` if
    /// allowed, else `Err(how long until one would be)`.
    pub(crate) fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX / 2);
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tat = shard.tat.get(&key).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            return Err(Duration::from_nanos(tat - now - self.tolerance));
        }
        let next = tat + self.interval;
        shard.tat.insert(key, next);
        if shard.tat.len() >= shard.next_sweep {
            // Clients whose TAT has passed are at full burst again: the same
            // as never seen.
            shard.tat.retain(|_, tat| *tat > now);
            shard.next_sweep = (shard.tat.len() * 2).max(SWEEP_AT);
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().tat.len())
            .sum()
    }
}

/// A stable 64-bit hash of a key (FNV-1a + finalizer).
pub(crate) fn hash_key(prefix: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(prefix);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn bursts_then_refuses_then_refills() {
        let limiter = RateLimiter::new(RateLimitOptions {
            per_second: 10.0,
            burst: 5,
            key: RateLimitKey::ClientIp,
        });
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.check(1, t0).is_ok(), "request {i} within burst");
        }
        let wait = limiter.check(1, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another client is unaffected.
        assert!(limiter.check(2, t0).is_ok());
        // After 100 ms one more is allowed, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check(1, t1).is_ok());
        assert!(limiter.check(1, t1).is_err());
        // Long idle: the whole burst again.
        let t2 = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(limiter.check(1, t2).is_ok());
        }
        assert!(limiter.check(1, t2).is_err());
    }

    #[test]
    fn forgets_idle_clients() {
        let limiter = RateLimiter::new(RateLimitOptions {
            per_second: 1000.0,
            burst: 1,
            key: RateLimitKey::ClientIp,
        });
        let t0 = Instant::now();
        for key in 0..(SHARDS * SWEEP_AT) as u64 {
            let _ = limiter.check(hash_key(0, &key.to_le_bytes()), t0);
        }
        let later = t0 + Duration::from_secs(5);
        for key in 0..(SHARDS * SWEEP_AT) as u64 {
            let _ = limiter.check(hash_key(1, &key.to_le_bytes()), later);
        }
        assert!(
            limiter.tracked() < 2 * SHARDS * SWEEP_AT,
            "{}",
            limiter.tracked()
        );
    }
}
