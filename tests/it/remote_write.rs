//! `[metrics] remote_write` into a real Prometheus (its remote-write
//! receiver): what Ferry stores, Prometheus gets, sample for sample.

use super::harness::*;
use super::prometheus::Prometheus;
use std::collections::BTreeMap;
use std::time::Duration;

/// No scrape jobs: everything Prometheus holds came by remote write.
const RECEIVER_CONFIG: &str = "global:\n  scrape_interval: 1m\n";
const RECEIVER_FLAGS: &[&str] = &["--web.enable-remote-write-receiver"];

/// A daemon self-scraping every 200ms that remote-writes to `port`.
fn ferry_writing_to(port: u16) -> Env {
    let mut env = Env::prepare(Spec {
        tail: format!("[metrics]\nremote_write = [\"http://127.0.0.1:{port}/api/v1/write\"]\n"),
        ..Spec::default()
    });
    env.start_daemon_with(
        &["--scrape-interval", "200ms", "--config", "ferry.toml"],
        &[],
    );
    env
}

/// Ferry's `/api/v1/query` `data` (`time` in seconds, or now).
fn ferry_query(env: &Env, query: &str, time: Option<&str>) -> serde_json::Value {
    let mut form = vec![("query", query)];
    form.extend(time.map(|t| ("time", t)));
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/query", env.api()))
        .bearer_auth(env.token())
        .form(&form)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"].clone()
}

/// A vector result as series (labels) → value.
fn vector(data: &serde_json::Value) -> BTreeMap<String, f64> {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(s["metric"].clone()).unwrap();
            let value = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            (format!("{labels:?}"), value)
        })
        .collect()
}

/// A matrix result as series (labels) → samples (ms, value).
fn matrix(data: &serde_json::Value) -> BTreeMap<String, Vec<(i64, f64)>> {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(s["metric"].clone()).unwrap();
            let samples = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                        p[1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            (format!("{labels:?}"), samples)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Where two vectors differ, or `None`.
fn differ(ferry: &BTreeMap<String, f64>, prom: &BTreeMap<String, f64>) -> Option<String> {
    if ferry.keys().ne(prom.keys()) {
        let only_ferry: Vec<_> = ferry.keys().filter(|k| !prom.contains_key(*k)).collect();
        let only_prom: Vec<_> = prom.keys().filter(|k| !ferry.contains_key(*k)).collect();
        return Some(format!(
            "series only in Ferry: {only_ferry:?}; only in Prometheus: {only_prom:?}"
        ));
    }
    ferry
        .iter()
        .find(|(k, v)| !close(**v, prom[*k]))
        .map(|(k, v)| format!("{k}: Ferry {v}, Prometheus {}", prom[k]))
}

/// The times (ms) of one always-present series' samples in Ferry over the
/// last `window`, oldest first.
fn ferry_sample_times(env: &Env, window: &str) -> Vec<i64> {
    let data = ferry_query(
        env,
        &format!("ferry_remote_write_queue_capacity_batches[{window}]"),
        None,
    );
    matrix(&data)
        .into_values()
        .next()
        .unwrap_or_default()
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The daemon's own `/metrics` line for `family` (its value).
fn own_metric(env: &Env, family: &str) -> f64 {
    let text = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{family}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{family} in:\n{text}"))
}

#[test]
fn prometheus_answers_what_ferry_answers_at_the_same_instants() {
    let port = free_port();
    let prometheus = Prometheus::start(port, RECEIVER_CONFIG, RECEIVER_FLAGS);
    let env = ferry_writing_to(port);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let client = reqwest::blocking::Client::new();
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/", env.proxy()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for(
        Duration::from_secs(20),
        "Prometheus to receive ferry_instances",
        || !vector(&prometheus.query("ferry_instances", None)).is_empty(),
    );

    // Three instants that are sample times in Ferry: every ferry_* series
    // answers the same there, once Prometheus has caught up.
    let selector = "{__name__=~\"ferry_.+\"}";
    let mut compared = 0;
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let times = ferry_sample_times(&env, "5s");
        let t = secs(times[times.len() - 2]);
        let ours = vector(&ferry_query(&env, selector, Some(&t)));
        assert!(
            ours.keys().any(|k| k.contains("ferry_instances"))
                && ours
                    .keys()
                    .any(|k| k.contains("ferry_proxy_requests_total")),
            "round {round}: {ours:?}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let theirs = vector(&prometheus.query(selector, Some(&t)));
            let Some(last) = differ(&ours, &theirs) else {
                break;
            };
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}, time {t}: {last}\n\nPrometheus log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        compared += ours.len();
    }
    assert!(compared > 30, "{compared} series compared");
    assert_eq!(
        own_metric(&env, "ferry_remote_write_samples_failed_total"),
        0.0
    );
    assert_eq!(
        own_metric(&env, "ferry_remote_write_samples_dropped_total"),
        0.0
    );
    assert!(own_metric(&env, "ferry_remote_write_samples_sent_total") > 0.0);
}

#[test]
fn a_receiver_that_is_down_at_first_gets_the_samples_later() {
    let port = free_port();
    let env = ferry_writing_to(port);
    wait_for(Duration::from_secs(10), "a failed attempt", || {
        own_metric(&env, "ferry_remote_write_retries_total") >= 2.0
    });
    let first_sample = ferry_sample_times(&env, "1m")[0];
    std::thread::sleep(Duration::from_secs(1));
    let prometheus = Prometheus::start(port, RECEIVER_CONFIG, RECEIVER_FLAGS);
    wait_for(
        Duration::from_secs(20),
        "Prometheus to receive the first sample",
        || {
            let at = secs(first_sample);
            !vector(&prometheus.query("ferry_remote_write_queue_capacity_batches", Some(&at)))
                .is_empty()
        },
    );

    // Every sample of the outage arrived: the raw samples of the last
    // minute agree, up to a time both have.
    let times = ferry_sample_times(&env, "1m");
    let t = times[times.len() - 2];
    let query = "{__name__=~\"ferry_remote_write_.+\"}[1m]";
    let keep = |m: BTreeMap<String, Vec<(i64, f64)>>| -> BTreeMap<String, Vec<(i64, f64)>> {
        // Prometheus 2 includes a sample exactly at the range's start,
        // Ferry (as Prometheus 3) does not: compare from the first one.
        m.into_iter()
            .map(|(k, v)| (k, v.into_iter().filter(|s| s.0 >= first_sample).collect()))
            .collect()
    };
    let ours = keep(matrix(&ferry_query(&env, query, Some(&secs(t)))));
    assert!(
        ours.values()
            .all(|v| v.first().map(|s| s.0) == Some(first_sample)),
        "{ours:?}"
    );
    let same = |a: &BTreeMap<String, Vec<(i64, f64)>>, b: &BTreeMap<String, Vec<(i64, f64)>>| {
        a.keys().eq(b.keys())
            && a.iter().all(|(k, v)| {
                v.len() == b[k].len()
                    && v.iter()
                        .zip(&b[k])
                        .all(|(x, y)| x.0 == y.0 && close(x.1, y.1))
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let theirs = keep(matrix(&prometheus.query(query, Some(&secs(t)))));
        if same(&ours, &theirs) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "at {t}: Ferry {ours:?}\n\nPrometheus {theirs:?}\n\nPrometheus log:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        own_metric(&env, "ferry_remote_write_samples_dropped_total"),
        0.0,
        "a short outage fits in the queue"
    );
    assert_eq!(
        own_metric(&env, "ferry_remote_write_samples_failed_total"),
        0.0
    );
}
