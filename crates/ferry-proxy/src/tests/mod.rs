//! End-to-end tests over real sockets on 127.0.0.1.
//!
//! Most tests run twice, through `on_both_paths!`: plain requests on the
//! fast path, then everything on hyper's path; both must behave the same.
//! This module holds that harness and the helpers the test files share
//! (test upstreams, a client, raw exchanges, access-log reading); each file
//! below tests one area, and `fuzz.rs` holds the property tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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

// ------------------------------------------------------------- both paths

tokio::task_local! {
    /// Whether the proxies a test starts use the fast path (see `on_both_paths!`).
    static FAST_PATH: bool;
}

async fn start_proxy(options: ProxyOptions) -> ProxyHandle {
    let proxy = ProxyHandle::bind("web".into(), "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    on_this_path(&proxy);
    proxy
}

/// Serve with the fast path or not, as the test running asks.
fn on_this_path(proxy: &ProxyHandle) {
    proxy.set_fast_path(FAST_PATH.try_with(|fast| *fast).unwrap_or(true));
}

/// Run test `$name` twice: plain requests on the fast path, then everything
/// on hyper's path. Both must behave the same.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fast_path() {
                $crate::tests::FAST_PATH.scope(true, super::$name()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper_path() {
                $crate::tests::FAST_PATH.scope(false, super::$name()).await;
            }
        }
    )*};
}

// Declared after `on_both_paths!`, which they use.
mod draining;
mod forwarding;
mod framing;
mod fuzz;
mod handoff;
mod health;
mod host;
mod limits;
mod metrics;
mod retire;
mod routing;
mod timeouts;

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

// -------------------------------------------------------------- upstreams

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

// ----------------------------------------------------------------- client

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

/// Raw client: send `request`, read until the connection closes or `LIMIT`.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = within("raw response", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one whole response (framed by `Content-Length`) from a raw
/// stream: its head (lower-cased) and body; `None` if the connection closed
/// first.
async fn read_response(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// Read a response head from a raw stream.
async fn read_response_head(stream: &mut TcpStream) -> String {
    let head = within("response head", read_head(stream)).await.unwrap();
    String::from_utf8(head).unwrap()
}

// ------------------------------------------------------------------ proxy

fn table(upstreams: &[&Arc<Upstream>]) -> RoutingTable {
    RoutingTable {
        upstreams: upstreams.iter().map(|u| Arc::clone(u)).collect(),
        split: None,
        stable: None,
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

// --------------------------- fn upstreams, access log, recording upstream

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
