//! Routing over real sockets: round-robin, weighted and sticky splits,
//! forced revisions, atomic swaps under load, and moving on from upstreams
//! that refuse connections or close pooled ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::{
    Client, eventually, fetch, get, read_head, spawn_upstream, start_proxy, table, upstream, within,
};
use crate::{ProxyOptions, RevisionStats, RoutingTable};

on_both_paths!(
    round_robin_and_forwarding_headers,
    empty_table_dead_upstreams_and_connect_retry,
    routing_swaps_under_load_drop_nothing,
    weighted_split_over_sockets_counts_by_serving_revision,
    stickiness_reads_rewritten_forwarding_headers,
    upstream_closed_pooled_connections_never_fail_requests
);

/// A raw upstream that answers each connection's first request (with a
/// keep-alive-looking response) and then closes the connection.
async fn spawn_closing_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                // Dropping the stream closes the "keep-alive" connection.
            });
        }
    });
    addr
}

/// A raw upstream that answers the first request of each connection and then,
/// when a second request arrives on it, closes the connection without
/// answering: the race of an upstream closing an idle keep-alive connection
/// just as the proxy reuses it.
async fn spawn_racy_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = read_head(&mut stream).await;
            });
        }
    });
    addr
}

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn round_robin_and_forwarding_headers() {
    let a = spawn_upstream("a", true).await;
    let b = spawn_upstream("b", true).await;
    let (sa, sb) = (RevisionStats::new(), RevisionStats::new());
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[
        &upstream("a1", 1, a.addr, &sa),
        &upstream("b1", 2, b.addr, &sb),
    ]));
    assert_eq!(proxy.routes().upstreams.len(), 2);

    let mut client = Client::connect(proxy.local_addr()).await;
    let mut names = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..6 {
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        let name = resp.text().to_owned();
        let expected_revision = if name == "a" { "1" } else { "2" };
        assert_eq!(resp.header("x-ferry-revision"), expected_revision);
        let id = resp.header("x-request-id").to_owned();
        assert!(!id.is_empty());
        assert_eq!(
            resp.header("x-seen-request-id"),
            id,
            "upstream saw the same id"
        );
        assert_eq!(resp.header("x-seen-xff"), "127.0.0.1");
        assert_eq!(resp.header("x-seen-proto"), "http");
        assert_eq!(resp.header("x-seen-host"), "web.test");
        assert!(ids.insert(id), "request ids are unique");
        names.push(name);
    }
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "round-robin alternates: {names:?}");
    }
    assert_eq!(sa.snapshot().by_class[1] + sb.snapshot().by_class[1], 6);

    // A client's id and trace are kept; an untrusted peer's X-Forwarded-For
    // is replaced; headers named in Connection are not forwarded;
    // absolute-form targets become origin-form.
    let req = Request::get("http://web.test/path?q=1")
        .header("host", "web.test")
        .header("x-request-id", "client-id-42")
        .header("x-forwarded-for", "10.1.2.3")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-forwarded-proto", "https")
        .header("connection", "x-secret")
        .header("x-secret", "hunter2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("get", client.send(req)).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-request-id"), "client-id-42");
    assert_eq!(resp.header("x-seen-request-id"), "client-id-42");
    assert_eq!(resp.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(
        resp.header("x-seen-traceparent"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(resp.header("x-seen-proto"), "http");
    assert_eq!(resp.header("x-seen-uri"), "/path?q=1");
    assert!(resp.headers.get("x-seen-secret").is_none());

    // HEAD: headers only, and the connection goes back to the pool.
    let req = Request::head("/")
        .header("host", "web.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("head", client.send(req)).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-length"), "1");
    assert!(resp.body.is_empty());

    // Request bodies are streamed through.
    let req = Request::post("/echo")
        .header("host", "web.test")
        .body(Full::new(Bytes::from_static(b"hello body")))
        .unwrap();
    let resp = within("post", client.send(req)).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "hello body");

    // Everything finished: nothing in flight, connections pooled.
    let routes = proxy.routes();
    eventually("in_flight back to 0", || {
        routes.upstreams.iter().all(|u| u.in_flight() == 0)
    })
    .await;
    assert!(routes.upstreams.iter().all(|u| u.idle_connections() >= 1));
}

