//! Ferry's metrics store against Prometheus, side by side in one run.
//!
//! Run by hand (not a test): `cargo bench --bench metrics_store`.
//! Settings, all optional, by environment:
//! - `FERRY_BENCH_DURATION` (default `5m`): how long both scrape;
//! - `FERRY_BENCH_QUERIES` (default 20): timed runs of each query per tool;
//! - `FERRY_BENCH_IDLE` (default `60s`, `0s` to skip): how long the idle
//!   daemon runs before its RSS is read;
//! - `PROMETHEUS` (default `/usr/bin/prometheus`);
//! - `FERRY_BENCH_OUT` (default `/tmp/ferry-metrics-bench`): raw samples
//!   (`samples.csv`), query latencies (`queries.csv`), logs.
//!
//! The bench serves a synthetic target on 127.0.0.1 (20 000 series: a
//! counter family over 10 000 label combinations, a classic histogram of
//! 1 000 buckets plus `_sum`/`_count`, and two gauge families, one integral,
//! one fractional), whose values move every second, deterministically (a
//! scrape in the same second sees the same values, whoever asks). It
//! starts `ferry serve` (the release binary users run, shipped defaults,
//! `--config` with the target in `[metrics] scrape` at `interval = "1s"`)
//! and `prometheus` (`scrape_interval: 1s`, the same target, shipped
//! defaults otherwise) at once, each in a session of its own, and every
//! 5 s records their RSS (`VmRSS`), CPU time (`utime + stime`) and bytes
//! on disk. Then it times a fixed set of queries against both at the same
//! evaluation time, alternating which tool goes first, and counts the
//! samples each stored. Last, a fresh `ferry serve` with no services and
//! no config runs for `FERRY_BENCH_IDLE` and its RSS is read.

// Not every helper is used here (`ferry_cli` is the other benches').
#[allow(dead_code)]
mod common;

use common::{
    Endpoint, Proc, clk_tck, cpu_s, env_or, ferry_api, free_port, median, percentile,
    query_endpoints,
};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const JOB: &str = "synthetic";

// ------------------------------------------------------------ the target

const PODS: usize = 10;
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 5] = ["200", "201", "404", "500", "503"];
const PATHS: usize = 50;
const HANDLERS: usize = 20;
const HIST_PODS: usize = 5;
const LE: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];
const COMPONENTS: usize = 440;

const COUNTERS: usize = PODS * METHODS.len() * CODES.len() * PATHS;
const HIST_GROUPS: usize = HANDLERS * HIST_PODS;
const GAUGES: usize = PODS * COMPONENTS;
/// Series the target exposes: 10 000 + 1 200 + 4 400 + 4 400.
const SERIES: usize = COUNTERS + HIST_GROUPS * (LE.len() + 2) + 2 * GAUGES;

/// splitmix64: a deterministic pseudo-random number from a seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rand(series: usize, tick: u64, salt: u64) -> u64 {
    mix((series as u64) << 32 ^ tick ^ salt << 56)
}

/// The target's values at one tick (one second since it started).
struct Values {
    tick: u64,
    counters: Vec<u64>,
    /// Per histogram group: cumulative bucket counts, then sum.
    buckets: Vec<[u64; LE.len()]>,
    sums: Vec<f64>,
    memory: Vec<u64>,
    cpu: Vec<f64>,
}

impl Values {
    fn new() -> Values {
        Values {
            tick: 0,
            counters: (0..COUNTERS).map(|i| rand(i, 0, 1) % 100_000).collect(),
            buckets: vec![[0; LE.len()]; HIST_GROUPS],
            sums: vec![0.0; HIST_GROUPS],
            memory: (0..GAUGES)
                .map(|i| (1 << 20) * (16 + rand(i, 0, 3) % 1024))
                .collect(),
            cpu: (0..GAUGES)
                .map(|i| (rand(i, 0, 4) % 10_000) as f64 / 10_000.0)
                .collect(),
        }
    }

