//! SLOs: a service failing half its requests burns a 99.9 % budget fast;
//! the generated page alert fires, `ferry slo` says the budget is spent,
//! a deploy is refused under `budget_policy = "block"`, goes ahead with
//! `--override-budget --reason` (audited), and a rollback is never blocked.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

const SLO: &str = r#"
[[services.web.slo]]
kind = "availability"
objective = 99.9
window = "1h"

[[services.web.slo]]
kind = "latency"
objective = 95
threshold = "250ms"

[alerting]
builtin_rules = false
evaluation_interval = "1s"
"#;

fn firing(env: &Env, name: &str) -> Vec<serde_json::Value> {
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/alerts", env.api()))
        .bearer_auth(env.token())
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    body["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burning_budget_pages_blocks_deploys_and_never_blocks_a_rollback() {
    let mut env = Env::prepare(Spec {
        instances: 2,
        deploy_extra: "budget_policy = \"block\"".into(),
        tail: SLO.into(),
        ..Spec::default()
    });
    env.start_daemon_with(&["--config", "ferry.toml", "--scrape-interval", "1s"], &[]);
    let env = Arc::new(env);
    let v1 = [
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "DEMO_FAILURE_RATE=0.5",
    ];
    ferry_async(&env, &v1, 0).await;
    // The generated rules are loaded beside the others.
    let rules = ferry_async(&env, &["alerts", "rules"], 0).await;
    assert!(
        rules.contains("ferry_slo_web") && rules.contains("ErrorBudgetBurn"),
        "{rules}"
    );

    // Half the requests fail: 500× the 0.1 % allowed. The page (14.4×
    // over 1h and 5m) fires within seconds of the first failures.
    let load = load(env.proxy());
    let started = std::time::Instant::now();
    let e = env.clone();
    let page = blocking(move || {
        let mut page = Vec::new();
        wait_for(Duration::from_secs(60), "the page alert", || {
            page = firing(&e, "ErrorBudgetBurn")
                .into_iter()
                .filter(|a| a["labels"]["long_window"] == "1h")
                .collect();
            !page.is_empty()
        });
        page
    })
    .await;
    let took = started.elapsed();
    let _ = load.stop().await;
    assert_eq!(page[0]["labels"]["severity"], "critical", "{page:?}");
    assert_eq!(page[0]["labels"]["slo"], "availability", "{page:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    // `ferry slo`: the budget of 99.9 % over an hour is 3.6 s of failure,
    // and it is spent.
    let e = env.clone();
    let (text, json) = blocking(move || {
        (
            e.ferry_ok(&["slo", "web"]),
            e.ferry_ok(&["slo", "web", "-o", "json"]),
        )
    })
    .await;
    assert!(
        text.contains(
            "web/availability: 99.9 % of requests answered 2xx, 3xx, 404 (failed: 5xx) over 1h"
        ),
        "{text}"
    );
    assert!(
        text.contains("error budget:       0.1 % of requests = 3.6s of 1h"),
        "{text}"
    );
    assert!(text.contains("SPENT"), "{text}");
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["budget_ms"], 3600, "{first}");
    assert!(first["budget_remaining"].as_f64().unwrap() < 0.0, "{first}");
    let sli = first["sli_window"].as_f64().unwrap();
    assert!(
        (30.0..70.0).contains(&sli),
        "about half the requests failed: {first}"
    );

    // A spent budget blocks a deploy...
    let out = ferry_async(&env, &["deploy", "web", "--version", "v2"], 1).await;
    assert!(
        out.contains("the error budget of `web` is spent")
            && out.contains("budget_policy = \"block\"")
            && out.contains("--override-budget --reason"),
        "{out}"
    );
    // ... unless overridden, with a reason, which the audit log keeps.
    let v2 = ["deploy", "web", "--version", "v2", "--override-budget"];
    let out = ferry_async(&env, &v2, 2).await;
    assert!(out.contains("--reason"), "{out}");
    let reason = ["--reason", "the fix for the outage"];
    ferry_async(&env, &[&v2[..], &reason[..]].concat(), 0).await;
    let e = env.clone();
    let (audit, record) = blocking(move || {
        (
            e.ferry_ok(&["audit", "-o", "json"]),
            e.json(&["rollout", "2"]),
        )
    })
    .await;
    assert!(
        audit.contains("the fix for the outage") && audit.contains("\"override_budget\":true"),
        "{audit}"
    );
    let started = record["events"][0]["message"].as_str().unwrap_or_default();
    assert!(
        started.contains("overridden by") && started.contains("the fix for the outage"),
        "{record}"
    );

    // A rollback is never blocked.
    let out = ferry_async(&env, &["rollback", "web"], 0).await;
    assert!(
        out.contains("succeeded") || out.contains("revision 1"),
        "{out}"
    );

    // And the budget is on /metrics.
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(20), "the SLO gauges", || {
            let m = e.metrics_text();
            m.lines().any(|l| {
                l.starts_with("ferry_slo_error_budget_remaining_ratio{service=\"web\",slo=\"availability\"} -")
            })
        });
    })
    .await;
}

/// A latency SLO counts the requests answered within its threshold from
/// the proxy's histogram: a service answering in 300 ms fails a "95 %
/// within 250 ms" objective.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_slo_counts_slow_answers_from_the_proxys_histogram() {
    let mut env = Env::prepare(Spec {
        instances: 1,
        tail: r#"
[[services.web.slo]]
name = "fast"
kind = "latency"
objective = 95
threshold = "250ms"
window = "1h"
"#
        .into(),
        ..Spec::default()
    });
    env.start_daemon_with(&["--config", "ferry.toml", "--scrape-interval", "1s"], &[]);
    let env = Arc::new(env);
    let v1 = [
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "DEMO_LATENCY_MS=300",
    ];
    ferry_async(&env, &v1, 0).await;
    let load = load(env.proxy());
    let e = env.clone();
    let status = blocking(move || {
        let mut last = serde_json::Value::Null;
        wait_for(Duration::from_secs(30), "the latency SLI", || {
            let out = e.ferry(&["slo", "web", "-o", "json"]);
            last = serde_json::from_slice(&out.stdout).unwrap_or_default();
            last["sli_now"].as_f64().is_some() && last["total"].as_f64().unwrap_or(0.0) > 20.0
        });
        last
    })
    .await;
    let _ = load.stop().await;
    assert_eq!(status["slo"], "fast", "{status}");
    // Every answer took 300 ms, over the 250 ms bound: no request is good.
    assert!(status["sli_now"].as_f64().unwrap() < 1.0, "{status}");
    assert!(
        status["budget_remaining"].as_f64().unwrap() < 0.0,
        "{status}"
    );
    // 5 % of an hour.
    assert_eq!(status["budget_ms"], 180_000, "{status}");
}
