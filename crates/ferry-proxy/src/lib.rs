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

mod accept;
mod access_log;
mod admit;
mod body;
mod client;
mod config;
mod failover;
mod fast;
mod headers;
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

pub use access_log::AccessLogOptions;
pub use config::ProxyOptions;
pub use net::IpNet;
pub use rate_limit::{RateLimitKey, RateLimitOptions};
pub use routing::{RoutingTable, Split, Stickiness, bucket_of};
pub use shared::ProxyCounters;
pub use stats::{
    LATENCY_BUCKETS_SECONDS, PROMETHEUS_HELP, RevisionStats, StatsSnapshot, render_prometheus_all,
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
    /// wake-ups on the request path.
    pub async fn bind_with_workers(
        service: String,
        addr: SocketAddr,
        options: ProxyOptions,
        workers: usize,
    ) -> io::Result<ProxyHandle> {
        let workers = workers.max(1);
        let counters = Counters::default();
        let config = Config::new(&service, options, &counters.access_log_dropped)?;
        // The workers' reuse-port sockets would silently share the port with
        // another reuse-port listener of the same user: bind it exclusively
        // first, so that an address in use is an error as it always was.
        let local_addr = std::net::TcpListener::bind(addr)?.local_addr()?;
        let (shared, handoffs) = Shared::new(service, local_addr, config, counters, workers);
        let shared = Arc::new(shared);
        accept::start_workers(&shared, handoffs).await?;
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
