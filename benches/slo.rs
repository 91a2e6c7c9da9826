//! SLOs: what measuring them costs, against Prometheus on the same data.
//!
//! Run by hand (not a test): `cargo bench --bench slo`.
//! Settings, all optional, by environment:
//! - `FERRY_BENCH_DAYS` (default 14): days of history written before the
//!   run (the store keeps 15 by default);
//! - `FERRY_BENCH_QUERIES` (default 10): timed runs of each query per tool;
//! - `FERRY_BENCH_ROUNDS` (default 3) and `FERRY_BENCH_WINDOW` (default
//!   `60s`): CPU rounds, each one window with SLOs and one without;
//! - `PROMETHEUS`, `PROMTOOL` (default `/usr/bin/prometheus`,
//!   `/usr/bin/promtool`);
//! - `FERRY_BENCH_OUT` (default `/tmp/ferry-slo-bench`): data, logs.
//!
//! **History.** One service, `web`, with two instances, as Ferry's proxy
//! counts it: `http_requests_total` by status (200, 404, 500, 503) and the
//! latency histogram (13 bounds and `+Inf`, `_sum`, `_count`), 40 series
//! every 10 s (the daemon's default scrape interval) for `FERRY_BENCH_DAYS`
//! up to a minute ago. The same samples go into Ferry's store (written
//! through `MetricsDb`, with its maintenance every simulated hour, as the
//! daemon would have) and, as OpenMetrics through `promtool tsdb
//! create-blocks-from openmetrics`, into Prometheus's.
//!
//! **Queries.** `ferry serve` (release build, shipped defaults) and
//! `prometheus` (shipped defaults) open their stores; once Prometheus has
//! compacted the backfilled blocks, the 9 queries one SLO measurement runs
//! (the window's bad and counted requests, `increase` over 30 d, and the
//! error ratio over the 7 burn-rate windows) are timed against both, for an
//! availability SLO (99.95 %) and a latency SLO (99 % within 100 ms), half
//! a step before the last written sample, alternating which tool goes first. Both must
//! answer the same numbers.
//!
//! **CPU.** `web` (the demo app) is released, alternately with the two SLOs
//! in its `ferry.toml` and without; `ferry serve` then runs the SLOs' rule
//! group (7 recording rules per SLO and 4 burn-rate alerts, every 15 s)
//! and measures every SLO every 10 s for `ferry slo` and `/metrics`.
//! Prometheus loads the same rule file (`evaluation_interval: 15s`), or
//! none, by `SIGHUP` at the same moment. Each window's CPU time (`utime +
//! stime`) of both processes is read from `/proc`; the cost is CPU(with) −
//! CPU(without), as a share of one core.

// Not every helper is used here.
#[allow(dead_code)]
mod common;

use common::{
    clk_tck, cpu_s, env_or, ferry_api, ferry_cli, ferry_serve, free_port, median, query_endpoints,
    wait_for,
};
use ferry_core::slo::{LATENCY_BOUNDS, SloSpec, WINDOWS};
use ferry_server::tsdb::{MetricsDb, TsdbOptions};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const STEP_S: i64 = 10;
const INSTANCES: [&str; 2] = ["web-0-a", "web-0-b"];
const STATUSES: [&str; 4] = ["200", "404", "500", "503"];
/// Share of requests within each bound (cumulative), per thousand.
const WITHIN_PER_MILLE: [u64; 13] = [
    20, 50, 100, 200, 400, 600, 800, 950, 980, 990, 995, 999, 1000,
];

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Requests each instance answered in step `i`, by status.
fn answered(i: i64, instance: usize) -> [u64; 4] {
    let odd = ((i as u64) + instance as u64) % 2;
    [97, 1 + odd, 1, odd]
}

