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
    env.start_daemon_with(
        &["--config", "ferry.toml", "--scrape-interval", "1s"],
        &[("FERRY_LOG", "info,ferry_server::alerting=debug")],
    );
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
    json_lines(env, args)
        .into_iter()
        .find(|a| a["name"] == name)
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
    assert!(
        alert(&env, "CondHigh", false).is_none(),
        "not active any more"
    );
    assert_eq!(state_of(&env, "CondHigh").as_deref(), Some("resolved"));

    // Delivery attempts reach the history with the notifier's next save
    // (at most 200 ms after the delivery).
    wait_for(
        Duration::from_secs(5),
        "both deliveries in the history",
        || {
            kinds(&history(&env, "CondHigh"))
                .iter()
                .filter(|k| *k == "notified")
                .count()
                >= 2
        },
    );
    let h = history(&env, "CondHigh");
    let k = kinds(&h);
    for want in [
        "rule-pending",
        "rule-firing",
        "firing",
        "notified",
        "resolved",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} in history: {k:?}");
    }
    let notified: Vec<&Value> = h.iter().filter(|e| e["kind"] == "notified").collect();
    assert!(notified.len() >= 2, "the firing and the resolved: {h:?}");
    assert!(
        notified.iter().all(|e| e["receiver"] == "hook/webhook[0]"),
        "{h:?}"
    );
    let text = env.ferry_ok(&["alerts", "history", "--alert", "CondHigh"]);
    assert!(
        text.contains("notified") && text.contains("rule-pending"),
        "{text}"
    );
}

#[test]
fn bad_rule_files_are_rejected_with_file_and_line() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/ferry-alert/testdata/rulefmt");
    let env = Env::prepare(Spec::default());
    let mut bad = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let p = path.to_str().unwrap();
        if name.starts_with("legacy_validation") {
            // Bad only under `--metric-name-validation-scheme=legacy`;
            // Prometheus 3's default (UTF-8 names) takes it, as Ferry does.
            continue;
        }
        if name.ends_with(".bad.yaml") {
            let text = env.ferry_code(&["check", p], 2);
            let located = text.lines().any(|l| {
                l.split_once(&format!("{name}:"))
                    .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
            });
            assert!(located, "{name}: file:line in {text}");
            bad += 1;
        } else if name.ends_with(".good.yaml") {
            let text = env.ferry_ok(&["check", p]);
            assert!(
                text.contains("SUCCESS: ") && text.contains(" rules found"),
                "{name}: {text}"
            );
        } else if name.ends_with(".yaml") {
            // test.yaml and test_aliases.yaml load; their duplicate rules
            // are a lint finding, which
            // (as with promtool without --lint-fatal) does not fail.
            env.ferry_ok(&["check", p]);
        }
    }
    assert!(bad >= 5, "{bad} bad files");
}

/// Run `ferry serve --config ferry.toml` in `env`'s dir and expect it to
/// exit (not serve); returns (exit code, output).
fn serve_refused(env: &Env) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(FERRY)
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--config",
            "ferry.toml",
        ])
        .env("FERRY_DATA_DIR", env.data_dir())
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            return (status.code(), text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("ferry serve with a broken [alerting] kept running");
}

const GOOD_RULES: &str = r#"groups:
- name: g
  rules:
  - alert: First
    expr: vector(1)
"#;

