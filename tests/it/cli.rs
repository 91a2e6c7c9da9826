//! Client behaviour: Ctrl-C stops watching, not the rollout; JSON progress.

use super::harness::*;
use std::time::Duration;

#[test]
fn ctrl_c_on_the_client_leaves_the_rollout_running() {
    let env = Env::start(Spec {
        min_ready: "1s",
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let child = std::process::Command::new(FERRY)
        .args(["deploy", "web", "--version", "v2"])
        .env("FERRY_DATA_DIR", env.data_dir())
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the rollout to start", || {
        !env.json(&["status", "web"])["rollout"].is_null()
    });
    signal(child.id() as i32, Signal::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("goes on in the daemon"));
    wait_for(
        Duration::from_secs(30),
        "the rollout to finish anyway",
        || env.json(&["status", "web"])["stable"] == 2,
    );
}

#[test]
fn json_output_is_one_object_per_line() {
    let env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    let out = env.ferry_ok(&["deploy", "web", "--version", "v1", "--output", "json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["type"], "accepted");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "event" && l["kind"] == "scale")
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["version"], "v1");
}

/// README's first command: `ferry demo` runs the whole story on embedded
/// defaults and exits 0, the bad canary pulled with its blast radius and no
/// request failed outside its share.
#[test]
fn the_demo_tells_its_story_and_exits_0() {
    let out = std::process::Command::new(FERRY)
        .arg("demo")
        .env_remove("FERRY_DATA_DIR")
        .env_remove("FERRY_API")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for expect in [
        "rollout 2 succeeded",
        "all traffic switched to revision 3",
        "ferry rolled it back by itself",
        "analysis pulled the canary by itself",
        "blast radius: the canary served",
        "failed elsewhere: 0",
    ] {
        assert!(text.contains(expect), "no `{expect}` in:\n{text}");
    }
}

/// Arguments checked before the daemon is asked anything: exit 2 with the
/// flag, the value and the fix.
#[test]
fn bad_upgrade_and_serve_arguments_are_usage_errors() {
    let env = Env::prepare(Spec::default());
    let out = env.ferry_code(&["upgrade", "--binary", "/nonexistent/ferry"], 2);
    assert!(
        out.contains("--binary /nonexistent/ferry: no such file"),
        "{out}"
    );
    let out = env.ferry_code(&["serve", "--scrape-interval", "10ms"], 2);
    assert!(
        out.contains("--scrape-interval") && out.contains("at least 100ms"),
        "{out}"
    );
    for (size, why) in [
        ("10", "has no unit"),
        ("5 parsecs", "unknown unit"),
        ("0MB", "more than 0"),
    ] {
        let out = env.ferry_code(&["serve", "--metrics-retention-size", size], 2);
        assert!(
            out.contains("--metrics-retention-size") && out.contains(why),
            "{size}: {out}"
        );
    }
    let bad = env.data_dir().with_file_name("bad-metrics.toml");
    std::fs::write(
        &bad,
        "[metrics]\nscrape = [{ job = \"x\", url = \"https://h/metrics\" }]\n",
    )
    .unwrap();
    let out = env.ferry_code(&["serve", "--config", bad.to_str().unwrap()], 2);
    assert!(out.contains("must start with http://"), "{out}");
    assert!(
        !env.data_dir().join("api.json").exists(),
        "a bad [metrics] table starts nothing"
    );
}
