//! SIGKILL of the daemon mid-rollout: a restart adopts, resumes, converges.

use super::harness::*;
use std::time::Duration;

#[test]
fn daemon_killed_mid_rollout_converges_after_restart_without_orphans_or_duplicates() {
    let mut env = Env::start(Spec {
        min_ready: "1s",
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    // Slow starters keep the rollout in progress long enough to kill it.
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--set",
        "DEMO_STARTUP_DELAY_MS=800",
        "--detach",
    ]);
    wait_for(Duration::from_secs(10), "a v2 instance to start", || {
        env.marked_processes().iter().any(|(_, rev)| rev == "2")
    });
    env.kill9();
    let survivors = env.marked_processes();
    assert!(
        survivors.len() >= 3,
        "instances keep running without the daemon: {survivors:?}"
    );

    env.start_daemon();
    wait_for(
        Duration::from_secs(40),
        "the rollout to finish after the restart",
        || {
            let s = env.json(&["status", "web"]);
            s["stable"] == 2 && s["rollout"].is_null()
        },
    );
    wait_for(
        Duration::from_secs(30),
        "exactly 3 instances of revision 2, and only them listed",
        || {
            let procs = env.marked_processes();
            let listed = env.json(&["status", "web"])["instances"]
                .as_array()
                .unwrap()
                .len();
            procs.len() == 3 && procs.iter().all(|(_, rev)| rev == "2") && listed == 3
        },
    );
    let status = env.json(&["status", "web"]);
    let listed: Vec<i64> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    let mut running: Vec<i64> = env
        .marked_processes()
        .iter()
        .map(|(p, _)| *p as i64)
        .collect();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    running.sort();
    assert_eq!(
        listed_sorted, running,
        "every running process is a known instance (no orphans)"
    );
    let history = env.json(&["history", "web"]);
    assert_eq!(history.as_array().unwrap().len(), 2, "no record lost");
    assert_eq!(history[1]["outcome"], "succeeded");
    let body = reqwest_get(&env, "/").unwrap();
    assert!(body.contains("v2"), "{body}");
}

fn reqwest_get(env: &Env, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(env.proxy()).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
