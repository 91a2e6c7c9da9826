//! Status reads under a rollout: how long `GET /v1/services/web` takes while
//! 200 clients read it continuously and a 30-instance rolling deploy runs.
//!
//! Run: `cargo bench --bench status_reads` (FERRY_BENCH_ROUNDS=3 by
//! default). Each round starts a fresh `ferry serve` (the binary users run,
//! shipped defaults) with the bundled demo app, deploys v1 on 30 instances,
//! then starts 200 keep-alive readers (each one request at a time, after a
//! first request that opens its connection) and deploys v2 rolling
//! (max_surge 1). It reports the readers' latency percentiles over the
//! deploy, and how many reads were done.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const READERS: usize = 200;
const INSTANCES: u32 = 30;

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

fn ferry(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(FERRY)
        .args(args)
        .env("FERRY_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .output()
        .unwrap()
}

struct Round {
    reads: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    deploy_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn round(rt: &tokio::runtime::Runtime) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        r#"[services.web]
command = ["{FERRY}", "demo-app"]
instances = {INSTANCES}
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}" }}
[services.web.readiness]
http = "/health"
interval = "100ms"
[services.web.deploy]
strategy = "rolling"
"#
    );
    std::fs::write(dir.path().join("ferry.toml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let child = Command::new(FERRY)
        .args(["serve", "--api-addr", "127.0.0.1:0"])
        .env("FERRY_DATA_DIR", dir.path().join("data"))
        .env("FERRY_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let api_file = dir.path().join("data/api.json");
    let started = Instant::now();
    while !api_file.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "daemon start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ferry(dir.path(), &["deploy", "web", "--version", "v1"]);
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&api_file).unwrap()).unwrap();
    let url = format!("{}/v1/services/web", info["url"].as_str().unwrap());
    let token = std::fs::read_to_string(dir.path().join("data/token"))
        .unwrap()
        .trim()
        .to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (url, token, stop) = (url.clone(), token.clone(), stop.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                let mut took = Vec::new();
                // The first request opens the connection; its setup is not
                // what this measures.
                let _ = client.get(&url).bearer_auth(&token).send().await;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = client
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        took.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                took
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let deploy_started = Instant::now();
    let out = ferry(dir.path(), &["deploy", "web", "--version", "v2"]);
    assert!(out.status.success(), "{out:?}");
    let deploy_s = deploy_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<f64> = rt.block_on(async {
        let mut all = Vec::new();
        for r in readers {
            all.extend(r.await.unwrap());
        }
        all
    });
    all.sort_by(|a, b| a.total_cmp(b));
    Round {
        reads: all.len(),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
        deploy_s,
    }
}

fn main() {
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "status reads: {READERS} readers of GET /v1/services/web during a {INSTANCES}-instance rolling deploy"
    );
    let mut results = Vec::new();
    for i in 1..=rounds {
        let r = round(&rt);
        println!(
            "round {i}: {} reads, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, deploy took {:.1} s",
            r.reads, r.p50_ms, r.p99_ms, r.max_ms, r.deploy_s
        );
        results.push(r);
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "median of {rounds}: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {:.0} reads/round",
        median(&|r| r.p50_ms),
        median(&|r| r.p99_ms),
        median(&|r| r.max_ms),
        median(&|r| r.reads as f64)
    );
}
