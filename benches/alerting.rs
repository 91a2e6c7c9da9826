//! Alerting: rule evaluation cost against Prometheus, the notification
//! pipeline with a dead receiver present, and the time from an alert
//! firing to the last request a bad revision serves.
//!
//! Run by hand (not a test): `cargo bench --bench alerting`.
//! Settings, all optional, by environment:
//! - `FERRY_BENCH_PARTS` (default `eval,notify,rollback`): which parts;
//! - `FERRY_BENCH_DURATION` (default `90s`): the measurement window of one
//!   evaluation round (after a 20 s warm-up);
//! - `FERRY_BENCH_ROUNDS` (default 3): evaluation rounds;
//! - `FERRY_BENCH_ALERTS` (default 10000): alerts pushed in the
//!   notification part;
//! - `FERRY_BENCH_ROLLBACKS` (default 5): alert → rollback rounds;
//! - `PROMETHEUS` (default `/usr/bin/prometheus`);
//! - `FERRY_BENCH_OUT` (default `/tmp/ferry-alerting-bench`): logs, data.
//!
//! **Evaluation.** The bench serves a target on 127.0.0.1 with 20 000
//! counters (200 metrics × 100 series, labels `instance` and `shard`, each
//! growing by `instance % 7` a second) and writes one rule file of 100
//! groups × 10 alerting rules (a mix of per-series `rate(x[5m]) > N`,
//! `sum by`/`avg by`/`max by` aggregations, `topk`, plain thresholds and a
//! `for: 1m`; about a third of the rules have firing alerts, ≈ 2 300
//! alerts in all). Each round starts four processes at once, each in a
//! session of its own: `ferry serve --config` (release build) and
//! `prometheus`, each with the target at `interval: 15s` and the rule file
//! at `evaluation_interval: 15s`, and the same two without rules (the
//! baseline: scraping and storing the same 20 000 series). After a 20 s
//! warm-up it reads each one's CPU (`utime + stime` from `/proc/PID/stat`)
//! over the window and, every 5 s, `/api/v1/rules` (every group's
//! `evaluationTime` of each evaluation it sees). The cost of evaluation is
//! CPU(with rules) − CPU(baseline), as a share of one core.
//!
//! **Notification pipeline.** `ferry serve` with a routing tree that sends
//! every alert (`group_by: ['...']`, `group_wait: 0s`) to a fast local
//! webhook and, on a `continue: true` route before it, to a dead one (a
//! listening socket that never accepts: requests hang until the webhook
//! timeout, connections until the connect timeout). The bench POSTs
//! `FERRY_BENCH_ALERTS` distinct alerts to `/api/v2/alerts` in batches of
//! 500, then waits for every one to reach the fast webhook. Then the same
//! with a second *fast* receiver in the dead one's place (the same work,
//! nothing slow), then with the fast one alone. It reports alerts/s accepted, notifications/s
//! delivered to the fast receiver and the latency from an alert's POST to
//! its notification (p50, p99, max).
//!
//! **Alert → rollback.** A fresh daemon runs the demo app v1 (2 instances,
//! rolling), with a rule over the proxy's own request metrics:
//! `sum by (service) (rate(http_requests_total{service="web",status=~"5.."}[5s])) > 0`,
//! `severity: critical`, `evaluation_interval = "1s"`, `--scrape-interval
//! 1s`. 8 keep-alive clients send 100 requests/s each through the proxy;
//! v2, answering 30 % of requests with 500, is deployed with `--monitor
//! 60s`. From the `rule-firing` entry of `ferry alerts history` (the
//! evaluation's timestamp) to the last response carrying revision 2 that
//! a client received.

// Not every helper is used here (the query ones are the other benches').
#[allow(dead_code)]
mod common;

use common::{Proc, clk_tck, cpu_s, env_or, free_port, median, percentile};
use ferry::loadgen::{LoadConfig, LoadGen, Sample};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const METRICS: usize = 200;
const PER_METRIC: usize = 100;
const SHARDS: usize = 10;
const GROUPS: usize = 100;
const RULES_PER_GROUP: usize = 10;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ------------------------------------------------------------ the target

