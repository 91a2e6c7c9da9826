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
//!
//! The listening sockets can be bound in another process: [`bind_listeners`]
//! binds them there, and [`ProxyHandle::from_listeners`] serves the copies
//! it passed over. Stopping closes only this process's descriptors, so
//! connections queue on the sockets until the next process serves them.
//! [`ProxyHandle::retire`] hands over gracefully: it stops accepting, and
//! every open connection is told `Connection: close` on its next response
//! before it closes (idle ones are closed at the grace deadline);
//! [`ProxyHandle::open_connections`] says when it is over.
//!
//! Failures: a refused or failed connect moves a request to the next
//! untried instance and marks the instance down ([`Upstream::is_down`]) for
//! a cooldown (1 s, doubling up to 30 s; a successful exchange clears it),
//! during which routing prefers the others. A request safe to send twice
//! (body-less GET, HEAD, OPTIONS, TRACE, or with `Idempotency-Key`) that an
//! instance dropped before answering is retried once on another instance;
//! anything else gets `502`.
#![forbid(unsafe_code)]

mod accept;
mod access_log;
mod admit;
mod body;
mod client;
mod config;
mod failover;
mod fast;
mod headers;
mod listen;
mod net;
mod pending_log;
mod proxy;
mod random;
mod rate_limit;
mod routing;
mod shared;
mod stats;
mod upload;
mod upstream;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use access_log::AccessLogOptions;
pub use config::ProxyOptions;
pub use listen::bind_listeners;
pub use net::IpNet;
pub use rate_limit::{RateLimitKey, RateLimitOptions};
pub use routing::{RoutingTable, Split, Stickiness, bucket_of};
pub use shared::ProxyCounters;
pub use stats::{
    HttpSnapshot, HttpStats, LATENCY_BUCKETS_SECONDS, PROMETHEUS_HELP, RevisionStats,
    StatsSnapshot, escape_label_value, render_http_families, render_prometheus_all,
    render_prometheus_snapshots,
};
pub use upstream::Upstream;

use config::Config;
use shared::{Counters, Shared};

/// A running proxy listener. Cheap to clone; all clones control the same proxy.
/// The proxy runs until [`ProxyHandle::shutdown`] (dropping the handles does
/// not stop it) or until its tokio runtime shuts down.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
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
    /// wake-ups on the request path. The same as [`bind_listeners`] followed
    /// by [`ProxyHandle::from_listeners`].
    pub async fn bind_with_workers(
        service: String,
        addr: SocketAddr,
        options: ProxyOptions,
        workers: usize,
    ) -> io::Result<ProxyHandle> {
        let listeners = bind_listeners(addr, workers)?;
        Self::from_listeners(service, listeners, options).await
    }

    /// Serve on listening sockets bound elsewhere (by [`bind_listeners`],
    /// possibly in another process that passed them over): one worker thread
    /// per socket, worker `i` accepting from `listeners[i]`. They must all
    /// listen on the same address, which becomes
    /// [`local_addr`](ProxyHandle::local_addr); they are made non-blocking
    /// (a flag shared with every copy of a socket). An error if `listeners`
    /// is empty or the access log cannot be opened. Must be called inside a
    /// tokio runtime, as [`ProxyHandle::bind`].
    ///
    /// [`shutdown`](ProxyHandle::shutdown) and
    /// [`retire`](ProxyHandle::retire) close only this process's
    /// descriptors: a copy kept elsewhere keeps the socket open, and
    /// connections queue on it for whoever serves it next.
    pub async fn from_listeners(
        service: String,
        listeners: Vec<std::net::TcpListener>,
        options: ProxyOptions,
    ) -> io::Result<ProxyHandle> {
        Self::from_listeners_with_routes(service, listeners, options, RoutingTable::default()).await
    }

    /// [`ProxyHandle::from_listeners`] with `routes` in force from the
    /// first connection accepted: connections that queued on the sockets
    /// while no process served them are routed, not answered `503` for want
    /// of a table.
    pub async fn from_listeners_with_routes(
        service: String,
        listeners: Vec<std::net::TcpListener>,
        options: ProxyOptions,
        routes: RoutingTable,
    ) -> io::Result<ProxyHandle> {
        let Some(first) = listeners.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no listening socket to serve",
            ));
        };
        let local_addr = first.local_addr()?;
        for listener in &listeners[1..] {
            let addr = listener.local_addr()?;
            if addr != local_addr {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("listening sockets on different addresses: {local_addr} and {addr}"),
                ));
            }
        }
        let counters = Counters::default();
        let config = Config::new(&service, options, &counters.access_log_dropped)?;
        let (shared, handoffs) =
            Shared::new(service, local_addr, config, counters, listeners.len());
        shared.set_routes(routes);
        let shared = Arc::new(shared);
        accept::start_workers(&shared, handoffs, listeners).await?;
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
        self.shared.set_routes(table);
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.shared.table()
    }

    /// Apply new options (e.g. a new revision's `[proxy]` settings). Client
    /// connections accepted from now on use them; open ones keep theirs.
    /// Rate-limit state starts afresh when the options change. An error
    /// (the access log cannot be opened) leaves the old options in force.
    pub fn set_options(&self, options: ProxyOptions) -> io::Result<()> {
        self.shared.set_options(options)
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
        self.shared.counters.snapshot()
    }

    /// The requests this proxy answered itself before choosing any
    /// upstream (400, 405, 408, 429, 503), by exact code. Counted for as
    /// long as the listener runs.
    pub fn unrouted_stats(&self) -> HttpSnapshot {
        self.shared.counters.unrouted.snapshot()
    }

    /// Client connections open now, upgraded ones included (as
    /// [`ProxyCounters::connections_open`]). A retired data plane can exit
    /// once this reaches 0.
    pub fn open_connections(&self) -> usize {
        self.shared.counters.connections.load(Ordering::Relaxed)
    }

    /// Stop accepting: this process's listening sockets are closed when this
    /// returns (copies held by other processes stay open). Open connections
    /// finish their in-flight request, with `Connection: close`, and then
    /// close; idle ones close now; no new requests are read from them.
    /// Upgraded connections are not affected (close them with
    /// [`Upstream::close_all`]).
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    /// Finish gracefully, for a data plane being replaced by another on the
    /// same sockets: stop accepting now (this process's listening sockets
    /// are closed when this returns, as by [`shutdown`](ProxyHandle::shutdown)),
    /// and let every open connection end cleanly. A request in flight
    /// completes with `Connection: close`; an idle keep-alive connection
    /// stays open until its next request, which is served with
    /// `Connection: close`, and then closes. So a client is never cut off
    /// while sending a request: it is told to close first.
    ///
    /// Once `grace` has passed, the rest is stopped as by
    /// [`shutdown`](ProxyHandle::shutdown) (idle connections close, requests
    /// in flight finish). Calling it again can only bring that deadline
    /// closer. Watch [`open_connections`](ProxyHandle::open_connections) to
    /// know when everything has ended (upgraded connections end with
    /// [`Upstream::close_all`] or their client).
    pub fn retire(&self, grace: Duration) {
        self.shared.retire(grace);
    }
}

/// Worker threads [`ProxyHandle::bind`] starts: the machine's available
/// parallelism.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Stops the proxy when dropped: a task on the runtime that bound it holds
/// one until that runtime shuts down.
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