#[test]
fn broken_config_refuses_to_start_and_a_broken_reload_keeps_the_old_rules() {
    let hook = Hook::start();
    // A broken rule file: the daemon does not start.
    let env = prepare(
        &alerting_toml(""),
        &[
            (
                "rules/a.yml",
                "groups:\n- name: g\n  rules:\n  - alert: X\n    expr: vector(1) +\n",
            ),
            ("am.yml", &one_hook_am(&hook.url(), "1h")),
        ],
    );
    let (code, text) = serve_refused(&env);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("a.yml:5"),
        "file:line of the bad expr: {text}"
    );
    assert!(!env.data_dir().join("api.json").exists(), "nothing started");

    // A route naming an unknown receiver: refused too.
    write_file(&env, "rules/a.yml", GOOD_RULES);
    write_file(
        &env,
        "am.yml",
        &format!(
            r#"route:
  receiver: hook
  routes:
  - receiver: nobody
    matchers: ['alertname="X"']
receivers:
- name: hook
  webhook_configs:
  - url: {}
"#,
            hook.url()
        ),
    );
    let (code, text) = serve_refused(&env);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("nobody"), "names the receiver: {text}");
    assert!(!env.data_dir().join("api.json").exists(), "nothing started");

    // A good config starts.
    write_file(&env, "am.yml", &one_hook_am(&hook.url(), "1h"));
    let mut env = env;
    start_with_config(&mut env);
    wait_for(Duration::from_secs(10), "rule First loaded", || {
        rule_names(&env) == ["First"]
    });

    // A broken reload: exit 2 with file:line, the old rules keep running.
    write_file(
        &env,
        "rules/a.yml",
        &format!("{GOOD_RULES}  - alert: Second\n    expr: sum(\n"),
    );
    let text = env.ferry_code(&["alerts", "reload"], 2);
    assert!(text.contains("a.yml:"), "file:line: {text}");
    assert!(text.contains("running config stays"), "{text}");
    assert_eq!(rule_names(&env), ["First"]);
    wait_for(Duration::from_secs(10), "First still notified", || {
        !hook.with("First", "firing").is_empty()
    });

    // Fixed: it applies.
    write_file(
        &env,
        "rules/a.yml",
        &format!("{GOOD_RULES}  - alert: Second\n    expr: vector(2)\n"),
    );
    let text = env.ferry_ok(&["alerts", "reload"]);
    assert!(text.contains("reloaded"), "{text}");
    assert_eq!(rule_names(&env), ["First", "Second"]);
    wait_for(Duration::from_secs(10), "Second notified", || {
        !hook.with("Second", "firing").is_empty()
    });
    // The reload kept First's state: no second firing notification for it.
    assert_eq!(hook.with("First", "firing").len(), 1, "{:?}", hook.all());
}

