//! Canary releases with automated analysis, through real daemons.

use super::harness::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn canary_spec(steps: &str, deploy_extra: &str, analysis: &str) -> Spec {
    Spec {
        instances: 2,
        strategy: "canary",
        deploy_extra: format!("steps = {steps}\n{deploy_extra}"),
        tail: analysis.to_string(),
        deploy_timeout: "20s",
        ..Spec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_its_steps_to_100_percent_with_no_failed_request() {
    let spec = canary_spec(
        r#"[ { weight = 25 }, { pause = "1s" }, { weight = 50 }, { pause = "1s" } ]"#,
        "",
        ANALYSIS,
    );
    let env = Arc::new(Env::start(spec));
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = env.clone();
    let out = blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2"])).await;
    assert!(
        out.contains("25 % of traffic") && out.contains("50 % of traffic"),
        "{out}"
    );
    assert!(out.contains("blast radius"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v2".to_string()]
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let e = env.clone();
    let history = blocking(move || e.json(&["history", "web"])).await;
    assert_eq!(history[1]["outcome"], "succeeded");
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "2"])).await;
    let ms = record["measurements"].as_array().unwrap();
    assert!(ms.len() >= 2, "{record}");
    assert!(ms.iter().all(|m| m["verdict"] == "pass"), "{record}");
    let blast = &record["rollout"]["blast_radius"];
    assert!(
        blast["requests"].as_u64().unwrap() > 0 && blast["failed"] == 0,
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_pulled_to_zero_by_itself_with_its_evidence_kept() {
    let spec = canary_spec(r#"[ { weight = 20 }, { pause = "60s" } ]"#, "", ANALYSIS);
    let env = Arc::new(Env::start(spec));
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());
    let e = env.clone();
    let out = blocking(move || {
        e.ferry_code(
            &[
                "deploy",
                "web",
                "--version",
                "v2",
                "--set",
                "DEMO_FAILURE_RATE=0.3",
            ],
            1,
        )
    })
    .await;
    assert!(out.contains("analysis failed"), "{out}");
    assert!(out.contains("error_rate"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v1".to_string()]
    );
    let report = load.stop().await;
    // Only the canary's share failed, and only until it was pulled.
    assert!(
        report.failed > 0 && report.failed * 20 < report.sent,
        "{report:?}"
    );
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "2"])).await;
    assert_eq!(record["rollout"]["outcome"], "failed");
    let ms = record["measurements"].as_array().unwrap();
    let failing: Vec<_> = ms.iter().filter(|m| m["verdict"] == "fail").collect();
    assert!(
        !failing.is_empty(),
        "the record keeps the failing measurements: {record}"
    );
    assert!(
        failing[0]["detail"]
            .as_str()
            .unwrap()
            .contains("error_rate = "),
        "{record}"
    );
    let blast = &record["rollout"]["blast_radius"];
    assert!(blast["failed"].as_u64().unwrap() > 0, "{record}");
    let e = env.clone();
    blocking(move || {
        wait_for(
            Duration::from_secs(15),
            "the canary's instance to stop",
            || {
                status(&e)["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["revision"] == 1)
            },
        )
    })
    .await;
}

#[test]
fn on_failure_pause_holds_traffic_and_says_so() {
    let spec = canary_spec(
        r#"[ { weight = 50 }, { pause = "60s" } ]"#,
        "on_failure = \"pause\"",
        ANALYSIS,
    );
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let _load_thread = std::thread::spawn({
        let proxy = env.proxy();
        move || {
            let c = reqwest::blocking::Client::new();
            for _ in 0..400 {
                let _ = c.get(format!("http://{proxy}/")).send();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--set",
        "DEMO_FAILURE_RATE=0.5",
        "--detach",
    ]);
    wait_for(
        Duration::from_secs(20),
        "the rollout to pause on failed analysis",
        || {
            status(&env)["rollout"]["paused"]
                .as_str()
                .is_some_and(|p| p.contains("analysis failed"))
        },
    );
    let s = status(&env);
    assert_eq!(s["rollout"]["active"], true, "it did not roll back: {s}");
    let text = env.ferry_ok(&["status", "web"]);
    assert!(text.contains("PAUSED"), "{text}");
    let record = env.json(&["rollout", "2"]);
    assert!(
        record["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("PAUSED"))
    );
    // Weights hold: the canary still serves its share.
    let c = reqwest::blocking::Client::new();
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        if let Ok(r) = c.get(format!("http://{}/", env.proxy())).send() {
            let v = r
                .headers()
                .get("x-version")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            *seen.entry(v).or_insert(0) += 1;
        }
    }
    assert!(
        seen.contains_key("v2") && seen.contains_key("v1"),
        "{seen:?}"
    );
    // A human decides: abort brings traffic back.
    env.ferry_ok(&["abort", "web"]);
    wait_for(Duration::from_secs(15), "the abort", || {
        status(&env)["rollout"].is_null()
    });
    assert_eq!(status(&env)["stable"], 1);
}

#[test]
fn manual_pause_promote_pause_resume_and_full_promotion() {
    let spec = canary_spec(
        r#"[ { weight = 20 }, { pause = "manual" }, { weight = 60 }, { pause = "manual" }, { weight = 80 } ]"#,
        "",
        "",
    );
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let dry = env.ferry_ok(&["deploy", "web", "--version", "v2", "--dry-run"]);
    assert!(
        dry.contains("20 % of traffic") && dry.contains("ferry promote web"),
        "{dry}"
    );
    env.ferry_ok(&["deploy", "web", "--version", "v2", "--detach"]);
    let phase = |env: &Env| {
        status(env)["rollout"]["phase"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    wait_for(Duration::from_secs(20), "the first manual pause", || {
        phase(&env) == "awaiting-approval"
    });
    assert_eq!(status(&env)["rollout"]["canary"]["weight"], 20);
    env.ferry_ok(&["promote", "web"]);
    wait_for(
        Duration::from_secs(20),
        "the second manual pause at 60 %",
        || {
            let s = status(&env);
            s["rollout"]["canary"]["weight"] == 60 && s["rollout"]["phase"] == "awaiting-approval"
        },
    );
    let out = env.ferry_ok(&["pause", "web"]);
    assert!(out.contains("paused"), "{out}");
    wait_for(Duration::from_secs(10), "the pause", || {
        !status(&env)["rollout"]["paused"].is_null()
    });
    env.ferry_code(&["pause", "web"], 1);
    env.ferry_ok(&["resume", "web"]);
    wait_for(Duration::from_secs(10), "the resume", || {
        status(&env)["rollout"]["paused"].is_null()
    });
    env.ferry_ok(&["promote", "web", "--full"]);
    wait_for(Duration::from_secs(20), "full promotion", || {
        status(&env)["stable"] == 2
    });
    let s = status(&env);
    assert!(s["rollout"].is_null());
    let history = env.json(&["history", "web"]);
    assert_eq!(history[1]["outcome"], "succeeded");
    let audit = env.ferry_ok(&["audit"]);
    for action in ["promote", "promote --full", "pause", "resume"] {
        assert!(audit.contains(action), "{action} is audited:\n{audit}");
    }
}

#[test]
fn sticky_users_stay_on_one_revision_and_never_move_back_when_the_weight_rises() {
    let spec = canary_spec(
        r#"[ { weight = 30 }, { pause = "manual" }, { weight = 60 }, { pause = "manual" } ]"#,
        "stickiness = \"header:X-User-Id\"",
        "",
    );
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.ferry_ok(&["deploy", "web", "--version", "v2", "--detach"]);
    let weight = |env: &Env| {
        status(env)["rollout"]["canary"]["weight"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), "30 %", || {
        weight(&env) == 30 && status(&env)["rollout"]["phase"] == "awaiting-approval"
    });
    let c = reqwest::blocking::Client::new();
    let version_of = |user: u32| -> String {
        let r = c
            .get(format!("http://{}/", env.proxy()))
            .header("X-User-Id", format!("user-{user}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-version"].to_str().unwrap().to_string()
    };
    let mut at_30 = BTreeMap::new();
    for user in 0..200 {
        let v = version_of(user);
        for _ in 0..2 {
            assert_eq!(version_of(user), v, "user-{user} flipped between requests");
        }
        at_30.insert(user, v);
    }
    let on_canary = at_30.values().filter(|v| *v == "v2").count();
    assert!(
        (30..=90).contains(&on_canary),
        "about 30 % of 200 users on the canary, got {on_canary}"
    );
    // Testers can force the canary.
    let forced = c
        .get(format!("http://{}/", env.proxy()))
        .header("X-Ferry-Revision", "canary")
        .send()
        .unwrap();
    assert_eq!(forced.headers()["x-version"], "v2");

    env.ferry_ok(&["promote", "web"]);
    wait_for(Duration::from_secs(20), "60 %", || weight(&env) == 60);
    let mut moved_up = 0;
    for (user, before) in &at_30 {
        let now = version_of(*user);
        if before == "v2" {
            assert_eq!(
                now, "v2",
                "user-{user} moved back from the canary when the weight rose"
            );
        } else if now == "v2" {
            moved_up += 1;
        }
    }
    assert!(
        moved_up > 0,
        "raising the weight brings new users to the canary"
    );
}

#[test]
fn inconclusive_analysis_does_not_promote() {
    let analysis = r#"
[services.web.analysis]
interval = "300ms"
window = "2s"
inconclusive_limit = 2
min_requests = 100000
checks = [ { metric = "error_rate", max = 0.05 } ]
"#;
    let spec = canary_spec(r#"[ { weight = 50 }, { pause = "2s" } ]"#, "", analysis);
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.ferry_ok(&["deploy", "web", "--version", "v2", "--detach"]);
    wait_for(Duration::from_secs(20), "the inconclusive pause", || {
        status(&env)["rollout"]["paused"]
            .as_str()
            .is_some_and(|p| p.contains("inconclusive"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&env);
    assert_eq!(s["stable"], 1, "not promoted on too little evidence: {s}");
    assert_eq!(s["rollout"]["active"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_ten_times_slower_is_pulled_by_the_mann_whitney_judge() {
    let analysis = r#"
[services.web.analysis]
interval = "500ms"
window = "3s"
failure_limit = 1
min_requests = 10
checks = [
  { judge = "mann-whitney", metric = "latency", confidence = 0.98, tolerance = 0.25 },
  { metric = "latency_p99", max = "2s" },
]
"#;
    let spec = canary_spec(r#"[ { weight = 30 }, { pause = "60s" } ]"#, "", analysis);
    let env = Arc::new(Env::start(spec));
    let e = env.clone();
    blocking(move || {
        e.ferry_ok(&[
            "deploy",
            "web",
            "--version",
            "v1",
            "--set",
            "DEMO_LATENCY_MS=5",
        ])
    })
    .await;
    let load = load(env.proxy());
    let e = env.clone();
    let out = blocking(move || {
        e.ferry_code(
            &[
                "deploy",
                "web",
                "--version",
                "v2",
                "--set",
                "DEMO_LATENCY_MS=50",
            ],
            1,
        )
    })
    .await;
    assert!(out.contains("mann-whitney"), "{out}");
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "slow is not failed: {:?}", report.errors);
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "2"])).await;
    let judged: Vec<_> = record["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["check"].as_str().unwrap().starts_with("mann-whitney") && m["verdict"] == "fail"
        })
        .collect();
    assert!(judged.len() >= 2, "{record}");
    let detail = judged[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("U = ") && detail.contains("p = "),
        "the judge reports its statistic: {detail}"
    );
    // The absolute latency bound was never the reason: the judge was.
    assert!(
        record["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["check"].as_str().unwrap().starts_with("latency_p99")
                && m["verdict"] == "pass")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_goes_bad_in_its_monitoring_window_is_rolled_back_by_itself() {
    let spec = Spec {
        instances: 2,
        tail: ANALYSIS.to_string(),
        ..Spec::default()
    };
    let env = Arc::new(Env::start(spec));
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());
    // Healthy for its first 4 s, then half its answers fail.
    let e = env.clone();
    let out = blocking(move || {
        e.ferry_ok(&[
            "deploy",
            "web",
            "--version",
            "v2",
            "--monitor",
            "60s",
            "--until-serving",
            "--set",
            "DEMO_FAILURE_RATE=0.5",
            "--set",
            "DEMO_FAILURE_AFTER_MS=4000",
        ])
    })
    .await;
    assert!(out.contains("watched for 1m"), "{out}");
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(40), "the automatic rollback", || {
            let s = status(&e);
            s["stable"] == 1 && s["rollout"].is_null()
        })
    })
    .await;
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v1".to_string()]
    );
    load.stop().await;
    let e = env.clone();
    let history = blocking(move || e.json(&["history", "web"])).await;
    assert_eq!(history[1]["outcome"], "failed");
    assert!(
        history[1]["reason"]
            .as_str()
            .unwrap()
            .contains("monitoring window"),
        "{history}"
    );
}

#[test]
fn rollout_events_reach_webhooks_and_a_dead_webhook_blocks_nothing() {
    let (port, got) = receiver();
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free_port();
    let webhooks = format!(
        r#"webhooks = [
  {{ url = "http://127.0.0.1:{port}/hook" }},
  {{ url = "http://127.0.0.1:{dead}/gone", retries = 5 }},
  {{ url = "http://{}/slow", timeout = "10s", retries = 5, events = ["done"] }},
]"#,
        hanging.local_addr().unwrap()
    );
    let spec = Spec {
        instances: 2,
        strategy: "canary",
        extra: webhooks,
        deploy_extra: r#"steps = [ { weight = 50 } ]"#.into(),
        ..Spec::default()
    };
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let started = std::time::Instant::now();
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "dead and hanging webhooks held the rollout up"
    );
    wait_for(Duration::from_secs(10), "the webhook events", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|e| e["rollout"] == 2 && e["event"] == "done")
    });
    let events = got.lock().unwrap().clone();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["rollout"] == 2)
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in ["started", "step", "promoting", "done"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let done = events
        .iter()
        .find(|e| e["rollout"] == 2 && e["event"] == "done")
        .unwrap();
    assert_eq!(done["service"], "web");
    assert_eq!(done["version"], "v2");
    assert_eq!(done["outcome"], "succeeded");
    assert!(
        !env.daemon_log().contains("/gone"),
        "webhook URLs are not logged (they often hold tokens)"
    );
    drop(hanging);
}

#[test]
fn blue_green_pre_promotion_checks_judge_the_new_set_before_the_switch() {
    let analysis = r#"
[services.web.analysis]
interval = "300ms"
window = "2s"
min_requests = 5
pre_promotion_passes = 3
pre_promotion = [ { metric = "error_rate", max = 0.05 } ]
"#;
    let spec = Spec {
        instances: 2,
        strategy: "blue-green",
        tail: analysis.into(),
        ..Spec::default()
    };
    let env = Env::start(spec);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    // Testers reach the new set directly with X-Ferry-Revision.
    let proxy = env.proxy();
    let testers = std::thread::spawn(move || {
        let c = reqwest::blocking::Client::new();
        for _ in 0..600 {
            for rev in ["2", "3"] {
                let _ = c
                    .get(format!("http://{proxy}/"))
                    .header("X-Ferry-Revision", rev)
                    .send();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let out = env.ferry_ok(&["deploy", "web", "--version", "v2", "--auto-approve"]);
    assert!(
        out.contains("pre-promotion analysis passed 3 rounds"),
        "{out}"
    );
    let out = env.ferry_code(
        &[
            "deploy",
            "web",
            "--version",
            "v3",
            "--auto-approve",
            "--set",
            "DEMO_FAILURE_RATE=0.5",
        ],
        1,
    );
    assert!(
        out.contains("analysis failed") && out.contains("traffic stays on revision 2"),
        "{out}"
    );
    assert_eq!(status(&env)["stable"], 2);
    let _ = testers.join();
}
