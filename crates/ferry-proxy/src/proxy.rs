//! The accept loop, client connections and request forwarding.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access_log::Entry;
use crate::body::{Lease, ProxyBody};
use crate::config::Config;
use crate::headers::{
    HeaderView, TRACEPARENT, X_FERRY_REVISION, X_REQUEST_ID, ensure_request_id, ensure_traceparent,
    forwarded_client, set_forwarding, strip_hop_by_hop, valid_host, wants_upgrade,
};
use crate::net::{ClientIo, is_trusted, read_proxy_header};
use crate::pending_log::PendingLog;
use crate::rate_limit::{RateLimitKey, hash_key};
use crate::shared::{HandoffRx, Shared};
use crate::upload::{ReqBody, UploadState};
use crate::upstream::{InFlight, Upstream};

/// Start one worker thread per hand-off receiver (worker `i` gets
/// `handoffs[i]`) and wait until each has opened its listening socket. On
/// failure the workers already started are stopped.
pub(crate) async fn start_workers(
    shared: &Arc<Shared>,
    handoffs: Vec<HandoffRx>,
) -> io::Result<()> {
    let mut started = Vec::with_capacity(handoffs.len());
    for (index, handoff_rx) in handoffs.into_iter().enumerate() {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let worker_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("ferry-proxy-{index}"))
            .spawn(move || run_worker(worker_shared, index, handoff_rx, ready_tx));
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

/// The body of worker thread `worker`: a single-threaded runtime that opens
/// the worker's listening socket, reports on `ready`, accepts and serves
/// connections until shutdown, then waits for the connections it serves
/// (upgraded ones included) to end.
fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
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
    crate::upstream::enter_worker();
    runtime.block_on(async move {
        if let Err(err) = shared.listen(worker) {
            let _ = ready.send(Err(err));
            return;
        }
        let _ = ready.send(Ok(()));
        let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        accept_loop(&shared, worker, &mut handoff, &alive).await;
        drop(handoff);
        drop(alive);
        // Every connection holds a clone of `alive`.
        let _ = all_done.recv().await;
    });
    // Dropping the runtime closes this worker's idle upstream connections.
}

/// Accept connections until the listener is closed by `shutdown()`.
async fn accept_loop(shared: &Arc<Shared>, worker: usize, handoff: &mut HandoffRx, alive: &Alive) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(handed) = handoff.recv() => Err(handed),
            res = poll_fn(|cx| shared.poll_accept(worker, cx)) => Ok(res),
        };
        let accepted = match accepted {
            Ok(res) => res,
            Err((stream, peer)) => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve_here(shared, worker, stream, peer, &shutdown, alive),
                    Err(err) => {
                        shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %err, "cannot take over a connection");
                    }
                }
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

/// Held by every connection of a worker, so that it can wait for them all.
type Alive = tokio::sync::mpsc::Sender<()>;

/// One open client connection, counted against `max_connections` (and in
/// its worker's load) until dropped (after the connection and any tunnel it
/// became have ended).
struct ConnSlot {
    shared: Arc<Shared>,
    worker: usize,
    _alive: Alive,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared
            .counters
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.worker_conns[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
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
    let slot = ConnSlot {
        shared: Arc::clone(shared),
        worker,
        _alive: alive.clone(),
    };
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

/// Per client connection state shared by its requests.
pub(crate) struct ConnCtx {
    slot: ConnSlot,
    pub(crate) config: Arc<Config>,
    /// The client's address: the peer's, or the one its PROXY header gave.
    client: IpAddr,
    /// `client` formatted once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// `client` is a trusted proxy: its `X-Forwarded-For` is believed.
    pub(crate) trusted: bool,
}

impl ConnCtx {
    pub(crate) fn shared(&self) -> &Shared {
        &self.slot.shared
    }

    /// The end client's address (from a trusted `X-Forwarded-For` if any).
    pub(crate) fn client_addr<H: HeaderView + ?Sized>(&self, headers: &H) -> IpAddr {
        if self.trusted {
            forwarded_client(headers, &self.config.options.trusted_proxies).unwrap_or(self.client)
        } else {
            self.client
        }
    }
}

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
        match crate::fast::serve(&ctx, stream, &mut shutdown).await {
            crate::fast::Served::Closed => return,
            crate::fast::Served::Fallback(stream, read) => (stream, read),
        }
    } else {
        (stream, Vec::new())
    };
    // Boxed: hyper's connection state is large and rarely needed, and every
    // open connection's task would otherwise reserve room for it.
    Box::pin(serve_with_hyper(ctx, stream, read, peer, shutdown)).await;
}

