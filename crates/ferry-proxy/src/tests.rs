//! End-to-end tests over real sockets on 127.0.0.1.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::{ProxyHandle, ProxyOptions, RevisionStats, RoutingTable, Upstream};

/// Generous bound for anything that should be quick.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Poll `cond` until it holds (or fail after `LIMIT`).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------- upstreams

/// A hyper upstream that answers with its own name and echoes what it saw.
struct TestUpstream {
    addr: SocketAddr,
    /// Each `notify_one` lets one `/slow` request answer.
    release: Arc<Notify>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl TestUpstream {
    /// Stop like an instance being shut down: close the listener, finish
    /// in-flight requests, close idle connections.
    fn stop(&self) {
        self.stop.send_replace(true);
    }
}

async fn spawn_upstream(name: &'static str, keep_alive: bool) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let release2 = Arc::clone(&release);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
            };
            let release = Arc::clone(&release2);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |req| upstream_handler(name, Arc::clone(&release), req));
                let conn = http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stopped.wait_for(|s| *s) => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
        }
    });
    TestUpstream {
        addr,
        release,
        stop,
    }
}

async fn upstream_handler(
    name: &'static str,
    release: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::builder()
        .header("x-upstream", name)
        .header("x-seen-uri", req.uri().to_string());
    for (seen, echo) in [
        ("x-forwarded-for", "x-seen-xff"),
        ("x-forwarded-proto", "x-seen-proto"),
        ("x-request-id", "x-seen-request-id"),
        ("x-secret", "x-seen-secret"),
        ("host", "x-seen-host"),
    ] {
        if let Some(value) = req.headers().get(seen) {
            resp = resp.header(echo, value);
        }
    }
    let path = req.uri().path().to_owned();
    let mut body = Bytes::from_static(name.as_bytes());
    if path == "/slow" {
        let _ = tokio::time::timeout(Duration::from_secs(30), release.notified()).await;
    } else if let Some(code) = path.strip_prefix("/status/") {
        resp = resp.status(code.parse::<u16>().unwrap());
    } else if path == "/echo" {
        body = req.into_body().collect().await.unwrap().to_bytes();
    }
    Ok(resp.body(Full::new(body)).unwrap())
}

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

/// Read one request head (requests without a body only).
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// ------------------------------------------------------------------- client

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("missing header {name}: {:?}", self.headers))
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn get(&mut self, path: &str) -> Result<Resp, hyper::Error> {
        self.send(get(path)).await
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "web.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One request on a fresh connection.
async fn fetch(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    within("request", async {
        Client::connect(addr).await.send(req).await.unwrap()
    })
    .await
}

// -------------------------------------------------------------------- proxy

async fn start_proxy(options: ProxyOptions) -> ProxyHandle {
    ProxyHandle::bind("web".into(), "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

fn table(upstreams: &[&Arc<Upstream>]) -> RoutingTable {
    RoutingTable {
        upstreams: upstreams.iter().map(|u| Arc::clone(u)).collect(),
    }
}

fn upstream(
    id: &str,
    revision: u64,
    addr: SocketAddr,
    stats: &Arc<RevisionStats>,
) -> Arc<Upstream> {
    Upstream::new(id.into(), revision, addr, Arc::clone(stats))
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

    // A client's id is kept; X-Forwarded-For is appended to; headers named in
    // Connection are not forwarded; absolute-form targets become origin-form.
    let req = Request::get("http://web.test/path?q=1")
        .header("host", "web.test")
        .header("x-request-id", "client-id-42")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-secret")
        .header("x-secret", "hunter2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("get", client.send(req)).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-request-id"), "client-id-42");
    assert_eq!(resp.header("x-seen-request-id"), "client-id-42");
    assert_eq!(resp.header("x-seen-xff"), "10.1.2.3, 127.0.0.1");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

/// Full deploys under load: start a new instance, swap, drain the old one,
/// close its idle connections and stop it, twenty times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_are_not_buffered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let go = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (go, finished) = (go.clone(), finished.clone());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await.unwrap();
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n7\r\nfirst!\n\r\n",
                )
                .await
                .unwrap();
            // Hold the rest until the client has the first chunk (or 500 ms
            // after a generous wait, so the test always ends).
            if tokio::time::timeout(LIMIT, go.notified()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            finished.store(true, Ordering::SeqCst);
            stream.write_all(b"5\r\nrest\n\r\n0\r\n\r\n").await.unwrap();
            let _ = read_head(&mut stream).await;
        });
    }
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&upstream("s", 3, upstream_addr, &stats)]));

    let mut client = Client::connect(proxy.local_addr()).await;
    within("response head", client.sender.ready())
        .await
        .unwrap();
    let resp = within("response head", client.sender.send_request(get("/events")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ferry-revision"], "3");
    assert!(resp.headers().get("transfer-encoding").is_some());
    let mut body = resp.into_body();
    let first = within("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first!\n");
    assert!(
        !finished.load(Ordering::SeqCst),
        "first chunk arrived before the upstream finished"
    );
    go.notify_one();
    let rest = within("rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "rest\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
