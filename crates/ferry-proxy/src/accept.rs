//! The worker threads and their accept loops: each accepted connection is
//! capped (`max_connections`, else `503`), balanced (handed to a less
//! loaded worker), given its context (PROXY protocol header, client
//! address) and served on the fast path, then on hyper's path with whatever
//! the fast path hands back.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::{Alive, ConnCtx, ConnSlot};
use crate::config::Config;
use crate::fast;
use crate::net::{is_trusted, read_proxy_header};
use crate::proxy::serve_with_hyper;
use crate::shared::{HandoffRx, Shared};
use crate::upstream::enter_worker;

/// Start one worker thread per listening socket (worker `i` accepts from
/// `listeners[i]` and gets `handoffs[i]`) and wait until each has
/// registered its socket. On failure the workers already started are
/// stopped.
pub(crate) async fn start_workers(
    shared: &Arc<Shared>,
    handoffs: Vec<HandoffRx>,
    listeners: Vec<std::net::TcpListener>,
) -> io::Result<()> {
    let mut started = Vec::with_capacity(handoffs.len());
    for (index, (handoff_rx, listener)) in handoffs.into_iter().zip(listeners).enumerate() {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let worker_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("ferry-proxy-{index}"))
            .spawn(move || run_worker(worker_shared, index, listener, handoff_rx, ready_tx));
        match spawned {
            Ok(_) => started.push(ready_rx),
            Err(err) => {
                shared.stop();
                return Err(err);
            }
        }
    }
    for ready in started {
        let res = ready
            .await
            .unwrap_or_else(|_| Err(io::Error::other("proxy worker thread failed to start")));
        if let Err(err) = res {
            shared.stop();
            return Err(err);
        }
    }
    Ok(())
}

/// The body of worker thread `worker`: a single-threaded runtime that
/// registers the worker's listening socket, reports on `ready`, accepts and
/// serves connections until shutdown or retirement, then waits for the
/// connections it serves (upgraded ones included) to end, stopping the
/// listener when a retirement's deadline passes first.
fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
    listener: std::net::TcpListener,
    mut handoff: HandoffRx,
    ready: tokio::sync::oneshot::Sender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    enter_worker();
    runtime.block_on(async move {
        if let Err(err) = shared.listen(worker, listener) {
            let _ = ready.send(Err(err));
            return;
        }
        let _ = ready.send(Ok(()));
        let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        let shutdown = shared.shutdown.subscribe();
        accept_loop(&shared, worker, &mut handoff, &alive).await;
        // Connections other workers handed over before this one stopped
        // taking them are served (and counted down) like the rest; later
        // hand-offs fail and their sender serves them.
        handoff.close();
        while let Ok((stream, peer)) = handoff.try_recv() {
            take_over(&shared, worker, stream, peer, &shutdown, &alive);
        }
        drop(alive);
        // Every connection holds a clone of `alive`.
        wait_for_connections(&shared, &mut all_done).await;
    });
    // Dropping the runtime closes this worker's idle upstream connections.
}

/// Wait until every connection of this worker has ended; if the listener
/// retires, stop it (as `shutdown` does) when its deadline passes.
async fn wait_for_connections(shared: &Shared, all_done: &mut tokio::sync::mpsc::Receiver<()>) {
    let mut retire = shared.retire_deadline.subscribe();
    let mut done = std::pin::pin!(all_done.recv());
    loop {
        let deadline = *retire.borrow_and_update();
        let passed = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = done.as_mut() => return,
            _ = passed => {
                shared.stop();
                let _ = done.await;
                return;
            }
            changed = retire.changed() => {
                if changed.is_err() {
                    let _ = done.await;
                    return;
                }
            }
        }
    }
}

/// Accept connections until the listener is closed by `shutdown()` or
/// `retire()`.
async fn accept_loop(shared: &Arc<Shared>, worker: usize, handoff: &mut HandoffRx, alive: &Alive) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut retire = shared.retire_deadline.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = retire.wait_for(Option::is_some) => break,
            Some(handed) = handoff.recv() => Err(handed),
            res = poll_fn(|cx| shared.poll_accept(worker, cx)) => Ok(res),
        };
        let accepted = match accepted {
            Ok(res) => res,
            Err((stream, peer)) => {
                take_over(shared, worker, stream, peer, &shutdown, alive);
                continue;
            }
        };
        match accepted {
            Ok(Some((stream, peer))) => accept(shared, worker, stream, peer, &shutdown, alive),
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(service = %shared.service, error = %err, "accept failed");
                if !matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::debug!(service = %shared.service, worker, "proxy listener closed");
}

