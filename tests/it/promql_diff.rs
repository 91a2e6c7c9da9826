//! A differential test of Ferry's PromQL against a real Prometheus (2.42,
//! Debian's): both scrape the same in-test target, whose samples carry
//! explicit timestamps (both honor them), so both store the very same
//! samples; then the same queries at the same instants must agree to
//! 1e-9 relative.
//!
//! Prometheus 2 closes range windows at both ends (`[t-r, t]`) where Ferry
//! follows Prometheus 3 (`(t-r, t]`): every sample lies at `.123` of a
//! second and every evaluation instant, window start, subquery step and
//! range-query step at some other millisecond, so no sample is ever on a
//! window's boundary.

use super::harness::*;
use super::prometheus::Prometheus;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where in its second each sample lies (ms).
const SAMPLE_MS: i64 = 123;
/// Ticks (seconds) of data both must hold before comparing.
const TICKS: i64 = 66;
/// `pd_flaky` is not exposed for these ticks.
const FLAKY_GAP: std::ops::Range<i64> = 18..34;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------
// The target: tick `i` (0 at the first tick of data) is exposed from
// (start+i)s + 123ms until the next tick, with that instant as its
// timestamp, and its values a function of `i` only. Both scrapers scrape
// every 250ms, so each stores every tick (several times: the duplicates
// are the same sample, which both drop).

const APPS: [&str; 2] = ["api", "web"];
const METHODS: [&str; 2] = ["GET", "POST"];
const CODES: [&str; 2] = ["200", "500"];
const ROOMS: [&str; 3] = ["a", "b", "c"];
const LES: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];

/// Counter `s`'s increase during tick `j`: rates are distinct per series
/// (1 + 3s dominates), so `topk` has no ties.
fn inc(s: i64, j: i64) -> f64 {
    1.0 + 3.0 * s as f64 + ((j * (s + 3) + s) % 5) as f64 * 0.5
}

/// Observations of histogram `m` in bucket interval `b` during tick `j`.
fn observations(m: i64, b: i64, j: i64) -> i64 {
    (j * (b + 1) + m * 3 + b) % 4
}

