//! Timestamps as text. The core never reads the clock; it formats the
//! `Millis` it is given.

use crate::Millis;

/// RFC 3339 text of a timestamp, e.g. `2026-11-22T03:04:05.123Z`.
pub fn rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
