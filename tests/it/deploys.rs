//! Rolling and blue-green deploys under continuous keep-alive load.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_fails_no_request_and_ends_on_the_new_version() {
    let env = Arc::new(Env::start(Spec::default()));
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = env.clone();
    let out =
        blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2", "-m", "ship v2"])).await;
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(800)).await,
        vec!["v2".to_string()]
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(
        report.by_version["v1"] > 50 && report.by_version["v2"] > 50,
        "{report:?}"
    );

    let e = env.clone();
    let history = blocking(move || e.json(&["history", "web"])).await;
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["outcome"], "succeeded");
    assert_eq!(h[1]["version"], "v2");
    assert_eq!(h[1]["message"], "ship v2");
    let e = env.clone();
    let status = blocking(move || e.json(&["status", "web"])).await;
    assert_eq!(status["stable"], 2);
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{status}");
    assert!(
        instances
            .iter()
            .all(|i| i["revision"] == 2 && i["state"] == "serving"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_waits_for_approval_switches_at_once_and_rolls_back_instantly() {
    let env = Arc::new(Env::start(Spec {
        strategy: "blue-green",
        ..Spec::default()
    }));
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2", "--detach"])).await;
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(20), "the approval gate", || {
            e.json(&["status", "web"])["rollout"]["phase"] == "awaiting-approval"
        })
    })
    .await;
    // The whole new set is up, yet only v1 answers until approval.
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v1".to_string()]
    );
    let e = env.clone();
    let status = blocking(move || e.json(&["status", "web"])).await;
    let v2_ready = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["revision"] == 2 && i["ready"] == true)
        .count();
    assert_eq!(v2_ready, 3, "{status}");

    let e = env.clone();
    blocking(move || e.ferry_ok(&["approve", "web"])).await;
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(10), "the switch", || {
            e.json(&["status", "web"])["stable"] == 2
        })
    })
    .await;
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v2".to_string()]
    );

    // Within scale_down_delay the old set still runs: rollback is instant.
    let e = env.clone();
    let t = std::time::Instant::now();
    let out = blocking(move || e.ferry_ok(&["rollback", "web"])).await;
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "rollback to a warm set took {:?}",
        t.elapsed()
    );
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v1".to_string()]
    );

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let e = env.clone();
    let history = blocking(move || e.json(&["history", "web"])).await;
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["deploy", "deploy", "rollback"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_given_revision_goes_through_the_zero_downtime_path() {
    let env = Arc::new(Env::start(Spec {
        instances: 2,
        ..Spec::default()
    }));
    for v in ["v1", "v2", "v3"] {
        let e = env.clone();
        blocking(move || e.ferry_ok(&["deploy", "web", "--version", v])).await;
    }
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = env.clone();
    let out = blocking(move || e.ferry_ok(&["rollback", "web", "--to-revision", "1"])).await;
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(600)).await,
        vec!["v1".to_string()]
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let e = env.clone();
    let status = blocking(move || e.json(&["status", "web"])).await;
    assert_eq!(status["stable"], 1);
    assert_eq!(status["version"], "v1");
    // Rolling back to what already serves, or to nothing, is refused.
    let e = env.clone();
    let out = blocking(move || e.ferry_code(&["rollback", "web", "--to-revision", "1"], 1)).await;
    assert!(out.contains("already serving"), "{out}");
    let e = env.clone();
    let out = blocking(move || e.ferry_code(&["rollback", "web", "--to-revision", "9"], 2)).await;
    assert!(out.contains("no revision 9"), "{out}");
}
