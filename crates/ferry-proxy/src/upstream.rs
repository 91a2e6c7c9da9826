//! Upstream instances, their keep-alive connection pools, in-flight counts
//! and passive health (down for a cooldown after a failed connect).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::stats::{HttpStats, Observation, RevisionStats};
use crate::upload::ReqBody;

/// One upstream instance. The daemon creates it once per instance and keeps
/// the same `Arc` across routing-table swaps, so its keep-alive connection
/// pool and in-flight counter survive swaps.
pub struct Upstream {
    instance_id: String,
    instance: Arc<str>,
    revision: u64,
    addr: SocketAddr,
    stats: Arc<RevisionStats>,
    /// This instance's own counters (exact codes, latency), kept by the
    /// caller across upstreams of the same instance.
    http: Arc<HttpStats>,
    revision_header: HeaderValue,
    in_flight: AtomicUsize,
    /// Idle keep-alive connections, one pool per worker thread (by
    /// `worker_shard`): a connection's task runs on the worker that opened
    /// it, so only that worker reuses it. Each keeps at most
    /// `max_idle_per_upstream`, as nginx's `keepalive` does per worker.
    idle: Box<[Mutex<Vec<SendRequest<ReqBody>>>]>,
    /// Idle keep-alive connections of the fast path (`fast/`), which owns
    /// its upstream sockets directly; same sharding and limit.
    raw_idle: Box<[Mutex<Vec<RawConn>>]>,
    /// Bumped by `close_all`: upgraded connections to this upstream close.
    close: watch::Sender<u64>,
    /// Passive health: until when (`health_clock` nanoseconds) the upstream
    /// is down after a failed connect; 0 when no failure is on record.
    down_until: AtomicU64,
    /// Connect failures since the last successful exchange, one per
    /// cooldown (they set its length).
    failures: AtomicU32,
}

/// Cooldown after the first connect failure; it doubles with each further
/// one, up to [`MAX_COOLDOWN`].
const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest cooldown.
const MAX_COOLDOWN: Duration = Duration::from_secs(30);

/// The cooldown after the `failures`-th consecutive failure (from 1).
fn cooldown(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_COOLDOWN * (1u32 << doublings)).min(MAX_COOLDOWN)
}