/// Serve the rest of a connection with hyper; `read`: bytes already read.
async fn serve_with_hyper(
    ctx: Arc<ConnCtx>,
    stream: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = Arc::clone(&ctx.config);
    let io = TokioIo::new(ClientIo::new(stream, read, config.options.send_timeout));
    let service = service_fn(move |req| proxy(Arc::clone(&ctx), req));
    let conn = config.builder.serve_connection(io, service).with_upgrades();
    let mut conn = pin!(conn);
    let finished = tokio::select! {
        res = conn.as_mut() => Some(res),
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    let res = match finished {
        Some(res) => res,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = res {
        tracing::debug!(%peer, error = %err, "client connection ended with error");
    }
}

/// Handle one client request.
async fn proxy(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let shared = ctx.shared();
    let config = &*ctx.config;
    let on_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let upgrade_to = match on_upgrade {
        Some(_) => parts.headers.get(header::UPGRADE).cloned(),
        None => None,
    };
    strip_hop_by_hop(&mut parts.headers);
    // One canonical Content-Length, as the fast path sends it (hyper keeps
    // the client's spelling, `007`).
    if parts.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(len) = incoming.size_hint().exact()
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let request_id = ensure_request_id(&mut parts.headers);
    ensure_traceparent(&mut parts.headers);
    let log = config.log.as_ref().map(|_| PendingLog {
        entry: Box::new(Entry {
            time: SystemTime::now(),
            client: ctx.client_addr(&parts.headers),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            status: StatusCode::OK,
            revision: None,
            instance: None,
            duration: Duration::ZERO,
            bytes: 0,
            request_id: request_id.clone(),
            traceparent: parts.headers.get(TRACEPARENT).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
        }),
        start,
        config: Arc::clone(&ctx.config),
    });
    if let Some(body) = bad_request(&parts) {
        let mut resp = local_response(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(body),
            request_id,
            log,
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    if parts.method == Method::CONNECT {
        return Ok(local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"CONNECT is not supported\n"),
            request_id,
            log,
        ));
    }
    // Before the rate limit and routing, which read headers as the upstream
    // will see them (a client cannot pick its key by forging them).
    set_forwarding(&mut parts.headers, &ctx.client_ip, ctx.trusted);
    let client = log.as_ref().map(|log| log.entry.client);
    if let Some(secs) = rate_limited(&ctx, &parts.headers, client, start) {
        let mut resp = local_response(
            StatusCode::TOO_MANY_REQUESTS,
            Bytes::from_static(RATE_LIMITED),
            request_id,
            log,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(resp);
    }
    to_origin_form(&mut parts);
    parts.version = Version::HTTP_11;
    if let Some(protocol) = upgrade_to {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }

    let Some(in_flight) = shared.acquire(&parts.headers, &[]) else {
        return Ok(local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            shared.no_instance_body.clone(),
            request_id,
            log,
        ));
    };
    let (body, upload) = ReqBody::new(incoming, config.options.client_body_timeout);
    let replayable = body.is_empty() && is_replayable(parts.method.as_str(), &parts.headers);
    let req = Request::from_parts(parts, body);
    let exchange = Exchange {
        ctx: &ctx,
        start,
        request_id,
        upload,
        replayable,
        on_upgrade,
        log,
    };
    Ok(exchange.run(in_flight, req).await)
}

/// The body of a `429`.
pub(crate) const RATE_LIMITED: &[u8] = b"too many requests: slow down and retry later\n";

/// Bodies of the `400`s the proxy answers itself (RFC 9112 3.2, 3.2.2).
const NO_HOST: &[u8] = b"bad request: an HTTP/1.1 request needs a Host header\n";
const MANY_HOSTS: &[u8] = b"bad request: more than one Host header\n";
const BAD_HOST: &[u8] = b"bad request: the Host header is not a valid host[:port]\n";
const BAD_TARGET: &[u8] = b"bad request: the request target is not valid for its method\n";

/// RFC 9112 3.2: a request without `Host` (HTTP/1.1 only; HTTP/1.0 may omit
/// it), with more than one `Host` line, or with an invalid one is answered
/// `400` and never forwarded. `hosts`: how many `Host` lines the request
/// has, `first`: the first one's value. `Some(body)`: answer `400` with it.
pub(crate) fn host_rejected(http11: bool, hosts: usize, first: &[u8]) -> Option<&'static [u8]> {
    match hosts {
        0 if http11 => Some(NO_HOST),
        0 => None,
        1 if valid_host(first) => None,
        1 => Some(BAD_HOST),
        _ => Some(MANY_HOSTS),
    }
}

/// Why hyper's path answers a request `400` itself: its `Host` (see
/// [`host_rejected`]), or a request target in none of the forms RFC 9112 3.2
/// allows for its method: origin-form (`/path`), absolute-form
/// (`http://host/path`, no userinfo), `*` for `OPTIONS` only, and
/// authority-form for `CONNECT` only (which is answered `405`). hyper reads
/// `GET a` as an authority-form `a`: forwarded, it would become `GET /`.
fn bad_request(parts: &http::request::Parts) -> Option<&'static [u8]> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    let count = first.map_or(0, |_| 1 + hosts.count());
    let first = first.map_or(&b""[..], HeaderValue::as_bytes);
    if let Some(body) = host_rejected(parts.version == Version::HTTP_11, count, first) {
        return Some(body);
    }
    let uri = &parts.uri;
    let valid = match (uri.scheme(), uri.authority()) {
        (None, None) => {
            uri.path().starts_with('/') || (uri.path() == "*" && parts.method == Method::OPTIONS)
        }
        (Some(scheme), Some(authority)) => {
            (*scheme == http::uri::Scheme::HTTP || *scheme == http::uri::Scheme::HTTPS)
                && !authority.host().is_empty()
                && valid_host(authority.as_str().as_bytes())
        }
        (None, Some(_)) => parts.method == Method::CONNECT,
        (Some(_), None) => false,
    };
    (!valid).then_some(BAD_TARGET)
}

