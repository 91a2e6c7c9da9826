//! Ferry's data plane: an HTTP/1.1 reverse proxy in front of a service's
//! local instances, with atomic routing swaps and per-revision metrics.
//!
//! The daemon builds one [`Upstream`] per instance (kept across swaps), hands
//! the set that should take traffic to [`ProxyHandle::set_routes`], and drains
//! an instance by swapping it out and waiting for [`Upstream::in_flight`] to
//! reach zero before calling [`Upstream::close_idle`] and stopping it.
#![forbid(unsafe_code)]

mod body;
mod headers;
mod proxy;
mod stats;
mod upstream;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use stats::{
    LATENCY_BUCKETS_SECONDS, PROMETHEUS_HELP, RevisionStats, StatsSnapshot, render_prometheus_all,
};
pub use upstream::Upstream;

use upstream::InFlight;

/// Tunables of a proxy listener.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Timeout for establishing a TCP connection to an upstream. Default 5s.
    pub connect_timeout: Duration,
    /// Time the upstream has to send response headers once the request
    /// (including its body) has been sent. Default 60s.
    pub response_header_timeout: Duration,
    /// How long a client keep-alive connection may sit idle (and how long a
    /// client may take to send a request head). Default 90s.
    pub idle_timeout: Duration,
    /// Maximum idle pooled connections kept per upstream. Default 64.
    pub max_idle_per_upstream: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_upstream: 64,
        }
    }
}

/// The set of upstreams that take traffic, in round-robin order.
#[derive(Clone, Default, Debug)]
pub struct RoutingTable {
    /// Upstreams taking traffic.
    pub upstreams: Vec<Arc<Upstream>>,
}

/// A running proxy listener. Cheap to clone; all clones control the same proxy.
/// The proxy runs until [`ProxyHandle::shutdown`] (dropping the handles does
/// not stop it) or until its tokio runtime shuts down.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    service: String,
    local_addr: SocketAddr,
    options: ProxyOptions,
    routes: ArcSwap<RoutingTable>,
    next: AtomicUsize,
    no_instance_body: Bytes,
    listener: Mutex<Option<TcpListener>>,
    shutdown: watch::Sender<bool>,
}

impl ProxyHandle {
    /// Bind `addr` now (an error if it is in use) and spawn the accept loop
    /// on the current tokio runtime. The routing table starts empty.
    pub async fn bind(
        service: String,
        addr: SocketAddr,
        options: ProxyOptions,
    ) -> io::Result<ProxyHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let no_instance_body = Bytes::from(format!("no ready instance for service {service}\n"));
        let shared = Arc::new(Shared {
            service,
            local_addr,
            options,
            routes: ArcSwap::from_pointee(RoutingTable::default()),
            next: AtomicUsize::new(0),
            no_instance_body,
            listener: Mutex::new(Some(listener)),
            shutdown: watch::Sender::new(false),
        });
        tokio::spawn(proxy::accept_loop(Arc::clone(&shared)));
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
        self.shared.routes.store(Arc::new(table));
        // Pairs with the fence in `Shared::acquire` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.shared.routes.load_full()
    }

    /// Stop accepting: the listening socket is closed when this returns.
    /// Open connections finish their in-flight request and then close; no new
    /// requests are read from them.
    pub fn shutdown(&self) {
        let listener = self.shared.lock_listener().take();
        drop(listener);
        self.shared.shutdown.send_replace(true);
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
    fn lock_listener(&self) -> std::sync::MutexGuard<'_, Option<TcpListener>> {
        self.listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accept one connection; `Ok(None)` once the listener has been closed.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<(TcpStream, SocketAddr)>>> {
        match self.lock_listener().as_ref() {
            None => Poll::Ready(Ok(None)),
            Some(listener) => listener.poll_accept(cx).map(|res| res.map(Some)),
        }
    }

    /// Pick the next upstream round-robin, skipping `tried`, and count the
    /// request in its `in_flight`. `None` if no candidate is left.
    ///
    /// Drain soundness: the count is incremented *before* re-reading the
    /// table. If the re-read still shows a table containing the upstream, the
    /// swap that removes it comes later in the SeqCst order, so the daemon's
    /// subsequent `in_flight()` read sees our increment. Otherwise we undo it
    /// and pick again from the newer table.
    pub(crate) fn acquire(&self, tried: &[Arc<Upstream>]) -> Option<InFlight> {
        loop {
            let table = self.routes.load();
            let upstreams = &table.upstreams;
            let len = upstreams.len();
            if len == 0 {
                return None;
            }
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let chosen = (0..len)
                .map(|i| &upstreams[(start.wrapping_add(i)) % len])
                .find(|u| !tried.iter().any(|t| Arc::ptr_eq(t, u)))?;
            let in_flight = InFlight::begin(chosen);
            std::sync::atomic::fence(Ordering::SeqCst);
            let now = self.routes.load();
            if Arc::ptr_eq(&*now, &*table) || now.upstreams.iter().any(|u| Arc::ptr_eq(u, chosen)) {
                return Some(in_flight);
            }
            drop(in_flight);
        }
    }
}