/// The exposition of tick `i` at `ts` (ms). Values are multiples of
/// powers of two, so sums of them are exact whatever the order.
fn exposition(i: i64, ts: i64) -> String {
    let mut out = String::new();
    let mut line = |name: &str, labels: &str, v: f64| {
        out.push_str(&format!("{name}{{{labels}}} {v} {ts}\n"));
    };
    // Counters; they start high, so that extrapolation never stops at
    // zero (Prometheus 2 and 3 order that clamp differently).
    for s in 0..8 {
        let v = 100.0 + 37.0 * s as f64 + (0..i).map(|j| inc(s, j)).sum::<f64>();
        let labels = format!(
            r#"app="{}",method="{}",code="{}""#,
            APPS[s as usize / 4],
            METHODS[(s as usize / 2) % 2],
            CODES[s as usize % 2]
        );
        line("pd_requests_total", &labels, v);
    }
    // A counter that resets at ticks 23 and 46, and one that does not.
    let r = i % 23;
    line(
        "pd_restarts_total",
        r#"app="api""#,
        50.0 + 2.0 * r as f64 + (r % 3) as f64 * 0.25,
    );
    line("pd_restarts_total", r#"app="web""#, 50.0 + 1.5 * i as f64);
    // Gauges, negative and fractional; the rooms never tie (their offsets
    // differ modulo the 0.75 steps).
    for (r, room) in ROOMS.iter().enumerate() {
        let r = r as i64;
        let v = -4.5 + r as f64 * 1.0625 + ((i * (2 * r + 3)) % 7) as f64 * 0.75;
        line("pd_temperature", &format!(r#"room="{room}""#), v);
    }
    line(
        "pd_queue_depth",
        r#"app="api""#,
        20.0 + 0.5 * i as f64 + (i % 3) as f64,
    );
    line(
        "pd_queue_depth",
        r#"app="web""#,
        40.0 - 0.25 * i as f64 + (i % 4) as f64 * 0.5,
    );
    if !FLAKY_GAP.contains(&i) {
        line("pd_flaky", r#"app="api""#, 7.5 + (i % 5) as f64);
    }
    line("pd_build_info", r#"version="1.2.3""#, 1.0);
    // A counter starting near zero: only in `KNOWN`.
    line("pd_fresh_total", "", 1.0 + 1.5 * i as f64);
    line("pd_last_seen_seconds", "", ts as f64 / 1000.0);
    // A classic histogram per method.
    let mids = [0.03125, 0.0625, 0.125, 0.375, 0.75, 2.0];
    for (m, method) in METHODS.iter().enumerate() {
        let m = m as i64;
        let mut cumulative = 0.0;
        let mut sum = 50.0;
        for (b, le) in LES.iter().enumerate() {
            let b = b as i64;
            let n: i64 = (0..i).map(|j| observations(m, b, j)).sum();
            cumulative += 100.0 + n as f64;
            sum += n as f64 * mids[b as usize];
            line(
                "pd_latency_seconds_bucket",
                &format!(r#"method="{method}",le="{le}""#),
                cumulative,
            );
        }
        line(
            "pd_latency_seconds_sum",
            &format!(r#"method="{method}""#),
            sum,
        );
        line(
            "pd_latency_seconds_count",
            &format!(r#"method="{method}""#),
            cumulative,
        );
    }
    let types = "# TYPE pd_requests_total counter\n# TYPE pd_restarts_total counter\n\
                 # TYPE pd_temperature gauge\n# TYPE pd_queue_depth gauge\n\
                 # TYPE pd_flaky gauge\n# TYPE pd_build_info gauge\n# TYPE pd_fresh_total counter\n\
                 # TYPE pd_last_seen_seconds gauge\n# TYPE pd_latency_seconds histogram\n";
    format!("{types}{out}")
}

/// The target on 127.0.0.1: nothing before `start` (a tick, in seconds)
/// is set, then the current tick's samples.
fn target(start: Arc<AtomicI64>) -> u16 {
    http_server(move |mut stream| {
        let tick = (now_ms() - SAMPLE_MS).div_euclid(1000);
        let first = start.load(Ordering::SeqCst);
        let body = if tick < first {
            "# no data yet\n".to_string()
        } else {
            exposition(tick - first, tick * 1000 + SAMPLE_MS)
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

// ---------------------------------------------------------------------
// The queries.

const QUERIES: &[&str] = &[
    // Selectors and matchers.
    "pd_requests_total",
    r#"pd_requests_total{app="api",code=~"5.."}"#,
    r#"pd_requests_total{method!="GET",app!~"w.*"}"#,
    r#"{__name__=~"pd_temp.*",room=~"a|c"}"#,
    "pd_requests_total offset 5s",
    // Counters and gauges over ranges.
    "rate(pd_requests_total[10s])",
    "rate(pd_requests_total[30s])",
    "irate(pd_requests_total[10s])",
    "increase(pd_restarts_total[30s])",
    "rate(pd_restarts_total[10s])",
    "rate(pd_requests_total[10s] offset 7s)",
    "delta(pd_temperature[30s])",
    "idelta(pd_queue_depth[10s])",
    "deriv(pd_queue_depth[30s])",
    "predict_linear(pd_queue_depth[30s], 60)",
    "resets(pd_restarts_total[30s])",
    "changes(pd_temperature[30s])",
    // Aggregations.
    "sum by (app) (rate(pd_requests_total[30s]))",
    "sum without (method) (rate(pd_requests_total[10s]))",
    "avg(pd_temperature)",
    "max by (code) (pd_requests_total)",
    "min(pd_temperature)",
    "count by (app) (pd_requests_total)",
    "stddev(pd_temperature)",
    "topk(3, rate(pd_requests_total[30s]))",
    "bottomk(2, pd_temperature)",
    "quantile(0.3, pd_temperature)",
    "quantile by (app) (0.9, rate(pd_requests_total[30s]))",
    r#"count_values("depth", pd_queue_depth)"#,
    "group by (app) (pd_requests_total)",
    // Histograms.
    "histogram_quantile(0.9, sum by (le) (rate(pd_latency_seconds_bucket[30s])))",
    "histogram_quantile(0.5, rate(pd_latency_seconds_bucket[10s]))",
    "rate(pd_latency_seconds_sum[30s]) / rate(pd_latency_seconds_count[30s])",
    // *_over_time, incl. over the flaky gauge's gap.
    "avg_over_time(pd_temperature[30s])",
    "max_over_time(pd_temperature[10s])",
    "min_over_time(pd_temperature[30s])",
    "sum_over_time(pd_queue_depth[10s])",
    "count_over_time(pd_flaky[30s])",
    "last_over_time(pd_flaky[30s])",
    "stddev_over_time(pd_temperature[30s])",
    "quantile_over_time(0.75, pd_temperature[30s])",
    "absent_over_time(pd_flaky[10s])",
    // Binary operators and vector matching.
    "sum by (app, code) (rate(pd_requests_total[30s])) / on (app) group_left sum by (app) (rate(pd_requests_total[30s]))",
    "pd_requests_total / ignoring (method, code) group_left pd_queue_depth",
    "pd_queue_depth * on () group_left (version) pd_build_info",
    "pd_temperature > 0",
    "pd_temperature > bool 0",
    "pd_temperature <= -1.5",
    "pd_queue_depth - on (app) pd_queue_depth offset 10s",
    r#"pd_requests_total and on (app) pd_queue_depth > 30"#,
    r#"pd_queue_depth{app="api"} or pd_temperature"#,
    r#"pd_requests_total unless on (code) pd_requests_total{code="500"}"#,
    "pd_temperature / 0",
    "2 * pd_temperature + 1",
    // Subqueries, absent, label_replace, clamps, time().
    "max_over_time(rate(pd_requests_total[10s])[30s:5s])",
    "avg_over_time(sum(pd_temperature)[20s:3s])",
    r#"absent(pd_nothing{app="x"})"#,
    r#"absent(pd_requests_total{app="api"})"#,
    r#"label_replace(pd_queue_depth, "short", "$1", "app", "(.).*")"#,
    "clamp_min(pd_temperature, -1)",
    "clamp_max(pd_temperature, 0.5)",
    "time() - pd_last_seen_seconds",
    "time() - timestamp(pd_temperature)",
    "scalar(sum(pd_queue_depth)) - time() + time()",
    "round(pd_temperature, 0.5) + abs(pd_temperature)",
    // Staleness: neither writes a stale marker for a series whose samples
    // carry their own timestamps (Prometheus's default, without
    // `track_timestamps_staleness`), so during `pd_flaky`'s gap both
    // still answer its last sample (the 5-minute lookback).
    "pd_flaky",
    r#"absent(pd_flaky{app="api"})"#,
    "time() - timestamp(pd_flaky)",
];

/// Queries where Prometheus 2.42 and Ferry answer differently by design,
/// at a tick (+600ms), each with whether they agree there (a control):
/// the test checks that they still differ exactly there, so that a change
/// on either side shows up (then move the query into `QUERIES`).
///
/// Extrapolation toward zero: a counter's window that starts well before
/// its first sample (here: the data's first 30 s) extrapolates to the
/// start by at most half a sample interval, and to no further than where
/// the counter would reach zero. Prometheus 2.42 clamps to zero first and
/// then applies the half-interval rule only if the result is still at
/// least 1.1 intervals; Prometheus 3 (and Ferry) applies the
/// half-interval rule first and then the zero clamp. They differ when the
/// zero point lies between 0.5 and 1.1 intervals before the first sample:
/// `pd_fresh_total` starts at 1 and grows 1.5 a tick, so 0.67 intervals.
/// The other counters start high, so that the clamp never applies.
const KNOWN: &[(&str, i64, bool)] = &[
    ("rate(pd_fresh_total[30s])", 5, false),
    ("increase(pd_fresh_total[30s])", 40, true),
];

// ---------------------------------------------------------------------
// Asking both.

/// A query's full response body: Ferry with its token (form POST, as
/// Grafana asks), Prometheus without (GET).
fn ask(
    base: &str,
    token: Option<&str>,
    path: &str,
    params: &[(&str, String)],
) -> serde_json::Value {
    let client = reqwest::blocking::Client::new();
    let url = format!("{base}{path}");
    let request = match token {
        Some(t) => client.post(url).bearer_auth(t).form(params),
        None => client.get(url).query(params),
    };
    request
        .send()
        .and_then(|r| r.json::<serde_json::Value>())
        .unwrap_or_else(|e| serde_json::json!({ "status": "error", "error": e.to_string() }))
}

/// One request: the path, its parameters and a description for messages.
type Ask = (&'static str, Vec<(&'static str, String)>, String);

/// A series' samples: (ms, value).
type Points = Vec<(i64, f64)>;

/// A result, whatever its type, as (type, labels → samples).
fn normalize(body: &serde_json::Value) -> Result<(String, BTreeMap<String, Points>), String> {
    if body["status"] != "success" {
        return Err(format!("error: {body}"));
    }
    let data = &body["data"];
    let kind = data["resultType"].as_str().unwrap_or("?").to_string();
    let point = |p: &serde_json::Value| -> (i64, f64) {
        (
            (p[0].as_f64().unwrap() * 1000.0).round() as i64,
            parse(p[1].as_str().unwrap()),
        )
    };
    let mut out = BTreeMap::new();
    match kind.as_str() {
        "scalar" => {
            out.insert("scalar".to_string(), vec![point(&data["result"])]);
        }
        "vector" | "matrix" => {
            for s in data["result"].as_array().into_iter().flatten() {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(s["metric"].clone()).unwrap();
                let points = if kind == "vector" {
                    vec![point(&s["value"])]
                } else {
                    s["values"].as_array().unwrap().iter().map(point).collect()
                };
                let key = format!("{labels:?}");
                if out.insert(key.clone(), points).is_some() {
                    return Err(format!("duplicate series {key}"));
                }
            }
        }
        other => return Err(format!("unexpected result type {other}: {body}")),
    }
    Ok((kind, out))
}

fn parse(v: &str) -> f64 {
    match v {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap(),
    }
}

/// Equal within 1e-9 relative; NaN equals NaN, infinities themselves.
fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Where two answers differ, or `None`.
fn differ(ferry: &serde_json::Value, prom: &serde_json::Value) -> Option<String> {
    let (fk, f) = match normalize(ferry) {
        Ok(r) => r,
        Err(e) => return Some(format!("Ferry: {e}")),
    };
    let (pk, p) = match normalize(prom) {
        Ok(r) => r,
        Err(e) => return Some(format!("Prometheus: {e}")),
    };
    if fk != pk {
        return Some(format!("result type: Ferry {fk}, Prometheus {pk}"));
    }
    if f.keys().ne(p.keys()) {
        let only_f: Vec<_> = f.keys().filter(|k| !p.contains_key(*k)).collect();
        let only_p: Vec<_> = p.keys().filter(|k| !f.contains_key(*k)).collect();
        return Some(format!(
            "series only in Ferry: {only_f:?}; only in Prometheus: {only_p:?}"
        ));
    }
    for (k, fv) in &f {
        let pv = &p[k];
        let same = fv.len() == pv.len()
            && fv
                .iter()
                .zip(pv)
                .all(|(a, b)| a.0 == b.0 && close(a.1, b.1));
        if !same {
            return Some(format!("{k}: Ferry {fv:?}, Prometheus {pv:?}"));
        }
    }
    None
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

#[test]
fn ferry_and_prometheus_answer_the_same_queries_alike() {
    let start = Arc::new(AtomicI64::new(i64::MAX));
    let port = target(start.clone());
    let url = format!("http://127.0.0.1:{port}/metrics");

    let prometheus = Prometheus::start(
        free_port(),
        &format!(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n\
             scrape_configs:\n  - job_name: pd\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{port}\"]\n"
        ),
        &[],
    );
    let mut env = Env::prepare(Spec::default());
    let config = env.dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[metrics]\nscrape = [{{ job = \"pd\", url = \"{url}\", interval = \"250ms\" }}]\n"
        ),
    )
    .unwrap();
    env.start_daemon_with(
        &[
            "--scrape-interval",
            "250ms",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let token = env.token();
    let api = env.api();
    let ferry = |path: &str, params: &[(&str, String)]| ask(&api, Some(&token), path, params);
    let prom = |path: &str, params: &[(&str, String)]| ask(&prometheus.url, None, path, params);

    // Data starts once both scrape the target.
    let up = r#"up{job="pd"} == 1"#;
    let is_up = |body: serde_json::Value| {
        body["data"]["result"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    };
    wait_for(Duration::from_secs(30), "both to scrape the target", || {
        let q = [("query", up.to_string())];
        is_up(ferry("/api/v1/query", &q)) && is_up(prom("/api/v1/query", &q))
    });
    let first = (now_ms() - SAMPLE_MS).div_euclid(1000) + 2;
    start.store(first, Ordering::SeqCst);
    let tick = |n: i64| (first + n) * 1000;
    let began = std::time::Instant::now();
    // Tick TICKS-1 is exposed until tick TICKS + 123ms.
    let ready = tick(TICKS) + 500;
    std::thread::sleep(Duration::from_millis((ready - now_ms()).max(0) as u64));
    println!(
        "collected {TICKS} ticks in {:?}; comparing",
        began.elapsed()
    );

    // Both hold the same raw samples (a scraper that missed a tick would
    // make every later comparison meaningless).
    let last = tick(TICKS - 1) + 600;
    let raw = [
        ("query", format!("{{__name__=~\"pd_.+\"}}[{}s]", TICKS + 5)),
        ("time", secs(last)),
    ];
    let (fr, pr) = (ferry("/api/v1/query", &raw), prom("/api/v1/query", &raw));
    if let Some(d) = differ(&fr, &pr) {
        panic!(
            "the two stores hold different samples: {d}\n\nPrometheus log:\n{}\n\nFerry log:\n{}",
            prometheus.log(),
            env.daemon_log()
        );
    }
    let series = normalize(&fr).unwrap().1;
    assert_eq!(series.len(), 35, "{:?}", series.keys());
    assert!(
        series.values().all(|v| v.len() >= TICKS as usize - 16),
        "{series:?}"
    );

    // Instants at .600, from partial windows (5s) through the flaky
    // gauge's gap (22s) to full ones; range queries at .600 and .350/.850.
    let instants: Vec<i64> = [5, 22, 33, 41, 52, TICKS - 1]
        .iter()
        .map(|n| tick(*n) + 600)
        .collect();
    let ranges = [
        (tick(2) + 600, tick(TICKS - 1) + 600, "1"),
        (tick(10) + 350, tick(60) + 350, "2.5"),
    ];
    let mut failures = Vec::new();
    let mut agreed = 0;
    let mut compared = 0;
    let mut nonempty = 0;
    for q in QUERIES {
        let mut asks: Vec<Ask> = instants
            .iter()
            .map(|t| {
                (
                    "/api/v1/query",
                    vec![("query", q.to_string()), ("time", secs(*t))],
                    format!("at {}", secs(*t)),
                )
            })
            .collect();
        for (s, e, step) in ranges {
            asks.push((
                "/api/v1/query_range",
                vec![
                    ("query", q.to_string()),
                    ("start", secs(s)),
                    ("end", secs(e)),
                    ("step", step.to_string()),
                ],
                format!("range {}..{} step {step}", secs(s), secs(e)),
            ));
        }
        for (path, params, when) in asks {
            let (f, p) = (ferry(path, &params), prom(path, &params));
            compared += 1;
            match differ(&f, &p) {
                None => {
                    agreed += 1;
                    if normalize(&f).is_ok_and(|r| !r.1.is_empty()) {
                        nonempty += 1;
                    }
                }
                Some(d) => {
                    let msg = format!("{q} ({when}): {d}\n  Ferry:      {f}\n  Prometheus: {p}");
                    println!("MISMATCH {msg}\n");
                    failures.push(msg);
                }
            }
        }
    }
    println!(
        "{} queries, {agreed} of {compared} comparisons agree ({nonempty} non-empty)",
        QUERIES.len()
    );

    for (q, n, agree) in KNOWN {
        let t = tick(*n) + 600;
        let params = [("query", q.to_string()), ("time", secs(t))];
        let (f, p) = (
            ferry("/api/v1/query", &params),
            prom("/api/v1/query", &params),
        );
        let d = differ(&f, &p);
        let msg = format!(
            "known difference: {q} (tick {n}) {}: {}\n  Ferry:      {}\n  Prometheus: {}",
            secs(t),
            d.as_deref().unwrap_or("agree"),
            f["data"],
            p["data"]
        );
        println!("{msg}");
        if d.is_none() != *agree {
            failures.push(format!(
                "expected them to {}: {msg}",
                if *agree { "agree" } else { "differ" }
            ));
        }
    }
    println!("total {:?}", began.elapsed());

    assert!(
        failures.is_empty(),
        "{} problems ({agreed} of {compared} comparisons agree):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(compared >= 30 * 7, "{compared}");
    assert!(
        nonempty * 10 >= compared * 8,
        "{nonempty} of {compared} non-empty"
    );
}