struct Target {
    started: Instant,
    body: Mutex<(u64, Arc<String>)>,
}

impl Target {
    fn render(tick: u64) -> String {
        let mut out = String::with_capacity(METRICS * PER_METRIC * 48);
        for m in 0..METRICS {
            let _ = writeln!(out, "# TYPE bench_m{m}_total counter");
            for k in 0..PER_METRIC {
                let v = 1000 * (m + k) as u64 + (k % 7) as u64 * tick;
                let _ = writeln!(
                    out,
                    "bench_m{m}_total{{instance=\"i{k}\",shard=\"s{}\"}} {v}",
                    k % SHARDS
                );
            }
        }
        out
    }

    fn body(&self) -> Arc<String> {
        let tick = self.started.elapsed().as_secs();
        let mut b = self.body.lock().unwrap();
        if b.0 != tick {
            *b = (tick, Arc::new(Self::render(tick)));
        }
        b.1.clone()
    }
}

/// Read one HTTP/1.1 request (head and `Content-Length` body); `None` at
/// the end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// A keep-alive HTTP server on 127.0.0.1, a thread per connection:
/// `answer` gets each request's body and returns the response's.
fn serve(answer: impl Fn(Vec<u8>) -> (&'static str, Arc<String>) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                });
                let mut writer = conn;
                while let Some(body) = read_request(&mut reader) {
                    let (ctype, text) = answer(body);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                        text.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(text.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn start_target() -> u16 {
    let target = Arc::new(Target {
        started: Instant::now(),
        body: Mutex::new((0, Arc::new(Target::render(0)))),
    });
    serve(move |_| ("text/plain; version=0.0.4", target.body()))
}

/// The rule file: 100 groups × 10 alerting rules, group `g` over metrics
/// `2g` and `2g + 1`.
fn rule_file() -> String {
    let mut out = String::from("groups:\n");
    for g in 0..GROUPS {
        let (a, b) = (2 * g, 2 * g + 1);
        let _ = writeln!(out, "- name: group-{g}\n  rules:");
        let rules = [
            // ≈ 14 series of 100 fire.
            (format!("rate(bench_m{a}_total[5m]) > 5"), ""),
            (
                format!("sum by (shard) (rate(bench_m{b}_total[5m])) > 30"),
                "",
            ),
            (format!("bench_m{a}_total > 1e15"), ""),
            (format!("sum(rate(bench_m{b}_total[5m])) > 0"), ""),
            (
                format!("avg by (shard) (rate(bench_m{a}_total[1m])) < 2.9"),
                "",
            ),
            (
                format!("max by (shard) (increase(bench_m{b}_total[5m])) > 1e9"),
                "",
            ),
            (format!("count(bench_m{a}_total) != {PER_METRIC}"), ""),
            (
                format!("rate(bench_m{b}_total{{shard=\"s3\"}}[5m]) == 0"),
                "",
            ),
            (format!("topk(3, rate(bench_m{a}_total[5m])) > 5"), ""),
            (format!("sum by (shard) (bench_m{b}_total) < 0"), "1m"),
        ];
        assert_eq!(rules.len(), RULES_PER_GROUP);
        for (j, (expr, for_)) in rules.iter().enumerate() {
            let _ = writeln!(
                out,
                "  - alert: Bench{g}x{j}\n    expr: '{expr}'\n    labels:\n      severity: warning\n    annotations:\n      summary: 'value {{{{ $value }}}}'"
            );
            if !for_.is_empty() {
                let _ = writeln!(out, "    for: {for_}");
            }
        }
    }
    out
}

// ------------------------------------------------------------ processes

struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::blocking::Client,
}

impl Api {
    fn ferry(dir: &Path) -> Api {
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("data/api.json")).unwrap())
                .unwrap();
        Api {
            base: info["url"].as_str().unwrap().trim_end_matches('/').into(),
            token: Some(
                std::fs::read_to_string(dir.join("data/token"))
                    .unwrap()
                    .trim()
                    .to_string(),
            ),
            client: reqwest::blocking::Client::new(),
        }
    }

    fn prometheus(port: u16) -> Api {
        Api {
            base: format!("http://127.0.0.1:{port}"),
            token: None,
            client: reqwest::blocking::Client::new(),
        }
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.timeout(Duration::from_secs(10))
            .send()
            .ok()?
            .json()
            .ok()
    }

    fn post_json(&self, path: &str, body: String) -> reqwest::StatusCode {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.timeout(Duration::from_secs(60))
            .send()
            .map(|r| r.status())
            .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

fn start_prometheus(bin: &str, dir: &Path, target: u16, rules: bool) -> (Proc, u16) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let mut config = format!(
        "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
    );
    if rules {
        std::fs::write(dir.join("rules.yml"), rule_file()).unwrap();
        config.push_str("rule_files: ['rules.yml']\n");
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    (
        common::prometheus(bin, dir, &dir.join("prometheus.yml"), port),
        port,
    )
}

// ------------------------------------------------------------ evaluation

struct EvalRound {
    /// CPU seconds over the window: ferry with rules, ferry baseline,
    /// prometheus with rules, prometheus baseline.
    cpu: [f64; 4],
    window_s: f64,
    /// Per-group evaluation times seen (ms): ferry, prometheus.
    eval_ms: [Vec<f64>; 2],
    /// Alerts firing at the end: ferry, prometheus.
    firing: [usize; 2],
    /// Rules with health other than ok: ferry, prometheus.
    unhealthy: [usize; 2],
}

/// Every group's (name, lastEvaluation) → evaluationTime (ms), and the
/// number of firing alerts and unhealthy rules.
fn read_rules(
    api: &Api,
    seen: &mut HashMap<(String, String), f64>,
    by_kind: &mut [usize; RULES_PER_GROUP],
) -> (usize, usize) {
    let Some(v) = api.get("/api/v1/rules") else {
        return (0, 0);
    };
    *by_kind = [0; RULES_PER_GROUP];
    let (mut firing, mut bad) = (0, 0);
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or_default().to_string();
        let last = g["lastEvaluation"].as_str().unwrap_or_default().to_string();
        if let Some(t) = g["evaluationTime"].as_f64()
            && !last.starts_with("0001")
        {
            seen.insert((name, last), t * 1000.0);
        }
        for r in g["rules"].as_array().into_iter().flatten() {
            if r["health"] != "ok" {
                bad += 1;
            }
            let n = r["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "firing")
                .count();
            firing += n;
            // Firing alerts by rule kind (`Bench{g}x{j}`), to compare.
            if let Some(j) = r["name"]
                .as_str()
                .and_then(|n| n.rsplit_once('x'))
                .and_then(|(_, j)| j.parse::<usize>().ok())
                && j < RULES_PER_GROUP
            {
                by_kind[j] += n;
            }
        }
    }
    (firing, bad)
}

fn eval_round(out: &Path, prom_bin: &str, window: Duration, tck: f64) -> EvalRound {
    let target = start_target();
    let scrape = format!(
        "[metrics]\nscrape = [{{ job = \"bench\", url = \"http://127.0.0.1:{target}/metrics\", interval = \"15s\" }}]\n"
    );
    let with_rules = format!(
        "{scrape}[alerting]\nrule_files = [\"rules.yml\"]\nbuiltin_rules = false\nevaluation_interval = \"15s\"\n"
    );
    let baseline = format!("{scrape}[alerting]\nbuiltin_rules = false\n");
    let fdir = out.join("eval/ferry");
    let bdir = out.join("eval/ferry-baseline");
    let ferry = start_ferry_with(&fdir, &with_rules, &[("rules.yml", rule_file())]);
    let ferry_base = start_ferry_with(&bdir, &baseline, &[]);
    let (prom, prom_port) = start_prometheus(prom_bin, &out.join("eval/prometheus"), target, true);
    let (prom_base, base_port) = start_prometheus(
        prom_bin,
        &out.join("eval/prometheus-baseline"),
        target,
        false,
    );
    let apis = [
        Api::ferry(&fdir),
        Api::ferry(&bdir),
        Api::prometheus(prom_port),
        Api::prometheus(base_port),
    ];
    let pids = [
        ferry.child.id(),
        ferry_base.child.id(),
        prom.child.id(),
        prom_base.child.id(),
    ];
    std::thread::sleep(Duration::from_secs(20));
    let mut seen: [HashMap<(String, String), f64>; 2] = Default::default();
    // Polled from the start so that every process answers the same reads.
    let mut kinds = [[0; RULES_PER_GROUP]; 2];
    let mut poll = |seen: &mut [HashMap<(String, String), f64>; 2]| {
        let f = read_rules(&apis[0], &mut seen[0], &mut kinds[0]);
        read_rules(&apis[1], &mut HashMap::new(), &mut [0; RULES_PER_GROUP]);
        let p = read_rules(&apis[2], &mut seen[1], &mut kinds[1]);
        read_rules(&apis[3], &mut HashMap::new(), &mut [0; RULES_PER_GROUP]);
        (f, p)
    };
    poll(&mut seen);
    seen = Default::default();
    let t0 = Instant::now();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_s(*p, tck)).collect();
    let mut last = ((0, 0), (0, 0));
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5).min(window.saturating_sub(t0.elapsed())));
        last = poll(&mut seen);
    }
    let cpu1: Vec<f64> = pids.iter().map(|p| cpu_s(*p, tck)).collect();
    let window_s = t0.elapsed().as_secs_f64();
    println!(
        "firing alerts by rule kind 0..9 at the end: ferry {:?}, prometheus {:?}",
        kinds[0], kinds[1]
    );
    let mut cpu = [0.0; 4];
    for i in 0..4 {
        cpu[i] = cpu1[i] - cpu0[i];
    }
    drop((ferry, ferry_base, prom, prom_base));
    EvalRound {
        cpu,
        window_s,
        eval_ms: [
            seen[0].values().copied().collect(),
            seen[1].values().copied().collect(),
        ],
        firing: [last.0.0, last.1.0],
        unhealthy: [last.0.1, last.1.1],
    }
}

