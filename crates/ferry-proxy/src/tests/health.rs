//! Passive health and failover: an instance that refuses connections is
//! left alone for its cooldown, and a request an instance dropped without
//! answering is retried once on another, when it is safe to send twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Client, read_head, spawn_upstream, start_proxy, table, upstream, within};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    dead_upstream_is_left_alone_for_its_cooldown,
    instance_dying_mid_request_replays_only_safe_requests
);

/// An upstream answering its name that records when it accepted each
/// connection.
struct Counted {
    accepts: Arc<Mutex<Vec<Instant>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Counted {
    /// Die: the listener and every connection closed when this returns.
    async fn kill(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap();
    }

    fn accepted(&self) -> Vec<Instant> {
        self.accepts.lock().unwrap().clone()
    }
}

fn spawn_counted(listener: TcpListener, name: &'static str) -> Counted {
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let record = Arc::clone(&accepts);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => break,
                },
            };
            record.lock().unwrap().push(Instant::now());
            conns.spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        drop(listener);
        // Aborting a connection's task drops (closes) its socket.
        conns.shutdown().await;
    });
    Counted {
        accepts,
        stop,
        task,
    }
}

/// Two instances, one killed (listener and connections gone): 200 requests
/// all succeed, and after its first failed connect the dead one is not
/// connected to for the first cooldown (1 s), as a listener re-bound on its
/// port shows; after that it is tried again and, answering, is up.
async fn dead_upstream_is_left_alone_for_its_cooldown() {
    const REQUESTS: usize = 200;
    let good = spawn_upstream("good", true).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = listener.local_addr().unwrap();
    let doomed = spawn_counted(listener, "dead");
    let stats = RevisionStats::new();
    let up_good = upstream("good", 1, good.addr, &stats);
    let up_dead = upstream("dead", 1, dead_addr, &stats);
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&up_good, &up_dead]));
    let mut client = Client::connect(proxy.local_addr()).await;
    for _ in 0..4 {
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
    }
    assert!(!doomed.accepted().is_empty(), "both instances served");

    doomed.kill().await;
    let killed_at = Instant::now();
    let mut answered = Vec::new();
    while !up_dead.is_down() {
        assert!(answered.len() < 10, "never marked down: {answered:?}");
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        answered.push(resp.text().to_owned());
    }
    // Count every connection attempt from now on.
    let revived = spawn_counted(TcpListener::bind(dead_addr).await.unwrap(), "revived");
    while answered.len() < REQUESTS {
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        answered.push(resp.text().to_owned());
    }
    let cooldown_over = killed_at + Duration::from_secs(1);
    let early = revived
        .accepted()
        .iter()
        .filter(|&&at| at < cooldown_over)
        .count();
    assert_eq!(early, 0, "connected to during its cooldown");
    assert!(answered.iter().all(|text| text != "dead"), "{answered:?}");

    // Past the cooldown it is tried again, answers, and is up.
    within("tried again after the cooldown", async {
        loop {
            let resp = client.get("/").await.unwrap();
            assert_eq!(resp.status, StatusCode::OK);
            if resp.text() == "revived" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!up_dead.is_down());
    assert!(revived.accepted().iter().all(|&at| at >= cooldown_over));
    let snap = stats.snapshot();
    assert_eq!((snap.by_class[4], snap.upstream_errors), (0, 0));
    revived.kill().await;
}

/// An instance that reads each request and closes the connection without
/// answering (dying mid-request); `count` counts the requests it read.
async fn spawn_dying_upstream(count: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: closed without a response byte.
            });
        }
    });
    addr
}

/// A GET an instance dropped without answering is served by the other
/// instance; a POST with a body is not sent twice and gets 502; a GET
/// moves on only once.
async fn instance_dying_mid_request_replays_only_safe_requests() {
    let good = spawn_upstream("good", true).await;
    let dropped = Arc::new(AtomicUsize::new(0));
    let dying = spawn_dying_upstream(Arc::clone(&dropped)).await;
    let stats = RevisionStats::new();
    let up_dying = upstream("dying", 1, dying, &stats);
    let up_good = upstream("good", 1, good.addr, &stats);
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&up_dying, &up_good]));
    let mut client = Client::connect(proxy.local_addr()).await;

    for i in 0..20 {
        let resp = within("get", client.get("/")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "GET {i}");
        assert_eq!(resp.text(), "good");
    }
    assert!(
        dropped.load(Ordering::SeqCst) >= 5,
        "round-robin sent about half to the dying instance first"
    );
    let snap = stats.snapshot();
    assert_eq!((snap.by_class[1], snap.by_class[4]), (20, 0));

    // Not safe to send twice: whatever reached the dying instance is a 502.
    let before = dropped.load(Ordering::SeqCst);
    let mut bad_gateway = 0;
    for i in 0..6 {
        let req = Request::post("/echo")
            .header("host", "web.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let resp = within("post", client.send(req)).await.unwrap();
        match resp.status {
            StatusCode::OK => assert_eq!(resp.text(), "payload"),
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            other => panic!("POST {i}: {other}"),
        }
    }
    assert!(bad_gateway >= 1);
    assert_eq!(bad_gateway, dropped.load(Ordering::SeqCst) - before);
    assert_eq!(stats.snapshot().upstream_errors, bad_gateway as u64);

    // Only one retry: with three dying instances, a GET is tried on two
    // and then answered 502.
    let dying2 = spawn_dying_upstream(Arc::clone(&dropped)).await;
    let dying3 = spawn_dying_upstream(Arc::clone(&dropped)).await;
    proxy.set_routes(table(&[
        &up_dying,
        &upstream("dying2", 1, dying2, &stats),
        &upstream("dying3", 1, dying3, &stats),
    ]));
    let before = dropped.load(Ordering::SeqCst);
    let resp = within("get", client.get("/")).await.unwrap();
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(dropped.load(Ordering::SeqCst) - before, 2);
}