    /// One second later.
    fn step(&mut self) {
        self.tick += 1;
        let t = self.tick;
        for (i, c) in self.counters.iter_mut().enumerate() {
            // Successes move fast, errors rarely, as on a real service.
            let code = (i / PATHS) % CODES.len();
            let r = rand(i, t, 1);
            *c += match code {
                0 => r % 40,
                1 => r % 6,
                2 => u64::from(r.is_multiple_of(4)) * (r >> 8) % 3,
                _ => u64::from(r.is_multiple_of(16)),
            };
        }
        for (g, (b, sum)) in self.buckets.iter_mut().zip(&mut self.sums).enumerate() {
            let n = rand(g, t, 2) % 30;
            for k in 0..n {
                // Latency: mostly fast, a tail.
                let r = rand(g * 64 + k as usize, t, 5);
                let bucket = (r % 100) as usize;
                let first = match bucket {
                    0..=9 => 0,
                    10..=29 => 1,
                    30..=54 => 2,
                    55..=74 => 3,
                    75..=86 => 4,
                    87..=94 => 5,
                    95..=97 => 6,
                    98 => 7,
                    _ => 8,
                };
                for c in b.iter_mut().skip(first) {
                    *c += 1;
                }
                *sum += (r >> 16) as f64 / u64::MAX as f64 * 65536.0 * 0.0001
                    + [0.003, 0.008, 0.02, 0.04, 0.08, 0.2, 0.4, 0.8, 2.0][first];
            }
        }
        for (i, m) in self.memory.iter_mut().enumerate() {
            let r = rand(i, t, 3);
            if r.is_multiple_of(4) {
                let delta = 4096 * (r >> 8) % (1 << 20);
                *m = if r & 16 == 0 {
                    m.saturating_add(delta)
                } else {
                    m.saturating_sub(delta).max(1 << 20)
                };
            }
        }
        for (i, c) in self.cpu.iter_mut().enumerate() {
            let r = rand(i, t, 4);
            let delta = ((r >> 8) % 2001) as f64 / 10_000.0 - 0.1;
            *c = ((*c + delta).clamp(0.0, 1.0) * 10_000.0).round() / 10_000.0;
        }
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(SERIES * 110);
        out.push_str("# HELP http_requests_total Requests served.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        let mut i = 0;
        for pod in 0..PODS {
            for method in METHODS {
                for code in CODES {
                    for path in 0..PATHS {
                        let _ = writeln!(
                            out,
                            "http_requests_total{{pod=\"web-{pod}\",method=\"{method}\",code=\"{code}\",path=\"/api/v1/resource-{path}\"}} {}",
                            self.counters[i]
                        );
                        i += 1;
                    }
                }
            }
        }
        out.push_str("# HELP request_duration_seconds Request latency.\n");
        out.push_str("# TYPE request_duration_seconds histogram\n");
        for (g, (b, sum)) in self.buckets.iter().zip(&self.sums).enumerate() {
            let (handler, pod) = (g / HIST_PODS, g % HIST_PODS);
            let labels = format!("handler=\"/handler-{handler}\",pod=\"web-{pod}\"");
            for (le, c) in LE.iter().zip(b) {
                let _ = writeln!(
                    out,
                    "request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(out, "request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "request_duration_seconds_count{{{labels}}} {}",
                b[LE.len() - 1]
            );
        }
        out.push_str("# HELP memory_usage_bytes Memory in use.\n");
        out.push_str("# TYPE memory_usage_bytes gauge\n");
        for (i, m) in self.memory.iter().enumerate() {
            let _ = writeln!(
                out,
                "memory_usage_bytes{{pod=\"web-{}\",component=\"component-{}\"}} {m}",
                i / COMPONENTS,
                i % COMPONENTS
            );
        }
        out.push_str("# HELP cpu_utilization_ratio CPU in use.\n");
        out.push_str("# TYPE cpu_utilization_ratio gauge\n");
        for (i, c) in self.cpu.iter().enumerate() {
            let _ = writeln!(
                out,
                "cpu_utilization_ratio{{pod=\"web-{}\",core=\"core-{}\"}} {c}",
                i / COMPONENTS,
                i % COMPONENTS
            );
        }
        out
    }
}

struct Target {
    started: Instant,
    state: Mutex<(Values, Arc<String>)>,
    /// Scrapes answered, by who asked: Ferry, Prometheus.
    scrapes: [AtomicU64; 2],
}

impl Target {
    fn body(&self) -> Arc<String> {
        let now = self.started.elapsed().as_secs();
        let mut state = self.state.lock().unwrap();
        if state.0.tick < now {
            while state.0.tick < now {
                state.0.step();
            }
            state.1 = Arc::new(state.0.render());
        }
        state.1.clone()
    }

    fn serve(self: Arc<Self>, conn: TcpStream) {
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut writer = conn;
        loop {
            let mut agent = String::new();
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
                if first {
                    first = false;
                } else if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("user-agent")
                {
                    agent = value.trim().to_string();
                }
            }
            // Ferry's scraper sends no User-Agent; it is the only other client.
            let who = usize::from(agent.starts_with("Prometheus"));
            self.scrapes[who].fetch_add(1, Ordering::Relaxed);
            let body = self.body();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(body.as_bytes()).is_err()
            {
                return;
            }
        }
    }
}

fn start_target() -> (Arc<Target>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let values = Values::new();
    let body = Arc::new(values.render());
    let target = Arc::new(Target {
        started: Instant::now(),
        state: Mutex::new((values, body)),
        scrapes: Default::default(),
    });
    let t = target.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let t = t.clone();
            std::thread::spawn(move || t.serve(conn));
        }
    });
    (target, port)
}