/// One series' sample: its name, its labels, its value.
type Sample = (String, Vec<(&'static str, String)>, f64);

/// Every series' value after a step, in a fixed order.
struct History {
    totals: Vec<[u64; 4]>,
}

impl History {
    /// Counters already high at the first step, as a long-running
    /// service's are: a window reaching past the data's start then
    /// extrapolates by half a step, never to where the counter would be
    /// zero (where Prometheus 2.42 and 3, whose order Ferry follows,
    /// differ; see `tests/it/promql_diff.rs`).
    fn new() -> History {
        History {
            totals: vec![[5_000_000, 80_000, 50_000, 20_000]; INSTANCES.len()],
        }
    }

    fn step(&mut self, i: i64) {
        for (n, t) in self.totals.iter_mut().enumerate() {
            for (v, add) in t.iter_mut().zip(answered(i, n)) {
                *v += add;
            }
        }
    }

    fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for (n, instance) in INSTANCES.iter().enumerate() {
            let base = |extra: Option<(&'static str, String)>| {
                let mut l = vec![
                    ("job", "ferry".to_string()),
                    ("service", "web".to_string()),
                    ("revision", "0".to_string()),
                    ("version", "v0".to_string()),
                    ("instance", instance.to_string()),
                ];
                l.extend(extra);
                l
            };
            let t = self.totals[n];
            for (s, status) in STATUSES.iter().enumerate() {
                out.push((
                    "http_requests_total".to_string(),
                    base(Some(("status", status.to_string()))),
                    t[s] as f64,
                ));
            }
            let all: u64 = t.iter().sum();
            for ((_, le), per_mille) in LATENCY_BOUNDS.iter().zip(WITHIN_PER_MILLE) {
                out.push((
                    "http_request_duration_seconds_bucket".to_string(),
                    base(Some(("le", le.to_string()))),
                    (all * per_mille / 1000) as f64,
                ));
            }
            out.push((
                "http_request_duration_seconds_bucket".to_string(),
                base(Some(("le", "+Inf".to_string()))),
                all as f64,
            ));
            out.push((
                "http_request_duration_seconds_count".to_string(),
                base(None),
                all as f64,
            ));
            out.push((
                "http_request_duration_seconds_sum".to_string(),
                base(None),
                all as f64 * 0.05,
            ));
        }
        out
    }
}

/// Write `steps` steps ending at `end` into Ferry's store in `metrics_dir`
/// and into an OpenMetrics file (one family after another, as the format
/// wants). Returns the number of samples.
fn backfill(metrics_dir: &Path, openmetrics: &Path, end: i64, steps: i64) -> usize {
    let db = MetricsDb::open(metrics_dir, &TsdbOptions::default()).unwrap();
    let start = end - (steps - 1) * STEP_S;
    let mut history = History::new();
    // Per series (in `samples()` order): its name, labels and values.
    let mut columns: Vec<(String, String, Vec<f64>)> = history
        .samples()
        .into_iter()
        .map(|(name, labels, _)| {
            let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (name, text.join(","), Vec::new())
        })
        .collect();
    for i in 0..steps {
        history.step(i);
        let t_ms = (start + i * STEP_S) * 1000;
        let samples = history.samples();
        let batch = samples
            .into_iter()
            .zip(columns.iter_mut())
            .map(|((name, labels, v), col)| {
                col.2.push(v);
                let mut l: BTreeMap<String, String> = labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                l.insert("__name__".into(), name);
                (Arc::new(l), t_ms, v)
            })
            .collect();
        db.ingest_target("backfill", batch, BTreeMap::new(), t_ms);
        if i % 360 == 359 {
            db.maintain(t_ms);
        }
    }
    db.maintain(end * 1000);
    db.sync();
    drop(db);

    let mut f = BufWriter::new(std::fs::File::create(openmetrics).unwrap());
    let mut names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    names.sort();
    names.dedup();
    for name in names {
        for (_, labels, values) in columns.iter().filter(|c| c.0 == name) {
            for (i, v) in values.iter().enumerate() {
                writeln!(f, "{name}{{{labels}}} {v} {}", start + i as i64 * STEP_S).unwrap();
            }
        }
    }
    writeln!(f, "# EOF").unwrap();
    f.flush().unwrap();
    columns.len() * steps as usize
}

fn slos() -> Vec<SloSpec> {
    serde_json::from_value(serde_json::json!([
        { "kind": "availability", "objective": 99.95 },
        { "kind": "latency", "objective": 99, "threshold": "100ms" }
    ]))
    .unwrap()
}

const SLO_TOML: &str = r#"
[[services.web.slo]]
kind = "availability"
objective = 99.95

[[services.web.slo]]
kind = "latency"
objective = 99
threshold = "100ms"
"#;

fn ferry_toml(port: u16, with_slos: bool) -> String {
    format!(
        "[services.web]\ncommand = [\"{FERRY}\", \"demo-app\"]\ninstances = 2\nlisten = \"127.0.0.1:{port}\"\nenv = {{ DEMO_VERSION = \"{{version}}\" }}\n\n[services.web.readiness]\nhttp = \"/health\"\ninterval = \"200ms\"\n{}",
        if with_slos { SLO_TOML } else { "" }
    )
}

fn prometheus_yml(rules: Option<&Path>) -> String {
    let mut y = String::from("global:\n  evaluation_interval: 15s\n");
    if let Some(r) = rules {
        y.push_str(&format!("rule_files:\n  - {}\n", r.display()));
    }
    y
}

/// A Prometheus gauge or counter from its own `/metrics`.
fn prometheus_metric(port: u16, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Run the CLI against the daemon in `dir`; what it wrote.
fn ferry(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = ferry_cli(FERRY, dir, args);
    assert!(ok, "ferry {args:?}: {text}");
    text
}

/// The first number in a query's answer (a one-element vector).
fn number(data: &serde_json::Value) -> f64 {
    data["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let days: i64 = env_or("FERRY_BENCH_DAYS", "14").parse().unwrap();
    let runs: usize = env_or("FERRY_BENCH_QUERIES", "10").parse().unwrap();
    let rounds: usize = env_or("FERRY_BENCH_ROUNDS", "3").parse().unwrap();
    let window = humantime::parse_duration(&env_or("FERRY_BENCH_WINDOW", "60s")).unwrap();
    let prom_bin = env_or("PROMETHEUS", "/usr/bin/prometheus");
    let promtool = env_or("PROMTOOL", "/usr/bin/promtool");
    let out = PathBuf::from(env_or("FERRY_BENCH_OUT", "/tmp/ferry-slo-bench"));
    let _ = std::fs::remove_dir_all(&out);
    let ferry_dir = out.join("ferry");
    let prom_dir = out.join("prometheus");
    std::fs::create_dir_all(ferry_dir.join("data")).unwrap();
    std::fs::create_dir_all(&prom_dir).unwrap();

    // History up to a minute ago, on a step boundary.
    let end = (now_s() - 60) / STEP_S * STEP_S;
    let steps = days * 86_400 / STEP_S;
    let started = Instant::now();
    let openmetrics = out.join("history.om");
    let samples = backfill(&ferry_dir.join("data/metrics"), &openmetrics, end, steps);
    println!(
        "history: {days} d, {samples} samples, written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let made = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .arg(&openmetrics)
        .arg(prom_dir.join("data"))
        .status()
        .unwrap();
    assert!(made.success(), "promtool failed");
    let _ = std::fs::remove_file(&openmetrics);
    println!(
        "promtool wrote Prometheus's blocks in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // Both tools on their stores.
    let rules = prom_dir.join("slo-rules.yml");
    std::fs::write(&rules, ferry_core::slo::rule_file("web", &slos()).unwrap()).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(&prom_config, prometheus_yml(None)).unwrap();
    let prom_port = free_port();
    let prom = common::prometheus(&prom_bin, &prom_dir, &prom_config, prom_port);
    let fserve = ferry_serve(FERRY, &ferry_dir, &[], &[("FERRY_LOG", "warn")], true);
    let fapi = ferry_api(&ferry_dir);

    // Prometheus compacts the backfilled 2 h blocks at start; wait until
    // its block count holds for a compaction cycle (a minute).
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut blocks = prometheus_metric(prom_port, "prometheus_tsdb_blocks_loaded");
    loop {
        std::thread::sleep(Duration::from_secs(65));
        let now = prometheus_metric(prom_port, "prometheus_tsdb_blocks_loaded");
        println!("prometheus: {now} blocks loaded");
        if now == blocks || Instant::now() > deadline {
            break;
        }
        blocks = now;
    }

    // The queries of one SLO measurement, at the last written sample.
    let endpoints = query_endpoints(&fapi, prom_port);
    // Between two samples: Prometheus 2.42 takes a range's first instant
    // in, Prometheus 3 and Ferry leave it out; off the step, no sample
    // lies on a boundary and both read the same ones.
    let at = end - STEP_S / 2;
    let mut report = String::new();
    let mut lines = Vec::new();
    for slo in slos() {
        let range = format!("{}s", slo.window.as_millis() / 1000);
        let (bad, total) = slo.counts("web", &range);
        let mut queries = vec![
            ("bad over 30d".to_string(), bad),
            ("all over 30d".to_string(), total),
        ];
        for w in WINDOWS {
            queries.push((format!("ratio {w}"), slo.error_ratio("web", w)));
        }
        let mut per_slo = [0.0f64; 2];
        for (name, q) in &queries {
            let params = [("query", q.clone()), ("time", at.to_string())];
            let mut lat = [vec![], vec![]];
            // One untimed run each, whose answers must agree.
            let answers: Vec<f64> = endpoints
                .iter()
                .map(|e| number(&e.run("/api/v1/query", &params).1))
                .collect();
            for r in 0..runs {
                for k in [r % 2, 1 - r % 2] {
                    lat[k].push(endpoints[k].run("/api/v1/query", &params).0);
                }
            }
            let tol = 1e-9 * answers[1].abs().max(1.0);
            assert!(
                (answers[0] - answers[1]).abs() <= tol,
                "{name}: Ferry {} Prometheus {}: {q}",
                answers[0],
                answers[1]
            );
            let [f, p] = [median(&mut lat[0]), median(&mut lat[1])];
            per_slo[0] += f;
            per_slo[1] += p;
            lines.push(format!(
                "| {} | {name} | {:.1} ms | {:.1} ms | {:.2}× | {} |",
                slo.name(),
                f,
                p,
                f / p,
                answers[0]
            ));
        }
        lines.push(format!(
            "| {} | **one measurement (9 queries)** | **{:.1} ms** | **{:.1} ms** | **{:.2}×** | |",
            slo.name(),
            per_slo[0],
            per_slo[1],
            per_slo[0] / per_slo[1]
        ));
    }
    report.push_str(&format!(
        "Queries half a step before the last sample of {days} d of history ({samples} samples), median of {runs} runs each:\n\n| SLO | query | Ferry | Prometheus | ratio | answer |\n|---|---|---:|---:|---:|---:|\n"
    ));
    for l in &lines {
        report.push_str(l);
        report.push('\n');
    }
    print!("{report}");

    // CPU with and without the SLOs, both tools switched together.
    let tck = clk_tck();
    let fpid = fserve.child.id();
    let ppid = prom.child.id();
    let port = free_port();
    let mut cost: [Vec<f64>; 2] = [vec![], vec![]];
    let mut seen: [[Vec<f64>; 2]; 2] = Default::default();
    let mut version = 0;
    let mut slo_text = String::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut used = [[0.0f64; 2]; 2];
        for with in order {
            version += 1;
            std::fs::write(ferry_dir.join("ferry.toml"), ferry_toml(port, with)).unwrap();
            ferry(
                &ferry_dir,
                &["deploy", "web", "--version", &format!("v{version}")],
            );
            if with && slo_text.is_empty() {
                // What the daemon makes of the history (after its first
                // measurement, within 10 s).
                std::thread::sleep(Duration::from_secs(11));
                slo_text = ferry(&ferry_dir, &["slo", "web"]);
            }
            std::fs::write(
                &prom_config,
                prometheus_yml(with.then_some(rules.as_path())),
            )
            .unwrap();
            Command::new("kill")
                .args(["-HUP", &ppid.to_string()])
                .status()
                .unwrap();
            if with {
                let url = format!("http://127.0.0.1:{prom_port}/api/v1/rules");
                wait_for(
                    "Prometheus to load the rules",
                    Duration::from_secs(30),
                    || {
                        reqwest::blocking::get(&url)
                            .and_then(|r| r.text())
                            .is_ok_and(|t| t.contains("ErrorBudgetBurn"))
                    },
                );
            }
            // Settle past a deploy's own work.
            std::thread::sleep(Duration::from_secs(10));
            let before = [cpu_s(fpid, tck), cpu_s(ppid, tck)];
            std::thread::sleep(window);
            let after = [cpu_s(fpid, tck), cpu_s(ppid, tck)];
            let i = usize::from(with);
            for k in 0..2 {
                used[i][k] = (after[k] - before[k]) / window.as_secs_f64();
                seen[i][k].push(used[i][k]);
            }
            println!(
                "round {round} slos={with}: ferry {:.4} s/s, prometheus {:.4} s/s",
                used[i][0], used[i][1]
            );
        }
        for k in 0..2 {
            cost[k].push(used[1][k] - used[0][k]);
        }
    }
    let [mut f_cost, mut p_cost] = cost;
    let (fc, pc) = (median(&mut f_cost), median(&mut p_cost));
    report.push_str(&format!(
        "\nCPU (share of one core, median of {rounds} rounds of {window:?}):\n\n| | Ferry | Prometheus |\n|---|---:|---:|\n| without SLOs | {:.4} | {:.4} |\n| with 2 SLOs | {:.4} | {:.4} |\n| **cost of the 2 SLOs** | **{:.4}** | **{:.4}** |\n",
        median(&mut seen[0][0].clone()),
        median(&mut seen[0][1].clone()),
        median(&mut seen[1][0].clone()),
        median(&mut seen[1][1].clone()),
        fc,
        pc
    ));
    report.push_str(&format!(
        "\n`ferry slo web` over the history:\n\n```\n{slo_text}```\n"
    ));
    println!("{report}");
    std::fs::write(out.join("report.md"), &report).unwrap();
    drop(prom);
    drop(fserve);
}
