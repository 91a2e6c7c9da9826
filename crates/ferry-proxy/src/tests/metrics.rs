//! Per-revision metrics (counts, latency, Prometheus text) and the
//! access log.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{eventually, fetch, get, spawn_upstream, start_proxy, table, upstream};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    in_flight_stats_prometheus_and_timeouts,
    access_log_lines_carry_request_ids_and_traces
);

async fn in_flight_stats_prometheus_and_timeouts() {
    let up = spawn_upstream("slowpoke", true).await;
    let stats = RevisionStats::new();
    let options = ProxyOptions {
        response_header_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    };
    let proxy = start_proxy(options).await;
    let slow = upstream("slow", 4, up.addr, &stats);
    proxy.set_routes(table(&[&slow]));
    let addr = proxy.local_addr();

    // A slow request (answered in time) is counted in flight while running.
    let request = tokio::spawn(fetch(addr, get("/slow")));
    eventually("request in flight", || slow.in_flight() == 1).await;
    up.release.notify_one();
    let resp = request.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(slow.in_flight(), 0);

    // Upstream 500s are 5xx but not upstream errors.
    let resp = fetch(addr, get("/status/500")).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.header("x-ferry-revision"), "4");
    let resp = fetch(addr, get("/status/404")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    eventually("in_flight back to 0", || slow.in_flight() == 0).await;

    // No response head in time: 504, counted as an upstream error. (The
    // slow request above was released before 500 ms; this one never is.)
    let never = spawn_upstream("never", true).await;
    let stuck = upstream("stuck", 4, never.addr, &stats);
    proxy.set_routes(table(&[&stuck]));
    let resp = fetch(addr, get("/slow")).await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(stuck.in_flight(), 0);

    let snap = stats.snapshot();
    assert_eq!(snap.by_class, [0, 1, 0, 1, 2]);
    assert_eq!(snap.upstream_errors, 1);
    assert_eq!(snap.total, 4);
    assert_eq!(snap.latency_buckets.last().unwrap().1, 4);
    assert!(
        snap.latency_sum_seconds >= 0.5,
        "504 waited for the timeout"
    );

    let mut out = String::new();
    stats.render_prometheus("service=\"web\",revision=\"4\"", &mut out);
    for line in [
        "ferry_proxy_requests_total{service=\"web\",revision=\"4\",code=\"2xx\"} 1\n",
        "ferry_proxy_requests_total{service=\"web\",revision=\"4\",code=\"4xx\"} 1\n",
        "ferry_proxy_requests_total{service=\"web\",revision=\"4\",code=\"5xx\"} 2\n",
        "ferry_proxy_upstream_errors_total{service=\"web\",revision=\"4\"} 1\n",
        "ferry_proxy_request_duration_seconds_bucket{service=\"web\",revision=\"4\",le=\"+Inf\"} 4\n",
        "ferry_proxy_request_duration_seconds_count{service=\"web\",revision=\"4\"} 4\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("le=\"0.005\"} "));
    assert!(
        out.contains("ferry_proxy_request_duration_seconds_sum{service=\"web\",revision=\"4\"} ")
    );
    assert!(
        crate::PROMETHEUS_HELP.contains("# TYPE ferry_proxy_request_duration_seconds histogram\n")
    );
}

async fn access_log_lines_carry_request_ids_and_traces() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let path = std::env::temp_dir().join(format!(
        "ferry-proxy-access-{}-{}.log",
        std::process::id(),
        crate::random::random_u64()
    ));
    let proxy = start_proxy(ProxyOptions {
        access_log: Some(crate::AccessLogOptions {
            path: path.clone(),
            buffer: 64,
        }),
        ..ProxyOptions::default()
    })
    .await;
    let addr = proxy.local_addr();
    proxy.set_routes(table(&[&upstream("u-1", 1, up.addr, &stats)]));

    // No ids sent: both are created and passed upstream.
    let resp = fetch(addr, get("/made")).await;
    let made_id = resp.header("x-request-id").to_owned();
    let made_trace = resp.header("x-seen-traceparent").to_owned();
    assert_eq!(resp.header("x-seen-request-id"), made_id);
    assert!(
        crate::headers::valid_traceparent(made_trace.as_bytes()),
        "{made_trace}"
    );

    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/kept?q=1")
        .header("host", "web.test")
        .header("x-request-id", "client-id-7")
        .header("traceparent", trace)
        .header("user-agent", "tester/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = fetch(addr, req).await;
    assert_eq!(resp.header("x-seen-traceparent"), trace);

    proxy.set_routes(table(&[]));
    assert_eq!(
        fetch(addr, get("/none")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let mut lines = Vec::new();
    eventually("three log lines", || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() == 3
    })
    .await;
    let _ = std::fs::remove_file(&path);
    // One line per request; requests on different connections may be
    // served by different workers, so the lines may come in any order.
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
            .clone()
    };
    let (made, kept, none) = (line("/made"), line("/kept?q=1"), line("/none"));
    assert!(
        made.contains(&format!("\"request_id\":\"{made_id}\"")),
        "{}",
        made
    );
    assert!(
        made.contains(&format!("\"traceparent\":\"{made_trace}\"")),
        "{}",
        made
    );
    assert!(made.contains("\"status\":200"), "{}", made);
    assert!(
        made.contains("\"revision\":1,\"instance\":\"u-1\""),
        "{}",
        made
    );
    assert!(made.contains("\"bytes\":1,"), "{}", made);
    assert!(kept.contains("\"path\":\"/kept?q=1\""), "{}", kept);
    assert!(kept.contains("\"request_id\":\"client-id-7\""), "{}", kept);
    assert!(
        kept.contains(&format!("\"traceparent\":\"{trace}\"")),
        "{}",
        kept
    );
    assert!(kept.contains("\"user_agent\":\"tester/1\""), "{}", kept);
    assert!(kept.contains("\"client\":\"127.0.0.1\""), "{}", kept);
    assert!(
        none.contains("\"status\":503,\"revision\":null"),
        "{}",
        none
    );
    assert_eq!(proxy.counters().access_log_dropped, 0);
}