/// `ferry serve --config ferry.toml` in a session of its own (as under a
/// service manager), in a fresh `dir` with `files` written into it.
fn start_ferry_with(dir: &Path, config: &str, files: &[(&str, String)]) -> Proc {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::write(dir.join("ferry.toml"), config).unwrap();
    common::ferry_serve(
        FERRY,
        dir,
        &["--config", "ferry.toml"],
        &[("FERRY_LOG", "warn")],
        true,
    )
}

fn eval_part(out: &Path, report: &mut String) {
    let prom_bin = env_or("PROMETHEUS", "/usr/bin/prometheus");
    let window = humantime::parse_duration(&env_or("FERRY_BENCH_DURATION", "90s")).unwrap();
    let rounds: usize = env_or("FERRY_BENCH_ROUNDS", "3").parse().unwrap();
    let tck = clk_tck();
    println!(
        "== rule evaluation: {} series, {} rules in {GROUPS} groups every 15 s; {rounds} rounds of {window:?}",
        METRICS * PER_METRIC,
        GROUPS * RULES_PER_GROUP
    );
    let mut runs = Vec::new();
    for i in 0..rounds {
        let r = eval_round(out, &prom_bin, window, tck);
        let share = |a: f64, b: f64| (a - b) / r.window_s * 100.0;
        let (mut fe, mut pe) = (r.eval_ms[0].clone(), r.eval_ms[1].clone());
        println!(
            "round {}: window {:.0} s; CPU s ferry {:.2} (baseline {:.2}) → rules {:.2} % of a core; prometheus {:.2} (baseline {:.2}) → rules {:.2} %; group eval p50/p99 ferry {:.1}/{:.1} ms ({} evals), prometheus {:.1}/{:.1} ms ({} evals); firing ferry {} prometheus {}; unhealthy rules ferry {} prometheus {}",
            i + 1,
            r.window_s,
            r.cpu[0],
            r.cpu[1],
            share(r.cpu[0], r.cpu[1]),
            r.cpu[2],
            r.cpu[3],
            share(r.cpu[2], r.cpu[3]),
            percentile(&mut fe, 0.5),
            percentile(&mut fe, 0.99),
            fe.len(),
            percentile(&mut pe, 0.5),
            percentile(&mut pe, 0.99),
            pe.len(),
            r.firing[0],
            r.firing[1],
            r.unhealthy[0],
            r.unhealthy[1],
        );
        runs.push(r);
    }
    let med = |f: &dyn Fn(&EvalRound) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let f_rules = med(&|r| (r.cpu[0] - r.cpu[1]) / r.window_s * 100.0);
    let p_rules = med(&|r| (r.cpu[2] - r.cpu[3]) / r.window_s * 100.0);
    let f_total = med(&|r| r.cpu[0] / r.window_s * 100.0);
    let p_total = med(&|r| r.cpu[2] / r.window_s * 100.0);
    let f_base = med(&|r| r.cpu[1] / r.window_s * 100.0);
    let p_base = med(&|r| r.cpu[3] / r.window_s * 100.0);
    let f_p50 = med(&|r| percentile(&mut r.eval_ms[0].clone(), 0.5));
    let f_p99 = med(&|r| percentile(&mut r.eval_ms[0].clone(), 0.99));
    let p_p50 = med(&|r| percentile(&mut r.eval_ms[1].clone(), 0.5));
    let p_p99 = med(&|r| percentile(&mut r.eval_ms[1].clone(), 0.99));
    let _ = writeln!(
        report,
        "rule evaluation (medians of {rounds} rounds; % of one core over the window):\n  \
         ferry: {f_total:.2} % with rules, {f_base:.2} % baseline → evaluation {f_rules:.2} % (target < 10 %)\n  \
         prometheus: {p_total:.2} % with rules, {p_base:.2} % baseline → evaluation {p_rules:.2} %\n  \
         ratio ferry/prometheus: evaluation CPU {:.2}×, whole process {:.2}×\n  \
         per-group evaluationTime p50 / p99: ferry {f_p50:.1} / {f_p99:.1} ms, prometheus {p_p50:.1} / {p_p99:.1} ms ({:.2}× / {:.2}×)",
        f_rules / p_rules,
        f_total / p_total,
        f_p50 / p_p50,
        f_p99 / p_p99,
    );
}

