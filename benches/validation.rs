//! Validation: what a candidate suite of 10 HTTP checks adds to a
//! blue-green release, and how many requests a `load` check can drive
//! compared with wrk on the same target.
//!
//! Run by hand (not a test): `cargo bench --bench validation`.
//! Settings, all optional, by environment:
//! - `FERRY_BENCH_PARTS` (default `gate,load`): which parts;
//! - `FERRY_BENCH_ROUNDS` (default 5 for `gate`, 3 for `load`);
//! - `FERRY_BENCH_OUT` (default `/tmp/ferry-validation-bench`): logs, data.
//!
//! **Gate.** `ferry serve` (release build, shipped defaults) runs the demo
//! app (2 instances, readiness `GET /health` every 200 ms), released
//! blue-green with `auto_promote = true` and `scale_down_delay = "0s"`.
//! Each round deploys a new version twice, once without gates and once
//! with `validate = { candidate = ["smoke"] }`, where `smoke` is 10 `http`
//! checks (status, body, JSON field, header and latency expectations on
//! `/` and `/health`), in alternating order, and times `ferry deploy` from
//! start to exit. It reports the medians, their difference, and the gate's
//! own run (its `GateRun`'s `finished_at - started_at`).
//!
//! **Load.** The demo app listens on 127.0.0.1 (no proxy in between: the
//! ceiling of the generator, not of Ferry's proxy). `ferry validate` runs
//! one `load` check (unpaced, 64 connections, 5 s) against it, and `wrk
//! -t2 -c64 -d5s` loads the same URL; alternately, each round.

// Not every helper is used here (the CPU ones are the other benches').
#[allow(dead_code)]
mod common;

use common::{Proc, env_or, ferry_cli, ferry_serve, free_port, median, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(dir: &Path, args: &[&str]) -> (bool, String) {
    ferry_cli(FERRY, dir, args)
}

const SMOKE: &str = r#"
[validation.suites.smoke]
[[validation.suites.smoke.checks]]
name = "home"
kind = "http"
url = "/"
expect_status = 200
[[validation.suites.smoke.checks]]
name = "home-body"
kind = "http"
url = "/"
expect_body = "hello from"
[[validation.suites.smoke.checks]]
name = "home-regex"
kind = "http"
url = "/"
expect_body_regex = "hello from v[0-9]+"
[[validation.suites.smoke.checks]]
name = "home-header"
kind = "http"
url = "/"
expect_headers = { x-version = "*" }
[[validation.suites.smoke.checks]]
name = "home-fast"
kind = "http"
url = "/"
max_latency = "200ms"
[[validation.suites.smoke.checks]]
name = "health"
kind = "http"
url = "/health"
expect_status = 200
[[validation.suites.smoke.checks]]
name = "health-json"
kind = "http"
url = "/health"
expect_json = { status = "healthy" }
[[validation.suites.smoke.checks]]
name = "health-type"
kind = "http"
url = "/health"
expect_headers = { content-type = "application/json" }
[[validation.suites.smoke.checks]]
name = "missing"
kind = "http"
url = "/nope"
expect_status = 404
[[validation.suites.smoke.checks]]
name = "metrics"
kind = "http"
url = "/metrics"
expect_body = "demo_"
"#;

fn config(port: u16, gated: bool) -> String {
    format!(
        r#"[services.web]
command = ["{FERRY}", "demo-app"]
instances = 2
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}" }}

[services.web.readiness]
http = "/health"
interval = "200ms"

[services.web.deploy]
strategy = "blue-green"
auto_promote = true
scale_down_delay = "0s"
{gate}
{SMOKE}"#,
        gate = if gated {
            "validate = { candidate = [\"smoke\"] }"
        } else {
            ""
        }
    )
}

