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

mod fuzz;

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
        ("traceparent", "x-seen-traceparent"),
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
        // A client that gives up mid-body leaves nothing to echo.
        body = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
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

tokio::task_local! {
    /// Whether the proxies a test starts use the fast path (see `on_both_paths!`).
    static FAST_PATH: bool;
}

async fn start_proxy(options: ProxyOptions) -> ProxyHandle {
    let proxy = ProxyHandle::bind("web".into(), "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    proxy.set_fast_path(FAST_PATH.try_with(|fast| *fast).unwrap_or(true));
    proxy
}

/// Run test `$name` twice: plain requests on the fast path, then everything
/// on hyper's path. Both must behave the same.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fast_path() {
                super::FAST_PATH.scope(true, super::$name()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper_path() {
                super::FAST_PATH.scope(false, super::$name()).await;
            }
        }
    )*};
}

on_both_paths!(
    round_robin_and_forwarding_headers,
    empty_table_dead_upstreams_and_connect_retry,
    routing_swaps_under_load_drop_nothing,
    deploys_under_load_drop_nothing,
    upstream_closed_pooled_connections_never_fail_requests,
    streaming_responses_are_not_buffered,
    in_flight_stats_prometheus_and_timeouts,
    shutdown_finishes_in_flight_and_stops_accepting,
    slow_clients_are_cut_off,
    connection_cap_answers_503,
    client_address_from_trusted_proxies_and_proxy_protocol,
    access_log_lines_carry_request_ids_and_traces,
    rate_limit_answers_429_with_retry_after,
    weighted_split_over_sockets_counts_by_serving_revision,
    odd_upstream_heads_never_desync_the_client,
    odd_request_targets_are_left_to_hyper,
    fast_path_edges_are_answered_and_logged_like_hyper,
    stickiness_reads_rewritten_forwarding_headers,
    connect_timeout_ends_a_hanging_connect_with_502,
    host_and_request_target_rules_answer_400,
    forwarded_heads_are_canonical,
);

fn table(upstreams: &[&Arc<Upstream>]) -> RoutingTable {
    RoutingTable {
        upstreams: upstreams.iter().map(|u| Arc::clone(u)).collect(),
        split: None,
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

// ------------------------------------------------- data-plane features

/// Raw client: send `request`, read until the connection closes or `LIMIT`.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = within("raw response", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Read a response head from a raw stream.
async fn read_response_head(stream: &mut TcpStream) -> String {
    let head = within("response head", read_head(stream)).await.unwrap();
    String::from_utf8(head).unwrap()
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

/// A request body whose chunks the test feeds by hand.
struct FedBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for FedBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_bodies_stream_through() {
    // The upstream counts body bytes as they arrive.
    let seen = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let mut body = req.into_body();
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.unwrap().into_data() {
                                    seen.fetch_add(data.len(), Ordering::SeqCst);
                                }
                            }
                            let n = seen.load(Ordering::SeqCst).to_string();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&upstream("u", 1, up_addr, &stats)]));

    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "web.test")
        .body(FedBody(rx))
        .unwrap();
    let response = tokio::spawn(sender.send_request(req));
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tx.send(chunk.clone()).await.unwrap();
    // The first megabyte reaches the upstream while the client still holds
    // the other 63: the proxy does not wait for the whole body.
    eventually("first chunk upstream", || {
        seen.load(Ordering::SeqCst) >= CHUNK
    })
    .await;
    for _ in 1..CHUNKS {
        within("send chunk", tx.send(chunk.clone())).await.unwrap();
    }
    drop(tx);
    let resp = within("response", response).await.unwrap().unwrap();
    let body = within("body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, (CHUNK * CHUNKS).to_string());
}

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

async fn connection_cap_answers_503() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions {
        max_connections: 2,
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));
    let addr = proxy.local_addr();
    let mut first = Client::connect(addr).await;
    let second = Client::connect(addr).await;
    assert_eq!(
        within("get", first.get("/")).await.unwrap().status,
        StatusCode::OK
    );
    eventually("two open", || proxy.counters().connections_open == 2).await;
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("too many connections"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
    assert_eq!(proxy.counters().connections_rejected, 1);
    drop(second);
    eventually("one open", || proxy.counters().connections_open == 1).await;
    assert_eq!(fetch(addr, get("/")).await.status, StatusCode::OK);
}

