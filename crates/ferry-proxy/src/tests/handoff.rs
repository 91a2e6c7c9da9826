//! The hand-off to hyper's path: requests the fast path does not take move
//! the connection, with what was read, to hyper, and the edges where both
//! paths must still answer and log alike.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    eventually, fetch, get, log_lines, logged, raw_exchange, spawn_fn_upstream, spawn_upstream,
    start_proxy, table, upstream, within,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    odd_request_targets_are_left_to_hyper,
    fast_path_edges_are_answered_and_logged_like_hyper
);

/// Plain requests take the fast path; the first one it does not handle (a
/// chunked upload here) moves the connection to hyper's path with the bytes
/// already read, and pipelined requests are answered in order throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_hands_unusual_requests_to_hyper_mid_connection() {
    let up = spawn_upstream("a", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let a = upstream("a", 1, up.addr, &stats);
    proxy.set_routes(table(&[&a]));
    let requests = concat!(
        "GET /one HTTP/1.1\r\nHost: web.test\r\n\r\n",
        "GET /two HTTP/1.1\r\nHost: web.test\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "GET /three HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    );
    let out = raw_exchange(proxy.local_addr(), requests.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{out}");
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {out}"))
    };
    assert!(at("x-seen-uri: /one") < at("x-seen-uri: /two"), "{out}");
    assert!(at("x-seen-uri: /two") < at("hello world"), "{out}");
    assert!(at("hello world") < at("x-seen-uri: /three"), "{out}");
    assert_eq!(stats.snapshot().by_class[1], 4);
    assert_eq!(a.in_flight(), 0);

    // What the fast path does not parse, hyper answers (and closes).
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET / HTTP/1.1\r\nHost: web.test\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // HTTP/1.0 clients are served (by hyper's path).
    let out = raw_exchange(proxy.local_addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(out.contains(" 200 OK\r\n"), "{out}");
    assert!(out.contains("x-seen-uri: /old"), "{out}");
    assert!(out.ends_with("\r\na"), "{out}");
}

/// Targets hyper would reject or rewrite are not forwarded by the fast path
/// as they came, and the access log shows what was asked.
async fn odd_request_targets_are_left_to_hyper() {
    let addr = spawn_fn_upstream(|head| {
        let line = head.lines().next().unwrap_or("").to_owned();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}",
            line.len()
        )
        .into_bytes()
    })
    .await;
    let stats = RevisionStats::new();
    let mut options = ProxyOptions::default();
    let log = logged(&mut options);
    let proxy = start_proxy(options).await;
    proxy.set_routes(table(&[&upstream("p", 1, addr, &stats)]));
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET /admin/delete?user=<all> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET /page#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("GET /page HTTP/1.1"), "{out}");
    let lines = log_lines(&log, 1).await;
    assert!(lines[0].contains("\"path\":\"/page\""), "{lines:?}");
    let _ = std::fs::remove_file(log);
}

/// A request whose body stalls is answered 408 with its own request id and
/// logged; a chunked response is logged with its data bytes.
async fn fast_path_edges_are_answered_and_logged_like_hyper() {
    let up = spawn_upstream("u", true).await;
    let chunked = spawn_fn_upstream(|_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec()
    })
    .await;
    let stats = RevisionStats::new();
    let mut options = ProxyOptions {
        client_body_timeout: Duration::from_millis(300),
        ..ProxyOptions::default()
    };
    let log = logged(&mut options);
    let proxy = start_proxy(options).await;
    let addr = proxy.local_addr();
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));

    let out = raw_exchange(
        addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: previous\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(out.contains("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    let timeout_head = &out[out.find("HTTP/1.1 408").unwrap()..];
    assert!(timeout_head.contains("x-request-id: mine\r\n"), "{out}");
    let lines = log_lines(&log, 2).await;
    assert!(lines[1].contains("\"status\":408"), "{lines:?}");
    assert!(lines[1].contains("\"request_id\":\"mine\""), "{lines:?}");

    proxy.set_routes(table(&[&upstream("c", 2, chunked, &stats)]));
    assert_eq!(fetch(addr, get("/chunks")).await.text(), "hello world");
    let lines = log_lines(&log, 3).await;
    assert!(lines[2].contains("\"bytes\":11,"), "{lines:?}");
    let _ = std::fs::remove_file(log);
}

/// A connection whose request head is unfinished closes on shutdown (on
/// hyper's path it waits for `idle_timeout`, the head's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_closes_unfinished_heads_on_shutdown() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let addr = proxy.local_addr();
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    eventually("connection counted", || {
        proxy.counters().connections_open == 1
    })
    .await;
    proxy.shutdown();
    let mut buf = [0u8; 64];
    let read = within("closed on shutdown", partial.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
