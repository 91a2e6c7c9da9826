//! The proxies' request metrics as an ordinary instrumented service's:
//! `http_requests_total{service,revision,version,instance,status}` and
//! `http_request_duration_seconds`, recorded by the daemon's self-scrape
//! and queried as Prometheus rules would.

use super::harness::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// An instance that answers `/status/NNN` with status NNN (and `/health`
/// with 200), keep-alive, on `$PORT`.
const APP: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        code = 200
        if self.path.startswith("/status/"):
            code = int(self.path[len("/status/"):])
        body = b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn query(env: &Env, q: &str) -> serde_json::Value {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/query", env.api()))
        .bearer_auth(env.token())
        .form(&[("query", q)])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["status"], "success", "{body}");
    body["data"]["result"].clone()
}

/// `label -> value` of a vector result, by `label`.
fn by_label(result: &serde_json::Value, label: &str) -> BTreeMap<String, f64> {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"][label].as_str().unwrap_or_default().to_string(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn http_requests_total_by_exact_status_and_instance() {
    let mut env = Env::prepare(Spec::default());
    let app = env.dir.path().join("status_app.py");
    std::fs::write(&app, APP).unwrap();
    env.write_config(&Spec {
        command: Some(format!(r#"["python3", "{}"]"#, app.display())),
        instances: 2,
        ..Spec::default()
    });
    env.start_daemon_with(&["--scrape-interval", "200ms"], &[]);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);

    let client = reqwest::blocking::Client::new();
    let sent: [(u16, usize); 4] = [(200, 12), (201, 3), (404, 4), (503, 2)];
    for &(code, times) in &sent {
        for _ in 0..times {
            let r = client
                .get(format!("http://{}/status/{code}", env.proxy()))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), code);
        }
    }

    // Every request, by the exact code the client got.
    let expected: BTreeMap<String, f64> = sent
        .iter()
        .map(|&(code, n)| (code.to_string(), n as f64))
        .collect();
    let mut got = BTreeMap::new();
    wait_for(Duration::from_secs(15), "the requests in the store", || {
        got = by_label(
            &query(
                &env,
                r#"sum by (status) (http_requests_total{service="web"})"#,
            ),
            "status",
        );
        got == expected
    });

    // Both instances, as `ferry status` names them, with the version.
    let ids: Vec<String> = status(&env)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let per_instance = by_label(
        &query(
            &env,
            r#"sum by (instance) (http_requests_total{service="web",revision="1",version="v1"})"#,
        ),
        "instance",
    );
    assert_eq!(
        per_instance.keys().cloned().collect::<Vec<_>>(),
        {
            let mut ids = ids.clone();
            ids.sort();
            ids
        },
        "{per_instance:?}"
    );
    assert!(per_instance.values().all(|&n| n > 0.0), "{per_instance:?}");
    assert_eq!(per_instance.values().sum::<f64>(), 21.0);

    // The histogram: its count matches, and a quantile is a number.
    let count = by_label(
        &query(
            &env,
            r#"sum(http_request_duration_seconds_count{service="web"})"#,
        ),
        "",
    );
    assert_eq!(count.values().copied().collect::<Vec<_>>(), [21.0]);
    let mut median = f64::NAN;
    wait_for(Duration::from_secs(15), "a finite median latency", || {
        let r = query(
            &env,
            "histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))",
        );
        median = r[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        median.is_finite()
    });
    assert!(median > 0.0 && median < 10.0, "{median}");

    // The old families still count the same requests.
    let classes = by_label(
        &query(
            &env,
            r#"sum by (code) (ferry_proxy_requests_total{service="web"})"#,
        ),
        "code",
    );
    assert_eq!(classes["2xx"], 15.0);
    assert_eq!(classes["4xx"], 4.0);
    assert_eq!(classes["5xx"], 2.0);
}