/// Nanoseconds on a monotonic clock shared by every upstream (from the
/// first call), always above 0.
fn health_clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl Upstream {
    /// A new upstream with an empty connection pool and fresh instance
    /// counters.
    pub fn new(
        instance_id: String,
        revision: u64,
        addr: SocketAddr,
        stats: Arc<RevisionStats>,
    ) -> Arc<Self> {
        Self::with_http_stats(instance_id, revision, addr, stats, HttpStats::new())
    }

    /// A new upstream counting its requests in `http` too (the same `Arc`
    /// for the same instance across routing tables, so that its counters
    /// never reset while it stays).
    pub fn with_http_stats(
        instance_id: String,
        revision: u64,
        addr: SocketAddr,
        stats: Arc<RevisionStats>,
        http: Arc<HttpStats>,
    ) -> Arc<Self> {
        Arc::new(Upstream {
            instance: Arc::from(instance_id.as_str()),
            instance_id,
            revision,
            addr,
            stats,
            http,
            revision_header: HeaderValue::from(revision),
            in_flight: AtomicUsize::new(0),
            idle: (0..POOL_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            raw_idle: (0..POOL_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            close: watch::Sender::new(0),
            down_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        })
    }

    /// The instance id given at creation.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The revision this instance runs.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The revision's shared metrics.
    pub fn stats(&self) -> &Arc<RevisionStats> {
        &self.stats
    }

    /// This instance's own counters.
    pub fn http_stats(&self) -> &Arc<HttpStats> {
        &self.http
    }

    /// Count one response of this instance, in its revision's stats and
    /// its own (the latency's bucket is found once).
    #[inline]
    pub(crate) fn record(&self, status: http::StatusCode, latency: Duration) {
        let obs = Observation::of(latency);
        self.stats.record_observation(status, obs);
        self.http.record_observation(status, obs);
    }

    /// Count a 502/504 the proxy answered because this instance failed.
    pub(crate) fn record_upstream_error(&self, status: http::StatusCode, latency: Duration) {
        let obs = Observation::of(latency);
        self.stats.record_upstream_error_observation(status, obs);
        self.http.record_observation(status, obs);
    }

    /// Requests currently forwarded to this upstream whose response body has
    /// not finished (or been dropped), plus upgraded (e.g. WebSocket)
    /// connections still open. Used to drain.
    ///
    /// Once [`ProxyHandle::set_routes`](crate::ProxyHandle::set_routes) has
    /// returned, every request that could still use an upstream missing from
    /// the new table is already counted here, so "swap, then wait for 0" is a
    /// sound drain.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Passive health: whether the proxy considers the instance down. A
    /// failed connect (refused, reset, timed out) marks it down for a
    /// cooldown of 1 s, doubling with each further failure up to 30 s; any
    /// successful exchange clears it. While down, routing prefers the other
    /// candidates; a request with no other candidate still tries it.
    #[inline]
    pub fn is_down(&self) -> bool {
        // One relaxed load; the clock is read only for an upstream that
        // failed since its last success.
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && health_clock() < until
    }

    /// Note a failed connect: down for the next cooldown, unless already
    /// down (requests that tried it anyway do not lengthen the cooldown).
    pub(crate) fn connect_failed(&self) {
        self.connect_failed_at(health_clock());
    }

    fn connect_failed_at(&self, now: u64) {
        let until = self.down_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            return;
        }
        let failures = self.failures.load(Ordering::Relaxed).saturating_add(1);
        let cooldown = u64::try_from(cooldown(failures).as_nanos()).unwrap_or(u64::MAX);
        let down = now.saturating_add(cooldown);
        // One failure per cooldown, however many requests saw it at once.
        if self
            .down_until
            .compare_exchange(until, down, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.failures.store(failures, Ordering::Relaxed);
        }
    }

    /// Note a successful exchange (a response head arrived): clears any
    /// failure on record. One relaxed load when there is none.
    #[inline]
    pub(crate) fn exchange_succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Number of idle pooled connections (open or not yet noticed closed).
    pub fn idle_connections(&self) -> usize {
        (0..self.idle.len())
            .map(|i| self.pool(i).len() + self.raw_pool(i).len())
            .sum()
    }

    /// Close all idle pooled connections (called after draining, before the
    /// instance is stopped).
    pub fn close_idle(&self) {
        for shard in 0..self.idle.len() {
            let idle = std::mem::take(&mut *self.pool(shard));
            // Dropping a `SendRequest` makes its connection task close the socket.
            drop(idle);
            let raw = std::mem::take(&mut *self.raw_pool(shard));
            drop(raw);
        }
    }

    /// Close everything this proxy holds open to the instance: idle pooled
    /// connections and upgraded (e.g. WebSocket) connections, whose clients
    /// are disconnected. Called when draining is over (all requests done, or
    /// `drain_timeout` passed), before the instance is stopped. Requests still
    /// waiting for a response are not cut; stopping the instance ends them.
    pub fn close_all(&self) {
        self.close_idle();
        self.close.send_modify(|generation| *generation += 1);
    }

    /// Upgraded connections currently open to this upstream.
    pub fn upgraded_connections(&self) -> usize {
        self.close.receiver_count()
    }

    /// A receiver that changes when `close_all` is called.
    pub(crate) fn close_signal(&self) -> watch::Receiver<u64> {
        self.close.subscribe()
    }

    pub(crate) fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    pub(crate) fn revision_header(&self) -> &HeaderValue {
        &self.revision_header
    }

    fn pool(&self, shard: usize) -> MutexGuard<'_, Vec<SendRequest<ReqBody>>> {
        self.idle[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn raw_pool(&self, shard: usize) -> MutexGuard<'_, Vec<RawConn>> {
        self.raw_idle[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Take an idle fast-path connection opened by this thread that the
    /// upstream has not closed (as far as the reactor knows: no syscall
    /// unless the socket turned readable while idle).
    pub(crate) fn checkout_raw(&self) -> Option<TcpStream> {
        let owner = thread_owner();
        let shard = worker_shard();
        loop {
            let conn = {
                let mut pool = self.raw_pool(shard);
                let at = pool.iter().rposition(|c| c.owner == owner)?;
                pool.swap_remove(at)
            };
            if still_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
    }

    /// Return a fast-path connection after a complete exchange.
    pub(crate) fn release_raw(&self, stream: TcpStream, max_idle: usize) {
        let mut pool = self.raw_pool(worker_shard());
        if pool.len() < max_idle {
            pool.push(RawConn {
                owner: thread_owner(),
                stream,
            });
        }
    }

    /// Open a new TCP connection (`TCP_NODELAY`), within `timeout`: a
    /// fast-path connection as is, or the socket under a hyper connection.
    pub(crate) async fn connect_raw(&self, timeout: Duration) -> io::Result<TcpStream> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Take a pooled connection of this worker that is ready for a new request.
    pub(crate) fn checkout(&self) -> Option<SendRequest<ReqBody>> {
        let shard = worker_shard();
        let mut not_yet_ready = None;
        let found = loop {
            // The lock is held for the pop only; closed connections are
            // dropped outside it.
            let Some(sender) = self.pool(shard).pop() else {
                break None;
            };
            if sender.is_ready() {
                break Some(sender);
            }
            if sender.is_closed() {
                continue;
            }
            // Its previous response just finished but the connection task has
            // not caught up yet (or the request body is still being written):
            // keep it for later rather than waiting on it now.
            if not_yet_ready.is_none() {
                not_yet_ready = Some(sender);
            }
        };
        if let Some(sender) = not_yet_ready {
            self.pool(shard).push(sender);
        }
        found
    }

    /// Return a connection after its response was read completely.
    pub(crate) fn release(&self, sender: SendRequest<ReqBody>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut pool = self.pool(worker_shard());
        if pool.len() < max_idle {
            pool.push(sender);
        }
    }

    /// Open a new connection and spawn its connection task.
    pub(crate) async fn connect(&self, timeout: Duration) -> io::Result<SendRequest<ReqBody>> {
        let stream = self.connect_raw(timeout).await?;
        let (sender, conn) = Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %err, "upstream connection ended with error");
            }
        });
        Ok(sender)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("instance_id", &self.instance_id)
            .field("revision", &self.revision)
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .field("down", &self.is_down())
            .finish_non_exhaustive()
    }
}

