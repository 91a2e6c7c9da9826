//! Property tests ("fuzz") of the API's JSON bodies: whatever a client
//! posts to a mutation route, the answer is a 2xx with the documented body
//! or a 4xx in the API's error shape, never a 5xx, never a panic. The
//! bodies are arbitrary JSON, arbitrary bytes, and valid requests with one
//! field replaced, removed or added. The router runs in process over a real
//! store; no reconcile loop runs, so an accepted deploy starts nothing.
//!
//! CI runs a bounded number of cases (a few seconds in a debug build).
//! `PROPTEST_CASES` sets the count; a longer local run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p ferry-server --release api_fuzz
//! ```

use crate::clock::SystemClock;
use crate::daemon::Daemon;
use crate::http::server::ApiLimits;
use axum::body::Body;
use ferry_api::{ErrorBody, RolloutAccepted};
use ferry_store::{SecretKey, SqliteStore, Store};
use proptest::prelude::*;
use proptest::sample::select;
use std::sync::Arc;
use tower_service::Service;

const TOKEN: &str = "fuzz-token";

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Field names the API knows, so that generated objects often hit them.
const FIELDS: [&str; 22] = [
    "spec",
    "version",
    "overrides",
    "message",
    "strategy",
    "auto_approve",
    "dry_run",
    "monitor",
    "base_dir",
    "config_file",
    "command",
    "listen",
    "instances",
    "env",
    "readiness",
    "deploy",
    "steps",
    "weight",
    "full",
    "to_revision",
    "http",
    "analysis",
];

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        select(vec![
            "",
            "v1",
            "..",
            "-rf",
            "rolling",
            "canary",
            "blue-green",
            "30s",
            "1ns",
            "manual",
            "127.0.0.1:1",
            "0.0.0.0:0",
            "/",
            "/tmp",
            "a\u{0}b",
            "\u{1b}[2J",
            "{port}",
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        select(FIELDS.to_vec()).prop_map(str::to_string),
                        "[a-z_]{1,8}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A deploy request the daemon accepts.
fn valid_deploy(dry_run: bool) -> serde_json::Value {
    serde_json::json!({
        "spec": {
            "command": ["/nonexistent/fuzz-app", "--port", "{port}"],
            "listen": "127.0.0.1:1",
            "instances": 2,
            "env": {"MODE": "{version}", "API_TOKEN": "t"},
            "readiness": {"http": "/health", "interval": "1s"},
            "deploy": {"strategy": "canary", "steps": [{"weight": 10, "pause": "manual"}]}
        },
        "version": "v1",
        "overrides": {"DB_PASSWORD": "p"},
        "message": "fuzz",
        "dry_run": dry_run,
        "base_dir": "/tmp"
    })
}

/// Every (path to a value) in a JSON document.
fn paths(v: &serde_json::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                let mut p = at.clone();
                p.push(k.clone());
                out.push(p.clone());
                paths(child, p, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(i.to_string());
                out.push(p.clone());
                paths(child, p, out);
            }
        }
        _ => {}
    }
}

fn pointer(path: &[String]) -> String {
    path.iter().map(|p| format!("/{p}")).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(prop::sample::Index, serde_json::Value),
    Remove(prop::sample::Index),
    AddField(prop::sample::Index, String, serde_json::Value),
}

