//! Alerts roll releases back: a rule over the proxy's own request metrics
//! fires a critical alert about `web` while a bad revision is in its
//! monitoring window, and the rollout fails and goes back to the old
//! version; an alert that was already firing before the deploy began, or
//! `rollback_on_alerts = []`, does not roll a release back.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

/// Two rules: `WebErrors` fires as soon as the proxy has counted 5xx
/// answers from `web` in the last 5 s (two scrapes a second apart);
/// `AlreadyFiring` fires from the first evaluation on, before any deploy.
const RULES: &str = r#"groups:
- name: web
  rules:
  - alert: WebErrors
    expr: sum by (service) (rate(http_requests_total{service="web",status=~"5.."}[5s])) > 0
    labels:
      severity: critical
    annotations:
      summary: "web answers {{ $value }} errors/s"
  - alert: AlreadyFiring
    expr: vector(1)
    labels:
      severity: critical
      service: web
"#;

const ALERTING: &str = r#"
[alerting]
rule_files = ["rules.yml"]
builtin_rules = false
evaluation_interval = "1s"
"#;

fn spec(deploy_extra: &str) -> Spec {
    Spec {
        instances: 2,
        deploy_timeout: "20s",
        deploy_extra: format!("monitor = \"60s\"\n{deploy_extra}"),
        tail: ALERTING.to_string(),
        ..Spec::default()
    }
}

fn start(spec: Spec) -> Arc<Env> {
    let mut env = Env::prepare(spec);
    std::fs::write(env.dir.path().join("rules.yml"), RULES).unwrap();
    env.start_daemon_with(&["--config", "ferry.toml", "--scrape-interval", "1s"], &[]);
    Arc::new(env)
}

/// The state of alert `name` in `/api/v1/alerts`, if it is active.
fn alert_state(env: &Env, name: &str) -> Option<String> {
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/alerts", env.api()))
        .bearer_auth(env.token())
        .send()
        .ok()?
        .json()
        .ok()?;
    body["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

/// `ferry alerts history --alert NAME --output json`: one entry a line.
fn history(env: &Env, name: &str) -> Vec<serde_json::Value> {
    env.ferry_ok(&["alerts", "history", "--alert", name, "--output", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Wait until `AlreadyFiring` fires, then deploy v1 (a rollout begun
/// after it fired would count it).
async fn v1_with_an_alert_firing(env: &Arc<Env>) {
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(10), "AlreadyFiring to fire", || {
            alert_state(&e, "AlreadyFiring").as_deref() == Some("firing")
        });
        e.ferry_ok(&["deploy", "web", "--version", "v1", "--until-serving"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_in_the_monitoring_window_rolls_the_release_back() {
    let env = start(spec(""));
    v1_with_an_alert_firing(&env).await;
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2 answers half its requests with 500: WebErrors fires, and the
    // command, following the monitoring window, exits 1.
    let e = env.clone();
    let out = blocking(move || {
        e.ferry_code(
            &[
                "deploy",
                "web",
                "--version",
                "v2",
                "--set",
                "DEMO_FAILURE_RATE=0.5",
            ],
            1,
        )
    })
    .await;
    assert!(out.contains("WebErrors"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(800)).await,
        vec!["v1".to_string()]
    );
    let report = load.stop().await;
    assert!(report.failed_by_version.contains_key("v2"), "{report:?}");
    assert!(!report.failed_by_version.contains_key("v1"), "{report:?}");

    let e = env.clone();
    let (record, status, firing) = blocking(move || {
        (
            e.json(&["rollout", "2"]),
            status(&e),
            history(&e, "WebErrors"),
        )
    })
    .await;
    assert_eq!(record["rollout"]["outcome"], "failed", "{record}");
    assert_eq!(status["stable"], 1, "{status}");
    assert_eq!(status["version"], "v1", "{status}");
    // The record names the alert, its value and its labels; the alert
    // that was firing before the deploy is not what failed it.
    let events = record["events"].as_array().expect("events");
    let alert: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(alert.len(), 1, "{record}");
    let m = alert[0];
    assert!(
        m.contains("WebErrors")
            && m.contains("with value ")
            && m.contains(r#"service="web""#)
            && m.contains(r#"severity="critical""#),
        "{m}"
    );
    assert!(!record.to_string().contains("AlreadyFiring"), "{record}");
    // ... and the rollback went through the usual revert path.
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.ends_with(&["alert", "failed", "reverting", "done"]),
        "{kinds:?}"
    );
    let reason = record["rollout"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("monitoring window") && reason.contains("WebErrors"),
        "{record}"
    );
    // The alert's firing is in the alert history too.
    assert!(
        firing.iter().any(|h| h["kind"] == "rule-firing"),
        "{firing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_already_firing_or_an_empty_rollback_on_alerts_rolls_nothing_back() {
    let env = start(spec(""));
    v1_with_an_alert_firing(&env).await;

    // AlreadyFiring (critical, service web) fires through v2's whole
    // monitoring window: the release may be the fix, so it stands.
    let e = env.clone();
    let out =
        blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2", "--monitor", "3s"]))
            .await;
    assert!(out.contains("succeeded"), "{out}");
    let e = env.clone();
    assert_eq!(
        blocking(move || alert_state(&e, "AlreadyFiring")).await,
        Some("firing".to_string())
    );

    // With `rollback_on_alerts = []`, a bad v3 that makes WebErrors fire
    // during its window stands too.
    env.write_config(&spec("rollback_on_alerts = []"));
    let load = load(env.proxy());
    let e = env.clone();
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let out = blocking(move || {
        e.ferry_ok(&[
            "deploy",
            "web",
            "--version",
            "v3",
            "--set",
            "DEMO_FAILURE_RATE=0.5",
            "--monitor",
            "6s",
        ])
    })
    .await;
    assert!(out.contains("succeeded"), "{out}");
    let report = load.stop().await;
    assert!(report.failed_by_version.contains_key("v3"), "{report:?}");
    let e = env.clone();
    let (firing, status) = blocking(move || (history(&e, "WebErrors"), status(&e))).await;
    assert!(
        firing
            .iter()
            .any(|h| h["kind"] == "rule-firing" && h["at"].as_i64().unwrap_or(0) >= began),
        "WebErrors never fired during v3's window: {firing:?}"
    );
    assert_eq!(status["version"], "v3", "{status}");
    // The release stood, but its record keeps the critical alert that
    // fired while it was watched: a change failure in delivery metrics.
    let e = env.clone();
    let (record, delivery) =
        blocking(move || (e.json(&["rollout", "3"]), e.json(&["metrics", "delivery"]))).await;
    let alert = record["rollout"]["critical_alert"]
        .as_str()
        .unwrap_or_default();
    assert!(alert.contains("WebErrors"), "{record}");
    let web = delivery["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "web")
        .unwrap()
        .clone();
    assert!(
        web["dora"]["change_failures"].as_u64().unwrap() >= 1,
        "{web}"
    );
}
