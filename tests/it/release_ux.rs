//! What the release commands, events, webhooks and exit codes tell a user:
//! one test (or more) per finding of the release UX review, each through a
//! real daemon, real instances and the real CLI.

use super::harness::*;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Steady background traffic through the proxy, bounded in count.
fn trickle(env: &Env, requests: usize) -> std::thread::JoinHandle<()> {
    let proxy = env.proxy();
    std::thread::spawn(move || {
        let c = reqwest::blocking::Client::new();
        for _ in 0..requests {
            let _ = c.get(format!("http://{proxy}/")).send();
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Findings 1, 2 and 7: `-m 600` is refused; the dry-run plan lists the
/// monitoring window, the checks with their limits and skipped pauses, as
/// the run will; the help says what the flags do.
#[test]
fn m_with_a_number_is_refused_and_the_dry_run_plan_tells_the_truth() {
    let env = Env::start(Spec {
        instances: 2,
        tail: ANALYSIS.into(),
        deploy_extra: r#"steps = [ { weight = 20 }, { pause = "manual" }, { weight = 50 } ]"#
            .into(),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    for bad in ["600", "10m", "1h30m"] {
        let out = env.ferry_code(
            &["deploy", "web", "--version", "v2", "-m", bad, "--dry-run"],
            2,
        );
        assert!(out.contains("--monitor"), "{bad}: {out}");
    }
    let out = env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "-m",
        "fix the login page",
        "--dry-run",
    ]);
    assert!(out.contains("nothing was changed"), "{out}");

    let out = env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--strategy",
        "blue-green",
        "--monitor",
        "10m",
        "--dry-run",
    ]);
    assert!(!out.contains("canary rollouts only"), "{out}");
    for want in [
        "gate: the new set (revision 2) is ready",
        "watching it for 10m (a failure rolls back to revision 1)",
        "analysis watches the release every 500ms over the last 3s",
        "more than 0 failed measurements → it rolls back",
        "check: error_rate ≤ 0.05",
        "served all traffic through its 10m monitoring window",
        "deploy_timeout 10s",
        "drain_timeout 5s",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    let out = env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--strategy",
        "canary",
        "--auto-approve",
        "--dry-run",
    ]);
    for want in [
        "step 1/3: canary (revision 2) takes 20 % of traffic on 1 instance, held 500ms",
        "step 2/3: manual pause at 20 % skipped (--auto-approve)",
        "step 3/3: canary (revision 2) takes 50 % of traffic on 1 instance, held 500ms",
        "analysis judges the canary every 500ms",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    assert_eq!(env.json(&["history", "web"]).as_array().unwrap().len(), 1);

    let help = env.ferry_ok(&["deploy", "--help"]);
    assert!(help.contains("canary's manual pauses"), "{help}");
    assert!(help.contains("--until-serving"), "{help}");
    let help = env.ferry_ok(&["--help"]);
    assert!(help.contains("canary"), "{help}");
}

/// Finding 5: with `--monitor`, `ferry deploy` follows the window and
/// exits 1 when the window rolls the release back.
#[test]
fn a_watched_deploy_exits_1_when_its_window_rolls_it_back() {
    let env = Env::start(Spec {
        instances: 2,
        tail: ANALYSIS.into(),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let load = trickle(&env, 1500);
    let out = env.ferry_code(
        &[
            "deploy",
            "web",
            "--version",
            "v2",
            "--monitor",
            "60s",
            "--set",
            "DEMO_FAILURE_RATE=0.5",
            "--set",
            "DEMO_FAILURE_AFTER_MS=3000",
        ],
        1,
    );
    assert!(out.contains("monitoring window"), "{out}");
    let s = status(&env);
    assert_eq!(s["stable"], 1, "{s}");
    // A quiet window ends in success, and the command waited for it.
    let out = env.ferry_ok(&["deploy", "web", "--version", "v3", "--monitor", "2s"]);
    assert!(
        out.contains("served all traffic through its 2s monitoring window"),
        "{out}"
    );
    drop(load);
}

/// Findings 3, 4 and 10: a canary paused by failed analysis is `paused`,
/// says so once (one event, one webhook), keeps measuring quietly; webhooks
/// arrive in order with a sequence number and the weight after the event;
/// the abort names who did it.
#[test]
fn a_paused_canary_says_so_once_and_webhooks_arrive_in_order() {
    let (port, got) = receiver();
    let env = Env::start(Spec {
        instances: 2,
        strategy: "canary",
        extra: format!(r#"webhooks = [ {{ url = "http://127.0.0.1:{port}/hook" }} ]"#),
        deploy_extra: "steps = [ { weight = 50 }, { pause = \"60s\" } ]\non_failure = \"pause\""
            .into(),
        tail: ANALYSIS.into(),
        deploy_timeout: "30s",
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let _load = trickle(&env, 1500);
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v2",
        "--set",
        "DEMO_FAILURE_RATE=0.5",
        "--detach",
    ]);
    wait_for(Duration::from_secs(20), "the pause", || {
        status(&env)["rollout"]["phase"] == "paused"
    });
    let measured = |env: &Env| {
        env.json(&["rollout", "2"])["measurements"]
            .as_array()
            .unwrap()
            .len()
    };
    let at_pause = measured(&env);
    // Several more analysis rounds (every 500 ms) while paused.
    wait_for(Duration::from_secs(10), "quiet measuring", || {
        measured(&env) >= at_pause + 4
    });
    let record = env.json(&["rollout", "2"]);
    assert_eq!(record["rollout"]["phase"], "paused", "{record}");
    let events = record["events"].as_array().unwrap();
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("analysis-failed"), 1, "{events:#?}");
    assert_eq!(count("paused"), 1, "{events:#?}");
    let text = env.ferry_ok(&["status", "web"]);
    assert!(text.contains("Paused") && text.contains("PAUSED"), "{text}");

    // A shell without USER (cron, containers) still names who acted.
    let out = env.ferry_env(&["abort", "web"], &[("USER", ""), ("LOGNAME", "alice")]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(15), "the abort", || {
        status(&env)["rollout"].is_null()
    });
    let record = env.json(&["rollout", "2"]);
    let by = record["rollout"]["abort_requested_by"].as_str().unwrap();
    assert!(by.starts_with("alice@") && !by.contains("unknown"), "{by}");

    wait_for(Duration::from_secs(10), "the last webhook", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|e| e["rollout"] == 2 && e["event"] == "done")
    });
    let hooks: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["rollout"] == 2)
        .cloned()
        .collect();
    let kinds: Vec<&str> = hooks.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "analysis-failed").count(),
        1,
        "{kinds:?}"
    );
    let sequence: Vec<u64> = hooks
        .iter()
        .map(|e| {
            e["sequence"]
                .as_u64()
                .expect("every payload has a sequence")
        })
        .collect();
    assert!(
        sequence.windows(2).all(|w| w[0] < w[1]),
        "delivered in event order: {kinds:?} {sequence:?}"
    );
    let position = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(
        position("analysis-failed") < position("paused"),
        "{kinds:?}"
    );
    assert!(position("aborted") < position("done"), "{kinds:?}");
    for e in hooks
        .iter()
        .filter(|e| ["aborted", "done"].contains(&e["event"].as_str().unwrap()))
    {
        assert_eq!(e["canary_weight"], 0, "the weight after the event: {e}");
        assert_eq!(e["kind"], "deploy", "{e}");
    }
}

