//! Alerting end to end: Ferry's rules firing to real webhook receivers,
//! a real Alertmanager on the receiving side of Ferry's pushes, a real
//! Prometheus using Ferry as its Alertmanager, silences, acks and manual
//! resolve through the CLI, durability across `kill -9`, slow receivers,
//! bad input and secrets.

use super::alertmanager::Alertmanager;
use super::harness::*;
use super::prometheus::Prometheus;
use serde_json::Value;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scrape target serving one gauge whose value the test sets.
struct Gauge {
    port: u16,
    value: Arc<AtomicI64>,
}

impl Gauge {
    /// Serves `{series} {value}`, e.g. `cond_value{x="abc"}`.
    fn start(series: &'static str, initial: i64) -> Gauge {
        let value = Arc::new(AtomicI64::new(initial));
        let v = value.clone();
        let port = http_server(move |mut s| {
            let body = format!("{series} {}\n", v.load(Ordering::SeqCst));
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        Gauge { port, value }
    }

    fn set(&self, v: i64) {
        self.value.store(v, Ordering::SeqCst);
    }

    /// `[[metrics.scrape]]` for it, every second.
    fn scrape_toml(&self, job: &str) -> String {
        format!(
            "[[metrics.scrape]]\njob = \"{job}\"\nurl = \"http://127.0.0.1:{}/metrics\"\ninterval = \"1s\"\n",
            self.port
        )
    }
}

/// A webhook receiver recording every POSTed JSON body.
struct Hook {
    port: u16,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start() -> Hook {
        let (port, got) = receiver();
        Hook { port, got }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
    /// Notifications that carry an alert named `name` with `status`
    /// (the group's status).
    fn with(&self, name: &str, status: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|n| {
                n["status"] == status
                    && n["alerts"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == name))
            })
            .collect()
    }
    fn count(&self, name: &str) -> usize {
        self.all()
            .iter()
            .filter(|n| {
                n["alerts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == name))
            })
            .count()
    }
}

/// The `[alerting]` table the tests use: quick evaluations, no built-in
/// rules (the test service is never deployed), routing from `am.yml`.
fn alerting_toml(extra: &str) -> String {
    format!(
        r#"
[alerting]
rule_files = ["rules/*.yml"]
builtin_rules = false
evaluation_interval = "1s"
resend_delay = "1s"
alertmanager_config = "am.yml"
{extra}
"#
    )
}

/// Route everything to one webhook, grouped by alert name.
fn one_hook_am(url: &str, repeat: &str) -> String {
    format!(
        r#"route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: {repeat}
receivers:
- name: hook
  webhook_configs:
  - url: {url}
"#
    )
}

/// A daemon with `tail` in ferry.toml and `files` (path, text) in its
/// directory, started with `--config ferry.toml`.
fn start(tail: &str, files: &[(&str, &str)]) -> Env {
    let mut env = prepare(tail, files);
    start_with_config(&mut env);
    env
}

fn prepare(tail: &str, files: &[(&str, &str)]) -> Env {
    let env = Env::prepare(Spec {
        tail: tail.to_string(),
        ..Spec::default()
    });
    for (path, text) in files {
        write_file(&env, path, text);
    }
    env
}

fn write_file(env: &Env, path: &str, text: &str) {
    let full = env.dir.path().join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
}

fn start_with_config(env: &mut Env) {
    env.start_daemon_with(&["--config", "ferry.toml", "--scrape-interval", "1s"], &[]);
    wait_for(Duration::from_secs(20), "alerting to run", || {
        env.ferry(&["alerts"]).status.success()
    });
}

/// `ferry ARGS --output json`: one JSON document per line.
fn json_lines(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let text = env.ferry_ok(&all);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The alert named `name` in `ferry alerts [--all] --output json`.
fn alert(env: &Env, name: &str, all: bool) -> Option<Value> {
    let args: &[&str] = if all {
        &["alerts", "list", "--all"]
    } else {
        &["alerts"]
    };
    json_lines(env, args).into_iter().find(|a| a["name"] == name)
}

fn state_of(env: &Env, name: &str) -> Option<String> {
    alert(env, name, true).map(|a| a["state"].as_str().unwrap_or("").to_string())
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn api_get(env: &Env, path: &str) -> Value {
    http()
        .get(format!("{}{path}", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Rule names in `/api/v1/rules`.
fn rule_names(env: &Env) -> Vec<String> {
    let v = api_get(env, "/api/v1/rules");
    let mut names: Vec<String> = v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

fn history(env: &Env, name: &str) -> Vec<Value> {
    json_lines(env, &["alerts", "history", "--alert", name])
}

fn kinds(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

const COND_RULES: &str = r#"groups:
- name: cond
  rules:
  - alert: CondHigh
    expr: cond_value > 0
    for: 1s
    labels:
      severity: warning
      team: "t-{{ $labels.x }}"
    annotations:
      summary: "x={{ $labels.x }} value={{ $value }}"
"#;

#[test]
fn a_rule_fires_to_a_webhook_with_the_v4_payload_then_resolves() {
    let hook = Hook::start();
    let gauge = Gauge::start(r#"cond_value{x="abc"}"#, 5);
    let env = start(
        &format!("{}{}", gauge.scrape_toml("cond"), alerting_toml("")),
        &[
            ("rules/cond.yml", COND_RULES),
            ("am.yml", &one_hook_am(&hook.url(), "1h")),
        ],
    );

    wait_for(Duration::from_secs(20), "the firing notification", || {
        !hook.with("CondHigh", "firing").is_empty()
    });
    let n = hook.with("CondHigh", "firing")[0].clone();
    assert_eq!(n["version"], "4", "{n}");
    assert_eq!(n["status"], "firing", "{n}");
    assert_eq!(n["receiver"], "hook", "{n}");
    assert_eq!(n["groupKey"], r#"{}:{alertname="CondHigh"}"#, "{n}");
    assert_eq!(n["groupLabels"]["alertname"], "CondHigh", "{n}");
    assert_eq!(n["externalURL"], env.api(), "{n}");
    assert_eq!(n["truncatedAlerts"], 0, "{n}");
    let a = &n["alerts"][0];
    assert_eq!(a["status"], "firing", "{n}");
    assert_eq!(a["labels"]["alertname"], "CondHigh", "{n}");
    assert_eq!(a["labels"]["severity"], "warning", "{n}");
    assert_eq!(a["labels"]["team"], "t-abc", "label templates expand: {n}");
    assert_eq!(a["labels"]["x"], "abc", "{n}");
    assert_eq!(a["labels"]["job"], "cond", "{n}");
    assert_eq!(a["annotations"]["summary"], "x=abc value=5", "{n}");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z", "a firing alert: {n}");
    assert!(
        a["generatorURL"]
            .as_str()
            .is_some_and(|g| g.starts_with(&env.api()) && g.contains("g0.expr=")),
        "{n}"
    );
    assert_eq!(a["fingerprint"].as_str().map(str::len), Some(16), "{n}");
    let id = a["fingerprint"].as_str().unwrap().to_string();

    // Where people look.
    let listed = alert(&env, "CondHigh", false).expect("listed");
    assert_eq!(listed["state"], "firing", "{listed}");
    assert_eq!(listed["id"], id, "{listed}");
    assert_eq!(listed["receivers"][0], "hook", "{listed}");
    let text = env.ferry_ok(&["alerts"]);
    assert!(
        text.contains(&id) && text.contains("firing") && text.contains("x=abc value=5"),
        "{text}"
    );

    // The condition stops: the resolution arrives (send_resolved defaults
    // to true for webhooks).
    gauge.set(0);
    wait_for(Duration::from_secs(20), "the resolved notification", || {
        !hook.with("CondHigh", "resolved").is_empty()
    });
    let r = hook.with("CondHigh", "resolved")[0].clone();
    assert_eq!(r["alerts"][0]["status"], "resolved", "{r}");
    assert_eq!(r["alerts"][0]["fingerprint"], id.as_str(), "{r}");
    assert_ne!(r["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z", "{r}");
    assert!(alert(&env, "CondHigh", false).is_none(), "not active any more");
    assert_eq!(state_of(&env, "CondHigh").as_deref(), Some("resolved"));

    let h = history(&env, "CondHigh");
    let k = kinds(&h);
    for want in ["rule-pending", "rule-firing", "firing", "notified", "resolved"] {
        assert!(k.iter().any(|x| x == want), "{want} in history: {k:?}");
    }
    let notified: Vec<&Value> = h.iter().filter(|e| e["kind"] == "notified").collect();
    assert!(notified.len() >= 2, "the firing and the resolved: {h:?}");
    assert!(
        notified
            .iter()
            .all(|e| e["receiver"] == "hook/webhook[0]"),
        "{h:?}"
    );
    let text = env.ferry_ok(&["alerts", "history", "--alert", "CondHigh"]);
    assert!(text.contains("notified") && text.contains("rule-pending"), "{text}");
}

#[test]
fn bad_rule_files_are_rejected_with_file_and_line() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/promql-tests/rulefmt");
    let env = Env::prepare(Spec::default());
    let mut bad = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let p = path.to_str().unwrap();
        if name.ends_with(".bad.yaml") {
            let text = env.ferry_code(&["check", p], 2);
            let located = text.lines().any(|l| {
                l.split_once(&format!("{name}:"))
                    .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
            });
            assert!(located, "{name}: file:line in {text}");
            bad += 1;
        } else if name.ends_with(".good.yaml") || name == "test_aliases.yaml" {
            let text = env.ferry_ok(&["check", p]);
            assert!(
                text.contains("SUCCESS: ") && text.contains(" rules found"),
                "{name}: {text}"
            );
        } else if name.ends_with(".yaml") {
            // test.yaml loads; its duplicate rules are a lint finding, which
            // (as with promtool without --lint-fatal) does not fail.
            env.ferry_ok(&["check", p]);
        }
    }
    assert!(bad >= 5, "{bad} bad files");
}
