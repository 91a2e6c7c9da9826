//! The API's HTTP server: the connection limits and timeouts that keep
//! unauthenticated clients from holding the daemon's file descriptors,
//! memory or time (the proxies enforce their own).
//!
//! - at most `max_connections` open connections: past that, new ones wait
//!   in the kernel's accept queue and hold no descriptor of the daemon;
//! - a request head must arrive within `header_timeout`, which is also how
//!   long a keep-alive connection may sit idle between requests;
//! - a head is at most `max_head` bytes (hyper answers 431 past that);
//! - a request (body read and handler) must end within `request_timeout`
//!   (then 408, in `api.rs`);
//! - a connection on which no byte moves either way for `stall_timeout` is
//!   closed (a client that never reads its response);
//! - bodies are at most `max_body` bytes (then 413, in `api.rs`).

use axum::Router;
use axum::extract::ConnectInfo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// The API server's limits (`ferry serve --api-*`).
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_head: usize,
    pub max_body: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            max_head: 64 * 1024,
            max_body: 1024 * 1024,
        }
    }
}

/// Serve `app` on `listener` until `stop` turns true; then stop accepting,
/// let open requests finish (at most 5 s) and return.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut open = tokio::task::JoinSet::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            r = stop.changed() => if r.is_err() { break } else { continue },
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors, most likely: say so at most once
                    // a minute, and give the process a moment.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!("API: accept failed: {e}");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = stop.changed() => if r.is_err() { break } else { continue },
        };
        while open.try_join_next().is_some() {}
        open.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits,
            stop.clone(),
            slot,
        ));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while open.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ApiLimits,
    mut stop: watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let moved = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let io = Watched {
        inner: stream,
        moved: moved.clone(),
        started,
    };
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let stalled = async {
        loop {
            tokio::time::sleep(limits.stall_timeout / 4).await;
            let last = Duration::from_millis(moved.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(last) >= limits.stall_timeout {
                return;
            }
        }
    };
    let stopping = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stalled => {
            tracing::debug!(%peer, "API: closing a stalled connection");
            return;
        }
        _ = stopping => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// A socket that notes when a byte last moved (ms since `started`).
struct Watched {
    inner: tokio::net::TcpStream,
    moved: Arc<AtomicU64>,
    started: Instant,
}

impl Watched {
    fn progress(&self) {
        self.moved
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raise this process's soft limit on open files to its hard limit (as Go
/// programs and nginx's `worker_rlimit_nofile` do): the proxies hold two
/// descriptors per proxied connection, and the usual soft limit of 1024
/// would cap them long before memory does. Returns the new limit.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some(hard.max(soft))
}
