//! A data plane's life on sockets bound elsewhere: serving listeners it was
//! handed (as another process would pass them), closing only its own
//! descriptors, and retiring: every connection told `Connection: close`
//! before it closes, idle ones closed at the grace deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    eventually, fetch, get, on_this_path, read_response, spawn_upstream, table, upstream, within,
};
use crate::{ProxyCounters, ProxyHandle, ProxyOptions, RevisionStats, bind_listeners};

on_both_paths!(
    listeners_bound_elsewhere_outlive_the_proxy,
    retire_under_keep_alive_load_says_close_before_closing,
    retire_finishes_in_flight_and_closes_idle_at_the_deadline
);

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// Copies of every socket, as a control plane keeps its own.
fn copies(listeners: &[std::net::TcpListener]) -> Vec<std::net::TcpListener> {
    listeners.iter().map(|l| l.try_clone().unwrap()).collect()
}

async fn serve(listeners: Vec<std::net::TcpListener>) -> ProxyHandle {
    let proxy = ProxyHandle::from_listeners("web".into(), listeners, ProxyOptions::default())
        .await
        .unwrap();
    on_this_path(&proxy);
    proxy
}

async fn listeners_bound_elsewhere_outlive_the_proxy() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let u = upstream("u", 1, up.addr, &stats);
    let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let kept = copies(&listeners);

    let first = serve(listeners).await;
    assert_eq!(first.local_addr(), addr);
    first.set_routes(table(&[&u]));
    assert_eq!(fetch(addr, get("/")).await.text(), "u");

    // A second data plane on copies of the same sockets serves alongside,
    // and alone once the first has retired.
    let second = serve(copies(&kept)).await;
    second.set_routes(table(&[&u]));
    first.retire(Duration::from_secs(5));
    eventually("first has no connection left", || {
        first.open_connections() == 0
    })
    .await;
    for _ in 0..10 {
        let resp = fetch(addr, get("/")).await;
        assert_eq!((resp.status, resp.text()), (StatusCode::OK, "u"));
    }

    // Shut down, it closed only its own descriptors: with the copies kept,
    // a new connection still completes its handshake and waits...
    second.shutdown();
    let mut queued = within("handshake", TcpStream::connect(addr))
        .await
        .expect("the kept sockets still listen");
    queued.write_all(REQUEST).await.unwrap();
    // ... for the next data plane, which answers it (routed from its first
    // connection on).
    let third = ProxyHandle::from_listeners_with_routes(
        "web".into(),
        copies(&kept),
        ProxyOptions::default(),
        table(&[&u]),
    )
    .await
    .unwrap();
    on_this_path(&third);
    let (head, body) = within("queued request", read_response(&mut queued))
        .await
        .expect("a response");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"u");
    third.shutdown();

    // Once the last copy is gone, the address refuses connections.
    drop(kept);
    assert!(TcpStream::connect(addr).await.is_err());

    // Listeners that are not on one address, or none, are refused.
    let a = bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let b = bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let mixed = a.into_iter().chain(b).collect();
    let refused = ProxyHandle::from_listeners("web".into(), mixed, ProxyOptions::default()).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    let refused =
        ProxyHandle::from_listeners("web".into(), Vec::new(), ProxyOptions::default()).await;
    assert!(refused.is_err());
}

