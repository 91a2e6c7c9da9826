//! An alert as Alertmanager knows it: a label set (its identity), its
//! annotations, and when it started and ends.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels or annotations, sorted by name.
pub type LabelSet = BTreeMap<String, String>;

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// One alert, from Ferry's own rules or pushed by a Prometheus
/// (`POST /api/v2/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: LabelSet,
    pub starts_at: Millis,
    /// When it resolved (in the past) or when it is presumed resolved
    /// unless re-sent (in the future).
    pub ends_at: Millis,
    #[serde(default)]
    pub generator_url: String,
    /// When Ferry last received or changed it.
    pub updated_at: Millis,
}

impl Alert {
    /// Resolved once `ends_at` has passed.
    pub fn resolved_at(&self, now: Millis) -> bool {
        self.ends_at <= now
    }
    /// The alert's name (`alertname`), or "" without one.
    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.labels)
    }
}

/// Alertmanager's alert identity: FNV-1a 64 over the sorted label names
/// and values, each followed by 0xff (Prometheus `model.LabelSet.Fingerprint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub u64);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Fingerprint)
    }
}

pub fn fingerprint(labels: &LabelSet) -> Fingerprint {
    const OFFSET: u64 = 14695981039346656037;
    const PRIME: u64 = 1099511628211;
    if labels.is_empty() {
        return Fingerprint(OFFSET);
    }
    let mut h = OFFSET;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    Fingerprint(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_prometheus_fnv1a() {
        // Prometheus: model.LabelSet{"foo": "bar"}.Fingerprint()
        let l: LabelSet = [("foo".to_string(), "bar".to_string())].into();
        // FNV-1a 64 of "foo\xffbar\xff", computed independently.
        let mut h: u64 = 14695981039346656037;
        for b in b"foo\xffbar\xff" {
            h ^= u64::from(*b);
            h = h.wrapping_mul(1099511628211);
        }
        assert_eq!(fingerprint(&l).0, h);
        assert_eq!(fingerprint(&l).to_string().len(), 16);
    }
}
