//! Timeouts: slow clients (head, idle, body, reading the response) and
//! upstreams whose connect hangs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{
    eventually, fetch, get, raw_exchange, read_response_head, spawn_upstream, start_proxy, table,
    upstream, within,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    slow_clients_are_cut_off,
    connect_timeout_ends_a_hanging_connect_with_502
);

async fn slow_clients_are_cut_off() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let options = ProxyOptions {
        idle_timeout: Duration::from_millis(400),
        client_body_timeout: Duration::from_millis(400),
        send_timeout: Duration::from_millis(400),
        ..ProxyOptions::default()
    };
    let proxy = start_proxy(options).await;
    let u = upstream("u", 1, up.addr, &stats);
    proxy.set_routes(table(&[&u]));
    let addr = proxy.local_addr();

    // Slowloris: a request head that never completes is dropped.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: web")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within("slow head closed", slow.read_to_end(&mut rest))
        .await
        .unwrap();

    // An idle keep-alive connection is closed after idle_timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let head = read_response_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    within("idle closed", idle.read_to_end(&mut rest))
        .await
        .unwrap();

    // A body that stops coming: 408, and the upstream is released.
    let resp = raw_exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("x-request-id"), "{resp}");
    eventually("upstream released", || u.in_flight() == 0).await;

    // A client that stops reading a large response is cut off.
    let big = spawn_big_upstream(64 << 20).await;
    let b = upstream("big", 1, big, &stats);
    proxy.set_routes(table(&[&b]));
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /big HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    eventually("big response started", || b.in_flight() == 1).await;
    // Never read; the proxy gives up on its own.
    eventually("stalled response abandoned", || b.in_flight() == 0).await;
    eventually("connection closed", || {
        proxy.counters().connections_open == 0
    })
    .await;
    drop(stuck);
}

/// An upstream answering every request with `size` bytes.
async fn spawn_big_upstream(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; size]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream whose accept queue is full: the kernel drops further SYNs,
/// so connecting to it hangs until the proxy's `connect_timeout` gives up.
async fn connect_timeout_ends_a_hanging_connect_with_502() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the queue; never accept.
    let mut fillers = Vec::new();
    while fillers.len() < 8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    assert!(fillers.len() < 8, "the accept queue never filled up");

    let stats = RevisionStats::new();
    let options = ProxyOptions {
        connect_timeout: Duration::from_millis(400),
        ..ProxyOptions::default()
    };
    let proxy = start_proxy(options).await;
    let hanging = upstream("hanging", 1, addr, &stats);
    proxy.set_routes(table(&[&hanging]));
    let started = std::time::Instant::now();
    let resp = fetch(proxy.local_addr(), get("/")).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{}", resp.text());
    // It waited for the connect timeout, not for an error from the kernel.
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert_eq!(stats.snapshot().upstream_errors, 1);
    assert_eq!(hanging.in_flight(), 0);
    drop(listener);
}