/// Pools per upstream; worker threads beyond this share them (still
/// correct, just with cross-thread wake-ups).
const POOL_SHARDS: usize = 32;

static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WORKER_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Mark the current thread as a proxy worker with its own pool shard.
pub(crate) fn enter_worker() {
    let shard = NEXT_WORKER.fetch_add(1, Ordering::Relaxed) % POOL_SHARDS;
    WORKER_SHARD.with(|s| s.set(shard));
}

fn worker_shard() -> usize {
    WORKER_SHARD.with(std::cell::Cell::get)
}

/// An idle fast-path connection and the thread whose runtime it is
/// registered with (only that thread may use it: shards can be shared by
/// threads when there are more than `POOL_SHARDS`).
struct RawConn {
    owner: u64,
    stream: TcpStream,
}

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_OWNER: u64 = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
}

fn thread_owner() -> u64 {
    THREAD_OWNER.with(|o| *o)
}

/// Whether an idle keep-alive connection is still open. An idle socket the
/// reactor has not seen turn readable is (the upstream's FIN or RST would
/// have made it readable); a readable one is checked with a read.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        std::task::Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            // Data on an idle connection is as bad as EOF: it is not ours.
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Counts one request in an upstream's `in_flight` until dropped.
pub(crate) struct InFlight(Arc<Upstream>);

impl InFlight {
    /// Increment the count. The caller must validate the routing table
    /// afterwards (see `Shared::acquire`).
    pub(crate) fn begin(upstream: &Arc<Upstream>) -> Self {
        upstream.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(upstream))
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn up() -> Arc<Upstream> {
        Upstream::new(
            "u".into(),
            1,
            "127.0.0.1:1".parse().unwrap(),
            crate::stats::RevisionStats::new(),
        )
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn cooldowns_double_up_to_thirty_seconds() {
        let lengths: Vec<u64> = (1..=8).map(|n| cooldown(n).as_secs()).collect();
        assert_eq!(lengths, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(cooldown(u32::MAX), MAX_COOLDOWN);
    }

    #[test]
    fn connect_failures_mark_down_and_an_exchange_clears_it() {
        let u = up();
        let down_until = |u: &Upstream| u.down_until.load(Ordering::Relaxed);
        assert!(!u.is_down());
        let t = 100 * SECOND;
        u.connect_failed_at(t);
        assert_eq!(down_until(&u), t + SECOND);
        // Failures seen while down (requests that tried it anyway, or were
        // already connecting) do not lengthen the cooldown.
        u.connect_failed_at(t + SECOND / 2);
        assert_eq!(down_until(&u), t + SECOND);
        // Each failure after a cooldown doubles the next one.
        u.connect_failed_at(t + SECOND);
        assert_eq!(down_until(&u), t + 3 * SECOND);
        u.connect_failed_at(t + 3 * SECOND);
        assert_eq!(down_until(&u), t + 7 * SECOND);
        assert_eq!(u.failures.load(Ordering::Relaxed), 3);
        u.exchange_succeeded();
        assert_eq!((down_until(&u), u.failures.load(Ordering::Relaxed)), (0, 0));
        // Back to the first cooldown.
        u.connect_failed_at(t + 10 * SECOND);
        assert_eq!(down_until(&u), t + 11 * SECOND);
        // Against the real clock.
        let u = up();
        u.connect_failed();
        assert!(u.is_down());
        u.exchange_succeeded();
        assert!(!u.is_down());
    }
}