// ------------------------------------------------------------ notifications

struct Notify {
    accepted_per_s: f64,
    delivered_per_s: f64,
    delivered: usize,
    latency_ms: Vec<f64>,
}

/// What shares the fast receiver's alerts, on a `continue` route before
/// it.
#[derive(Clone, Copy, PartialEq)]
enum Second {
    /// Nothing: the fast receiver alone.
    None,
    /// Another fast receiver: the same work, no slow one.
    Fast,
    /// A receiver that never accepts a connection.
    Dead,
}

fn notify_run(out: &Path, n: usize, second: Second) -> Notify {
    let with_dead = second == Second::Dead;
    // The fast receiver: when each alert id first arrived.
    let arrived: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let posts = Arc::new(AtomicU64::new(0));
    let (a2, p2) = (arrived.clone(), posts.clone());
    let empty = Arc::new(String::new());
    let fast = serve(move |body| {
        p2.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            let mut a = a2.lock().unwrap();
            for alert in v["alerts"].as_array().into_iter().flatten() {
                if let Some(id) = alert["labels"]["id"].as_str().and_then(|s| s.parse().ok()) {
                    a.entry(id).or_insert(at);
                }
            }
        }
        ("text/plain", empty.clone())
    });
    // The dead one: listens, never accepts.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    // The second fast one: answers at once, counts nothing.
    let second_fast = serve(|_| ("text/plain", Arc::new(String::new())));
    let second_port = if with_dead { dead_port } else { second_fast };
    let dead_route = if second != Second::None {
        "  - receiver: dead\n    matchers: ['bench=\"1\"']\n    continue: true\n"
    } else {
        ""
    };
    let am = format!(
        "route:\n  receiver: fast\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 5m\n  repeat_interval: 4h\n  routes:\n{dead_route}  - receiver: fast\n    matchers: ['bench=\"1\"']\nreceivers:\n- name: fast\n  webhook_configs: [{{url: 'http://127.0.0.1:{fast}/', send_resolved: false}}]\n- name: dead\n  webhook_configs: [{{url: 'http://127.0.0.1:{second_port}/', send_resolved: false}}]\n"
    );
    let dir = out.join(match second {
        Second::Dead => "notify/with-dead",
        Second::Fast => "notify/with-second-fast",
        Second::None => "notify/alone",
    });
    let config = "[alerting]\nbuiltin_rules = false\nalertmanager_config = \"am.yml\"\n";
    let ferry = start_ferry_with(&dir, config, &[("am.yml", am)]);
    let api = Api::ferry(&dir);
    let batch = 500;
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let started = Instant::now();
    let mut rejected = 0;
    for b in 0..n.div_ceil(batch) {
        let ids: Vec<u64> = (b * batch..((b + 1) * batch).min(n))
            .map(|i| i as u64)
            .collect();
        let body: Vec<serde_json::Value> = ids
            .iter()
            .map(|i| {
                serde_json::json!({
                    "labels": {"alertname": format!("Bench{}", i % 50), "bench": "1", "id": i.to_string(), "instance": format!("host-{i}"), "severity": "warning"},
                    "annotations": {"summary": format!("alert {i}")},
                })
            })
            .collect();
        let at = Instant::now();
        let status = api.post_json("/api/v2/alerts", serde_json::to_string(&body).unwrap());
        if !status.is_success() {
            rejected += 1;
        }
        for i in ids {
            sent_at.insert(i, at);
        }
    }
    let accepted = started.elapsed();
    assert_eq!(rejected, 0, "batches rejected");
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrived.lock().unwrap().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let arrived = arrived.lock().unwrap().clone();
    let last = arrived.values().max().copied().unwrap_or(started);
    let latency_ms: Vec<f64> = arrived
        .iter()
        .filter_map(|(id, at)| Some(at.duration_since(*sent_at.get(id)?).as_secs_f64() * 1000.0))
        .collect();
    drop(ferry);
    drop(dead);
    Notify {
        accepted_per_s: n as f64 / accepted.as_secs_f64(),
        delivered_per_s: arrived.len() as f64 / last.duration_since(started).as_secs_f64(),
        delivered: arrived.len(),
        latency_ms,
    }
}