/// Count a request against the service's rate limit (if any), keyed by the
/// configured header or else the client's address (`client` if already
/// known). `Some(seconds)`: over the limit, retry after that long (≥ 1).
pub(crate) fn rate_limited<H: HeaderView + ?Sized>(
    ctx: &ConnCtx,
    headers: &H,
    client: Option<IpAddr>,
    now: Instant,
) -> Option<u64> {
    let limiter = ctx.config.limiter.as_ref()?;
    let key = match &limiter.options.key {
        RateLimitKey::Header(name) => headers
            .value_of(name)
            .filter(|v| !v.is_empty())
            .map(|v| hash_key(1, v)),
        RateLimitKey::ClientIp => None,
    };
    let key = key.unwrap_or_else(|| hash_ip(client.unwrap_or_else(|| ctx.client_addr(headers))));
    let wait = limiter.check(key, now).err()?;
    ctx.shared()
        .counters
        .rate_limited
        .fetch_add(1, Ordering::Relaxed);
    Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
}

/// Count a request no upstream could serve (502/504) against `in_flight`'s
/// revision, note the instance in the access log, stop counting the request
/// in flight, and return the body to answer with.
pub(crate) fn upstream_failed(
    in_flight: InFlight,
    status: StatusCode,
    elapsed: Duration,
    log: &mut Option<PendingLog>,
) -> &'static [u8] {
    let upstream = in_flight.upstream();
    upstream.stats().record_upstream_error(status, elapsed);
    if let Some(log) = log.as_mut() {
        log.served_by(upstream);
    }
    drop(in_flight);
    if status == StatusCode::GATEWAY_TIMEOUT {
        b"gateway timeout: the upstream did not answer in time\n"
    } else {
        b"bad gateway: no upstream could serve the request\n"
    }
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(4, &v4.octets()),
        IpAddr::V6(v6) => hash_key(6, &v6.octets()),
    }
}

