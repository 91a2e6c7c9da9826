//! The daemon records its own metrics and answers PromQL over them, as
//! Prometheus's query API does for Grafana, and through `ferry query`.

use super::harness::*;
use std::time::Duration;

fn post(env: &Env, path: &str, form: &[(&str, &str)], token: bool) -> (u16, serde_json::Value) {
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{}{path}", env.api()))
        .form(form);
    if token {
        req = req.bearer_auth(env.token());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

fn requests_recorded(env: &Env) -> f64 {
    let (_, body) = post(
        env,
        "/api/v1/query",
        &[("query", "sum(ferry_proxy_requests_total{service=\"web\"})")],
        true,
    );
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn promql_over_the_daemons_own_metrics() {
    let mut env = Env::prepare(Spec::default());
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let client = reqwest::blocking::Client::new();
    for _ in 0..20 {
        let r = client
            .get(format!("http://{}/", env.proxy()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for(Duration::from_secs(10), "20 requests recorded", || {
        requests_recorded(&env) >= 20.0
    });

    // What Grafana sends for "Save & test".
    let (status, body) = post(&env, "/api/v1/query", &[("query", "1+1")], true);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["resultType"], "scalar");
    assert_eq!(body["data"]["result"][1], "2");

    // A graph: float start, end and step, form-encoded. The series has
    // existed since the first request; wait until it spans two steps.
    let range_query = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let (start, end) = (format!("{:.3}", now - 30.0), format!("{now:.3}"));
        post(
            &env,
            "/api/v1/query_range",
            &[
                ("query", "sum by (service) (ferry_proxy_requests_total)"),
                ("start", &start),
                ("end", &end),
                ("step", "0.5"),
            ],
            true,
        )
    };
    wait_for(Duration::from_secs(10), "two steps of the series", || {
        range_query().1["data"]["result"][0]["values"]
            .as_array()
            .is_some_and(|v| v.len() >= 2)
    });
    let (status, body) = range_query();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix");
    let series = &body["data"]["result"][0];
    assert_eq!(series["metric"]["service"], "web", "{body}");
    let values = series["values"].as_array().unwrap();
    let last: f64 = values.last().unwrap()[1].as_str().unwrap().parse().unwrap();
    assert!(last >= 20.0, "{body}");
    let t0 = values[0][0].as_f64().unwrap();
    let t1 = values[1][0].as_f64().unwrap();
    assert!((t1 - t0 - 0.5).abs() < 1e-6, "one point per step: {body}");

    // GET works too, and the instance gauge is there.
    let r: serde_json::Value = client
        .get(format!("{}/api/v1/query", env.api()))
        .query(&[("query", "ferry_service_serving_instances")])
        .bearer_auth(env.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["data"]["result"][0]["value"][1], "3", "{r}");

    // What Grafana's query editor asks for: names, values, series,
    // metadata, the build, the built-in rules, and no alerts (the built-in
    // ones need minutes of data before any can be pending).
    let get = |path: &str| -> serde_json::Value {
        client
            .get(format!("{}{path}", env.api()))
            .bearer_auth(env.token())
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let labels = get("/api/v1/labels");
    for name in ["__name__", "service", "revision", "code"] {
        assert!(
            labels["data"].as_array().unwrap().iter().any(|l| l == name),
            "{labels}"
        );
    }
    let values = get("/api/v1/label/__name__/values");
    assert!(
        values["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "ferry_proxy_requests_total"),
        "{values}"
    );
    let (status, series) = post(
        &env,
        "/api/v1/series",
        &[(
            "match[]",
            "ferry_service_serving_instances{service=\"web\"}",
        )],
        true,
    );
    assert_eq!(status, 200, "{series}");
    // The daemon's own target labels: job "ferry", instance its API address.
    let api = env.api();
    assert_eq!(
        series["data"],
        serde_json::json!([{"__name__": "ferry_service_serving_instances", "service": "web",
            "job": "ferry", "instance": api.trim_start_matches("http://")}])
    );
    let meta = get("/api/v1/metadata");
    assert_eq!(
        meta["data"]["ferry_proxy_requests_total"][0]["type"], "counter",
        "{meta}"
    );
    assert_eq!(get("/api/v1/status/buildinfo")["status"], "success");
    // The built-in rules (seed 001's thresholds), in Prometheus's shape.
    let groups = get("/api/v1/rules")["data"]["groups"].clone();
    let names: Vec<(&str, &str)> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["file"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("ferry_host", "built-in"), ("ferry_services", "built-in")],
        "{groups}"
    );
    assert_eq!(groups[0]["rules"][0]["name"], "HostCpuWarning", "{groups}");
    assert_eq!(groups[0]["rules"][0]["type"], "alerting", "{groups}");
    // The service is healthy, so no service rule is pending or firing. The
    // host rules judge the machine the test runs on, which a busy or
    // nearly full CI host can trip; those may be there, in Prometheus's shape.
    let alerts = get("/api/v1/alerts");
    assert_eq!(alerts["status"], "success", "{alerts}");
    for alert in alerts["data"]["alerts"]
        .as_array()
        .expect("an alerts array")
    {
        let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
        assert!(
            name.starts_with("Host") && alert["labels"].get("service").is_none(),
            "only the host's own rules may be active: {alerts}"
        );
        assert!(
            matches!(alert["state"].as_str(), Some("pending" | "firing")),
            "{alert}"
        );
        assert!(alert["activeAt"].is_string(), "{alert}");
    }
    let (status, body) = post(&env, "/api/v1/series", &[], true);
    assert_eq!(
        (status, body["errorType"].as_str()),
        (400, Some("bad_data"))
    );

    // Errors in Prometheus's shape; no token, no data.
    let (status, body) = post(&env, "/api/v1/query", &[("query", "sum(")], true);
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "bad_data", "{body}");
    assert_eq!(
        body["error"], "1:4: parse error: unclosed left parenthesis",
        "the position, as Prometheus gives it"
    );
    let (status, body) = post(
        &env,
        "/api/v1/query_range",
        &[
            ("query", "up"),
            ("start", "10"),
            ("end", "1"),
            ("step", "1"),
        ],
        true,
    );
    assert_eq!(
        (status, body["errorType"].as_str()),
        (400, Some("bad_data"))
    );
    let (status, _) = post(&env, "/api/v1/query", &[("query", "1+1")], false);
    assert_eq!(status, 401);

    // The CLI.
    let out = env.ferry_ok(&["query", "sum(ferry_proxy_requests_total{service=\"web\"})"]);
    let n: f64 = out.split_whitespace().last().unwrap().parse().unwrap();
    assert!(n >= 20.0, "{out}");
    let out = env.ferry_ok(&[
        "query",
        "sum by (service) (ferry_proxy_requests_total)",
        "--range",
        "30s",
        "--step",
        "1s",
    ]);
    assert!(out.contains("service=\"web\""), "{out}");
    assert!(out.chars().any(|c| ('▁'..='█').contains(&c)), "{out}");
    let out = env.ferry_code(&["query", "sum("], 2);
    assert!(out.contains("unclosed left parenthesis"), "{out}");
}

/// Canary checks written as PromQL with no `prometheus_url` run against
/// the daemon's own store: a healthy canary passes, a failing one is
/// pulled, exactly as with an external Prometheus (tests/it/prometheus.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_queries_without_prometheus_run_against_the_embedded_store() {
    let env = blocking(|| {
        let mut env = Env::prepare(super::prometheus::spec(None));
        env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
        env
    })
    .await;
    super::prometheus::pass_then_pull(std::sync::Arc::new(env)).await;
}

fn value_at(env: &Env, query: &str, time: &str) -> Option<f64> {
    let (status, body) = post(
        env,
        "/api/v1/query",
        &[("query", query), ("time", time)],
        true,
    );
    assert_eq!(status, 200, "{body}");
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

#[test]
fn recorded_metrics_survive_restarts_and_kill_9_and_big_queries_are_refused() {
    let mut env = Env::prepare(Spec::default());
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let client = reqwest::blocking::Client::new();
    for _ in 0..7 {
        let r = client
            .get(format!("http://{}/", env.proxy()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for(Duration::from_secs(10), "7 requests recorded", || {
        requests_recorded(&env) >= 7.0
    });
    // A moment the store has recorded, a little in the past.
    std::thread::sleep(Duration::from_millis(500));
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 0.3;
    let then = format!("{then:.3}");
    let query = "sum(ferry_proxy_requests_total{service=\"web\"})";
    let before = value_at(&env, query, &then).expect("a value at that moment");
    assert_eq!(before, 7.0);
    let disk = env.data_dir().join("metrics").join("wal");
    assert!(disk.is_dir(), "the store writes its log in the data dir");

    // A clean restart, then a kill -9: the recorded moment answers the same.
    env.stop();
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    assert_eq!(
        value_at(&env, query, &then),
        Some(before),
        "after a restart"
    );
    env.kill9();
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    assert_eq!(value_at(&env, query, &then), Some(before), "after kill -9");

    // A query that would load more samples than allowed fails cleanly.
    env.stop();
    env.start_daemon_with(
        &["--scrape-interval", "200ms", "--query-max-samples", "10"],
        &[],
    );
    let (status, body) = post(
        &env,
        "/api/v1/query",
        &[("query", "count_over_time(ferry_proxy_requests_total[1h])")],
        true,
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errorType"], "execution", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many samples"),
        "{body}"
    );
    let (status, body) = post(&env, "/api/v1/query", &[("query", "1+1")], true);
    assert_eq!(
        (status, &body["data"]["result"][1]),
        (200, &serde_json::json!("2")),
        "small queries still run"
    );
    env.shutdown();
}

#[test]
fn the_read_only_token_queries_and_reads_but_changes_nothing() {
    let mut env = Env::prepare(Spec::default());
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    let path = env.data_dir().join("token.read");
    let read = std::fs::read_to_string(&path).unwrap();
    let read = read.trim();
    assert!(read.len() >= 32 && read != env.token());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let client = reqwest::blocking::Client::new();
    let send = |req: reqwest::blocking::RequestBuilder| {
        let resp = req.bearer_auth(read).send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().unwrap_or_default())
    };
    // What Grafana does with it: "Save & test", a graph, label lookups.
    let (status, body) = send(
        client
            .post(format!("{}/api/v1/query", env.api()))
            .form(&[("query", "1+1")]),
    );
    assert_eq!(
        (status, &body["data"]["result"][1]),
        (200, &serde_json::json!("2"))
    );
    let (status, _) = send(
        client
            .post(format!("{}/api/v1/query_range", env.api()))
            .form(&[("query", "up"), ("start", "1"), ("end", "2"), ("step", "1")]),
    );
    assert_eq!(status, 200);
    let (status, _) = send(client.get(format!("{}/api/v1/labels", env.api())));
    assert_eq!(status, 200);
    let (status, _) = send(client.get(format!("{}/v1/services", env.api())));
    assert_eq!(status, 200, "reads of state are allowed");
    // Nothing that changes anything.
    let (status, body) = send(
        client
            .post(format!("{}/v1/services/web/deploys", env.api()))
            .json(&serde_json::json!({"spec": {}})),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{body}"
    );
    let (status, _) = send(client.post(format!("{}/v1/system/shutdown", env.api())));
    assert_eq!(status, 403);
    let (status, _) = send(client.get(format!("{}/livez", env.api())));
    assert_eq!(status, 200);
    assert!(
        env.data_dir().join("api.json").exists(),
        "the daemon still runs"
    );
    env.shutdown();
}