// ------------------------------------------------------------ processes

/// `ferry serve` in a session of its own (as under a service manager, so
/// it has a scheduling group of its own as Prometheus does).
fn start_ferry(dir: &Path, config: Option<&Path>) -> Proc {
    let config = config.map(|c| c.display().to_string());
    let args: Vec<&str> = match &config {
        Some(c) => vec!["--config", c],
        None => Vec::new(),
    };
    let proc = common::ferry_serve(FERRY, dir, &args, &[("FERRY_LOG", "warn")], true);
    common::wait_for("the data plane", Duration::from_secs(30), || {
        dir.join("data/dataplane.json").exists()
    });
    proc
}

fn dataplane_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("data/dataplane.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

fn start_prometheus(bin: &str, dir: &Path, target_port: u16, port: u16) -> Proc {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    common::prometheus(bin, dir, &config, port)
}

// ------------------------------------------------------------ measuring

/// `VmRSS` and `VmHWM` of a process, in kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes on disk under `dir`: (allocated, as `du` counts, and apparent).
fn disk(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut alloc = 0;
    let mut apparent = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (a, b) = disk(&e.path());
            alloc += a;
            apparent += b;
        } else {
            alloc += m.blocks() * 512;
            apparent += m.len();
        }
    }
    (alloc, apparent)
}

#[derive(Clone, Copy, Default)]
struct Snap {
    t_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
    cpu_s: f64,
    dp_rss_kb: u64,
    dp_cpu_s: f64,
    disk: u64,
    disk_apparent: u64,
}

// ------------------------------------------------------------ queries

struct Query {
    name: &'static str,
    expr: &'static str,
    /// A range query over the hour before the evaluation time, 15 s step.
    range: bool,
}