async fn client_address_from_trusted_proxies_and_proxy_protocol() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let u = upstream("u", 1, up.addr, &stats);
    let trusted = ProxyOptions {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..ProxyOptions::default()
    };

    // A trusted load balancer's X-Forwarded-For is appended to.
    let proxy = start_proxy(trusted.clone()).await;
    proxy.set_routes(table(&[&u]));
    let req = Request::get("/")
        .header("host", "web.test")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = fetch(proxy.local_addr(), req).await;
    assert_eq!(resp.header("x-seen-xff"), "203.0.113.9, 127.0.0.1");

    // PROXY protocol: the address it announces is the client's.
    let proxy = start_proxy(ProxyOptions {
        proxy_protocol: true,
        ..trusted
    })
    .await;
    proxy.set_routes(table(&[&u]));
    let addr = proxy.local_addr();
    let resp = raw_exchange(
        addr,
        b"PROXY TCP4 198.51.100.4 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nhost: web\r\n\
          x-forwarded-for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The end client is not a trusted proxy: its own X-Forwarded-For is dropped.
    assert!(resp.contains("x-seen-xff: 198.51.100.4\r\n"), "{resp}");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 77, 127, 0, 0, 1, 0x30, 0x39, 0, 80]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    let resp = raw_exchange(addr, &v2).await;
    assert!(resp.contains("x-seen-xff: 203.0.113.77\r\n"), "{resp}");

    // A trusted peer that does not send the header is refused.
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert_eq!(resp, "");
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
    assert!(lines[0].contains("\"path\":\"/made\""), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("\"request_id\":\"{made_id}\"")),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("\"traceparent\":\"{made_trace}\"")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"status\":200"), "{}", lines[0]);
    assert!(
        lines[0].contains("\"revision\":1,\"instance\":\"u-1\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"bytes\":1,"), "{}", lines[0]);
    assert!(lines[1].contains("\"path\":\"/kept?q=1\""), "{}", lines[1]);
    assert!(
        lines[1].contains("\"request_id\":\"client-id-7\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(&format!("\"traceparent\":\"{trace}\"")),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("\"user_agent\":\"tester/1\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("\"client\":\"127.0.0.1\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("\"status\":503,\"revision\":null"),
        "{}",
        lines[2]
    );
    assert_eq!(proxy.counters().access_log_dropped, 0);
}

async fn rate_limit_answers_429_with_retry_after() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions {
        rate_limit: Some(crate::RateLimitOptions {
            per_second: 0.5,
            burst: 3,
            key: crate::RateLimitKey::Header(http::HeaderName::from_static("x-api-key")),
        }),
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));
    let mut client = Client::connect(proxy.local_addr()).await;
    let keyed = |key: &str| {
        Request::get("/")
            .header("host", "web.test")
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..3 {
        let resp = within("get", client.send(keyed("alice"))).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
    }
    let resp = within("get", client.send(keyed("alice"))).await.unwrap();
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.header("retry-after"), "2");
    assert!(resp.headers.get("x-request-id").is_some());
    // Another key has its own budget; no key falls back to the client address.
    let resp = within("get", client.send(keyed("bob"))).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            within("get", client.get("/")).await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(
        within("get", client.get("/")).await.unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(proxy.counters().rate_limited, 2);
    assert_eq!(stats.snapshot().total, 7, "429s never reach an upstream");
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

// ------------------------------------------- fast path and hyper's path

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

/// A scripted raw upstream: answers by path, keeps connections open unless
/// the answer is delimited by closing; counts the connections it accepted.
async fn spawn_scripted_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut stream).await {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let (response, close): (&str, bool) = match path.as_str() {
                        "/chunked" => (
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                             Connection: x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
                             X-Request-Id: forged\r\nX-Ferry-Revision: 99\r\n\r\n\
                             5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
                            false,
                        ),
                        "/eof" => (
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
                            true,
                        ),
                        "/interim" => (
                            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            false,
                        ),
                        "/badlen" => (
                            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
                            true,
                        ),
                        "/garbage" => ("NOT HTTP AT ALL\r\n\r\n", true),
                        _ => ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
                    };
                    if stream.write_all(response.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Responses relayed by the fast path keep their framing (chunked bodies
/// verbatim, close-delimited bodies ending the client connection), lose
/// their hop-by-hop headers, and reuse upstream connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_relays_every_response_framing() {
    let (addr, accepted) = spawn_scripted_upstream().await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let up = upstream("s", 7, addr, &stats);
    proxy.set_routes(table(&[&up]));
    let mut client = Client::connect(proxy.local_addr()).await;
    for _ in 0..3 {
        let resp = within("chunked", client.get("/chunked")).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), "hello world");
        assert_eq!(resp.header("x-ferry-revision"), "7");
        assert_ne!(resp.header("x-request-id"), "forged");
        assert!(resp.headers.get("x-hop").is_none(), "{:?}", resp.headers);
        assert!(resp.headers.get("keep-alive").is_none());
    }
    // Three requests, one upstream connection: it went back to the pool
    // after each complete chunked body.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(up.idle_connections(), 1);

    // Interim responses are skipped.
    let resp = within("interim", client.get("/interim")).await.unwrap();
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "ok"));

    // A body delimited by the upstream closing reaches the client whole,
    // and the client connection is closed after it.
    let out = raw_exchange(proxy.local_addr(), b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nuntil close"), "{out}");

    // Broken responses are 502s, counted as upstream errors.
    for path in ["/badlen", "/garbage"] {
        let resp = fetch(proxy.local_addr(), get(path)).await;
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{path}");
    }
    assert_eq!(stats.snapshot().upstream_errors, 2);
    assert_eq!(up.in_flight(), 0);
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

/// An upstream answering every request of a connection with `answer(head)`.
async fn spawn_fn_upstream(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut stream).await {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    if stream.write_all(&answer(&head)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn temp_log_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ferry-proxy-fast-{}-{}.log",
        std::process::id(),
        crate::random::random_u64()
    ))
}

