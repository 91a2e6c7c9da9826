//! Human-friendly durations (`"500ms"`, `"30s"`, `"2m"`) for specs.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a string with a unit, as in `interval = "500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Parse `"500ms"`, `"1s"`, `"2m"`, `"1h 30m"`. A bare number is rejected
/// because `30` could mean seconds or milliseconds.
pub fn parse(text: &str) -> Result<Dur, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{t}` has no unit; write it with one, e.g. \"{t}s\" or \"{t}ms\""
        ));
    }
    humantime::parse_duration(t).map(Dur).map_err(|e| {
        format!("`{t}` is not a duration ({e}); write e.g. \"500ms\", \"30s\" or \"2m\"")
    })
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The API's schema: a string with a unit.
impl utoipa::PartialSchema for Dur {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "A duration with a unit: \"500ms\", \"30s\", \"2m\", \"1h 30m\" (a bare number is refused).",
            "30s",
        )
    }
}

impl utoipa::ToSchema for Dur {}

/// A string schema with a description and one example.
pub(crate) fn string_schema(
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .examples([serde_json::Value::from(example)])
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_bare_numbers() {
        assert_eq!(parse("500ms").unwrap(), Dur::millis(500));
        assert_eq!(parse("2m").unwrap(), Dur::secs(120));
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("soon").is_err());
        assert_eq!(Dur::millis(1500).to_string(), "1s 500ms");
        assert_eq!(parse(&Dur::secs(90).to_string()).unwrap(), Dur::secs(90));
    }
}
