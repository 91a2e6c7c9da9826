//! Secret redaction: env values whose names look secret never leave Ferry.

/// Markers in an environment variable's name that make its value a secret.
const SECRET_MARKERS: [&str; 4] = ["SECRET", "TOKEN", "PASSWORD", "KEY"];

/// What is shown instead of a secret value.
pub const REDACTED: &str = "[redacted]";

/// True when a variable named `name` holds a secret (case-insensitive).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// The value to show for `name=value`.
pub fn shown<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_name(name) {
        REDACTED
    } else {
        value
    }
}

/// Replace every secret value in a JSON document: any object key that looks
/// secret has its string value replaced, at any depth.
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_name(k) && v.is_string() {
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_json(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_redacted_at_any_depth() {
        assert!(is_secret_name("DB_PASSWORD"));
        assert!(is_secret_name("api_key"));
        assert!(!is_secret_name("GREETING"));
        let mut v = serde_json::json!({"env": {"API_TOKEN": "abc", "GREETING": "hi"}, "list": [{"SECRET": "x"}]});
        redact_json(&mut v);
        assert_eq!(v["env"]["API_TOKEN"], REDACTED);
        assert_eq!(v["env"]["GREETING"], "hi");
        assert_eq!(v["list"][0]["SECRET"], REDACTED);
    }
}