fn notify_part(out: &Path, report: &mut String) {
    let n: usize = env_or("FERRY_BENCH_ALERTS", "10000").parse().unwrap();
    println!("== notification pipeline: {n} distinct alerts, one notification each");
    let _ = writeln!(
        report,
        "notification pipeline ({n} alerts in batches of 500, group_by ['...'], group_wait 0s):"
    );
    for second in [Second::Dead, Second::Fast, Second::None] {
        let mut r = notify_run(out, n, second);
        let what = match second {
            Second::Dead => "fast + dead receiver  ",
            Second::Fast => "fast + second fast one",
            Second::None => "fast receiver alone   ",
        };
        let line = format!(
            "  {what}: accepted {:.0} alerts/s; delivered {}/{n} to the fast receiver, {:.0} notifications/s; POST → fast receiver p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            r.accepted_per_s,
            r.delivered,
            r.delivered_per_s,
            percentile(&mut r.latency_ms, 0.5),
            percentile(&mut r.latency_ms, 0.99),
            percentile(&mut r.latency_ms, 1.0),
        );
        println!("{line}");
        let _ = writeln!(report, "{line}");
    }
}

// ------------------------------------------------------------ rollback

fn ferry_cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(FERRY)
        .args(args)
        .env("FERRY_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (alert firing → last response from revision 2, first 5xx from
/// revision 2 → alert firing), in ms.
fn rollback_round(rt: &tokio::runtime::Runtime, out: &Path, i: usize) -> (f64, f64) {
    let dir = out.join(format!("rollback/{i}"));
    let port = free_port();
    let config = format!(
        r#"[services.web]
command = ["{FERRY}", "demo-app"]
instances = 2
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}" }}
[services.web.readiness]
http = "/health"
interval = "100ms"
[services.web.deploy]
strategy = "rolling"
min_ready = "200ms"
[alerting]
rule_files = ["rules.yml"]
builtin_rules = false
evaluation_interval = "1s"
"#
    );
    let rules = r#"groups:
- name: web
  rules:
  - alert: WebErrors
    expr: sum by (service) (rate(http_requests_total{service="web",status=~"5.."}[5s])) > 0
    labels:
      severity: critical
"#;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    std::fs::write(dir.join("ferry.toml"), &config).unwrap();
    let _daemon = common::ferry_serve(
        FERRY,
        &dir,
        &["--config", "ferry.toml", "--scrape-interval", "1s"],
        &[("FERRY_LOG", "warn")],
        false,
    );
    ferry_cli(&dir, &["deploy", "web", "--version", "v1"]);
    let mut lc = LoadConfig::new(([127, 0, 0, 1], port).into());
    lc.connections = 8;
    lc.rate_per_connection = Some(100.0);
    lc.max_duration = Duration::from_secs(120);
    lc.record_samples = true;
    let load_epoch = now_ms();
    let load = rt.block_on(async { LoadGen::start(lc) });
    std::thread::sleep(Duration::from_secs(1));
    ferry_cli(
        &dir,
        &[
            "deploy",
            "web",
            "--version",
            "v2",
            "--detach",
            "--monitor",
            "60s",
            "--set",
            "DEMO_FAILURE_RATE=0.3",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ferry_cli(&dir, &["status", "web", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        if v["rollout"].is_null() && v["stable"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 was not rolled back within 60 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let samples: Vec<Sample> = load.samples();
    rt.block_on(load.stop());
    let history = ferry_cli(
        &dir,
        &[
            "alerts",
            "history",
            "--alert",
            "WebErrors",
            "--output",
            "json",
        ],
    );
    let fired = history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|h| h["kind"] == "rule-firing")
        .and_then(|h| h["at"].as_i64())
        .expect("a rule-firing entry");
    let bad = |s: &&Sample| s.revision == Some(2);
    let last_bad = samples.iter().filter(bad).map(|s| s.at_ms).max().unwrap();
    let first_5xx = samples
        .iter()
        .filter(bad)
        .filter(|s| s.status.is_some_and(|c| c >= 500))
        .map(|s| s.at_ms)
        .min()
        .unwrap();
    let last_bad_epoch = load_epoch + last_bad as i64;
    let first_5xx_epoch = load_epoch + first_5xx as i64;
    (
        (last_bad_epoch - fired) as f64,
        (fired - first_5xx_epoch) as f64,
    )
}

fn rollback_part(out: &Path, report: &mut String) {
    let n: usize = env_or("FERRY_BENCH_ROLLBACKS", "5").parse().unwrap();
    println!("== alert → rollback: {n} rounds");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut lat, mut detect) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (l, d) = rollback_round(&rt, out, i);
        println!(
            "round {}: alert firing → last response from the bad revision {l:.0} ms (first 5xx → firing {d:.0} ms)",
            i + 1
        );
        lat.push(l);
        detect.push(d);
    }
    let _ = writeln!(
        report,
        "alert → rollback ({n} rounds): firing → last response from the bad revision median {:.0} ms, max {:.0} ms (target < 1000 ms); first 5xx → firing median {:.0} ms, max {:.0} ms",
        median(&mut lat.clone()),
        percentile(&mut lat, 1.0),
        median(&mut detect.clone()),
        percentile(&mut detect, 1.0),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let parts = env_or("FERRY_BENCH_PARTS", "eval,notify,rollback");
    let out = PathBuf::from(env_or("FERRY_BENCH_OUT", "/tmp/ferry-alerting-bench"));
    std::fs::create_dir_all(&out).unwrap();
    println!("ferry: {FERRY}\nraw: {}", out.display());
    let mut report = String::new();
    let parts: HashSet<&str> = parts.split(',').map(str::trim).collect();
    if parts.contains("eval") {
        eval_part(&out, &mut report);
    }
    if parts.contains("notify") {
        notify_part(&out, &mut report);
    }
    if parts.contains("rollback") {
        rollback_part(&out, &mut report);
    }
    println!("\n== report\n{report}");
    std::fs::write(out.join("report.txt"), &report).unwrap();
}