/// One request's trip through the upstreams.
struct Exchange<'a> {
    ctx: &'a Arc<ConnCtx>,
    start: Instant,
    request_id: HeaderValue,
    upload: Option<Arc<UploadState>>,
    /// Body-less and safe to send twice: may be replayed once if a reused
    /// pooled connection turns out to have been closed by the upstream.
    replayable: bool,
    /// The client asked for a protocol upgrade (e.g. WebSocket).
    on_upgrade: Option<OnUpgrade>,
    log: Option<PendingLog>,
}

enum SendFailure {
    /// The request was not written; here it is back.
    NotSent(Box<Request<ReqBody>>),
    /// The request may have reached the upstream.
    Failed(hyper::Error),
    /// No response head within `response_header_timeout`.
    Timeout,
}

impl Exchange<'_> {
    async fn run(self, mut in_flight: InFlight, mut req: Request<ReqBody>) -> Response<ProxyBody> {
        let options = &self.ctx.config.options;
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        let mut fresh_only = false;
        loop {
            let found = pooled_or_connect(
                &self.ctx.shared().service,
                in_flight,
                fresh_only,
                Upstream::checkout,
                |upstream| async move { upstream.connect(options.connect_timeout).await },
                |current| self.next_upstream(current, &mut tried, req.headers()),
            )
            .await;
            let (mut sender, reused);
            (in_flight, sender, reused) = match found {
                Ok(found) => found,
                Err(last) => return self.upstream_error(last, StatusCode::BAD_GATEWAY),
            };
            let replay = (reused && self.replayable).then(|| clone_head(&req));
            let sent = send(
                &mut sender,
                req,
                options.response_header_timeout,
                self.upload.as_deref(),
            )
            .await;
            match sent {
                Ok(resp) => return self.upstream_response(resp, in_flight, sender),
                Err(SendFailure::NotSent(back)) => {
                    req = *back;
                    drop(sender);
                    if reused {
                        // A pooled connection went away: retry on a new one.
                        fresh_only = true;
                        continue;
                    }
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = in_flight.upstream().instance_id(),
                        "upstream connection closed before the request was sent"
                    );
                    match self.next_upstream(in_flight, &mut tried, req.headers()) {
                        Ok(next) => {
                            in_flight = next;
                            fresh_only = false;
                        }
                        Err(last) => return self.upstream_error(last, StatusCode::BAD_GATEWAY),
                    }
                }
                Err(SendFailure::Failed(err)) => {
                    drop(sender);
                    if let Some(again) = replay
                        && is_stale_connection(&err)
                    {
                        tracing::debug!(error = %err, "pooled connection was stale; replaying");
                        req = again;
                        fresh_only = true;
                        continue;
                    }
                    if err.is_user() {
                        // Reading the client's request body failed.
                        tracing::debug!(error = %err, "client request body failed");
                        let timed_out = self.upload.as_ref().is_some_and(|u| u.timed_out());
                        let (status, body): (_, &'static [u8]) = if timed_out {
                            (
                                StatusCode::REQUEST_TIMEOUT,
                                b"request body timed out: the client paused too long\n",
                            )
                        } else {
                            (StatusCode::BAD_REQUEST, b"request body could not be read\n")
                        };
                        in_flight
                            .upstream()
                            .stats()
                            .record(status, self.start.elapsed());
                        let mut resp = local_response(
                            status,
                            Bytes::from_static(body),
                            self.request_id,
                            self.log,
                        );
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return resp;
                    }
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = in_flight.upstream().instance_id(),
                        error = %err,
                        "upstream request failed"
                    );
                    return self.upstream_error(in_flight, StatusCode::BAD_GATEWAY);
                }
                Err(SendFailure::Timeout) => {
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = in_flight.upstream().instance_id(),
                        "upstream response header timeout"
                    );
                    return self.upstream_error(in_flight, StatusCode::GATEWAY_TIMEOUT);
                }
            }
        }
    }

    /// Give up on the current upstream and move to the next untried one.
    /// `Err` hands back the current one when none is left.
    fn next_upstream(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<Upstream>>,
        headers: &HeaderMap,
    ) -> Result<InFlight, InFlight> {
        self.ctx.shared().next_upstream(current, tried, headers)
    }

    fn upstream_response(
        mut self,
        resp: Response<Incoming>,
        in_flight: InFlight,
        sender: SendRequest<ReqBody>,
    ) -> Response<ProxyBody> {
        let upstream = in_flight.upstream();
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            drop(sender);
            return match self.on_upgrade.take() {
                Some(client) => self.upgrade(resp, in_flight, client),
                None => {
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = upstream.instance_id(),
                        "upstream switched protocols without being asked"
                    );
                    self.upstream_error(in_flight, StatusCode::BAD_GATEWAY)
                }
            };
        }
        upstream.stats().record(status, self.start.elapsed());
        if let Some(log) = self.log.as_mut() {
            log.entry.status = status;
            log.served_by(upstream);
        }
        let (mut parts, body) = resp.into_parts();
        // hyper downgrades to HTTP/1.0 itself for HTTP/1.0 clients.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_FERRY_REVISION, upstream.revision_header().clone());
        parts.headers.insert(X_REQUEST_ID, self.request_id);
        let lease = Lease {
            in_flight,
            sender,
            max_idle: self.ctx.config.options.max_idle_per_upstream,
            log: self.log,
        };
        Response::from_parts(parts, ProxyBody::upstream(body, lease))
    }

    /// The upstream accepted the upgrade: answer the client with its 101 and
    /// join the two connections once both sides have switched.
    fn upgrade(
        mut self,
        mut resp: Response<Incoming>,
        in_flight: InFlight,
        client: OnUpgrade,
    ) -> Response<ProxyBody> {
        let upstream = Arc::clone(in_flight.upstream());
        upstream
            .stats()
            .record(StatusCode::SWITCHING_PROTOCOLS, self.start.elapsed());
        let upstream_side = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        parts
            .headers
            .insert(X_FERRY_REVISION, upstream.revision_header().clone());
        parts.headers.insert(X_REQUEST_ID, self.request_id);
        if let Some(log) = self.log.as_mut() {
            log.entry.status = StatusCode::SWITCHING_PROTOCOLS;
            log.served_by(&upstream);
        }
        let close = upstream.close_signal();
        tokio::spawn(tunnel(
            client,
            upstream_side,
            in_flight,
            close,
            Arc::clone(self.ctx),
            self.log,
        ));
        Response::from_parts(parts, ProxyBody::full(Bytes::new()))
    }

    fn upstream_error(self, in_flight: InFlight, status: StatusCode) -> Response<ProxyBody> {
        let mut log = self.log;
        let body = upstream_failed(in_flight, status, self.start.elapsed(), &mut log);
        local_response(status, Bytes::from_static(body), self.request_id, log)
    }
}