fn logged(options: &mut ProxyOptions) -> std::path::PathBuf {
    let path = temp_log_path();
    options.access_log = Some(crate::AccessLogOptions {
        path: path.clone(),
        buffer: 64,
    });
    path
}

async fn log_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    eventually("access log lines", || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= count
    })
    .await;
    lines
}

/// Broken upstream heads become clean 502s that leave the client connection
/// in step; a head with many headers is not broken.
async fn odd_upstream_heads_never_desync_the_client() {
    let addr = spawn_fn_upstream(|head| {
        if head.starts_with("GET /weird ") {
            b"HTTP/1.1 099 Weird\r\nContent-Length: 5\r\n\r\nhello".to_vec()
        } else if head.starts_with("GET /many ") {
            let mut r = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
            for i in 0..90 {
                r.push_str(&format!("x-h{i}: v\r\n"));
            }
            r.push_str("\r\nok");
            r.into_bytes()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    })
    .await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    let up = upstream("w", 1, addr, &stats);
    proxy.set_routes(table(&[&up]));
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET /weird HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // The 502 is the proxy's own, with its own length; the next response
    // starts right after its body.
    let end = out.find("\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    let length: usize = out[..end]
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        out[end + length..].starts_with("HTTP/1.1 200 OK\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    assert_eq!(stats.snapshot().upstream_errors, 1);

    let resp = fetch(proxy.local_addr(), get("/many")).await;
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "ok"));
    assert_eq!(resp.header("x-h89"), "v");
    // The proxy dates responses whose upstream did not.
    assert!(httpdate::parse_http_date(resp.header("date")).is_ok());
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

// ------------------------------------- Host and request targets (RFC 9112)

/// A request as an upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    uri: String,
    version: http::Version,
    /// In the order received (names lower-case).
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }
}

/// A hyper upstream that records every request it receives (body included)
/// and answers `200 ok`.
async fn spawn_recording_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(body) => body.to_bytes(),
                            Err(_) => Bytes::from_static(b"<unreadable>"),
                        };
                        record.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                                .collect(),
                            body,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// RFC 9112 3.2: a request with two `Host` lines, an HTTP/1.1 request
