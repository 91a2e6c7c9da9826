//! Delivery metrics from a known history of real releases: four deploys
//! (one failing, one rolled back later by hand), two with commit times,
//! a rollback; the figures worked out here by hand.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_metrics_match_a_known_history() {
    let env = Arc::new(Env::start(Spec {
        instances: 1,
        deploy_timeout: "3s",
        ..Spec::default()
    }));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let two_hours_ago = (now_s - 7200).to_string();
    let one_hour_ago = (now_s - 3600).to_string();
    let e = env.clone();
    blocking(move || {
        // v1: committed two hours ago, succeeds.
        e.ferry_ok(&[
            "deploy",
            "web",
            "--version",
            "v1",
            "--commit-time",
            &two_hours_ago,
        ]);
        // v2: never ready, fails after deploy_timeout.
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
        );
        // v3: committed an hour ago, succeeds, then is rolled back by hand.
        e.ferry_ok(&[
            "deploy",
            "web",
            "--version",
            "v3",
            "--commit-time",
            &one_hour_ago,
        ]);
        e.ferry_ok(&["rollback", "web"]);
    })
    .await;
    // v4: no commit time; under load, no request fails.
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    ferry_async(&env, &["deploy", "web", "--version", "v4"], 0).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");

    let e = env.clone();
    let (json, text, record) = blocking(move || {
        (
            e.json(&["metrics", "delivery", "--service", "web"]),
            e.ferry_ok(&["metrics", "delivery"]),
            e.ferry_ok(&["rollout", "5"]),
        )
    })
    .await;
    let web = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "web")
        .unwrap()
        .clone();
    let c = &web["counts"];
    // By hand: 4 deploys (v1, v2, v3, v4), 3 succeeded, 1 failed; 1
    // rollback rollout.
    assert_eq!(
        (
            c["deploys"].as_u64(),
            c["succeeded"].as_u64(),
            c["failed"].as_u64(),
            c["rollbacks"].as_u64()
        ),
        (Some(4), Some(3), Some(1), Some(1)),
        "{web}"
    );
    let dora = &web["dora"];
    // Change failure rate: v2 failed, v3 was rolled back: 2 of 4 = 50 %,
    // above 45 %: low.
    assert_eq!(
        dora["change_failure_rate_pct"].as_f64(),
        Some(50.0),
        "{dora}"
    );
    assert_eq!(dora["change_failure_band"], "low", "{dora}");
    // Deployment frequency: 3 successful deploys in 30 days = 0.1/day:
    // at least one a month, less than one a week: medium.
    let f = dora["deployment_frequency_per_day"].as_f64().unwrap();
    assert!((f - 0.1).abs() < 1e-9, "{dora}");
    assert_eq!(dora["deployment_frequency_band"], "medium", "{dora}");
    // Lead time: v1 ≈ 2 h, v3 ≈ 1 h (plus the seconds each took); the
    // median (nearest rank of 2) is v3's: under a day, elite.
    assert_eq!(dora["lead_time_count"].as_u64(), Some(2), "{dora}");
    let lead = dora["lead_time_median_ms"].as_f64().unwrap();
    assert!((3_600_000.0..3_700_000.0).contains(&lead), "{dora}");
    assert_eq!(dora["lead_time_band"], "elite", "{dora}");
    // Success rate: 3 of 4 = 75 %.
    assert_eq!(
        web["deployment"]["success_rate_pct"].as_f64(),
        Some(75.0),
        "{web}"
    );
    // Every deploy's failed requests are known (counted from the proxy):
    // none failed.
    assert_eq!(
        web["deployment"]["zero_downtime_pct"].as_f64(),
        Some(100.0),
        "{web}"
    );
    assert!(
        text.contains("change failure rate") && text.contains("50"),
        "{text}"
    );
    // The rollout's own record: time to 100 % and failed requests.
    assert!(record.contains("time to 100 %:"), "{record}");
    assert!(
        record.contains("failed requests: 0 of ") && record.contains("(zero downtime)"),
        "{record}"
    );

    // And on /metrics (refreshed every 10 s).
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(20), "the delivery gauges", || {
            let m = e.metrics_text();
            m.lines()
                .any(|l| l == "ferry_delivery_change_failure_ratio{service=\"web\"} 0.5")
        });
    })
    .await;
}

/// A version that names a git commit gets the commit's time, for lead
/// time; `--commit-time` wins over it; a bad one is a usage error.
#[test]
fn a_git_commit_version_carries_its_commit_time() {
    let env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(env.dir.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "ferry.toml"]);
    git(&["commit", "-q", "-m", "the change"]);
    let hash = git(&["rev-parse", "--short", "HEAD"]);
    env.ferry_ok(&["deploy", "web", "--version", &hash]);
    let rev = env.json(&["status", "web"]);
    let number = rev["stable"].as_u64().unwrap();
    let text = env.ferry_ok(&["history", "web", "-o", "json"]);
    assert!(text.contains(&hash), "{text}");
    let body = revision(&env, number);
    // 2026-01-02T03:04:05Z
    assert_eq!(
        body["commit_time"].as_u64(),
        Some(1_767_323_045_000),
        "{body}"
    );
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--commit-time",
        "2026-01-03T00:00:00Z",
    ]);
    let body = revision(&env, number + 1);
    assert_eq!(
        body["commit_time"].as_u64(),
        Some(1_767_398_400_000),
        "{body}"
    );
    let out = env.ferry_code(
        &[
            "deploy",
            "web",
            "--version",
            "v3",
            "--commit-time",
            "yesterday",
        ],
        2,
    );
    assert!(
        out.contains("--commit-time \"yesterday\" is not a time"),
        "{out}"
    );
}

/// Revision `number` of `web`, as the API returns it.
fn revision(env: &Env, number: u64) -> serde_json::Value {
    reqwest::blocking::Client::new()
        .get(format!("{}/v1/services/web/revisions/{number}", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .json()
        .unwrap()
}