async fn empty_table_dead_upstreams_and_connect_retry() {
    let live = spawn_upstream("live", true).await;
    let stats = RevisionStats::new();
    let dead_stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let addr = proxy.local_addr();

    // Empty table: 503, counted nowhere.
    let resp = fetch(addr, get("/")).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text(), "no ready instance for service web\n");
    assert!(resp.headers.get("x-request-id").is_some());
    assert!(resp.headers.get("x-ferry-revision").is_none());

    // One refused port and one live instance: every request succeeds.
    let dead = upstream("dead", 7, closed_port(), &dead_stats);
    let alive = upstream("live", 7, live.addr, &stats);
    proxy.set_routes(table(&[&dead, &alive]));
    let mut client = Client::connect(addr).await;
    for _ in 0..20 {
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), "live");
    }
    assert_eq!(stats.snapshot().by_class[1], 20);
    assert_eq!(dead_stats.snapshot().total, 0);
    assert_eq!(dead.in_flight() + alive.in_flight(), 0);

    // All dead: 502, counted as an upstream error.
    let dead2 = upstream("dead2", 7, closed_port(), &dead_stats);
    proxy.set_routes(table(&[&dead, &dead2]));
    let resp = within("get", client.get("/")).await.unwrap();
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(resp.headers.get("x-request-id").is_some());
    let snap = dead_stats.snapshot();
    assert_eq!((snap.by_class[4], snap.upstream_errors), (1, 1));
    assert_eq!(dead.in_flight() + dead2.in_flight(), 0);
}

