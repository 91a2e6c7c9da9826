//! The daemon collects metrics as Prometheus would scrape them: its
//! instances' own `/metrics` with job/instance/service labels, extra
//! targets from `[metrics] scrape` (bad ones marked down without holding
//! up the good one), host metrics under node_exporter's names and
//! per-instance CPU and memory under cAdvisor's.

use super::harness::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One series of an instant query: its labels and value.
type Row = (BTreeMap<String, String>, f64);

fn query(env: &Env, q: &str) -> Vec<Row> {
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/query", env.api()))
        .bearer_auth(env.token())
        .form(&[("query", q)])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["status"], "success", "{q}: {body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = serde_json::from_value(s["metric"].clone()).unwrap();
            let v = s["value"][1].as_str().unwrap().parse().unwrap();
            (labels, v)
        })
        .collect()
}

/// The value of a one-series query, if it has exactly one.
fn one(env: &Env, q: &str) -> Option<f64> {
    match query(env, q).as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

/// The ids of revision `rev`'s instances, as `ferry status` lists them.
fn instance_ids(env: &Env, rev: u64) -> BTreeSet<String> {
    status(env)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["revision"] == rev)
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn instances_of(rows: &[Row]) -> BTreeSet<String> {
    rows.iter().map(|(l, _)| l["instance"].clone()).collect()
}

#[test]
fn instances_host_and_cadvisor_metrics_are_collected_with_their_labels() {
    let mut env = Env::prepare(Spec {
        extra: r#"metrics = "/metrics""#.into(),
        ..Spec::default()
    });
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let client = reqwest::blocking::Client::new();
    for _ in 0..9 {
        let r = client
            .get(format!("http://{}/", env.proxy()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let ids = instance_ids(&env, 1);
    assert_eq!(ids.len(), 3);

    // up = 1 per instance, with the target labels.
    wait_for(Duration::from_secs(15), "up 1 for each instance", || {
        instances_of(&query(&env, r#"up{job="web"} == 1"#)) == ids
    });
    for (labels, _) in query(&env, r#"up{job="web"}"#) {
        assert_eq!(labels["service"], "web", "{labels:?}");
        assert_eq!(labels["revision"], "1", "{labels:?}");
        assert_eq!(labels["version"], "v1", "{labels:?}");
    }

    // The instances' own metric, with job, instance and service.
    wait_for(Duration::from_secs(10), "the 9 requests scraped", || {
        one(&env, r#"sum(demo_requests_total{job="web",code="200"})"#).is_some_and(|n| n >= 9.0)
    });
    let rows = query(
        &env,
        r#"demo_requests_total{job="web",service="web",revision="1",code="200"}"#,
    );
    assert_eq!(instances_of(&rows), ids, "{rows:?}");
    // The app's own `version` label conflicts with the target's: kept as
    // exported_version.
    let info = query(&env, r#"demo_app_info{job="web"}"#);
    assert_eq!(info.len(), 3, "{info:?}");
    assert!(
        info.iter()
            .all(|(l, _)| l["version"] == "v1" && l["exported_version"] == "v1"),
        "{info:?}"
    );
    assert!(
        one(&env, r#"count(scrape_samples_scraped{job="web"} > 0)"#) == Some(3.0),
        "{:?}",
        query(&env, "scrape_samples_scraped")
    );

    // The daemon itself.
    let api = env.api();
    let addr = api.trim_start_matches("http://");
    assert_eq!(
        one(&env, &format!(r#"up{{job="ferry",instance="{addr}"}}"#)),
        Some(1.0)
    );

    // Host metrics under node_exporter's names.
    wait_for(Duration::from_secs(10), "host metrics", || {
        one(&env, r#"node_memory_MemTotal_bytes{job="node"}"#).is_some_and(|v| v > 0.0)
    });
    let total = one(&env, "node_memory_MemTotal_bytes").unwrap();
    let avail = one(&env, "node_memory_MemAvailable_bytes").unwrap();
    assert!(avail > 0.0 && avail <= total, "{avail} of {total}");
    let cpus = query(&env, r#"node_cpu_seconds_total{mode="idle"}"#);
    assert!(!cpus.is_empty(), "per-CPU idle seconds");
    assert!(!query(&env, "node_load1").is_empty());
    assert!(!query(&env, r#"node_network_receive_bytes_total{device="lo"}"#).is_empty());
    let fs = query(&env, "node_filesystem_size_bytes");
    assert!(
        fs.iter()
            .all(|(l, v)| *v > 0.0 && !["proc", "sysfs", "cgroup2"].contains(&l["fstype"].as_str())),
        "{fs:?}"
    );

    // Per-instance CPU and memory under cAdvisor's names.
    wait_for(Duration::from_secs(10), "instance memory", || {
        let rows = query(
            &env,
            r#"container_memory_working_set_bytes{service="web"} > 0"#,
        );
        instances_of(&rows) == ids
    });
    let cpu = query(
        &env,
        r#"container_cpu_usage_seconds_total{job="cadvisor",service="web",revision="1"}"#,
    );
    assert_eq!(instances_of(&cpu), ids, "{cpu:?}");

    // A new release: the old instances' series end (stale), once they
    // are gone.
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    let new_ids = instance_ids(&env, 2);
    assert_eq!(new_ids.len(), 3);
    wait_for(Duration::from_secs(15), "only the new instances up", || {
        instances_of(&query(&env, r#"up{job="web"}"#)) == new_ids
            && instances_of(&query(&env, "container_memory_working_set_bytes")) == new_ids
    });
    assert!(query(&env, r#"up{job="web",revision="1"}"#).is_empty());
    assert!(new_ids.is_disjoint(&ids));
}

fn respond(mut stream: TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn extra_targets_bad_ones_down_the_good_one_still_scraped() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let n = scrapes.clone();
    let good = http_server(move |s| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(
            "# TYPE test_good_total counter\ntest_good_total{{job=\"inner\"}} {i}\n# EOF\n"
        );
        respond(
            s,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &body,
        );
    });
    let garbage =
        http_server(|s| respond(s, "200 OK", "text/plain", "<html>not {metrics</html>\n"));
    let failing = http_server(|s| respond(s, "500 Internal Server Error", "text/plain", "oops\n"));
    let held: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
    let h = held.clone();
    let hang = http_server(move |s| h.lock().unwrap().push(s));
    let huge = http_server(|mut s| {
        // No Content-Length: only reading stops it. Comment lines, so
        // that only the size limit can fail it.
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n");
        let line = format!("# {}\n", "x".repeat(1022));
        let chunk = line.repeat(1024);
        for _ in 0..20 {
            if s.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = s.write_all(b"huge 1\n");
    });
    let many = http_server(|s| {
        let body: String = (0..50_001)
            .map(|i| format!("many{{i=\"{i}\"}} 1\n"))
            .collect();
        respond(s, "200 OK", "text/plain; version=0.0.4", &body);
    });

    let mut env = Env::prepare(Spec::default());
    let target = |job: &str, port: u16, extra: &str| {
        format!(r#"  {{ job = "{job}", url = "http://127.0.0.1:{port}/metrics"{extra} }},"#)
    };
    let config = [
        "[metrics]".to_string(),
        "scrape = [".into(),
        target(
            "good",
            good,
            r#", interval = "300ms", labels = { env = "test" }"#,
        ),
        target("garbage", garbage, r#", interval = "300ms""#),
        target("failing", failing, r#", interval = "300ms""#),
        target("hang", hang, r#", interval = "1s", timeout = "300ms""#),
        target("huge", huge, r#", interval = "1s", timeout = "1s""#),
        target("many", many, r#", interval = "1s", timeout = "1s""#),
        "]".into(),
    ]
    .join("\n");
    let path = env.dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{config}\n")).unwrap();
    env.start_daemon_with(
        &[
            "--scrape-interval",
            "200ms",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );

    let down = ["garbage", "failing", "hang", "huge", "many"];
    wait_for(Duration::from_secs(15), "every target scraped", || {
        one(&env, r#"up{job="good"}"#) == Some(1.0)
            && down
                .iter()
                .all(|job| one(&env, &format!(r#"up{{job="{job}"}}"#)) == Some(0.0))
    });
    let up = query(&env, r#"up{job="good"}"#);
    assert_eq!(up[0].0["instance"], format!("127.0.0.1:{good}"));
    assert_eq!(up[0].0["env"], "test");

    // The good target's samples keep arriving while the others fail,
    // with the target's job and the exposed one kept as exported_job.
    let value = || {
        one(
            &env,
            r#"test_good_total{job="good",env="test",exported_job="inner"}"#,
        )
    };
    wait_for(Duration::from_secs(5), "the good metric", || {
        value().is_some()
    });
    let first = value().unwrap();
    wait_for(
        Duration::from_secs(10),
        "five more good scrapes stored",
        || value().is_some_and(|v| v >= first + 5.0),
    );
    for job in down {
        assert_eq!(
            one(&env, &format!(r#"up{{job="{job}"}}"#)),
            Some(0.0),
            "{job}"
        );
        assert_eq!(
            one(&env, &format!(r#"scrape_samples_scraped{{job="{job}"}}"#)),
            Some(0.0),
            "{job}"
        );
    }
    assert!(query(&env, "huge").is_empty() && query(&env, "many").is_empty());
    let hung = one(&env, r#"scrape_duration_seconds{job="hang"}"#).unwrap();
    assert!(hung >= 0.29, "cut off at its 300ms timeout: {hung}");

    // Each target going down is logged once, not every scrape; nothing
    // logs the good one.
    let log = env.daemon_log();
    for (job, port) in [
        ("garbage", garbage),
        ("failing", failing),
        ("hang", hang),
        ("huge", huge),
        ("many", many),
    ] {
        let needle = format!("http://127.0.0.1:{port}/metrics (job \"{job}\") is down");
        assert_eq!(log.matches(&needle).count(), 1, "{job}:\n{log}");
    }
    assert!(!log.contains(&format!("127.0.0.1:{good}/")), "{log}");

    // An instance without a metrics path: up while it is ready, and no
    // scrape of it.
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let ids = instance_ids(&env, 1);
    wait_for(Duration::from_secs(10), "up 1 for each instance", || {
        instances_of(&query(
            &env,
            r#"up{job="web",service="web",revision="1"} == 1"#,
        )) == ids
    });
    assert!(query(&env, r#"scrape_duration_seconds{job="web"}"#).is_empty());
    drop(held);
}
