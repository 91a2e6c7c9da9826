//! Message framing: streamed request and response bodies, and how the
//! fast path relays each response framing (length, chunked, close-delimited,
//! interim, broken) without the client connection getting out of step.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{
    Client, LIMIT, eventually, fetch, get, raw_exchange, read_head, spawn_fn_upstream, start_proxy,
    table, upstream, within,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    streaming_responses_are_not_buffered,
    odd_upstream_heads_never_desync_the_client
);

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
