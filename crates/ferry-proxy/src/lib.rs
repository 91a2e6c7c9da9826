//! Ferry's data plane: an HTTP/1.1 reverse proxy in front of a service's
//! local instances, with atomic routing swaps, weighted (canary) routing,
//! protocol upgrades (WebSocket), per-client rate limits, an access log and
//! per-revision metrics.
//!
//! The daemon builds one [`Upstream`] per instance (kept across swaps), hands
//! the set that should take traffic to [`ProxyHandle::set_routes`], and drains
//! an instance by swapping it out and waiting for [`Upstream::in_flight`] to
//! reach zero (or its drain timeout) before calling [`Upstream::close_all`]
//! and stopping it.
#![forbid(unsafe_code)]

mod access_log;
mod body;
mod fast;
mod headers;
mod net;
mod proxy;
mod random;
mod rate_limit;
mod routing;
mod stats;
mod upload;
mod upstream;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};

pub use access_log::AccessLogOptions;
pub use net::IpNet;
pub use rate_limit::{RateLimitKey, RateLimitOptions};
pub use routing::{Split, Stickiness, bucket_of};
pub use stats::{
    LATENCY_BUCKETS_SECONDS, PROMETHEUS_HELP, RevisionStats, StatsSnapshot, render_prometheus_all,
};
pub use upstream::Upstream;

use access_log::AccessLog;
use rate_limit::RateLimiter;
use routing::Routes;
use upstream::InFlight;

/// Tunables of a proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyOptions {
    /// Timeout for establishing a TCP connection to an upstream. Default 5s.
    pub connect_timeout: Duration,
    /// Time the upstream has to send response headers once the request
    /// (including its body) has been sent. Default 60s.
    pub response_header_timeout: Duration,
    /// How long a client keep-alive connection may sit idle between requests;
    /// a request head must also arrive within it (a slow client sending its
    /// headers byte by byte is cut off). Default 60s.
    pub idle_timeout: Duration,
    /// Longest pause allowed while reading a client's request body; beyond
    /// it the request fails with 408. Default 60s.
    pub client_body_timeout: Duration,
    /// Longest a write to a client may stall (the client stopped reading);
    /// beyond it the connection is closed. Default 60s.
    pub send_timeout: Duration,
    /// Client connections open at once (upgraded ones included); more are
    /// answered `503` and closed. Default 10 000.
    pub max_connections: usize,
    /// Maximum idle pooled connections kept per upstream by each worker
    /// thread (each worker has its own pool, as each nginx worker process
    /// has). Default 64.
    pub max_idle_per_upstream: usize,
    /// Load balancers in front of the proxy. A connection from one of these
    /// may send a PROXY protocol header (if `proxy_protocol`) and its
    /// `X-Forwarded-For` is trusted: appended to, and used to find the
    /// client's address. From any other peer, `X-Forwarded-For` is replaced
    /// by the peer's address. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// Connections from `trusted_proxies` must start with a PROXY protocol
    /// (v1 or v2) header giving the client's address. Default false.
    pub proxy_protocol: bool,
    /// JSON-lines access log; `None` (default) disables it.
    pub access_log: Option<AccessLogOptions>,
    /// Per-client rate limit; `None` (default) disables it.
    pub rate_limit: Option<RateLimitOptions>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_idle_per_upstream: 64,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            access_log: None,
            rate_limit: None,
        }
    }
}

/// The set of upstreams that take traffic, and how traffic splits between
/// their revisions.
#[derive(Clone, Default, Debug)]
pub struct RoutingTable {
    /// Upstreams taking traffic.
    pub upstreams: Vec<Arc<Upstream>>,
    /// `None`: plain round-robin over all upstreams.
    pub split: Option<Split>,
}

/// Counters of a proxy listener (not per revision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// Client connections open now (upgraded ones included).
    pub connections_open: u64,
    /// Connections answered 503 because `max_connections` were open.
    pub connections_rejected: u64,
    /// Requests answered 429 by the rate limit.
    pub rate_limited: u64,
    /// Upgraded connections (e.g. WebSocket) open now.
    pub upgraded_open: u64,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: u64,
}

/// A running proxy listener. Cheap to clone; all clones control the same proxy.
/// The proxy runs until [`ProxyHandle::shutdown`] (dropping the handles does
/// not stop it) or until its tokio runtime shuts down.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

/// The options in force plus what is built from them. Replaced as a whole
/// by [`ProxyHandle::set_options`]; each client connection keeps the one it
/// was accepted under.
pub(crate) struct Config {
    pub(crate) options: ProxyOptions,
    pub(crate) builder: http1::Builder,
    pub(crate) limiter: Option<RateLimiter>,
    pub(crate) log: Option<AccessLog>,
}

