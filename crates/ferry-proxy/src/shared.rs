//! A listener's shared state: the options and routing table in force
//! (each swapped atomically), the workers' listening sockets and hand-off
//! channels, and the counters. Picking an upstream for a request
//! ([`Shared::acquire`]) lives here, next to the table swap it must stay in
//! step with.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, ProxyOptions};
use crate::headers::HeaderView;
use crate::routing::{NoRoute, Routes, RoutingTable};
use crate::stats::HttpStats;
use crate::upstream::{InFlight, Upstream};

/// A connection accepted by another worker, already counted in
/// `Counters::connections`.
pub(crate) type Handoff = tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>;
/// A worker's end of its [`Handoff`] channel.
pub(crate) type HandoffRx = tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>;

/// Counters of a proxy listener (not per revision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl ProxyCounters {
    /// Field-wise sum, saturating: the counters of two data-plane processes
    /// serving the same sockets side by side (during an upgrade), or of one
    /// carried over the restart of another.
    pub fn saturating_add(&self, other: &ProxyCounters) -> ProxyCounters {
        ProxyCounters {
            connections_open: self.connections_open.saturating_add(other.connections_open),
            connections_rejected: self
                .connections_rejected
                .saturating_add(other.connections_rejected),
            rate_limited: self.rate_limited.saturating_add(other.rate_limited),
            upgraded_open: self.upgraded_open.saturating_add(other.upgraded_open),
            access_log_dropped: self
                .access_log_dropped
                .saturating_add(other.access_log_dropped),
        }
    }
}

/// The listener's counters, as the workers update them.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicUsize,
    pub(crate) rejected: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) upgraded: AtomicU64,
    pub(crate) access_log_dropped: Arc<AtomicU64>,
    /// Requests the proxy answered itself before any upstream was chosen
    /// (400, 405, 408, 429, 503), by exact code.
    pub(crate) unrouted: HttpStats,
}

/// A listener's state, shared by its handles and its worker threads.
pub(crate) struct Shared {
    pub(crate) service: String,
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: ArcSwap<Config>,
    routes: ArcSwap<Routes>,
    pub(crate) no_instance_body: Bytes,
    /// One listening socket per worker thread (`SO_REUSEPORT`), each
    /// registered with its worker's runtime; `None` once closed. Only this
    /// process's descriptors: copies held elsewhere stay open.
    listeners: Box<[Mutex<Option<TcpListener>>]>,
    /// Set by `retire` and `stop`: no listener is (re)opened, and every
    /// response from now on says `Connection: close`.
    closing: AtomicBool,
    /// When a retiring listener stops like `stop` (`None`: not retiring).
    /// The workers stop accepting once it is set, and each calls `stop`
    /// when it passes.
    pub(crate) retire_deadline: watch::Sender<Option<Instant>>,
    /// Client connections each worker serves (for balancing).
    pub(crate) worker_conns: Box<[AtomicUsize]>,
    /// Hands an accepted connection to another worker (see `accept::accept`).
    pub(crate) handoff: Box<[Handoff]>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) counters: Counters,
    /// Serve plain requests on the fast path (tests turn it off to run the
    /// same checks on hyper's path).
    pub(crate) fast_path: AtomicBool,
}

impl Counters {
    /// The counters as the public API reports them.
    pub(crate) fn snapshot(&self) -> ProxyCounters {
        ProxyCounters {
            connections_open: self.connections.load(Ordering::Relaxed) as u64,
            connections_rejected: self.rejected.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            upgraded_open: self.upgraded.load(Ordering::Relaxed),
            access_log_dropped: self.access_log_dropped.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// The state of a listener on `local_addr` served by `workers` worker
    /// threads, and the receiving ends of the workers' hand-off channels.
    pub(crate) fn new(
        service: String,
        local_addr: SocketAddr,
        config: Config,
        counters: Counters,
        workers: usize,
    ) -> (Shared, Vec<HandoffRx>) {
        let no_instance_body = Bytes::from(format!("no ready instance for service {service}\n"));
        let (handoff, handoff_rx): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let shared = Shared {
            service,
            local_addr,
            config: ArcSwap::from_pointee(config),
            routes: ArcSwap::from_pointee(Routes::new(Arc::new(RoutingTable::default()))),
            no_instance_body,
            listeners: (0..workers).map(|_| Mutex::new(None)).collect(),
            closing: AtomicBool::new(false),
            retire_deadline: watch::Sender::new(None),
            worker_conns: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            handoff: handoff.into(),
            shutdown: watch::Sender::new(false),
            counters,
            fast_path: AtomicBool::new(true),
        };
        (shared, handoff_rx)
    }

    /// Replace the routing table in one atomic swap (see
    /// [`ProxyHandle::set_routes`](crate::ProxyHandle::set_routes)).
    pub(crate) fn set_routes(&self, table: RoutingTable) {
        self.routes.store(Arc::new(Routes::new(Arc::new(table))));
        // Pairs with the fence in `acquire` (see there).
        fence(Ordering::SeqCst);
    }

    /// The current routing table.
    pub(crate) fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.routes.load().table)
    }

