//! Time to safety: how fast a canary that starts failing is taken out of
//! traffic, measured under steady load at 10 % canary weight.
//!
//! Run: `cargo bench --bench canary_safety` (FERRY_BENCH_ROUNDS=5 by default).
//! Each round starts a fresh daemon with the bundled demo app, deploys v1,
//! puts 8 keep-alive clients at 100 requests/s each on the proxy, and
//! deploys v2 as a canary at 10 % that answers 30 % 5xx from 3 s after it
//! starts. From the client's own records it reports:
//! - time to safety: first failed response from the canary → last request
//!   the canary served;
//! - failed requests during the rollout, as a count and as a share of all
//!   requests during the rollout.

use ferry::loadgen::{LoadConfig, LoadGen, Sample};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ferry(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(FERRY)
        .args(args)
        .env("FERRY_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug, Clone, Copy)]
struct Round {
    time_to_safety_ms: u64,
    detect_ms: u64,
    failed: u64,
    total: u64,
}

fn round(rt: &tokio::runtime::Runtime) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        r#"[services.web]
command = ["{FERRY}", "demo-app"]
instances = 3
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}" }}
[services.web.readiness]
http = "/health"
interval = "100ms"
[services.web.deploy]
strategy = "canary"
min_ready = "200ms"
steps = [ {{ weight = 10 }}, {{ pause = "10m" }} ]
[services.web.analysis]
interval = "1s"
window = "2s"
failure_limit = 0
min_requests = 10
checks = [ {{ metric = "error_rate", max = 0.05 }} ]
"#
    );
    std::fs::write(dir.path().join("ferry.toml"), config).unwrap();
    let child = Command::new(FERRY)
        .args(["serve", "--api-addr", "127.0.0.1:0"])
        .env("FERRY_DATA_DIR", dir.path().join("data"))
        .env("FERRY_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("data/api.json").exists() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    ferry(dir.path(), &["deploy", "web", "--version", "v1"]);

    let mut lc = LoadConfig::new(([127, 0, 0, 1], port).into());
    lc.connections = 8;
    lc.rate_per_connection = Some(100.0);
    lc.max_duration = Duration::from_secs(120);
    lc.record_samples = true;
    let load = rt.block_on(async { LoadGen::start(lc) });
    std::thread::sleep(Duration::from_secs(1));
    ferry(
        dir.path(),
        &[
            "deploy",
            "web",
            "--version",
            "v2",
            "--detach",
            "--set",
            "DEMO_FAILURE_RATE=0.3",
            "--set",
            "DEMO_FAILURE_AFTER_MS=3000",
        ],
    );
    let rollout_start = load.samples().last().map_or(0, |s| s.at_ms);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ferry(dir.path(), &["status", "web", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        if v["rollout"].is_null() && v["stable"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary was not pulled within 60 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rollout_end = load.samples().last().map_or(0, |s| s.at_ms);
    std::thread::sleep(Duration::from_millis(500));
    let samples: Vec<Sample> = load.samples();
    rt.block_on(load.stop());
    let canary = |s: &&Sample| s.revision == Some(2);
    let first_fail = samples
        .iter()
        .filter(canary)
        .filter(|s| s.status.is_none_or(|c| c >= 500))
        .map(|s| s.at_ms)
        .min()
        .expect("the canary never failed a request");
    let last_canary = samples
        .iter()
        .filter(canary)
        .map(|s| s.at_ms)
        .max()
        .unwrap();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_ms >= rollout_start && s.at_ms <= rollout_end)
        .collect();
    let failed = during
        .iter()
        .filter(|s| s.status.is_none_or(|c| !(200..300).contains(&c)))
        .count() as u64;
    Round {
        time_to_safety_ms: last_canary.saturating_sub(first_fail),
        detect_ms: rollout_end.saturating_sub(first_fail),
        failed,
        total: during.len() as u64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "canary time-to-safety: 800 req/s, canary at 10 %, 30 % 5xx from 3 s after start; analysis interval 1s, window 2s, failure_limit 0"
    );
    println!(
        "{:>5} {:>18} {:>12} {:>8} {:>8} {:>8}",
        "round", "time_to_safety_ms", "pulled_ms", "failed", "total", "share"
    );
    let mut results = Vec::new();
    for i in 1..=rounds {
        let r = round(&rt);
        println!(
            "{:>5} {:>18} {:>12} {:>8} {:>8} {:>7.3}%",
            i,
            r.time_to_safety_ms,
            r.detect_ms,
            r.failed,
            r.total,
            100.0 * r.failed as f64 / r.total.max(1) as f64
        );
        results.push(r);
    }
    let m = |f: fn(&Round) -> f64| median(results.iter().map(f).collect());
    let tts = m(|r| r.time_to_safety_ms as f64);
    println!(
        "median over {rounds} rounds: time to safety {:.0} ms, failed {:.0} of {:.0} requests ({:.3} %)",
        tts,
        m(|r| r.failed as f64),
        m(|r| r.total as f64),
        m(|r| 100.0 * r.failed as f64 / r.total.max(1) as f64)
    );
    // Flagger and Argo Rollouts need Kubernetes, which this machine cannot
    // run; their detection time follows from their documented settings.
    let flagger_fastest = 10_000.0; // interval 10 s (its minimum) × threshold 1
    let flagger_default = 60_000.0; // interval 1 m, first failed check
    println!(
        "reference, from their settings (Kubernetes-only, not runnable here): Flagger at its fastest (interval 10s × threshold 1) ≥ 10 s → Ferry {:.1}× faster; Flagger/Argo with a 1m interval ≥ 60 s → {:.0}× faster",
        flagger_fastest / tts,
        flagger_default / tts
    );
}