impl Config {
    fn new(service: &str, options: ProxyOptions, counters: &Counters) -> io::Result<Config> {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head, so it
            // is both the keep-alive idle timeout and the header read timeout.
            .header_read_timeout(options.idle_timeout)
            .keep_alive(true);
        let limiter = options.rate_limit.clone().map(RateLimiter::new);
        let log = match &options.access_log {
            Some(log) => Some(AccessLog::start(
                log,
                service,
                Arc::clone(&counters.access_log_dropped),
            )?),
            None => None,
        };
        Ok(Config {
            options,
            builder,
            limiter,
            log,
        })
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicUsize,
    pub(crate) rejected: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) upgraded: AtomicU64,
    pub(crate) access_log_dropped: Arc<AtomicU64>,
}

pub(crate) struct Shared {
    pub(crate) service: String,
    local_addr: SocketAddr,
    pub(crate) config: ArcSwap<Config>,
    routes: ArcSwap<Routes>,
    pub(crate) no_instance_body: Bytes,
    /// One listening socket per worker thread (`SO_REUSEPORT`), each
    /// registered with its worker's runtime; `None` once closed.
    listeners: Box<[Mutex<Option<TcpListener>>]>,
    /// Client connections each worker serves (for balancing).
    pub(crate) worker_conns: Box<[AtomicUsize]>,
    /// Hands an accepted connection to another worker (see `proxy::accept`).
    pub(crate) handoff: Box<[proxy::Handoff]>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) counters: Counters,
    /// Serve plain requests on the fast path (tests turn it off to run the
    /// same checks on hyper's path).
    pub(crate) fast_path: std::sync::atomic::AtomicBool,
}

impl ProxyHandle {
    /// Bind `addr` now (an error if it is in use, or if the access log cannot
    /// be opened) and start serving on [`default_workers`] worker threads
    /// (see [`ProxyHandle::bind_with_workers`]). The routing table starts
    /// empty. Must be called inside a tokio runtime: the proxy shuts down
    /// (as by [`ProxyHandle::shutdown`]) when that runtime does.
    pub async fn bind(
        service: String,
        addr: SocketAddr,
        options: ProxyOptions,
    ) -> io::Result<ProxyHandle> {
        Self::bind_with_workers(service, addr, options, default_workers()).await
    }