fn mutate(mut doc: serde_json::Value, m: &Mutation) -> serde_json::Value {
    let mut all = Vec::new();
    paths(&doc, Vec::new(), &mut all);
    match m {
        Mutation::Replace(i, v) => {
            let p = &all[i.index(all.len())];
            if let Some(slot) = doc.pointer_mut(&pointer(p)) {
                *slot = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let p = &all[i.index(all.len())];
            let (last, parent) = p.split_last().expect("paths are not empty");
            match doc.pointer_mut(&pointer(parent)) {
                Some(serde_json::Value::Object(o)) => {
                    o.remove(last);
                }
                Some(serde_json::Value::Array(a)) => {
                    if let Ok(n) = last.parse::<usize>() {
                        a.remove(n);
                    }
                }
                _ => {}
            }
        }
        Mutation::AddField(i, k, v) => {
            let p = &all[i.index(all.len())];
            if let Some(serde_json::Value::Object(o)) = doc.pointer_mut(&pointer(p)) {
                o.insert(k.clone(), v.clone());
            } else if let serde_json::Value::Object(o) = &mut doc {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    doc
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => (any::<prop::sample::Index>(), prop_oneof![select(FIELDS.to_vec()).prop_map(str::to_string), "[a-z]{1,6}"], json_leaf())
            .prop_map(|(i, k, v)| Mutation::AddField(i, k, v)),
    ]
}

/// A body: arbitrary JSON, arbitrary bytes, or a valid request mutated.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<bool>(), prop::collection::vec(mutation(), 1..4)).prop_map(|(dry, ms)| {
            let doc = ms.iter().fold(valid_deploy(dry), mutate);
            serde_json::to_vec(&doc).unwrap()
        }),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("ferry.db"), SecretKey::generate().unwrap()).unwrap(),
    );
    let daemon = runtime
        .block_on(Daemon::open(
            store,
            Arc::new(SystemClock),
            crate::Tokens {
                admin: TOKEN.into(),
                read: "read-only".into(),
            },
            "fuzz".into(),
            dir.path().to_path_buf(),
            Arc::new(crate::dataplane::inline::Inline::new(
                dir.path().to_path_buf(),
                0,
            )),
            crate::tsdb::MetricsDb::open(&dir.path().join("metrics"), &Default::default()).unwrap(),
        ))
        .unwrap();
    let router = crate::http::router(daemon, ApiLimits::default());
    Fixture {
        _dir: dir,
        runtime,
        router,
    }
}

impl Fixture {
    fn post(&mut self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let req = http::Request::post(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let router = &mut self.router;
        self.runtime.block_on(async {
            let resp = router.call(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, bytes.to_vec())
        })
    }
}

/// What every answer to a mutation must be.
fn answer_is_documented(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(body);
    match status {
        200..=202 => {
            serde_json::from_slice::<RolloutAccepted>(body)
                .map_err(|e| TestCaseError::fail(format!("{status}: {e}: {text}")))?;
        }
        400 | 404 | 409 | 413 | 422 => {
            let e: ErrorBody = serde_json::from_slice(body)
                .map_err(|e| TestCaseError::fail(format!("{status}: {e}: {text}")))?;
            prop_assert!(!e.error.message.is_empty());
        }
        _ => prop_assert!(false, "undocumented answer {status}: {text}"),
    }
    Ok(())
}

const ROUTES: [&str; 7] = [
    "deploys", "rollback", "promote", "approve", "abort", "pause", "resume",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn api_fuzz_mutation_bodies_get_documented_answers(
        route in select(ROUTES.to_vec()),
        name in select(vec!["web", "api", "Web", "a-service-name-that-is-longer-than-the-sixty-three-characters-ferry-allows", "a%20b", "-x"]),
        body in body(),
    ) {
        thread_local! {
            static FIXTURE: std::cell::RefCell<Option<Fixture>> = const { std::cell::RefCell::new(None) };
        }
        FIXTURE.with(|f| {
            let mut f = f.borrow_mut();
            let f = f.get_or_insert_with(fixture);
            let (status, answer) = f.post(&format!("/v1/services/{name}/{route}"), body);
            answer_is_documented(status, &answer)
        })?;
    }
}

#[test]
fn api_fuzz_a_valid_deploy_is_accepted_and_a_second_conflicts() {
    let mut f = fixture();
    let (status, body) = f.post(
        "/v1/services/web/deploys",
        serde_json::to_vec(&valid_deploy(false)).unwrap(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, body) = f.post(
        "/v1/services/web/deploys",
        serde_json::to_vec(&valid_deploy(false)).unwrap(),
    );
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
}