    /// Apply new options to the connections accepted from now on; an error
    /// (the access log cannot be opened) leaves the old ones in force.
    pub(crate) fn set_options(&self, options: ProxyOptions) -> io::Result<()> {
        if self.config.load().options == options {
            return Ok(());
        }
        let config = Config::new(&self.service, options, &self.counters.access_log_dropped)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    fn lock_listener(&self, worker: usize) -> MutexGuard<'_, Option<TcpListener>> {
        self.listeners[worker]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Close this process's descriptors of every listening socket (when
    /// this returns; copies held by other processes stay open) and mark the
    /// listener closing.
    fn close_listeners(&self) {
        // Set before taking the sockets: `listen` checks it under the same
        // locks, so no socket is stored after this returns.
        self.closing.store(true, Ordering::SeqCst);
        for worker in 0..self.listeners.len() {
            let listener = self.lock_listener(worker).take();
            drop(listener);
        }
    }

    /// Close every listening socket (when this returns) and tell the workers
    /// to stop: idle connections close, in-flight requests finish.
    pub(crate) fn stop(&self) {
        self.close_listeners();
        self.shutdown.send_replace(true);
    }

    /// Stop accepting now (see `close_listeners`) and let open connections
    /// finish with `Connection: close`; at `grace` from now (or an earlier
    /// deadline set before), the workers call `stop`.
    pub(crate) fn retire(&self, grace: Duration) {
        self.close_listeners();
        let deadline = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        self.retire_deadline
            .send_if_modified(|current| match current {
                Some(earlier) if *earlier <= deadline => false,
                _ => {
                    *current = Some(deadline);
                    true
                }
            });
    }

    /// Retiring or stopped: responses say `Connection: close` and their
    /// connection closes after them. One relaxed load, read per response.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Register `listener` as worker `worker`'s socket (inside its
    /// runtime); it is dropped at once if the listener is already closing.
    pub(crate) fn listen(&self, worker: usize, listener: std::net::TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let mut slot = self.lock_listener(worker);
        if !self.closing.load(Ordering::SeqCst) {
            *slot = Some(listener);
        }
        Ok(())
    }

    /// Accept one connection on `worker`'s socket; `Ok(None)` once the
    /// listener has been closed.
    pub(crate) fn poll_accept(
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
    /// request in its `in_flight`. `Err` if no candidate is left, or the
    /// request is pinned to a revision it cannot have.
    ///
    /// Drain soundness: the count is incremented *before* re-reading the
    /// table. If the re-read still shows a table containing the upstream, the
    /// swap that removes it comes later in the SeqCst order, so the daemon's
    /// subsequent `in_flight()` read sees our increment. Otherwise we undo it
    /// and pick again from the newer table.
    pub(crate) fn acquire<H: HeaderView + ?Sized>(
        &self,
        headers: &H,
        tried: &[Arc<Upstream>],
    ) -> Result<InFlight, NoRoute> {
        loop {
            let routes = self.routes.load();
            let chosen = routes.pick(headers, tried)?;
            let in_flight = InFlight::begin(chosen);
            fence(Ordering::SeqCst);
            let now = self.routes.load();
            if Arc::ptr_eq(&*now, &*routes)
                || now.upstreams().iter().any(|u| Arc::ptr_eq(u, chosen))
            {
                return Ok(in_flight);
            }
            drop(in_flight);
        }
    }

    /// Give up on `current`'s upstream (added to `tried`) and acquire the
    /// next untried one; `Err` hands `current` back when none is left.
    pub(crate) fn next_upstream<H: HeaderView + ?Sized>(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<Upstream>>,
        headers: &H,
    ) -> Result<InFlight, InFlight> {
        tried.push(Arc::clone(current.upstream()));
        match self.acquire(headers, tried) {
            Ok(next) => Ok(next),
            Err(_) => Err(current),
        }
    }
}