/// Findings 6, 8 and 11: every step and pause is an event (a skipped manual
/// pause too), a weight step with no pause holds one analysis interval, and
/// history says a canary service's first deploy ran rolling.
#[test]
fn every_step_is_announced_and_history_says_how_a_rollout_ran() {
    let env = Env::start(Spec {
        instances: 2,
        strategy: "canary",
        deploy_extra: r#"steps = [ { weight = 10 }, { pause = "manual" }, { pause = "1s" }, { weight = 60 } ]"#
            .into(),
        // Few requests reach a 10 % canary: judge on any.
        tail: ANALYSIS.replace("min_requests = 5", "min_requests = 1"),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let history = env.json(&["history", "web"]);
    assert_eq!(
        history[0]["ran_as"], "rolling (first deploy of a canary service)",
        "{history}"
    );
    let text = env.ferry_ok(&["history", "web"]);
    assert!(text.contains("first deploy of a canary service"), "{text}");
    let _load = trickle(&env, 500);
    let out = env.ferry_ok(&["deploy", "web", "--version", "v2", "--auto-approve"]);
    let events = env.json(&["rollout", "2"])["events"].clone();
    let steps: Vec<(&str, u64)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "step" || e["kind"] == "promoting")
        .map(|e| (e["message"].as_str().unwrap(), e["at"].as_u64().unwrap()))
        .collect();
    let messages: Vec<&str> = steps.iter().map(|(m, _)| *m).collect();
    let expect = [
        "step 1/4: canary (revision 2) takes 10 % of traffic on 1 instance, held 500ms (one analysis interval)",
        "step 2/4: manual pause at 10 % skipped (--auto-approve)",
        "step 3/4: holding 1s at 10 % while analysis judges",
        "step 3/4: the 1s hold at 10 % ended",
        "step 4/4: canary (revision 2) takes 60 % of traffic on 2 instances, held 500ms (one analysis interval)",
        "all steps passed: promoting revision 2 to 100 %",
    ];
    assert_eq!(messages, expect, "{out}");
    // The last weight step held at least one analysis interval.
    assert!(steps[5].1 >= steps[4].1 + 500, "{steps:?}");
    assert_eq!(env.json(&["history", "web"])[1]["ran_as"], "canary");
}

/// One raw HTTP exchange: the status line, the headers and the body.
fn raw(proxy: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Finding 9: `X-Ferry-Revision` pins a request or refuses it, on the fast
/// path and on hyper's (HTTP/1.0), and the answer names the revision.
#[test]
fn x_ferry_revision_pins_or_refuses_never_falls_back() {
    let env = Arc::new(Env::start(Spec {
        instances: 1,
        ..Spec::default()
    }));
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let proxy = env.proxy();
    for version in ["1.1", "1.0"] {
        let ask = |value: &str| {
            raw(
                proxy,
                &format!(
                    "GET / HTTP/{version}\r\nHost: web\r\nX-Ferry-Revision: {value}\r\nConnection: close\r\n\r\n"
                ),
            )
        };
        let code = |resp: &str| resp.split(' ').nth(1).unwrap_or_default().to_string();
        for value in ["1", "stable", ""] {
            let resp = ask(value);
            assert_eq!(code(&resp), "200", "{value}: {resp}");
            assert!(
                resp.to_ascii_lowercase().contains("x-ferry-revision: 1"),
                "{value}: {resp}"
            );
        }
        let resp = ask("99");
        assert_eq!(code(&resp), "503", "{resp}");
        assert!(resp.contains("revision 99 has no instance"), "{resp}");
        let resp = ask("canary");
        assert_eq!(code(&resp), "503", "{resp}");
        assert!(resp.contains("no canary"), "{resp}");
        let resp = ask("latest");
        assert_eq!(code(&resp), "400", "{resp}");
        assert!(
            resp.contains("revision number, `stable` or `canary`"),
            "{resp}"
        );
    }
}