    /// [`ProxyHandle::bind`] with `workers` worker threads (at least 1).
    ///
    /// Each worker thread runs its own single-threaded tokio runtime with its
    /// own listening socket on `addr` (`SO_REUSEPORT`: the kernel spreads new
    /// connections over them) and its own share of every upstream's
    /// keep-alive pool, so a client connection, its requests and the upstream
    /// connections serving them all stay on one thread: no cross-thread
    /// wake-ups on the request path.
    pub async fn bind_with_workers(
        service: String,
        addr: SocketAddr,
        options: ProxyOptions,
        workers: usize,
    ) -> io::Result<ProxyHandle> {
        let workers = workers.max(1);
        let counters = Counters::default();
        let config = Config::new(&service, options, &counters)?;
        // The reuse-port sockets below would silently share the port with
        // another reuse-port listener of the same user: bind it exclusively
        // first, so that an address in use is an error as it always was.
        let local_addr = std::net::TcpListener::bind(addr)?.local_addr()?;
        let no_instance_body = Bytes::from(format!("no ready instance for service {service}\n"));
        let (handoff, mut handoff_rx): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let shared = Arc::new(Shared {
            service,
            local_addr,
            config: ArcSwap::from_pointee(config),
            routes: ArcSwap::from_pointee(Routes::new(Arc::new(RoutingTable::default()))),
            no_instance_body,
            listeners: (0..workers).map(|_| Mutex::new(None)).collect(),
            worker_conns: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            handoff: handoff.into(),
            shutdown: watch::Sender::new(false),
            counters,
            fast_path: std::sync::atomic::AtomicBool::new(true),
        });
        let mut started = Vec::with_capacity(workers);
        for (index, handoff_rx) in handoff_rx.drain(..).enumerate() {
            let (ready_tx, ready_rx) = oneshot::channel();
            let worker_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-proxy-{index}"))
                .spawn(move || proxy::run_worker(worker_shared, index, handoff_rx, ready_tx));
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
        // Stop when the runtime that bound the proxy shuts down, as when the
        // proxy ran on it.
        let guard = StopOnDrop(Arc::clone(&shared));
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        Ok(ProxyHandle { shared })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The service name given at bind.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Replace the routing table in one atomic swap. Requests already in
    /// flight keep their upstream. When this returns, any request that may
    /// still use an upstream absent from `table` is counted in that
    /// upstream's [`Upstream::in_flight`].
    pub fn set_routes(&self, table: RoutingTable) {
        self.shared
            .routes
            .store(Arc::new(Routes::new(Arc::new(table))));
        // Pairs with the fence in `Shared::acquire` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.shared.routes.load().table)
    }

    /// Apply new options (e.g. a new revision's `[proxy]` settings). Client
    /// connections accepted from now on use them; open ones keep theirs.
    /// Rate-limit state starts afresh when the options change. An error
    /// (the access log cannot be opened) leaves the old options in force.
    pub fn set_options(&self, options: ProxyOptions) -> io::Result<()> {
        if self.shared.config.load().options == options {
            return Ok(());
        }
        let config = Config::new(&self.shared.service, options, &self.shared.counters)?;
        self.shared.config.store(Arc::new(config));
        Ok(())
    }

    /// The options in force.
    pub fn options(&self) -> ProxyOptions {
        self.shared.config.load().options.clone()
    }

    /// Serve new connections entirely with hyper (`false`) or with the fast
    /// path for plain requests (`true`, the default). For tests that check
    /// both paths behave the same.
    #[doc(hidden)]
    pub fn set_fast_path(&self, enabled: bool) {
        self.shared.fast_path.store(enabled, Ordering::Relaxed);
    }

    /// The listener's counters.
    pub fn counters(&self) -> ProxyCounters {
        let c = &self.shared.counters;
        ProxyCounters {
            connections_open: c.connections.load(Ordering::Relaxed) as u64,
            connections_rejected: c.rejected.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            upgraded_open: c.upgraded.load(Ordering::Relaxed),
            access_log_dropped: c.access_log_dropped.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting: the listening socket is closed when this returns.
    /// Open connections finish their in-flight request and then close; no new
    /// requests are read from them. Upgraded connections are not affected
    /// (close them with [`Upstream::close_all`]).
    pub fn shutdown(&self) {
        self.shared.stop();
    }
}

/// Worker threads [`ProxyHandle::bind`] starts: the machine's available
/// parallelism.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("service", &self.shared.service)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock_listener(&self, worker: usize) -> std::sync::MutexGuard<'_, Option<TcpListener>> {
        self.listeners[worker]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Close every listening socket (when this returns) and tell the workers
    /// to stop.
    pub(crate) fn stop(&self) {
        for worker in 0..self.listeners.len() {
            let listener = self.lock_listener(worker).take();
            drop(listener);
        }
        self.shutdown.send_replace(true);
    }

    /// Open worker `worker`'s listening socket (inside its runtime).
    pub(crate) fn listen(&self, worker: usize) -> io::Result<()> {
        let socket = match self.local_addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener (Linux), so
        // a connection costs no setsockopt of its own.
        socket.set_nodelay(true)?;
        socket.bind(self.local_addr)?;
        let listener = socket.listen(1024)?;
        let mut slot = self.lock_listener(worker);
        if !*self.shutdown.borrow() {
            *slot = Some(listener);
        }
        Ok(())
    }

    /// Accept one connection on `worker`'s socket; `Ok(None)` once the
    /// listener has been closed.
    fn poll_accept(
        &self,
        worker: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<(TcpStream, SocketAddr)>>> {
        match self.lock_listener(worker).as_ref() {
            None => Poll::Ready(Ok(None)),
            Some(listener) => listener.poll_accept(cx).map(|res| res.map(Some)),
        }
    }

    /// Pick an upstream for a request with `headers` (weighted split, forced
    /// revision, stickiness, round-robin), skipping `tried`, and count the
    /// request in its `in_flight`. `None` if no candidate is left.
    ///
    /// Drain soundness: the count is incremented *before* re-reading the
    /// table. If the re-read still shows a table containing the upstream, the
    /// swap that removes it comes later in the SeqCst order, so the daemon's
    /// subsequent `in_flight()` read sees our increment. Otherwise we undo it
    /// and pick again from the newer table.
    pub(crate) fn acquire<H: headers::HeaderView + ?Sized>(
        &self,
        headers: &H,
        tried: &[Arc<Upstream>],
    ) -> Option<InFlight> {
        loop {
            let routes = self.routes.load();
            let chosen = routes.pick(headers, tried)?;
            let in_flight = InFlight::begin(chosen);
            std::sync::atomic::fence(Ordering::SeqCst);
            let now = self.routes.load();
            if Arc::ptr_eq(&*now, &*routes)
                || now.upstreams().iter().any(|u| Arc::ptr_eq(u, chosen))
            {
                return Some(in_flight);
            }
            drop(in_flight);
        }
    }

    /// Give up on `current`'s upstream (added to `tried`) and acquire the
    /// next untried one; `Err` hands `current` back when none is left.
    pub(crate) fn next_upstream<H: headers::HeaderView + ?Sized>(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<Upstream>>,
        headers: &H,
    ) -> Result<InFlight, InFlight> {
        tried.push(Arc::clone(current.upstream()));
        match self.acquire(headers, tried) {
            Some(next) => Ok(next),
            None => Err(current),
        }
    }
}