fn gate(out: &Path, rounds: usize) {
    let dir = out.join("gate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    std::fs::write(dir.join("ferry.toml"), config(port, false)).unwrap();
    let _daemon = ferry_serve(FERRY, &dir, &[], &[], false);
    let (ok, text) = ferry(&dir, &["deploy", "web", "--version", "v0"]);
    assert!(ok, "{text}");
    let mut plain = Vec::new();
    let mut gated = Vec::new();
    let mut gate_run = Vec::new();
    let mut plain_inside = Vec::new();
    let mut gated_inside = Vec::new();
    let mut version = 0;
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_gate in order {
            version += 1;
            std::fs::write(dir.join("ferry.toml"), config(port, with_gate)).unwrap();
            let v = format!("v{version}");
            let started = Instant::now();
            let (ok, text) = ferry(&dir, &["deploy", "web", "--version", &v]);
            let took = started.elapsed().as_secs_f64();
            assert!(ok, "{text}");
            // The command's first line: `rollout N: blue-green revision …`.
            let id: u64 = text
                .split_whitespace()
                .skip_while(|w| *w != "rollout")
                .nth(1)
                .and_then(|n| n.trim_end_matches(':').parse().ok())
                .unwrap_or_else(|| panic!("no rollout id in {text}"));
            let (_, record) = ferry(&dir, &["rollout", &id.to_string(), "--output", "json"]);
            let record: serde_json::Value = serde_json::from_str(record.trim()).unwrap();
            let r = &record["rollout"];
            let inside =
                (r["finished_at"].as_f64().unwrap() - r["started_at"].as_f64().unwrap()) / 1000.0;
            if with_gate {
                gated.push(took);
                gated_inside.push(inside);
                let g = &r["validations"][0];
                let results = g["results"].as_array().map_or(0, Vec::len);
                assert_eq!(results, 10, "{record}");
                let ms = g["finished_at"].as_f64().unwrap() - g["started_at"].as_f64().unwrap();
                gate_run.push(ms / 1000.0);
            } else {
                plain.push(took);
                plain_inside.push(inside);
            }
            eprintln!(
                "round {round}: {v} {} in {took:.3} s",
                if with_gate { "gated" } else { "plain" }
            );
        }
    }
    let p = median(&mut plain);
    let g = median(&mut gated);
    let r = median(&mut gate_run);
    let pi = median(&mut plain_inside);
    let gi = median(&mut gated_inside);
    println!("gate: blue-green deploy, 2 instances, {rounds} rounds (medians)");
    println!("                                  `ferry deploy`   rollout start → end");
    println!("  without gates:                  {p:.3} s          {pi:.3} s");
    println!("  with a 10-check candidate gate: {g:.3} s          {gi:.3} s");
    println!(
        "  added by the gate:              {:.3} s          {:.3} s (the checks themselves: {:.3} s)",
        g - p,
        gi - pi,
        r
    );
}

fn load(out: &Path, rounds: usize) {
    let dir = out.join("load");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _app = Proc {
        child: Command::new(FERRY)
            .arg("demo-app")
            .env("PORT", port.to_string())
            .env("DEMO_VERSION", "v1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        stop: "-TERM",
    };
    wait_for("the demo app", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[services.up]
command = ["true"]
listen = "127.0.0.1:{port}"

[validation.suites.perf]
[[validation.suites.perf.checks]]
name = "ceiling"
kind = "load"
url = "/"
concurrency = 64
duration = "5s"
max_p95 = "10s"
max_p99 = "10s"
"#
        ),
    )
    .unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..rounds {
        let (_, text) = ferry(&dir, &["validate", "--output", "json"]);
        let report: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        let value = report["results"][0]["value"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let rps: f64 = value
            .split_whitespace()
            .next()
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or_else(|| panic!("no req/s in {report}"));
        ours.push(rps);
        let wrk = Command::new("wrk")
            .args(["-t2", "-c64", "-d5s", &format!("http://127.0.0.1:{port}/")])
            .output()
            .expect("wrk is installed (apt-get install wrk)");
        let text = String::from_utf8_lossy(&wrk.stdout).to_string();
        let w: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in {text}"));
        theirs.push(w);
        eprintln!("round {round}: load check {rps:.0} req/s ({value}); wrk {w:.0} req/s");
    }
    let o = median(&mut ours);
    let w = median(&mut theirs);
    println!("load: 64 connections, 5 s, unpaced, against the demo app; {rounds} rounds");
    println!("  ferry validate (load check): median {o:.0} req/s");
    println!("  wrk -t2 -c64:                median {w:.0} req/s");
    println!("  ratio:                       {:.2}×", o / w);
}

fn main() {
    let parts = env_or("FERRY_BENCH_PARTS", "gate,load");
    let out = PathBuf::from(env_or("FERRY_BENCH_OUT", "/tmp/ferry-validation-bench"));
    std::fs::create_dir_all(&out).unwrap();
    let rounds = |default: &str| env_or("FERRY_BENCH_ROUNDS", default).parse().unwrap_or(3);
    for part in parts.split(',') {
        match part.trim() {
            "gate" => gate(&out, rounds("5")),
            "load" => load(&out, rounds("3")),
            other => panic!("unknown part {other}; use gate,load"),
        }
    }
}
