//! Per-revision metrics (counts, latency, Prometheus text) and the
//! access log.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{eventually, fetch, get, raw_exchange, spawn_upstream, start_proxy, table, upstream};
use crate::{HttpStats, ProxyOptions, RevisionStats, Upstream};

on_both_paths!(
    in_flight_stats_prometheus_and_timeouts,
    access_log_lines_carry_request_ids_and_traces,
    exact_codes_per_instance_and_the_proxys_own_answers
);

/// `http_requests_total`'s counts: each instance counts the exact codes
/// its clients got, a 502 counts against the instance that failed, a new
/// routing table with the same instance keeps its counters, and what the
/// proxy answered without an upstream is counted apart.
async fn exact_codes_per_instance_and_the_proxys_own_answers() {
    let (up_a, up_b) = (
        spawn_upstream("a", true).await,
        spawn_upstream("b", true).await,
    );
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let addr = proxy.local_addr();
    let a = upstream("a-1", 3, up_a.addr, &stats);
    let b = upstream("b-1", 3, up_b.addr, &stats);

    proxy.set_routes(table(&[&a]));
    for code in [200, 201, 201, 404, 599, 700] {
        let resp = fetch(addr, get(&format!("/status/{code}"))).await;
        assert_eq!(resp.status.as_u16(), code);
    }
    // A new table with the same instance (another `Upstream` for it, on
    // the same counters, as the daemon's engine makes after an address
    // change) and a second instance.
    let a_again = Upstream::with_http_stats(
        "a-1".into(),
        3,
        up_a.addr,
        stats.clone(),
        a.http_stats().clone(),
    );
    proxy.set_routes(table(&[&a_again]));
    assert_eq!(fetch(addr, get("/status/201")).await.status.as_u16(), 201);
    proxy.set_routes(table(&[&b]));
    assert_eq!(fetch(addr, get("/status/204")).await.status.as_u16(), 204);

    // An instance that refuses connections: the 502 is its own.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = gone.local_addr().unwrap();
    drop(gone);
    let dead = upstream("dead-1", 3, dead_addr, &stats);
    proxy.set_routes(table(&[&dead]));
    assert_eq!(fetch(addr, get("/")).await.status, StatusCode::BAD_GATEWAY);

    // No instance at all, and a request without Host: the proxy's own.
    proxy.set_routes(table(&[]));
    assert_eq!(
        fetch(addr, get("/")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let codes = |h: &HttpStats| h.snapshot().codes;
    assert_eq!(
        codes(a.http_stats()),
        [(200, 1), (201, 3), (404, 1), (599, 1), (700, 1)]
    );
    assert_eq!(codes(b.http_stats()), [(204, 1)]);
    assert_eq!(codes(dead.http_stats()), [(502, 1)]);
    let own = proxy.unrouted_stats();
    assert_eq!(own.codes, [(400, 1), (503, 1)]);
    assert_eq!(own.count(), 2);
    // Each histogram counts what its codes count; the revision's
    // counters still count every routed request.
    let snap = a.http_stats().snapshot();
    assert_eq!(snap.count(), 7);
    assert_eq!(snap.latency_buckets.len(), 14);
    assert_eq!(stats.snapshot().total, 9);
    assert_eq!(stats.snapshot().upstream_errors, 1);
}

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