async fn routing_swaps_under_load_drop_nothing() {
    const TOTAL: isize = 2000;
    const SWAPS: usize = 100;
    let a = spawn_upstream("a", true).await;
    let b = spawn_upstream("b", true).await;
    let (sa, sb) = (RevisionStats::new(), RevisionStats::new());
    let ua = upstream("a", 1, a.addr, &sa);
    let ub = upstream("b", 2, b.addr, &sb);
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&ua]));
    let addr = proxy.local_addr();

    let remaining = Arc::new(AtomicIsize::new(TOTAL));
    let completed = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (remaining, completed, failures) =
            (remaining.clone(), completed.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            while remaining.fetch_sub(1, Ordering::SeqCst) > 0 {
                match client.get("/").await {
                    Ok(resp) if resp.status == StatusCode::OK => {}
                    Ok(resp) => {
                        eprintln!("failed: {} {:?}", resp.status, resp.body);
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(err) => {
                        eprintln!("failed: {err}");
                        failures.fetch_add(1, Ordering::SeqCst);
                        client = Client::connect(addr).await;
                    }
                }
                completed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Swap A <-> B, draining the old one like the daemon does.
    let swapper = {
        let (proxy, completed) = (proxy.clone(), completed.clone());
        let (ua, ub) = (ua.clone(), ub.clone());
        tokio::spawn(async move {
            for i in 0..SWAPS {
                while completed.load(Ordering::SeqCst) < i * (TOTAL as usize) / (SWAPS + 10) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let (to, from) = if i % 2 == 0 { (&ub, &ua) } else { (&ua, &ub) };
                proxy.set_routes(table(&[to]));
                while from.in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                from.close_idle();
            }
        })
    };

    within("load with swaps", async {
        swapper.await.unwrap();
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let (snap_a, snap_b) = (sa.snapshot(), sb.snapshot());
    assert_eq!(snap_a.total + snap_b.total, TOTAL as u64);
    assert_eq!(snap_a.by_class[1] + snap_b.by_class[1], TOTAL as u64);
    assert!(snap_a.total > 0 && snap_b.total > 0);
    assert_eq!(ua.in_flight() + ub.in_flight(), 0);
}

async fn upstream_closed_pooled_connections_never_fail_requests() {
    // Upstream answering with `Connection: close`.
    let closer = spawn_upstream("closer", false).await;
    // Upstream closing the socket after each response, without saying so.
    let rude = spawn_closing_upstream("rude").await;
    // Upstream closing a kept-alive connection just as the next request arrives.
    let racy = spawn_racy_upstream("racy").await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let addr = proxy.local_addr();

    for (name, target) in [("closer", closer.addr), ("rude", rude), ("racy", racy)] {
        let up = upstream(name, 1, target, &stats);
        proxy.set_routes(table(&[&up]));
        let mut tasks = Vec::new();
        for client_no in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for i in 0..30 {
                    let resp = client.get("/").await.unwrap();
                    assert_eq!(resp.status, StatusCode::OK, "{name} request {i}");
                    assert_eq!(resp.text(), name);
                    if (i + client_no) % 3 == 0 {
                        // Let the upstream's close arrive before the next request.
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }));
        }
        within("requests", async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await;
        eventually("in_flight back to 0", || up.in_flight() == 0).await;
    }
    let snap = stats.snapshot();
    assert_eq!((snap.by_class[1], snap.by_class[4]), (360, 0));
}

async fn weighted_split_over_sockets_counts_by_serving_revision() {
    let a = spawn_upstream("stable", true).await;
    let b = spawn_upstream("canary", true).await;
    let (s1, s2) = (RevisionStats::new(), RevisionStats::new());
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(RoutingTable {
        upstreams: vec![upstream("s", 1, a.addr, &s1), upstream("c", 2, b.addr, &s2)],
        split: Some(crate::Split {
            weights: vec![(2, 2000), (1, 8000)],
            stickiness: crate::Stickiness::Header(http::HeaderName::from_static("x-user")),
            canary: Some(2),
        }),
        stable: Some(1),
    });
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut canary = 0;
    for i in 0..400 {
        let resp = within("get", client.get("/")).await.unwrap();
        let name = resp.text().to_owned();
        assert_eq!(
            resp.header("x-ferry-revision"),
            if name == "canary" { "2" } else { "1" }
        );
        canary += usize::from(name == "canary");
        // A sticky user answers the same every time.
        let user = format!("user-{}", i % 10);
        let req = |u: &str| {
            Request::get("/")
                .header("host", "web.test")
                .header("x-user", u)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let first = within("get", client.send(req(&user))).await.unwrap();
        let again = within("get", client.send(req(&user))).await.unwrap();
        assert_eq!(first.text(), again.text());
    }
    assert!(
        (40..=140).contains(&canary),
        "{canary} of 400 on the canary"
    );
    let forced = Request::get("/")
        .header("host", "web.test")
        .header("x-ferry-revision", "canary")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        within("get", client.send(forced)).await.unwrap().text(),
        "canary"
    );
    let (n1, n2) = (s1.snapshot().total, s2.snapshot().total);
    assert_eq!(n1 + n2, 1201);
    assert!(
        n2 > canary as u64,
        "sticky and forced requests count where served"
    );
}

/// Stickiness keyed on a header the proxy rewrites routes on the rewritten
/// value: a client cannot choose its revision by forging it.
async fn stickiness_reads_rewritten_forwarding_headers() {
    let a = spawn_upstream("a", true).await;
    let b = spawn_upstream("b", true).await;
    let (sa, sb) = (RevisionStats::new(), RevisionStats::new());
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(RoutingTable {
        upstreams: vec![upstream("a", 1, a.addr, &sa), upstream("b", 2, b.addr, &sb)],
        split: Some(crate::Split {
            weights: vec![(1, 5_000), (2, 5_000)],
            stickiness: crate::Stickiness::Header(http::HeaderName::from_static("x-forwarded-for")),
            canary: None,
        }),
        stable: Some(1),
    });
    let mut client = Client::connect(proxy.local_addr()).await;
    let mut seen = HashSet::new();
    for i in 0..30 {
        let req = Request::get("/")
            .header("host", "web.test")
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = within("sticky", client.send(req)).await.unwrap();
        seen.insert(resp.header("x-upstream").to_owned());
    }
    assert_eq!(seen.len(), 1, "not sticky to the real client: {seen:?}");
}