const QUERIES: [Query; 4] = [
    Query {
        name: "rate 5m (10k series)",
        expr: "rate(http_requests_total[5m])",
        range: false,
    },
    Query {
        name: "sum by (code) of rate",
        expr: "sum by (code) (rate(http_requests_total[5m]))",
        range: false,
    },
    Query {
        name: "histogram_quantile (1k buckets)",
        expr: "histogram_quantile(0.9, sum by (le, handler) (rate(request_duration_seconds_bucket[5m])))",
        range: false,
    },
    Query {
        name: "query_range 1h step 15s",
        expr: "sum by (code) (rate(http_requests_total[5m]))",
        range: true,
    },
];

fn params(q: &Query, t: i64) -> (&'static str, Vec<(&'static str, String)>) {
    if q.range {
        (
            "/api/v1/query_range",
            vec![
                ("query", q.expr.to_string()),
                ("start", (t - 3600).to_string()),
                ("end", t.to_string()),
                ("step", "15".to_string()),
            ],
        )
    } else {
        (
            "/api/v1/query",
            vec![("query", q.expr.to_string()), ("time", t.to_string())],
        )
    }
}

/// Series and points in a result.
fn shape(result: &serde_json::Value) -> (usize, usize) {
    let series = result.as_array().map_or(0, Vec::len);
    let points = result.as_array().map_or(0, |a| {
        a.iter()
            .map(|s| s["values"].as_array().map_or(1, Vec::len))
            .sum()
    });
    (series, points)
}

fn scalar_sum(result: &serde_json::Value) -> f64 {
    result.as_array().map_or(f64::NAN, |a| {
        a.iter()
            .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    })
}