#[test]
fn template_errors_show_in_the_annotation_and_bad_pushes_get_400() {
    let hook = Hook::start();
    let env = start(
        &alerting_toml(""),
        &[
            (
                "rules/t.yml",
                r#"groups:
- name: t
  rules:
  - alert: BadTemplate
    expr: vector(3)
    annotations:
      summary: 'value {{ $value | humanizeDuration }} then {{ humanize "not a number" }}'
      good: 'fine {{ $value }}'
"#,
            ),
            ("am.yml", &one_hook_am(&hook.url(), "1h")),
        ],
    );
    wait_for(Duration::from_secs(15), "BadTemplate notified", || {
        !hook.with("BadTemplate", "firing").is_empty()
    });
    let n = hook.with("BadTemplate", "firing")[0].clone();
    let summary = n["alerts"][0]["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("<error expanding template: "),
        "{summary}"
    );
    assert_eq!(n["alerts"][0]["annotations"]["good"], "fine 3", "{n}");

    let post = |body: &str| {
        let r = http()
            .post(format!("{}/api/v2/alerts", env.api()))
            .bearer_auth(env.token())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, text) = post(r#"[{"labels":{}}]"#);
    assert_eq!(code, 400, "{text}");
    assert!(
        !text.is_empty() && !text.trim_start().starts_with('{'),
        "a string body: {text}"
    );
    assert!(text.contains("label"), "{text}");
    let (code, text) = post(r#"[{"annotations":{"a":"b"}}]"#);
    assert_eq!(code, 400, "{text}");
    let (code, text) = post(r#"[{"labels":{"alertname":"Pushed"}}]"#);
    assert_eq!(code, 200, "{text}");
    assert!(text.is_empty(), "{text}");
}

#[test]
fn alerts_are_pushed_to_a_real_alertmanager_and_resolve_there() {
    let am = Alertmanager::start(
        free_port(),
        "route:\n  receiver: 'null'\nreceivers:\n- name: 'null'\n",
    );
    let hook = Hook::start();
    let gauge = Gauge::start(r#"cond_value{x="pushed"}"#, 7);
    let env = start(
        &format!(
            "{}{}",
            gauge.scrape_toml("cond"),
            alerting_toml(&format!("alertmanagers = [\"{}\"]", am.url))
        ),
        &[
            ("rules/cond.yml", COND_RULES),
            ("am.yml", &one_hook_am(&hook.url(), "1h")),
        ],
    );
    let in_am = |am: &Alertmanager| {
        am.alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "CondHigh")
    };
    wait_for(Duration::from_secs(20), "the alert in Alertmanager", || {
        in_am(&am).is_some()
    });
    let a = in_am(&am).unwrap();
    assert_eq!(a["labels"]["x"], "pushed", "{a}");
    assert_eq!(a["labels"]["team"], "t-pushed", "{a}");
    assert_eq!(a["annotations"]["summary"], "x=pushed value=7", "{a}");
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert!(
        a["generatorURL"]
            .as_str()
            .is_some_and(|g| g.starts_with(&env.api())),
        "{a}"
    );

    gauge.set(0);
    wait_for(
        Duration::from_secs(20),
        "the alert to resolve in Alertmanager",
        || in_am(&am).is_none(),
    );
    assert!(
        !am.log().contains("level=error"),
        "Alertmanager took every push: {}",
        am.log()
    );
}

#[test]
fn a_real_prometheus_uses_ferry_as_its_alertmanager() {
    let hook = Hook::start();
    let env = start(
        &alerting_toml(""),
        &[("am.yml", &one_hook_am(&hook.url(), "1h"))],
    );
    let rules = env.dir.path().join("prom-rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: p\n  rules:\n  - alert: FromPrometheus\n    expr: vector(1)\n    for: 0s\n    labels:\n      severity: critical\n    annotations:\n      summary: 'from prometheus {{ $value }}'\n",
    )
    .unwrap();
    let target = env.api().trim_start_matches("http://").to_string();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
alerting:
  alertmanagers:
  - api_version: v2
    authorization:
      credentials: {token}
    static_configs:
    - targets: ["{target}"]
"#,
        rules = rules.display(),
        token = env.token(),
    );
    let prom = Prometheus::start(free_port(), &config, &["--rules.alert.resend-delay=1s"]);
    let pushed = || {
        let v = api_get(&env, "/api/v2/alerts");
        v.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == "FromPrometheus")
            .cloned()
    };
    wait_for(
        Duration::from_secs(30),
        "Prometheus's alert in Ferry",
        || pushed().is_some(),
    );
    let a = pushed().unwrap();
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert_eq!(a["annotations"]["summary"], "from prometheus 1", "{a}");
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert_eq!(a["receivers"][0]["name"], "hook", "{a}");
    assert!(
        a["generatorURL"]
            .as_str()
            .is_some_and(|g| g.contains("/graph?g0.expr=vector")),
        "{a}"
    );
    let listed = alert(&env, "FromPrometheus", false).expect("in ferry alerts");
    assert_eq!(listed["state"], "firing", "{listed}");
    wait_for(Duration::from_secs(15), "routed to the webhook", || {
        !hook.with("FromPrometheus", "firing").is_empty()
    });
    assert!(
        !prom.log().contains("Error sending alert"),
        "Prometheus's pushes all succeeded: {}",
        prom.log()
    );
}

#[test]
fn a_slow_receiver_delays_nothing_else() {
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let hits = slow_hits.clone();
    let slow = http_server(move |_s| {
        hits.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(30));
    });
    let fast = Hook::start();
    let am = format!(
        r#"route:
  receiver: fast
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
  - receiver: slow
    continue: true
  - receiver: fast
receivers:
- name: slow
  webhook_configs:
  - url: http://127.0.0.1:{slow}/never
    timeout: 2s
- name: fast
  webhook_configs:
  - url: {fast}
"#,
        fast = fast.url()
    );
    let rules = "groups:\n- name: s\n  rules:\n  - alert: Both\n    expr: vector(1)\n";
    let env = start(
        &alerting_toml(""),
        &[("rules/s.yml", rules), ("am.yml", &am)],
    );
    // The first evaluation is at most 1s away; group_wait 1s.
    let started = Instant::now();
    wait_for(Duration::from_secs(10), "the fast receiver", || {
        !fast.with("Both", "firing").is_empty()
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "fast receiver notified {took:?} after the daemon was ready"
    );
    wait_for(Duration::from_secs(10), "the slow receiver tried", || {
        slow_hits.load(Ordering::SeqCst) >= 1
    });
    // The slow one times out after 2s and is retried.
    wait_for(
        Duration::from_secs(15),
        "a timed-out attempt recorded",
        || {
            history(&env, "Both")
                .iter()
                .any(|e| e["kind"] == "notify-retrying" && e["receiver"] == "slow/webhook[0]")
        },
    );
    assert_eq!(fast.with("Both", "firing").len(), 1, "{:?}", fast.all());
}

#[test]
fn webhook_urls_are_secrets_even_when_delivery_fails() {
    const TOKEN_DEAD: &str = "s3cr3tTokenDeadPort";
    const TOKEN_500: &str = "s3cr3tToken500Answer";
    let answer_500 = http_server(|mut s| {
        let body = "internal error";
        let _ = write!(
            s,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let dead = free_port();
    let am = format!(
        r#"route:
  receiver: both
  group_wait: 1s
  group_interval: 1s
receivers:
- name: both
  webhook_configs:
  - url: http://127.0.0.1:{dead}/hooks/{TOKEN_DEAD}
  - url: http://127.0.0.1:{answer_500}/hooks/{TOKEN_500}?token={TOKEN_500}
"#
    );
    let rules = "groups:\n- name: s\n  rules:\n  - alert: Leaky\n    expr: vector(1)\n";
    let env = start(
        &alerting_toml(""),
        &[("rules/s.yml", rules), ("am.yml", &am)],
    );
    wait_for(Duration::from_secs(20), "failed attempts to both", || {
        let h = history(&env, "Leaky");
        ["both/webhook[0]", "both/webhook[1]"].iter().all(|r| {
            h.iter()
                .any(|e| e["receiver"] == *r && e["kind"] == "notify-retrying")
        })
    });
    let h = env.ferry_ok(&["alerts", "history", "--alert", "Leaky"]);
    let hj = env.ferry_ok(&["alerts", "history", "--output", "json"]);
    assert!(h.contains("500"), "the error is shown: {h}");
    let status = http()
        .get(format!("{}/api/v2/status", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let metrics = http()
        .get(format!("{}/metrics", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let check = env.ferry_ok(&["check", "--config", "ferry.toml"]);
    for (what, text) in [
        ("history", &h),
        ("history json", &hj),
        ("daemon log", &env.daemon_log()),
        ("/api/v2/status", &status),
        ("/metrics", &metrics),
        ("ferry check", &check),
    ] {
        for secret in [TOKEN_DEAD, TOKEN_500] {
            assert!(!text.contains(secret), "{secret} in the {what}:\n{text}");
        }
    }
}

/// Wait `d`, then say whether `f` held all along (checked every 100 ms).
fn holds_for(d: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if !f() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

const CLI_RULES: &str = r#"groups:
- name: cli
  rules:
  - alert: Acked
    expr: vector(1)
    labels: {severity: warning}
  - alert: Quiet
    expr: vector(1)
    for: 3s
"#;

#[test]
fn silences_acks_and_manual_resolve_through_the_cli() {
    let hook = Hook::start();
    let env = start(
        &alerting_toml(""),
        &[
            ("rules/cli.yml", CLI_RULES),
            ("am.yml", &one_hook_am(&hook.url(), "2s")),
        ],
    );
    // Quiet is pending for 3s: silence it before it fires.
    let out = env.ferry_ok(&[
        "alerts",
        "silence",
        "add",
        r#"alertname="Quiet""#,
        "--for",
        "1h",
        "--comment",
        "c",
    ]);
    let silence = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let list = env.ferry_ok(&["alerts", "silence", "list"]);
    assert!(
        list.contains(&silence) && list.contains(r#"alertname="Quiet""#) && list.contains("active"),
        "{list}"
    );

    // Unacknowledged, Acked repeats every 2s.
    wait_for(
        Duration::from_secs(15),
        "Acked notified and repeated",
        || hook.with("Acked", "firing").len() >= 2,
    );
    wait_for(Duration::from_secs(10), "Quiet firing, silenced", || {
        alert(&env, "Quiet", false).is_some_and(|a| {
            a["state"] == "firing" && a["silenced_by"][0].as_str() == Some(silence.as_str())
        })
    });
    let text = env.ferry_ok(&["alerts"]);
    assert!(text.contains(&format!("silenced by {silence}")), "{text}");

    let id = alert(&env, "Acked", false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.ferry_ok(&["alerts", "ack", &id[..8], "--comment", "on it"]);
    assert!(out.contains("acknowledged"), "{out}");
    let listed = alert(&env, "Acked", false).unwrap();
    assert_eq!(listed["ack"]["comment"], "on it", "{listed}");
    let text = env.ferry_ok(&["alerts"]);
    assert!(
        text.contains("acknowledged by") && text.contains("on it"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(1500)); // one in flight may land
    let acked_at = hook.with("Acked", "firing").len();
    assert!(
        holds_for(Duration::from_secs(6), || hook
            .with("Acked", "firing")
            .len()
            == acked_at),
        "no repeat while acknowledged: {:?}",
        hook.all()
    );
    assert_eq!(hook.count("Quiet"), 0, "nothing while silenced");

    // The silence ends: Quiet is notified.
    let out = env.ferry_ok(&["alerts", "silence", "expire", &silence]);
    assert!(out.contains("expired"), "{out}");
    wait_for(Duration::from_secs(10), "Quiet notified", || {
        !hook.with("Quiet", "firing").is_empty()
    });
    assert!(
        !env.ferry_ok(&["alerts", "silence", "list"])
            .contains(&silence)
    );

    // Resolved by hand: receivers are told, and it stays resolved though
    // the rule keeps sending the same occurrence.
    let out = env.ferry_ok(&["alerts", "resolve", &id]);
    assert!(out.contains("resolved"), "{out}");
    wait_for(Duration::from_secs(10), "the resolved notification", || {
        !hook.with("Acked", "resolved").is_empty()
    });
    let firing = hook.with("Acked", "firing").len();
    assert!(
        holds_for(Duration::from_secs(4), || hook
            .with("Acked", "firing")
            .len()
            == firing
            && state_of(&env, "Acked").as_deref() == Some("resolved")),
        "stays resolved: {:?} {:?}",
        hook.all(),
        alert(&env, "Acked", true)
    );
    let h = kinds(&history(&env, "Acked"));
    assert!(h.iter().any(|k| k == "acknowledged"), "{h:?}");
    assert!(h.iter().any(|k| k == "resolved"), "{h:?}");

    // Bad IDs.
    let out = env.ferry_code(&["alerts", "ack", "not-an-id"], 2);
    assert!(out.contains("is not an alert ID"), "{out}");
    let out = env.ferry_code(&["alerts", "resolve", "ffffffffffffffff"], 2);
    assert!(out.contains("no alert ffffffffffffffff"), "{out}");
    let out = env.ferry_code(&["alerts", "unack", "0"], 2);
    assert!(out.contains("alert"), "{out}");
    let out = env.ferry_code(&["alerts", "silence", "expire", "no-such-silence"], 2);
    assert!(out.contains("no-such-silence"), "{out}");
    let out = env.ferry_code(
        &["alerts", "silence", "add", "alertname=", "--comment", "x"],
        2,
    );
    assert!(out.contains("matcher"), "{out}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn kill_9_neither_pages_twice_nor_forgets_silences_acks_for_progress_or_history() {
    let hook = Hook::start();
    let rules = r#"groups:
- name: d
  rules:
  - alert: Paged
    expr: vector(1)
  - alert: Muted
    expr: vector(1)
    for: 2s
  - alert: Slow
    expr: vector(1)
    for: 8s
"#;
    let mut env = start(
        &alerting_toml(""),
        &[
            ("rules/d.yml", rules),
            ("am.yml", &one_hook_am(&hook.url(), "1h")),
        ],
    );
    let out = env.ferry_ok(&[
        "alerts",
        "silence",
        "add",
        r#"alertname="Muted""#,
        "--comment",
        "maintenance",
    ]);
    let silence = out.split_whitespace().nth(1).unwrap().to_string();
    wait_for(Duration::from_secs(10), "Slow pending", || {
        alert(&env, "Slow", false).is_some_and(|a| a["state"] == "pending")
    });
    let pending_since = alert(&env, "Slow", false).unwrap()["since"]
        .as_i64()
        .unwrap();
    wait_for(Duration::from_secs(10), "Paged notified", || {
        hook.with("Paged", "firing").len() == 1
    });
    let id = alert(&env, "Paged", false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ferry_ok(&["alerts", "ack", &id, "--comment", "on it"]);
    wait_for(Duration::from_secs(10), "Muted firing, silenced", || {
        alert(&env, "Muted", false).is_some_and(|a| a["state"] == "firing")
    });
    // Slow has waited about 4 of its 8 seconds.
    let kill_at = pending_since + 4000;
    std::thread::sleep(Duration::from_millis((kill_at - now_ms()).max(0) as u64));
    assert_eq!(
        alert(&env, "Slow", false).unwrap()["state"],
        "pending",
        "killed before Slow fires"
    );
    env.kill9();
    start_with_config(&mut env);

    wait_for(
        Duration::from_secs(20),
        "Slow to fire after the restart",
        || !hook.with("Slow", "firing").is_empty(),
    );
    let fired = history(&env, "Slow")
        .into_iter()
        .find(|e| e["kind"] == "rule-firing")
        .expect("rule-firing in the history");
    let waited = fired["at"].as_i64().unwrap() - pending_since;
    assert!(
        (7_000..10_500).contains(&waited),
        "Slow fired {waited} ms after it became pending (for: 8s); the restart must not start its `for` over"
    );
    let slow = alert(&env, "Slow", false).unwrap();
    assert_eq!(slow["state"], "firing", "{slow}");

    // No duplicate page, the ack and the silence survive.
    assert!(
        holds_for(Duration::from_secs(3), || hook
            .with("Paged", "firing")
            .len()
            == 1),
        "Paged was paged again after the restart: {:?}",
        hook.all()
    );
    let paged = alert(&env, "Paged", false).unwrap();
    assert_eq!(paged["id"], id.as_str(), "{paged}");
    assert_eq!(
        paged["ack"]["comment"],
        "on it",
        "{paged}\n{:?}\n{}",
        history(&env, "Paged"),
        std::fs::read_to_string(env.dir.path().join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("restored"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let muted = alert(&env, "Muted", false).unwrap();
    assert_eq!(muted["silenced_by"][0], silence.as_str(), "{muted}");
    assert_eq!(hook.count("Muted"), 0, "{:?}", hook.all());
    let list = env.ferry_ok(&["alerts", "silence", "list"]);
    assert!(
        list.contains(&silence) && list.contains("maintenance"),
        "{list}"
    );

    // The history from before the kill is still there.
    let h = history(&env, "Paged");
    assert!(
        h.iter()
            .any(|e| e["kind"] == "notified" && e["at"].as_i64().unwrap() < kill_at),
        "{h:?}"
    );
    assert!(h.iter().any(|e| e["kind"] == "acknowledged"), "{h:?}");
}

#[test]
fn history_by_alert_name_shows_notifications_of_groups_not_by_alertname() {
    let hook = Hook::start();
    let am = one_hook_am(&hook.url(), "1h").replace("[alertname]", "[severity]");
    let rules = "groups:\n- name: m\n  rules:\n  - alert: One\n    expr: vector(1)\n    labels: {severity: page}\n  - alert: Two\n    expr: vector(2)\n    labels: {severity: page}\n";
    let env = start(
        &alerting_toml(""),
        &[("rules/m.yml", rules), ("am.yml", &am)],
    );
    wait_for(Duration::from_secs(15), "one notification for both", || {
        hook.all()
            .iter()
            .any(|n| n["alerts"].as_array().is_some_and(|a| a.len() == 2))
    });
    for name in ["One", "Two"] {
        wait_for(Duration::from_secs(5), "the attempt in the history", || {
            history(&env, name).iter().any(|e| e["kind"] == "notified")
        });
    }
}

/// Seed 003's `production_alerts`, loaded verbatim next to the built-in
/// rules, evaluates without an error against what the daemon collects; a
/// SIGHUP picks up a changed rule file (an upgrade in place re-reads the
/// config) and keeps the running rules when the new file is broken.
#[test]
fn the_guides_rules_evaluate_and_sighup_reloads() {
    let seed = include_str!("../../crates/ferry-alert/testdata/seed003_production_alerts.yml");
    let env = start(
        r#"
[alerting]
rule_files = ["rules/*.yml"]
evaluation_interval = "1s"
"#,
        &[("rules/seed.yml", seed)],
    );
    let mut env = env;
    let healthy = |env: &Env| -> (usize, Vec<String>) {
        let v = api_get(env, "/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        (rules.len(), bad)
    };
    wait_for(Duration::from_secs(20), "every rule evaluated", || {
        healthy(&env).1.is_empty()
    });
    let (n, bad) = healthy(&env);
    assert_eq!(n, 7 + 13, "the seed's 7 rules and the 13 built-in ones");
    assert!(bad.is_empty(), "{bad:?}");
    assert!(rule_names(&env).contains(&"HighErrorRate".to_string()));

    // A new rule, then SIGHUP.
    let more = format!(
        "{seed}\n  - alert: AddedBySighup\n    expr: vector(1)\n    labels:\n      severity: info\n"
    );
    write_file(&env, "rules/seed.yml", &more);
    let pid = env.daemon.as_ref().unwrap().id() as i32;
    signal(pid, Signal::SIGHUP);
    wait_for(Duration::from_secs(30), "the new rule after SIGHUP", || {
        env.ferry(&["alerts", "rules"]).status.success()
            && rule_names(&env).contains(&"AddedBySighup".to_string())
    });
    // A broken file: SIGHUP changes nothing, the daemon keeps serving.
    write_file(
        &env,
        "rules/seed.yml",
        "groups:\n- name: x\n  rules:\n  - alert: Y\n    expr: (\n",
    );
    signal(pid, Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rule_names(&env).contains(&"AddedBySighup".to_string()),
        "the running rules stay"
    );
    assert!(
        env.daemon.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running"
    );
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("seed.yml:5"),
        "the error is logged with file:line: {log}"
    );
}
