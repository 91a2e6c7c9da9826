//! Property tests ("fuzz") of `ferry.toml` loading: whatever a user (or a
//! bad merge) writes, `config::parse` returns a config that validates or
//! errors that point into the file; it never panics, and an accepted spec
//! survives the JSON round trip the daemon's store makes.
//!
//! CI runs a bounded number of cases (a second or two in a debug build).
//! `PROPTEST_CASES` sets the count; a longer local run:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p ferry-core --release config_fuzz
//! ```

use crate::config::{self, Config, EXAMPLE};
use crate::revision::Revision;
use proptest::prelude::*;
use proptest::sample::select;
use std::path::Path;

/// A config with every table Ferry knows, valid, to mutate.
fn base() -> String {
    format!(
        r#"{EXAMPLE}
[services.api]
command = "exec ./api --port {{port}}"
listen = "127.0.0.1:9090"
instances = 2
env = {{ API_TOKEN = "t", MODE = "{{version}}" }}
pre_deploy = ["./migrate", "up"]

[services.api.deploy]
strategy = "canary"
steps = [{{ weight = 10, pause = "30s" }}, {{ weight = 50, pause = "manual" }}]
stickiness = "header:x-user"
on_failure = "pause"
monitor = "5m"

[services.api.analysis]
interval = "10s"
window = "1m"
checks = [{{ metric = "error_rate", max = 0.01 }}, {{ metric = "latency_p99", max = "500ms" }}]

[services.api.proxy]
connect_timeout = "2s"
max_connections = 100
trusted_proxies = ["10.0.0.0/8"]

[[services.api.webhooks]]
url = "http://127.0.0.1:9/hook"
events = ["failed", "done"]
"#
    )
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Values that have broken parsers: wrong types, empty and huge values,
/// control characters, durations without units or too small, addresses
/// without ports, NULs, unknown placeholders, quotes and brackets.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "0",
            "-1",
            "1e309",
            "18446744073709551616",
            "\"\"",
            "\"x\"",
            "true",
            "[]",
            "{}",
            "[\"\"]",
            "\"1ns\"",
            "\"0s\"",
            "\"30\"",
            "\"manual\"",
            "\"0.0.0.0:0\"",
            "\"[::]:80\"",
            "\"127.0.0.1\"",
            "\"\\u0000\"",
            "\"\\r\\n\"",
            "\"{nope}\"",
            "\"{port}\"",
            "\"{{\"",
            "[{ weight = 101 }]",
            "[{ weight = 0 }]",
            "nan",
            "inf",
            "\"header:\"",
            "\"cookie:a b\"",
            "\"/h\\r\\nX: 1\"",
            "'''",
            "\"\"\"",
            "[",
            "{ a = ",
            "\"é\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        "[ -~]{0,40}".prop_map(|s| format!("{s:?}")),
    ]
}

/// One edit of a line of the base config.
#[derive(Debug, Clone)]
enum Edit {
    /// Give the key on this line another value.
    Value(prop::sample::Index, String),
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Put these bytes at this offset of the file.
    Insert(prop::sample::Index, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), hostile_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        1 => any::<prop::sample::Index>().prop_map(Edit::Duplicate),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match edit {
        Edit::Value(i, v) => {
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|n| lines[*n].contains(" = ") && !lines[*n].starts_with('#'))
                .collect();
            let n = assignments[i.index(assignments.len())];
            let key = lines[n].split(" = ").next().unwrap_or("").to_string();
            lines[n] = format!("{key} = {v}");
        }
        Edit::Delete(i) => {
            let n = i.index(lines.len());
            lines.remove(n);
        }
        Edit::Duplicate(i) => {
            let n = i.index(lines.len());
            lines.insert(n, lines[n].clone());
        }
        Edit::Insert(i, bytes) => {
            let mut raw = lines.join("\n").into_bytes();
            let at = i.index(raw.len() + 1);
            raw.splice(at..at, bytes.iter().copied());
            return String::from_utf8_lossy(&raw).into_owned();
        }
    }
    lines.join("\n")
}

/// What must hold for any text.
fn check(text: &str) -> Result<(), TestCaseError> {
    match config::parse(Path::new("ferry.toml"), text) {
        Ok(cfg) => accepted(&cfg),
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "an error list is never empty");
            let lines = text.lines().count().max(1);
            for e in &errors {
                prop_assert!(!e.message.trim().is_empty(), "{e:?}");
                if let Some(line) = e.line {
                    prop_assert!(
                        (1..=lines + 1).contains(&line),
                        "line {line} of {lines}: {e}"
                    );
                }
                // The message renders, with its position.
                prop_assert!(e.to_string().starts_with("ferry.toml"));
            }
            Ok(())
        }
    }
}

/// An accepted config is valid, and each spec survives the store's JSON
/// round trip and yields an argument list and environment.
fn accepted(cfg: &Config) -> Result<(), TestCaseError> {
    prop_assert!(config::validate(cfg).is_empty());
    for (name, spec) in &cfg.services {
        let json = serde_json::to_string(spec).unwrap();
        let back: crate::spec::ServiceSpec = serde_json::from_str(&json)
            .map_err(|e| TestCaseError::fail(format!("{name}: {e}: {json}")))?;
        prop_assert_eq!(&back, spec);
        let rev = Revision {
            service: name.clone(),
            number: 1,
            version: "v1".into(),
            spec: spec.clone(),
            overrides: Default::default(),
            base_dir: "/srv".into(),
            config_file: "/srv/ferry.toml".into(),
            message: None,
            author: "t".into(),
            created_at: 0,
            validation: Default::default(),
            commit_time: None,
        };
        prop_assert!(!rev.argv(8080).is_empty());
        prop_assert!(rev.env(8080).contains_key("PORT"));
    }
    Ok(())
}

#[test]
fn config_fuzz_the_base_config_is_valid() {
    let cfg = config::parse(Path::new("ferry.toml"), &base()).unwrap();
    assert_eq!(cfg.services.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_fuzz_edited_configs_load_or_point_at_the_problem(
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        let mut text = base();
        for e in &edits {
            text = apply(&text, e);
        }
        check(&text)?;
    }

    #[test]
    fn config_fuzz_arbitrary_text_never_panics(text in "(?s).{0,400}") {
        check(&text)?;
    }

    #[test]
    fn config_fuzz_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }
}
