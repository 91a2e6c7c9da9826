//! Requests without a valid token are cheap to turn away: each client (by
//! IP address) has its denials audited one by one only up to a burst and a
//! steady rate; past that it gets 429 and nothing is written, and the count
//! of what was not written goes into the next entry that is. So a flood of
//! unauthenticated requests costs no disk and bounded memory.

use ferry_core::Millis;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Denials audited in a burst, per client.
const BURST: f64 = 10.0;
/// Then one more audited denial per this many milliseconds.
const REFILL_MS: f64 = 6_000.0;
/// Clients remembered at most; past this, those with a full bucket (no
/// recent denial) are forgotten first.
const MAX_CLIENTS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Audit this denial; `unrecorded` earlier ones of the client were not.
    Audit { unrecorded: u64 },
    /// Answer 429 and record nothing; retry in this many seconds.
    Throttle { retry_after_s: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Millis,
    unrecorded: u64,
}

#[derive(Debug, Default)]
pub struct Denials {
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Denials {
    /// Count one denied request from `client` at `now`.
    pub fn deny(&self, client: IpAddr, now: Millis) -> Verdict {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, b| refilled(b, now) < BURST);
            if clients.len() >= MAX_CLIENTS {
                return Verdict::Throttle {
                    retry_after_s: (REFILL_MS / 1000.0).ceil() as u64,
                };
            }
        }
        let b = clients.entry(client).or_insert(Bucket {
            tokens: BURST,
            at: now,
            unrecorded: 0,
        });
        b.tokens = refilled(b, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let unrecorded = std::mem::take(&mut b.unrecorded);
            Verdict::Audit { unrecorded }
        } else {
            b.unrecorded += 1;
            if b.unrecorded == 1 {
                tracing::warn!(
                    %client,
                    "many requests without a valid token from {client}: answering 429 and auditing at most one every {}s",
                    REFILL_MS / 1000.0
                );
            }
            Verdict::Throttle {
                retry_after_s: ((1.0 - b.tokens) * REFILL_MS / 1000.0).ceil().max(1.0) as u64,
            }
        }
    }
}

fn refilled(b: &Bucket, now: Millis) -> f64 {
    (b.tokens + now.saturating_sub(b.at) as f64 / REFILL_MS).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_audited_then_throttled_and_the_gap_counted() {
        let d = Denials::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(d.deny(ip, 1000), Verdict::Audit { unrecorded: 0 });
        }
        for _ in 0..500 {
            assert!(matches!(
                d.deny(ip, 1000),
                Verdict::Throttle { retry_after_s: 6 }
            ));
        }
        // Another client is not affected.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(d.deny(other, 1000), Verdict::Audit { unrecorded: 0 });
        // One refill later, one more is audited, carrying the count.
        assert_eq!(d.deny(ip, 7000), Verdict::Audit { unrecorded: 500 });
        assert!(matches!(d.deny(ip, 7000), Verdict::Throttle { .. }));
    }

    #[test]
    fn memory_is_bounded_by_forgetting_quiet_clients() {
        let d = Denials::default();
        for i in 0..MAX_CLIENTS as u32 {
            d.deny(IpAddr::from(i.to_be_bytes()), 0);
        }
        // A minute later everyone's bucket is full again: a new client
        // makes room by forgetting them.
        let new: IpAddr = "192.168.9.9".parse().unwrap();
        assert_eq!(d.deny(new, 60_000), Verdict::Audit { unrecorded: 0 });
        assert!(d.clients.lock().unwrap().len() <= 2);
    }
}
