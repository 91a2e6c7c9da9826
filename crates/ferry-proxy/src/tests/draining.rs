//! Draining: full deploys under load, shutdown finishing in-flight
//! requests, and upgraded connections counted in flight until `close_all`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
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
    Client, eventually, fetch, get, read_response_head, spawn_upstream, start_proxy, table,
    upstream, within,
};
use crate::{ProxyHandle, ProxyOptions, RevisionStats};

on_both_paths!(
    deploys_under_load_drop_nothing,
    shutdown_finishes_in_flight_and_stops_accepting
);

/// Full deploys under load: start a new instance, swap, drain the old one,
/// close its idle connections and stop it, twenty times.
async fn deploys_under_load_drop_nothing() {
    const TOTAL: isize = 1500;
    const DEPLOYS: usize = 20;
    let stats = RevisionStats::new();
    let first = spawn_upstream("rev0", true).await;
    let mut current = (upstream("i0", 0, first.addr, &stats), first);
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&current.0]));
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

    within("load with deploys", async {
        for rev in 1..=DEPLOYS {
            while completed.load(Ordering::SeqCst) < rev * (TOTAL as usize) / (DEPLOYS + 5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let next = spawn_upstream("next", true).await;
            let next_up = upstream(&format!("i{rev}"), rev as u64, next.addr, &stats);
            // Briefly run old and new side by side, then only the new one.
            proxy.set_routes(table(&[&current.0, &next_up]));
            tokio::time::sleep(Duration::from_millis(2)).await;
            proxy.set_routes(table(&[&next_up]));
            let (old_up, old_server) = std::mem::replace(&mut current, (next_up, next));
            while old_up.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            old_up.close_idle();
            old_server.stop();
        }
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let snap = stats.snapshot();
    assert_eq!((snap.by_class[1], snap.total), (TOTAL as u64, TOTAL as u64));
}

async fn shutdown_finishes_in_flight_and_stops_accepting() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let u = upstream("u", 1, up.addr, &stats);
    proxy.set_routes(table(&[&u]));
    let addr = proxy.local_addr();

    let request = tokio::spawn(fetch(addr, get("/slow")));
    eventually("request in flight", || u.in_flight() == 1).await;
    proxy.shutdown();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
    up.release.notify_one();
    let resp = within("in-flight request", request).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "u");

    // The port is free again.
    let again = ProxyHandle::bind("web".into(), addr, ProxyOptions::default()).await;
    assert!(again.is_ok(), "{again:?}");
}

/// An upstream that accepts `Upgrade: echo` and then echoes bytes back.
async fn spawn_upgrade_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if req.headers().get("upgrade").is_some() {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = on.await {
                                let mut io = TokioIo::new(upgraded);
                                let mut buf = [0u8; 1024];
                                loop {
                                    match io.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            if io.write_all(&buf[..n]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                }
                            }
                        });
                        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        resp.headers_mut()
                            .insert("upgrade", "echo".parse().unwrap());
                    } else {
                        *resp.body_mut() = Full::new(Bytes::from_static(b"plain"));
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn websocket_like(addr: SocketAddr) -> TcpStream {
    let mut ws = TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: web.test\r\nconnection: keep-alive, Upgrade\r\n\
          upgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_response_head(&mut ws).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("x-ferry-revision: 1"), "{head}");
    for msg in [&b"ping"[..], b"pong pong"] {
        ws.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        within("echo", ws.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, msg);
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_count_in_flight_and_close_on_close_all() {
    let up_addr = spawn_upgrade_upstream().await;
    let stats = RevisionStats::new();
    let up = upstream("ws", 1, up_addr, &stats);
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&up]));
    let addr = proxy.local_addr();

    // A plain request on the same upstream still works.
    let resp = fetch(addr, get("/")).await;
    assert_eq!(resp.text(), "plain");

    // An upgraded connection stays counted while open; the client closing it
    // ends it.
    let ws = websocket_like(addr).await;
    eventually("tunnel counted", || up.in_flight() == 1).await;
    assert_eq!(up.upgraded_connections(), 1);
    assert_eq!(proxy.counters().upgraded_open, 1);
    drop(ws);
    eventually("tunnel gone", || up.in_flight() == 0).await;
    eventually("counter back", || proxy.counters().upgraded_open == 0).await;

    // Drain: the table no longer has it, the tunnel stays until close_all.
    let mut ws = websocket_like(addr).await;
    eventually("tunnel counted", || up.in_flight() == 1).await;
    proxy.set_routes(table(&[]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    within("echo after swap", ws.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(up.in_flight(), 1);
    up.close_all();
    let mut rest = Vec::new();
    let _ = within("closed by close_all", ws.read_to_end(&mut rest)).await;
    eventually("drained", || up.in_flight() == 0).await;
    eventually("connection slot freed", || {
        proxy.counters().connections_open == 0
    })
    .await;
    assert_eq!(stats.snapshot().by_class[0], 2, "101s are counted as 1xx");
}