/// without one, one with an invalid `Host`, and a request target in none of
/// the forms allowed for its method are answered `400` by the proxy (with a
/// request id, `Connection: close`, logged) and never reach an upstream;
/// HTTP/1.0 without `Host` and `OPTIONS *` are served.
async fn host_and_request_target_rules_answer_400() {
    let (addr, seen) = spawn_recording_upstream().await;
    let stats = RevisionStats::new();
    let mut options = ProxyOptions::default();
    let log = logged(&mut options);
    let proxy = start_proxy(options).await;
    let up = upstream("r", 1, addr, &stats);
    proxy.set_routes(table(&[&up]));
    let rejected: &[(&str, &str, &str)] = &[
        (
            "two Host lines",
            "GET /two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines with one value",
            "GET /same HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines, one empty",
            "GET /empty HTTP/1.1\r\nHost: a.test\r\nHost:\r\n",
            "more than one Host",
        ),
        (
            "two Host lines on HTTP/1.0",
            "GET /old HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines and a body",
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nHost: b.test\r\n\r\nhello",
            "more than one Host",
        ),
        (
            "two Host lines and a chunked body",
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
            "more than one Host",
        ),
        (
            "no Host on HTTP/1.1",
            "GET /none HTTP/1.1\r\nX-Other: 1\r\n",
            "needs a Host",
        ),
        (
            "no Host on HTTP/1.1, absolute-form",
            "GET http://a.test/abs HTTP/1.1\r\nX-Other: 1\r\n",
            "needs a Host",
        ),
        (
            "space in Host",
            "GET / HTTP/1.1\r\nHost: a.test b.test\r\n",
            "not a valid host",
        ),
        (
            "tab in Host",
            "GET / HTTP/1.1\r\nHost: a.test\tb.test\r\n",
            "not a valid host",
        ),
        (
            "slash in Host",
            "GET / HTTP/1.1\r\nHost: a.test/evil\r\n",
            "not a valid host",
        ),
        (
            "userinfo in Host",
            "GET / HTTP/1.1\r\nHost: user@a.test\r\n",
            "not a valid host",
        ),
        (
            "bad port in Host",
            "GET / HTTP/1.1\r\nHost: a.test:8o\r\n",
            "not a valid host",
        ),
        (
            "non-ASCII Host",
            "GET / HTTP/1.1\r\nHost: caf\u{e9}.test\r\n",
            "not a valid host",
        ),
        (
            "bad Host on HTTP/1.0",
            "GET / HTTP/1.0\r\nHost: a b\r\n",
            "not a valid host",
        ),
        (
            "target neither /path nor absolute",
            "GET a HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "authority-form without CONNECT",
            "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "asterisk without OPTIONS",
            "GET * HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "userinfo in an absolute-form target",
            "GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "absolute-form target of another scheme",
            "GET ftp://a.test/x HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
    ];
    for (i, (what, head, why)) in rejected.iter().enumerate() {
        // `Connection: close` so that a forwarded request fails the test at
        // once (the pipelined case below shows the proxy closes unasked).
        let extra = format!("X-Request-Id: probe-{i}\r\nConnection: close\r\n");
        let request = match head.split_once("\r\n\r\n") {
            Some((headers, body)) => format!("{headers}\r\n{extra}\r\n{body}"),
            None => format!("{head}{extra}\r\n"),
        };
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        // hyper answers an HTTP/1.0 client in HTTP/1.0.
        let status_line = out.split("\r\n").next().unwrap_or("");
        assert!(
            ["HTTP/1.1 400 Bad Request", "HTTP/1.0 400 Bad Request"].contains(&status_line),
            "{what}: {out}"
        );
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{what}: {out}");
        assert!(
            out.contains(&format!("\r\nx-request-id: probe-{i}\r\n")),
            "{what}: {out}"
        );
        assert!(
            lower.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
            "{what}: {out}"
        );
        assert!(out.ends_with('\n') && out.contains(why), "{what}: {out}");
        assert_eq!(
            out.matches(" 400 Bad Request\r\n").count(),
            1,
            "{what}: {out}"
        );
        assert!(!out.contains(" 200 OK\r\n"), "{what}: {out}");
    }
    // Control characters in Host: httparse (on both paths) rejects the head.
    for head in [
        "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
    ] {
        let out = raw_exchange(proxy.local_addr(), head.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{head:?}: {out}"
        );
    }
    // A rejected request behind a served one on the same connection: the
    // first is answered, the connection closes after the 400, and what
    // follows is neither answered nor forwarded.
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 400 Bad Request\r\n").count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
    {
        let seen = seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["/first"], "only the valid request went upstream");
    }
    // Logged like the proxy's other answers; no revision counted them.
    let lines = log_lines(&log, rejected.len() + 2).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"status\":400"))
            .count(),
        rejected.len() + 1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"status\":400") && l.contains("\"request_id\":\"probe-0\"")),
        "{lines:?}"
    );
    assert_eq!(stats.snapshot().total, 1);
    assert_eq!(up.in_flight(), 0);

    // Served: one valid Host (name, IPv4, IPv6, with ports, empty), HTTP/1.0
    // without Host, and OPTIONS * (asterisk-form, forwarded as such).
    seen.lock().unwrap().clear();
    let served: &[(&str, &str)] = &[
        (
            "GET /port HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
            "/port",
        ),
        (
            "GET /v4 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "/v4",
        ),
        (
            "GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
            "/v6",
        ),
        (
            "GET /empty HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
            "/empty",
        ),
        ("GET /old HTTP/1.0\r\n\r\n", "/old"),
        (
            "OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "*",
        ),
    ];
    for (request, uri) in served {
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(
            out.contains(" 200 OK\r\n") && out.ends_with("ok"),
            "{request:?}: {out}"
        );
        let last = seen.lock().unwrap().last().cloned();
        let last = last.unwrap_or_else(|| panic!("{request:?} not forwarded"));
        assert_eq!(last.uri, *uri, "{request:?}");
        let host = request
            .lines()
            .find_map(|l| l.strip_prefix("Host:"))
            .map(str::trim);
        if let Some(host) = host {
            assert_eq!(last.header("host"), Some(host.as_bytes()), "{request:?}");
        }
    }
    assert_eq!(seen.lock().unwrap()[5].method, "OPTIONS");
    // The HTTP/1.0 request goes upstream as HTTP/1.1, which needs a Host:
    // an empty one, as for a target without authority (RFC 9112 3.2).
    assert_eq!(seen.lock().unwrap()[4].header("host"), Some(&b""[..]));

    // An absolute-form target's authority replaces the Host received with
    // it (RFC 9112 3.2.2), and gives one to an HTTP/1.0 request without.
    seen.lock().unwrap().clear();
    for request in [
        "GET http://a.test:8080/abs?q=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "GET http://a.test:8080/abs?q=1 HTTP/1.0\r\n\r\n",
    ] {
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(out.contains(" 200 OK\r\n"), "{request:?}: {out}");
        let last = seen.lock().unwrap().pop().expect("forwarded");
        assert_eq!(last.uri, "/abs?q=1", "{request:?}");
        assert_eq!(
            last.header("host"),
            Some(&b"a.test:8080"[..]),
            "{request:?}"
        );
        assert_eq!(
            last.headers.iter().filter(|(n, _)| n == "host").count(),
            1,
            "{last:?}"
        );
    }
    let _ = std::fs::remove_file(log);
}