/// `prometheus_tsdb_head_samples_appended_total` from Prometheus's /metrics.
fn prometheus_appended(port: u16) -> f64 {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("prometheus_tsdb_head_samples_appended_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples stored in the `window_s` seconds before `t` (of `job`'s series,
/// or every series for ""), one metric name at a time: a range function
/// drops the name, so one selector over several names would collide.
fn stored_samples(e: &Endpoint, job: &str, window_s: i64, t: i64) -> f64 {
    let names = e.run("/api/v1/label/__name__/values", &[]).1;
    let matcher = if job.is_empty() {
        String::new()
    } else {
        format!(",job=\"{job}\"")
    };
    names
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|n| n.as_str())
        .map(|name| {
            let q = format!("sum(count_over_time({{__name__=\"{name}\"{matcher}}}[{window_s}s]))");
            let p = [("query", q), ("time", t.to_string())];
            scalar_sum(&e.run("/api/v1/query", &p).1["result"])
        })
        .filter(|v| !v.is_nan())
        .sum()
}

fn env_duration(name: &str, default: &str) -> Duration {
    humantime::parse_duration(&env_or(name, default)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let duration = env_duration("FERRY_BENCH_DURATION", "5m");
    let idle = env_duration("FERRY_BENCH_IDLE", "60s");
    let rounds: usize = std::env::var("FERRY_BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let prom_bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
    let out = PathBuf::from(
        std::env::var("FERRY_BENCH_OUT").unwrap_or("/tmp/ferry-metrics-bench".into()),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let tck = clk_tck();
    let prom_version = Command::new(&prom_bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!("target: {SERIES} series, scraped every 1s by both; duration {duration:?}");
    println!(
        "ferry: {FERRY}\nprometheus: {prom_bin} ({prom_version})\nraw: {}",
        out.display()
    );

    let (target, target_port) = start_target();
    let ferry_dir = out.join("ferry");
    let prom_dir = out.join("prometheus");
    std::fs::create_dir_all(&ferry_dir).unwrap();
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = ferry_dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nscrape = [{{ job = \"{JOB}\", url = \"http://127.0.0.1:{target_port}/metrics\", interval = \"1s\" }}]\n"
        ),
    )
    .unwrap();

    let prom_port = free_port();
    let (ferry, prom) = (
        start_ferry(&ferry_dir, Some(&config)),
        start_prometheus(&prom_bin, &prom_dir, target_port, prom_port),
    );
    let started = Instant::now();
    let t_start = now_s();
    let fpid = ferry.child.id();
    let dpid = dataplane_pid(&ferry_dir).unwrap_or(0);
    let ppid = prom.child.id();
    let ferry_metrics = ferry_dir.join("data/metrics");
    let prom_data = prom_dir.join("data");

    let snap = |pid: u32, dp: Option<u32>, dir: &Path| {
        let (rss, hwm) = rss_kb(pid);
        let (alloc, apparent) = disk(dir);
        Snap {
            t_s: started.elapsed().as_secs_f64(),
            rss_kb: rss,
            hwm_kb: hwm,
            cpu_s: cpu_s(pid, tck),
            dp_rss_kb: dp.map_or(0, |p| rss_kb(p).0),
            dp_cpu_s: dp.map_or(0.0, |p| cpu_s(p, tck)),
            disk: alloc,
            disk_apparent: apparent,
        }
    };
    let first = (
        snap(fpid, Some(dpid), &ferry_metrics),
        snap(ppid, None, &prom_data),
    );
    let mut snaps: Vec<(Snap, Snap)> = vec![first];
    let mut csv = String::from(
        "t_s,ferry_rss_kb,ferry_cpu_s,ferry_dataplane_rss_kb,ferry_dataplane_cpu_s,ferry_disk,ferry_disk_apparent,prom_rss_kb,prom_cpu_s,prom_disk,prom_disk_apparent,scrapes_ferry,scrapes_prom\n",
    );
    let every = Duration::from_secs(5);
    let mut next = every;
    while started.elapsed() < duration {
        std::thread::sleep(next.saturating_sub(started.elapsed()).min(duration));
        next += every;
        let s = (
            snap(fpid, Some(dpid), &ferry_metrics),
            snap(ppid, None, &prom_data),
        );
        let (f, p) = s;
        let _ = writeln!(
            csv,
            "{:.1},{},{:.2},{},{:.2},{},{},{},{:.2},{},{},{},{}",
            f.t_s,
            f.rss_kb,
            f.cpu_s,
            f.dp_rss_kb,
            f.dp_cpu_s,
            f.disk,
            f.disk_apparent,
            p.rss_kb,
            p.cpu_s,
            p.disk,
            p.disk_apparent,
            target.scrapes[0].load(Ordering::Relaxed),
            target.scrapes[1].load(Ordering::Relaxed),
        );
        if snaps.len().is_multiple_of(6) {
            println!(
                "{:>5.0}s  ferry rss {:>6.1} MB cpu {:>6.1} s disk {:>6.1} MB | prometheus rss {:>6.1} MB cpu {:>6.1} s disk {:>6.1} MB",
                f.t_s,
                mb(f.rss_kb),
                f.cpu_s - first.0.cpu_s,
                f.disk as f64 / 1e6,
                mb(p.rss_kb),
                p.cpu_s - first.1.cpu_s,
                p.disk as f64 / 1e6
            );
        }
        snaps.push(s);
    }
    std::fs::write(out.join("samples.csv"), &csv).unwrap();
    let t_eval = now_s() - 1;
    let (last_f, last_p) = *snaps.last().unwrap();
    let elapsed = last_f.t_s - first.0.t_s;
    let prom_appended = prometheus_appended(prom_port);
    let scrapes = [
        target.scrapes[0].load(Ordering::Relaxed),
        target.scrapes[1].load(Ordering::Relaxed),
    ];

    // Queries, at one evaluation time, alternating which tool goes first.
    let fapi = ferry_api(&ferry_dir);
    let endpoints = query_endpoints(&fapi, prom_port);
    let mut lat: Vec<[Vec<f64>; 2]> = QUERIES.iter().map(|_| [vec![], vec![]]).collect();
    let mut shapes = vec![[(0, 0); 2]; QUERIES.len()];
    let mut sums = vec![[f64::NAN; 2]; QUERIES.len()];
    let mut qcsv = String::from("round,query,tool,ms\n");
    for (qi, q) in QUERIES.iter().enumerate() {
        let (path, p) = params(q, t_eval);
        for (k, e) in endpoints.iter().enumerate() {
            // Warm-up (connection, page cache); not counted.
            let r = e.run(path, &p).1["result"].clone();
            shapes[qi][k] = shape(&r);
            sums[qi][k] = scalar_sum(&r);
        }
    }
    for round in 0..rounds {
        for (qi, q) in QUERIES.iter().enumerate() {
            let (path, p) = params(q, t_eval);
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for k in order {
                let (ms, _) = endpoints[k].run(path, &p);
                lat[qi][k].push(ms);
                let _ = writeln!(
                    qcsv,
                    "{round},{},{},{ms:.3}",
                    q.name,
                    ["ferry", "prometheus"][k]
                );
            }
        }
    }
    std::fs::write(out.join("queries.csv"), &qcsv).unwrap();

    // Samples each stored, counted by each: every series, and the target's.
    let window = t_eval - t_start + 120;
    let counted: Vec<[f64; 2]> = ["", JOB]
        .iter()
        .map(|job| [0, 1].map(|k| stored_samples(&endpoints[k], job, window, t_eval)))
        .collect();
    let after_queries = (rss_kb(fpid), rss_kb(ppid));
    drop(ferry);
    drop(prom);

    // Summary.
    let phase = |s: &[(Snap, Snap)], k: usize| -> Vec<Snap> {
        s.iter()
            .map(|(f, p)| if k == 0 { *f } else { *p })
            .collect()
    };
    let half = snaps.len() / 2;
    let rss_med = |k: usize| {
        let mut v: Vec<f64> = phase(&snaps[half..], k)
            .iter()
            .map(|s| s.rss_kb as f64)
            .collect();
        median(&mut v) / 1024.0
    };
    let rss_max =
        |k: usize| phase(&snaps, k).iter().map(|s| s.rss_kb).max().unwrap_or(0) as f64 / 1024.0;
    let f_cpu = last_f.cpu_s - first.0.cpu_s;
    let p_cpu = last_p.cpu_s - first.1.cpu_s;
    let dp_cpu = last_f.dp_cpu_s - first.0.dp_cpu_s;
    let f_bps = last_f.disk as f64 / counted[0][0];
    let p_bps = last_p.disk as f64 / counted[0][1];

    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n{SERIES} target series at 1 s, {elapsed:.0} s of scraping (samples every 5 s)\n"
    );
    let _ = writeln!(
        report,
        "| measure | Ferry | Prometheus | Ferry / Prometheus |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    let mut row = |name: &str, f: f64, p: f64, unit: &str, prec: usize| {
        let _ = writeln!(
            report,
            "| {name} | {f:.prec$}{unit} | {p:.prec$}{unit} | {:.2}× |",
            f / p
        );
    };
    row("bytes on disk per sample (du)", f_bps, p_bps, " B", 2);
    row(
        "bytes on disk at the end (du)",
        last_f.disk as f64 / 1e6,
        last_p.disk as f64 / 1e6,
        " MB",
        1,
    );
    row(
        "bytes on disk at the end (apparent)",
        last_f.disk_apparent as f64 / 1e6,
        last_p.disk_apparent as f64 / 1e6,
        " MB",
        1,
    );
    row(
        "RSS, median of the second half",
        rss_med(0),
        rss_med(1),
        " MB",
        1,
    );
    row("RSS, max sampled", rss_max(0), rss_max(1), " MB", 1);
    row(
        "peak RSS (VmHWM) at the end of scraping",
        mb(last_f.hwm_kb),
        mb(last_p.hwm_kb),
        " MB",
        1,
    );
    row("CPU seconds while scraping", f_cpu, p_cpu, " s", 1);
    row(
        "CPU, share of one core",
        100.0 * f_cpu / elapsed,
        100.0 * p_cpu / elapsed,
        " %",
        1,
    );
    for (qi, q) in QUERIES.iter().enumerate() {
        let [f, p] = &mut lat[qi];
        row(&format!("{} p50", q.name), median(f), median(p), " ms", 1);
        row(
            &format!("{} p99", q.name),
            percentile(f, 0.99),
            percentile(p, 0.99),
            " ms",
            1,
        );
    }
    let _ = writeln!(
        report,
        "\nFerry's data plane (proxies only): RSS {:.1} MB at the end, {dp_cpu:.1} CPU s while scraping.",
        mb(last_f.dp_rss_kb)
    );
    let _ = writeln!(
        report,
        "RSS after the queries: Ferry {:.1} MB (peak {:.1}), Prometheus {:.1} MB (peak {:.1}).",
        mb(after_queries.0.0),
        mb(after_queries.0.1),
        mb(after_queries.1.0),
        mb(after_queries.1.1)
    );
    let _ = writeln!(
        report,
        "Samples stored (count_over_time of every series at the evaluation time): Ferry {:.0}, Prometheus {:.0}; of the target: Ferry {:.0}, Prometheus {:.0}.",
        counted[0][0], counted[0][1], counted[1][0], counted[1][1]
    );
    let _ = writeln!(
        report,
        "Prometheus's own count (prometheus_tsdb_head_samples_appended_total at the end of scraping): {prom_appended:.0}. Scrapes answered by the target: Ferry {}, Prometheus {} ({SERIES} samples each).",
        scrapes[0], scrapes[1]
    );
    let _ = writeln!(
        report,
        "Disk at the end of scraping: Ferry wal {:.1} MB, blocks {:.1} MB; Prometheus wal {:.1} MB, chunks_head {:.1} MB, other {:.1} MB (du).",
        disk(&ferry_metrics.join("wal")).0 as f64 / 1e6,
        disk(&ferry_metrics.join("blocks")).0 as f64 / 1e6,
        disk(&prom_data.join("wal")).0 as f64 / 1e6,
        disk(&prom_data.join("chunks_head")).0 as f64 / 1e6,
        (disk(&prom_data).0
            - disk(&prom_data.join("wal")).0
            - disk(&prom_data.join("chunks_head")).0) as f64
            / 1e6,
    );
    let _ = writeln!(
        report,
        "(measured after both stopped; the table's disk figures are from the end of scraping)"
    );
    let _ = writeln!(
        report,
        "\nSanity, per query (series/points, Ferry vs Prometheus):"
    );
    for (qi, q) in QUERIES.iter().enumerate() {
        let [f, p] = shapes[qi];
        let [fs, ps] = sums[qi];
        let _ = writeln!(
            report,
            "  {:<34} {:>6}/{:<6} vs {:>6}/{:<6} {}",
            q.name,
            f.0,
            f.1,
            p.0,
            p.1,
            if q.range {
                String::new()
            } else {
                format!("sum of values {fs:.4} vs {ps:.4}")
            }
        );
    }
    println!("{report}");

    // Idle daemon.
    if !idle.is_zero() {
        let dir = out.join("idle");
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = start_ferry(&dir, None);
        let dp = dataplane_pid(&dir).unwrap_or(0);
        std::thread::sleep(idle);
        let (cp_rss, cp_hwm) = rss_kb(daemon.child.id());
        let (dp_rss, _) = rss_kb(dp);
        let cp_cpu = cpu_s(daemon.child.id(), tck);
        let line = format!(
            "Idle `ferry serve` (no services, no config, default --scrape-interval 10s) after {idle:?}: control plane RSS {:.1} MB (peak {:.1}), data plane RSS {:.1} MB, together {:.1} MB; control plane CPU {cp_cpu:.2} s.",
            mb(cp_rss),
            mb(cp_hwm),
            mb(dp_rss),
            mb(cp_rss + dp_rss)
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    }
    std::fs::write(out.join("report.md"), &report).unwrap();
}