/// A connection to `in_flight`'s upstream, for either path's kind of
/// connection: a pooled one (`checkout`, unless `fresh_only`) or a new one
/// (`connect`). When connecting fails, `next` moves the request to the next
/// untried upstream (a refused connect is never the request's fault).
/// `Ok((in_flight, connection, reused))`, or `Err(last upstream)` when none
/// could be connected to.
pub(crate) async fn pooled_or_connect<C, Fut>(
    service: &str,
    mut in_flight: InFlight,
    fresh_only: bool,
    checkout: impl Fn(&Upstream) -> Option<C>,
    connect: impl Fn(Arc<Upstream>) -> Fut,
    mut next: impl FnMut(InFlight) -> Result<InFlight, InFlight>,
) -> Result<(InFlight, C, bool), InFlight>
where
    Fut: Future<Output = io::Result<C>>,
{
    if !fresh_only && let Some(pooled) = checkout(in_flight.upstream()) {
        return Ok((in_flight, pooled, true));
    }
    loop {
        let upstream = in_flight.upstream();
        match connect(Arc::clone(upstream)).await {
            Ok(new) => return Ok((in_flight, new, false)),
            Err(err) => {
                tracing::warn!(
                    service,
                    instance = upstream.instance_id(),
                    addr = %upstream.addr(),
                    error = %err,
                    "cannot connect to upstream"
                );
                in_flight = next(in_flight)?;
                // A different upstream: its pool may have a connection.
                if let Some(pooled) = checkout(in_flight.upstream()) {
                    return Ok((in_flight, pooled, true));
                }
            }
        }
    }
}