/// What the property tests (`fuzz.rs`) found hyper's path forwarding
/// otherwise than the fast path: a Content-Length as the client spelled it
/// (`007`), every `traceparent`, and every `X-Request-Id` (or a fresh id
/// when the first was empty). Both paths send one canonical Content-Length, the first
/// `traceparent`, and the first non-empty id, which is also the response's.
async fn forwarded_heads_are_canonical() {
    let (addr, seen) = spawn_recording_upstream().await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&upstream("r", 1, addr, &stats)]));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let cases: &[(String, &str, &[u8])] = &[
        (
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\nhello!!".into(),
            "content-length",
            b"7",
        ),
        (
            format!(
                "GET /c HTTP/1.1\r\nHost: a\r\ntraceparent: {trace}\r\ntraceparent: {other}\r\n\r\n"
            ),
            "traceparent",
            trace.as_bytes(),
        ),
        (
            "GET /d HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\nX-Request-Id: second\r\n\r\n".into(),
            "x-request-id",
            b"second",
        ),
        (
            "GET /e HTTP/1.1\r\nHost: a\r\nX-Request-Id: first\r\nX-Request-Id: second\r\n\r\n"
                .into(),
            "x-request-id",
            b"first",
        ),
    ];
    for (request, name, expected) in cases {
        seen.lock().unwrap().clear();
        let request = request.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{request:?}: {out}");
        let seen = seen.lock().unwrap().pop().expect("forwarded");
        let values: Vec<&[u8]> = seen
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .collect();
        assert_eq!(values, [*expected], "{request:?}: {seen:?}");
        if *name == "x-request-id" {
            let id = String::from_utf8_lossy(expected);
            assert!(
                out.contains(&format!("\r\nx-request-id: {id}\r\n")),
                "{out}"
            );
        }
        if request.starts_with("POST") {
            assert_eq!(&seen.body[..], b"hello!!");
        }
    }
}