/// One keep-alive client sending a request every 20 ms across a `retire`
/// (a successor serving the same sockets, as in an upgrade): every request
/// is answered, the first answer after `retire` says `Connection: close`,
/// and only then does the connection close. The client reconnects and is
/// served by the successor.
async fn retire_under_keep_alive_load_says_close_before_closing() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let u = upstream("u", 1, up.addr, &stats);
    let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let successor_sockets = copies(&listeners);
    let old = serve(listeners).await;
    old.set_routes(table(&[&u]));

    let retired = Arc::new(AtomicBool::new(false));
    let client = {
        let retired = Arc::clone(&retired);
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // Per response: (sent after retire returned, received after it,
            // says close).
            let mut seen = Vec::new();
            loop {
                let sent_after = retired.load(Ordering::SeqCst);
                stream.write_all(REQUEST).await.expect("request written");
                let (head, body) = read_response(&mut stream)
                    .await
                    .unwrap_or_else(|| panic!("connection closed under request {}", seen.len()));
                assert!(head.starts_with("http/1.1 200"), "{head}");
                assert_eq!(body, b"u");
                let close = head.contains("\r\nconnection: close\r\n");
                seen.push((sent_after, retired.load(Ordering::SeqCst), close));
                if close {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Told to close: the proxy closes the connection.
            let mut rest = Vec::new();
            let read = stream.read_to_end(&mut rest).await;
            assert!(matches!(read, Ok(0)), "{read:?} {rest:?}");
            seen
        })
    };
    eventually("a few requests served", || stats.snapshot().total >= 5).await;
    let successor = serve(successor_sockets).await;
    successor.set_routes(table(&[&u]));
    old.retire(Duration::from_secs(30));
    retired.store(true, Ordering::SeqCst);

    let seen = within("client told to close", client).await.unwrap();
    let &(_, received_after, close) = seen.last().unwrap();
    assert!(close);
    assert!(received_after, "told to close before retiring: {seen:?}");
    // At the latest, the first request sent after `retire` was answered so.
    assert!(
        seen[..seen.len() - 1].iter().all(|&(after, _, _)| !after),
        "{seen:?}"
    );
    assert!(seen.len() >= 5, "{seen:?}");

    // The connection is gone well before the grace deadline.
    eventually("retired proxy has no connection", || {
        old.open_connections() == 0
    })
    .await;
    assert_eq!(old.counters().connections_open, 0);
    // The client carries on with the successor.
    let resp = fetch(addr, get("/")).await;
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "u"));
    assert_eq!(stats.snapshot().by_class[4], 0);
    successor.shutdown();
}

/// `retire` with a grace period: new connections are refused at once, a
/// request in flight completes with `Connection: close`, idle connections
/// (kept alive after a request, or never used) stay open until the
/// deadline and are closed then, and `open_connections` reaches 0.
async fn retire_finishes_in_flight_and_closes_idle_at_the_deadline() {
    const GRACE: Duration = Duration::from_millis(1500);
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let u = upstream("u", 1, up.addr, &stats);
    let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let proxy = serve(listeners).await;
    proxy.set_routes(table(&[&u]));

    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    in_flight
        .write_all(b"GET /slow HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut kept_alive = TcpStream::connect(addr).await.unwrap();
    kept_alive.write_all(REQUEST).await.unwrap();
    let (head, _) = within("first answer", read_response(&mut kept_alive))
        .await
        .unwrap();
    assert!(!head.contains("connection: close"), "{head}");
    let mut unused = TcpStream::connect(addr).await.unwrap();
    eventually("request in flight", || u.in_flight() == 1).await;
    eventually("three connections", || proxy.open_connections() == 3).await;

    let retired_at = Instant::now();
    proxy.retire(GRACE);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    // The request in flight completes, told to close, and its connection
    // closes.
    up.release.notify_one();
    let (head, body) = within("in-flight answer", read_response(&mut in_flight))
        .await
        .unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(body, b"u");
    let mut rest = Vec::new();
    assert!(matches!(in_flight.read_to_end(&mut rest).await, Ok(0)));

    // Idle connections are closed at the deadline, not before.
    for (what, stream) in [("kept alive", &mut kept_alive), ("unused", &mut unused)] {
        let mut rest = Vec::new();
        let read = within(what, stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
        assert!(rest.is_empty(), "{what}: {rest:?}");
        let closed_after = retired_at.elapsed();
        assert!(
            closed_after >= GRACE,
            "{what} closed {closed_after:?} after retire, before the deadline"
        );
    }
    eventually("no connection left", || proxy.open_connections() == 0).await;
    assert_eq!(stats.snapshot().by_class[1], 2);
}

#[test]
fn proxy_counters_round_trip_through_json_and_add_up() {
    let a = ProxyCounters {
        connections_open: 2,
        connections_rejected: 3,
        rate_limited: 4,
        upgraded_open: 1,
        access_log_dropped: u64::MAX,
    };
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<ProxyCounters>(&json).unwrap(), a);
    let sum = a.saturating_add(&a);
    assert_eq!(
        sum,
        ProxyCounters {
            connections_open: 4,
            connections_rejected: 6,
            rate_limited: 8,
            upgraded_open: 2,
            access_log_dropped: u64::MAX,
        }
    );
}
