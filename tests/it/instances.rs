//! The supervisor: liveness restarts, crash restarts, draining.

use super::harness::*;
use std::time::Duration;

fn instances(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["status", "web"])["instances"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_failing_liveness_probe_restarts_the_instance() {
    let env = Env::start(Spec {
        instances: 1,
        extra: "[services.web.liveness]\nhttp = \"/health\"\ninterval = \"200ms\"\nfailure_threshold = 2\n".into(),
        ..Spec::default()
    });
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "DEMO_UNHEALTHY_AFTER_MS=1500",
    ]);
    let first_pid = instances(&env)[0]["pid"].clone();
    wait_for(Duration::from_secs(20), "a liveness restart", || {
        let i = &instances(&env)[0];
        i["restarts"].as_u64().unwrap() >= 1 && i["pid"] != first_pid
    });
    let i = &instances(&env)[0];
    assert!(
        i["last_exit"]
            .as_str()
            .unwrap()
            .contains("liveness probe failed"),
        "{i}"
    );
    assert!(env.daemon_log().contains("failed its liveness probe"));
}

#[test]
fn a_crashed_instance_is_restarted_and_serves_again() {
    let env = Env::start(Spec {
        instances: 2,
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let victim = instances(&env)[0].clone();
    let pid = victim["pid"].as_i64().unwrap();
    signal(pid as i32, Signal::SIGKILL);
    wait_for(
        Duration::from_secs(15),
        "the instance to be restarted and serving",
        || {
            instances(&env).iter().any(|i| {
                i["id"] == victim["id"]
                    && i["restarts"] == 1
                    && i["pid"].as_i64() != Some(pid)
                    && i["state"] == "serving"
            })
        },
    );
    let i = instances(&env)
        .into_iter()
        .find(|i| i["id"] == victim["id"])
        .unwrap();
    assert!(i["last_exit"].as_str().unwrap().contains("SIGKILL"), "{i}");
    assert_eq!(
        env.marked_processes().len(),
        2,
        "no duplicate after the restart"
    );
}

#[test]
fn slow_requests_in_flight_finish_while_their_instance_drains() {
    let env = Env::start(Spec {
        instances: 2,
        ..Spec::default()
    });
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "DEMO_LATENCY_MS=2000",
    ]);
    let proxy = env.proxy();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap()
                    .get(format!("http://{proxy}/"))
                    .send()
                    .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    for handle in slow {
        let (status, body) = handle
            .join()
            .unwrap()
            .expect("a request in flight during the deploy failed");
        assert_eq!(status, 200);
        assert_eq!(body, "hello from v1\n");
    }
    wait_for(
        Duration::from_secs(15),
        "the drained v1 instances to stop",
        || instances(&env).iter().all(|i| i["revision"] == 2),
    );
}