fn accept(
    shared: &Arc<Shared>,
    worker: usize,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
    alive: &Alive,
) {
    let max = shared.config.load().options.max_connections;
    let open = shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    if open >= max {
        shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = %shared.service, %peer, "max_connections reached; answering 503");
        let alive = alive.clone();
        tokio::spawn(async move {
            reject(stream).await;
            drop(alive);
        });
        return;
    }
    // The kernel spreads connections over the workers' sockets by a hash,
    // which can leave one worker with many more long-lived connections than
    // another: hand this one to the least loaded worker if this one has more
    // than twice its connections (and 16 more). Only a gross imbalance is
    // worth it: a hand-off costs two epoll_ctl calls and a cross-thread
    // wake-up, and with short-lived connections the counts swing by a few
    // all the time (a `+1` threshold moved ~70 % of them and cost ~4 % of
    // throughput with a new connection per request).
    let load = |w: usize| shared.worker_conns[w].load(Ordering::Relaxed);
    let least = (0..shared.worker_conns.len())
        .min_by_key(|&w| load(w))
        .unwrap_or(worker);
    if least != worker && load(worker) > 2 * load(least) + 16 {
        match stream.into_std() {
            Ok(std) => match shared.handoff[least].send((std, peer)) {
                Ok(()) => return,
                Err(returned) => {
                    let (std, _) = returned.0;
                    match TcpStream::from_std(std) {
                        Ok(stream) => serve_here(shared, worker, stream, peer, shutdown, alive),
                        Err(_) => {
                            shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    return;
                }
            },
            Err(_) => {
                shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
    }
    serve_here(shared, worker, stream, peer, shutdown, alive);
}

/// Serve a connection another worker accepted (already counted in
/// `connections`) on this one.
fn take_over(
    shared: &Arc<Shared>,
    worker: usize,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
    alive: &Alive,
) {
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_here(shared, worker, stream, peer, shutdown, alive),
        Err(err) => {
            shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %err, "cannot take over a connection");
        }
    }
}

/// Serve an accepted connection (already counted in `connections`) on this
/// worker.
fn serve_here(
    shared: &Arc<Shared>,
    worker: usize,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
    alive: &Alive,
) {
    shared.worker_conns[worker].fetch_add(1, Ordering::Relaxed);
    let slot = ConnSlot::new(Arc::clone(shared), worker, alive.clone());
    let config = shared.config.load_full();
    tokio::spawn(serve(slot, config, stream, peer, shutdown.clone()));
}

/// Answer a connection over `max_connections` with a 503 and close it.
async fn reject(mut stream: TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
        content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n\
        connection: close\r\ncontent-length: 45\r\n\r\n\
        too many connections: the proxy is at its cap\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        // Read (part of) the request first, so that closing does not reset
        // the connection before the client has read the answer.
        let mut buf = [0u8; 2048];
        let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        stream.write_all(RESPONSE).await?;
        stream.shutdown().await?;
        let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        io::Result::Ok(())
    })
    .await;
}

/// Serve one connection: take the client's address from its PROXY header
/// (if its peer is a trusted proxy that must send one), then serve it on the
/// fast path (if on) and the rest on hyper's path.
async fn serve(
    slot: ConnSlot,
    config: Arc<Config>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    // TCP_NODELAY is inherited from the listening socket (see `listen`).
    let options = &config.options;
    let trusted_net = |ip: IpAddr| {
        !options.trusted_proxies.is_empty() && is_trusted(&options.trusted_proxies, ip)
    };
    let mut client = peer.ip().to_canonical();
    if options.proxy_protocol && trusted_net(client) {
        match tokio::time::timeout(options.idle_timeout, read_proxy_header(&mut stream)).await {
            Ok(Ok(Some(addr))) => client = addr.ip().to_canonical(),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "bad PROXY protocol header; closing");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY protocol header in time; closing");
                return;
            }
        }
    }
    let client_ip = HeaderValue::from_maybe_shared(Bytes::from(client.to_string()))
        .expect("an IP address is a valid header value");
    let ctx = Arc::new(ConnCtx {
        slot,
        config: Arc::clone(&config),
        client,
        client_ip,
        trusted: trusted_net(client),
    });
    // Plain requests are served by the fast path; the first one it does not
    // handle moves the connection, and what was read of it, to hyper.
    let fast = ctx.shared().fast_path.load(Ordering::Relaxed);
    let (stream, read) = if fast {
        match fast::serve(&ctx, stream, &mut shutdown).await {
            fast::Served::Closed => return,
            fast::Served::Fallback(stream, read) => (stream, read),
        }
    } else {
        (stream, Vec::new())
    };
    // Boxed: hyper's connection state is large and rarely needed, and every
    // open connection's task would otherwise reserve room for it.
    Box::pin(serve_with_hyper(ctx, stream, read, peer, shutdown)).await;
}
