//! Prometheus's duration strings (`model.Duration`): `1h30m`, `5m`, `10s`,
//! `100ms`, `1d`, `1w`, `1y`, units in decreasing order, each at most once.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in milliseconds, read and written as Prometheus writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PromDuration(pub i64);

const UNITS: [(&str, i64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

impl PromDuration {
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn from_secs(s: i64) -> PromDuration {
        PromDuration(s * 1000)
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }

    pub fn parse(s: &str) -> Result<PromDuration, String> {
        let bad = || format!("not a valid duration string: {s:?}");
        if s == "0" {
            return Ok(PromDuration(0));
        }
        if s.is_empty() {
            return Err(bad());
        }
        let mut rest = s;
        let mut total: i64 = 0;
        let mut last_unit = usize::MAX;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            // "ms" before "m", so try the longest unit first.
            let (i, len) = UNITS
                .iter()
                .enumerate()
                .filter(|(_, (u, _))| rest.starts_with(u))
                .map(|(i, (u, _))| (i, u.len()))
                .max_by_key(|&(_, len)| len)
                .ok_or_else(bad)?;
            if last_unit != usize::MAX && i <= last_unit {
                return Err(bad());
            }
            last_unit = i;
            rest = &rest[len..];
            total = n
                .checked_mul(UNITS[i].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration out of range: {s:?}"))?;
        }
        Ok(PromDuration(total))
    }
}

impl std::fmt::Display for PromDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 0 {
            f.write_str("-")?;
            ms = -ms;
        }
        for (u, size) in UNITS {
            if ms >= size {
                write!(f, "{}{u}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PromDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PromDuration::parse(s)
    }
}

impl Serialize for PromDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_as_prometheus() {
        for (s, ms) in [
            ("0s", 0),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("100ms", 100),
            ("1d", 86_400_000),
            ("2w", 1_209_600_000),
        ] {
            assert_eq!(PromDuration::parse(s), Ok(PromDuration(ms)), "{s}");
            assert_eq!(PromDuration(ms).to_string(), s);
        }
        assert_eq!(PromDuration::parse("0"), Ok(PromDuration(0)));
        for bad in ["", "5", "m", "1m1h", "1.5h", "5mm", "-1m", "1h 2m"] {
            assert!(PromDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
