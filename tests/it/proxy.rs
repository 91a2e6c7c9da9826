//! The data plane through a real daemon: `[services.web.proxy]` settings,
//! streaming, tracing, the access log and rate limiting.

use super::harness::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One raw HTTP/1.1 request; returns everything read until the connection
/// closes (the request says `connection: close`).
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get_with(addr: SocketAddr, path: &str, extra: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n"),
    )
}

#[test]
fn proxy_settings_streaming_tracing_access_log_and_rate_limit_through_the_daemon() {
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("web-access.log");
    let env = Env::start(Spec {
        instances: 2,
        extra: format!(
            "[services.web.proxy]\nidle_timeout = \"30s\"\naccess_log = \"{}\"\n\
             [services.web.proxy.rate_limit]\nrate = 3\nper = \"1m\"\nkey = \"header:x-api-key\"\n",
            log_path.display()
        ),
        ..Spec::default()
    });
    env.ferry_ok(&["check"]);
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let addr = env.proxy();

    // Tracing: ids are created, passed upstream, and answered.
    let resp = get_with(addr, "/", "");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("hello from v1"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("x-request-id: "), "{resp}");
    assert!(lower.contains("x-ferry-revision: 1"), "{resp}");

    // SSE: the first event reaches the client while the upstream is still
    // producing the rest (5 events, 200 ms apart).
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    sse.write_all(b"GET /stream HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("data: 1") {
        let n = sse.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        !seen.contains("data: 5"),
        "the first event came with the last one: the stream was buffered\n{seen}"
    );
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    sse.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: 5"), "{rest}");
    assert!(started.elapsed() > first_at, "the rest came later");

    // A client's trace context is kept.
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = get_with(
        addr,
        "/",
        &format!("x-request-id: it-42\r\ntraceparent: {trace}\r\n"),
    );
    assert!(
        resp.to_ascii_lowercase().contains("x-request-id: it-42"),
        "{resp}"
    );

    // Rate limit by API key: 3 per minute, then 429 with Retry-After.
    for _ in 0..3 {
        let resp = get_with(addr, "/", "x-api-key: k1\r\n");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let resp = get_with(addr, "/", "x-api-key: k1\r\n");
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: "),
        "{resp}"
    );
    let resp = get_with(addr, "/", "x-api-key: k2\r\n");
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "another key has its own budget: {resp}"
    );

    // The access log has one JSON line per request, written off the hot path.
    let mut lines: Vec<String> = Vec::new();
    wait_for(Duration::from_secs(20), "the access log lines", || {
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= 8
    });
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let traced = parsed
        .iter()
        .find(|l| l["request_id"] == "it-42")
        .expect("the traced request is logged");
    assert_eq!(traced["traceparent"], trace);
    assert_eq!(traced["status"], 200);
    assert_eq!(traced["revision"], 1);
    assert_eq!(traced["service"], "web");
    assert_eq!(traced["client"], "127.0.0.1");
    let stream_line = parsed.iter().find(|l| l["path"] == "/stream").unwrap();
    assert!(stream_line["bytes"].as_u64().unwrap() > 50, "{stream_line}");
    assert_eq!(parsed.iter().filter(|l| l["status"] == 429).count(), 1);
    assert!(parsed.iter().all(|l| {
        l["traceparent"].as_str().is_some_and(|t| t.len() == 55)
            && l["request_id"].as_str().is_some_and(|r| !r.is_empty())
    }));
}

#[test]
fn bad_proxy_settings_are_rejected_with_the_key_and_the_fix() {
    let env = Env::start(Spec {
        extra: "[services.web.proxy]\nmax_connections = 0\ntrusted_proxies = [\"lb.internal\"]\n\
                proxy_protocol = true\nconnect_timeout = \"0s\"\n"
            .into(),
        ..Spec::default()
    });
    let out = env.ferry_code(&["check"], 2);
    for needle in [
        "services.web.proxy.max_connections",
        "services.web.proxy.trusted_proxies",
        "lb.internal",
        "services.web.proxy.connect_timeout",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Unknown keys are errors too.
    let env2 = Env::start(Spec {
        extra: "[services.web.proxy]\nmax_conections = 5\n".into(),
        ..Spec::default()
    });
    let out = env2.ferry_code(&["check"], 2);
    assert!(out.contains("max_conections"), "{out}");
}
