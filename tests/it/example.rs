//! The example ferry.toml, verbatim but for the port: python's
//! http.server serving releases/{version}, rolled under load.

use super::harness::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_deploys_and_rolls_python_http_server() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("python3 is needed for this test (it runs the documented example)");
    }
    let mut env = Env::start(Spec::default());
    let example =
        ferry_core::config::EXAMPLE.replace("127.0.0.1:8080", &format!("127.0.0.1:{}", env.port));
    env.stop();
    std::fs::write(env.dir.path().join("ferry.toml"), example).unwrap();
    for v in ["v1", "v2"] {
        let dir = env.dir.path().join("releases").join(v);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("health"), "ok\n").unwrap();
        std::fs::write(dir.join("index.html"), format!("release {v}\n")).unwrap();
    }
    env.start_daemon();
    let env = Arc::new(env);
    let e = env.clone();
    blocking(move || e.ferry_ok(&["check"])).await;
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let body = reqwest::get(format!("http://{}/", env.proxy()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "release v1\n");
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2"])).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(report.ok > 100, "{report:?}");
    let body = reqwest::get(format!("http://{}/", env.proxy()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "release v2\n");
    // GREETING from the spec's env reaches the instances.
    let (pid, _) = env.marked_processes()[0];
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(environ.contains("GREETING=hello") && environ.contains("PORT="));
    // Both releases passed the example's candidate gate (http.server sends
    // no security headers: a WARNING, which does not stop a release).
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "2"])).await;
    let gate = &record["rollout"]["validations"][0];
    assert_eq!(gate["stage"], "candidate", "{record}");
    let statuses: Vec<&str> = gate["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["status"].as_str())
        .collect();
    assert_eq!(statuses, vec!["PASSED", "WARNING"], "{record}");
    // And `ferry validate` runs the same suite now: warnings exit 0.
    let e = env.clone();
    let out = blocking(move || e.ferry_ok(&["validate"])).await;
    assert!(out.contains("1 passed, 0 failed, 1 warning"), "{out}");
}