/// Copy bytes both ways between an upgraded client connection and its
/// upstream until either side closes or the upstream is closed by
/// `Upstream::close_all`. The request stays counted in `in_flight` (and the
/// client connection in `max_connections`) meanwhile.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    mut close: watch::Receiver<u64>,
    ctx: Arc<ConnCtx>,
    log: Option<PendingLog>,
) {
    let counters = &ctx.shared().counters;
    counters.upgraded.fetch_add(1, Ordering::Relaxed);
    let copy = async {
        let (client, upstream) =
            tokio::try_join!(client, upstream).map_err(|e| io::Error::other(e.to_string()))?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    let mut bytes = 0;
    tokio::select! {
        res = copy => match res {
            Ok((_, down)) => bytes = down,
            Err(err) => {
                tracing::debug!(error = %err, "upgraded connection ended with error");
            }
        },
        _ = close.changed() => {
            tracing::debug!(
                instance = in_flight.upstream().instance_id(),
                "closing an upgraded connection: its upstream is being stopped"
            );
        }
    }
    counters.upgraded.fetch_sub(1, Ordering::Relaxed);
    drop(in_flight);
    if let Some(mut log) = log {
        log.entry.bytes = bytes;
        log.send();
    }
}

/// Send `req` on `sender` and wait for the response head. The timeout counts
/// from when the request body (if any) has been fully handed to the connection.
async fn send(
    sender: &mut SendRequest<ReqBody>,
    req: Request<ReqBody>,
    timeout: Duration,
    upload: Option<&UploadState>,
) -> Result<Response<Incoming>, SendFailure> {
    let mut response = pin!(sender.try_send_request(req));
    let mut timer = pin!(tokio::time::sleep(timeout));
    poll_fn(|cx| {
        if let Poll::Ready(res) = response.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|mut err| match err.take_message() {
                Some(req) => SendFailure::NotSent(Box::new(req)),
                None => SendFailure::Failed(err.into_error()),
            }));
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            let now = Instant::now();
            let deadline = match upload.map(UploadState::done_at) {
                // Still uploading: the clock has not started yet.
                Some(None) => now + timeout,
                Some(Some(done)) if done + timeout > now => done + timeout,
                _ => return Poll::Ready(Err(SendFailure::Timeout)),
            };
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    })
    .await
}

/// Errors that mean a reused keep-alive connection had been closed by the
/// upstream before it could answer.
fn is_stale_connection(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// Whether a body-less request is safe to send twice: a safe method, or
/// one the client marked with `Idempotency-Key`.
pub(crate) fn is_replayable<H: HeaderView + ?Sized>(method: &str, headers: &H) -> bool {
    const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
        || headers.value_of(&IDEMPOTENCY_KEY).is_some()
}

fn clone_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(ReqBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Rewrite an absolute-form request target to origin-form (path + query),
/// with `Host` made from its authority: RFC 9112 3.2.2, a proxy ignores the
/// `Host` received with an absolute-form target and generates one from the
/// target (otherwise the upstream and whatever read the target before us
/// would disagree on the host). A request that has no `Host` then (HTTP/1.0
/// may omit it) gets an empty one, as the HTTP/1.1 request sent upstream
/// must have one (RFC 9112 3.2).
fn to_origin_form(parts: &mut http::request::Parts) {
    if let Some(authority) = parts.uri.authority() {
        // `bad_request` let through only http(s) targets without userinfo.
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static(""));
    }
}

fn local_response(
    status: StatusCode,
    body: Bytes,
    request_id: HeaderValue,
    log: Option<PendingLog>,
) -> Response<ProxyBody> {
    let body = match log {
        Some(mut log) => {
            log.entry.status = status;
            ProxyBody::full_logged(body, log)
        }
        None => ProxyBody::full(body),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID, request_id);
    resp
}
