//! Releases that do not come up healthy are rolled back by themselves.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_on_start_release_is_rolled_back_with_no_failed_request() {
    let env = Arc::new(Env::start(Spec::default()));
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
                "DEMO_CRASH_ON_START=1",
            ],
            1,
        )
    })
    .await;
    assert!(out.contains("crash-looping"), "{out}");
    assert!(out.contains("exit status 3"), "{out}");
    assert!(
        out.contains("crashing on start"),
        "the reason carries the instance's log: {out}"
    );
    assert!(out.contains("traffic stays on revision 1"), "{out}");
    assert_eq!(
        versions_now(&load, Duration::from_millis(500)).await,
        vec!["v1".to_string()]
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let e = env.clone();
    let history = blocking(move || e.json(&["history", "web"])).await;
    assert_eq!(history[1]["outcome"], "failed");
    assert!(
        history[1]["reason"]
            .as_str()
            .unwrap()
            .contains("crash-looping")
    );
    let e = env.clone();
    blocking(move || {
        wait_for(
            Duration::from_secs(15),
            "revision 2's instances to stop",
            || {
                let s = e.json(&["status", "web"]);
                let i = s["instances"].as_array().unwrap();
                i.len() == 3 && i.iter().all(|i| i["revision"] == 1)
            },
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_release_is_rolled_back_with_no_failed_request() {
    let env = Arc::new(Env::start(Spec {
        deploy_timeout: "3s",
        ..Spec::default()
    }));
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
                "DEMO_NEVER_READY=1",
            ],
            1,
        )
    })
    .await;
    assert!(
        out.contains("not ready within deploy_timeout (3s)"),
        "{out}"
    );
    assert!(
        out.contains("HTTP 503"),
        "the reason says what the probe saw: {out}"
    );
    assert_eq!(
        versions_now(&load, Duration::from_millis(500)).await,
        vec!["v1".to_string()]
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(
        !report.by_version.contains_key("v2"),
        "a never-ready instance got traffic: {report:?}"
    );
}

#[test]
fn failing_pre_deploy_hook_fails_the_deploy_before_anything_starts() {
    let env = Env::start(Spec {
        extra: "pre_deploy = [\"sh\", \"-c\", \"echo migrating {version}; exit 3\"]\n".into(),
        ..Spec::default()
    });
    let out = env.ferry_code(&["deploy", "web", "--version", "v1"], 1);
    assert!(
        out.contains("pre_deploy hook failed: exit status 3"),
        "{out}"
    );
    assert!(
        out.contains("migrating v1"),
        "the hook's output is kept: {out}"
    );
    let history = env.json(&["history", "web"]);
    assert_eq!(history[0]["outcome"], "failed");
    assert!(
        history[0]["hook_output"]
            .as_str()
            .unwrap()
            .contains("migrating v1")
    );
    assert!(
        env.marked_processes().is_empty(),
        "no instance may start after a failed hook"
    );

    // A succeeding hook runs once, before the instances.
    let ok = Spec {
        extra: "pre_deploy = \"echo migrated >> hook-ran.txt\"\n".into(),
        ..Spec::default()
    };
    env.write_config(&ok);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let ran = std::fs::read_to_string(env.dir.path().join("hook-ran.txt")).unwrap();
    assert_eq!(ran.lines().count(), 1);
}

#[test]
fn aborting_during_the_pre_deploy_hook_stops_the_hook() {
    let env = Env::start(Spec {
        extra: "pre_deploy = \"echo migrating; sleep 30; echo finished >> hook-finished.txt\"\n"
            .into(),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1", "--detach"]);
    wait_for(Duration::from_secs(10), "the hook to run", || {
        env.json(&["status", "web"])["rollout"]["phase"] == "pre-deploy"
            && std::process::Command::new("pgrep")
                .args(["-f", "sleep 30"])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    env.ferry_ok(&["abort", "web"]);
    wait_for(Duration::from_secs(10), "the rollout to end", || {
        env.json(&["status", "web"])["rollout"].is_null()
    });
    let history = env.json(&["history", "web"]);
    assert_eq!(history[0]["outcome"], "aborted");
    wait_for(
        Duration::from_secs(10),
        "the hook's processes to stop",
        || {
            let hook_marker = format!("FERRY_INSTANCE={}/hook-", env.daemon_id());
            !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("environ"))
                    .map(|b| String::from_utf8_lossy(&b).contains(&hook_marker))
                    .unwrap_or(false)
            })
        },
    );
    assert!(!env.dir.path().join("hook-finished.txt").exists());
    assert!(env.marked_processes().is_empty(), "no instance started");
}
