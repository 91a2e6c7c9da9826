//! A bounded HTTP load generator over keep-alive connections.
//!
//! `ferry demo` runs it through the proxy to show that a deploy loses no
//! requests, the integration tests use it to assert zero failed requests
//! and which versions answered, and the `load` validation check judges its
//! throughput, errors and latency percentiles.
//!
//! Each of the `connections` tasks owns ONE persistent HTTP/1.1 connection
//! and sends its requests on it one after the other. A task reconnects only
//! when the server has closed the connection; a reconnect is not a failure,
//! and a request that hyper hands back unsent (the connection closed before
//! it was written) is retried on the new connection. A request that was
//! written and then fails (status other than 2xx, transport error, timeout)
//! is a failure, and so is a request that cannot get a connection at all.
//!
//! Each task counts into its own tally (an uncontended lock and a latency
//! histogram of its own); reports merge the tallies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How many failure descriptions a report keeps.
const MAX_ERRORS: usize = 20;
/// How much of a failed response's body goes into its description.
const ERROR_BODY_BYTES: usize = 100;
/// Pause after a failure that got no response at all (e.g. connection
/// refused), so a task does not spin while nothing listens.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(50);
/// Attempts to send one request when connections keep closing under it.
const SEND_ATTEMPTS: usize = 3;
/// `X-User-Id: user-<n>` cycles through this many users.
const USERS: u64 = 100;

/// What to load and how hard.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send requests (a loopback address).
    pub target: SocketAddr,
    /// Request path (and query), e.g. `"/"`.
    pub path: String,
    /// Request method (`GET`); requests have no body.
    pub method: Method,
    /// Headers added to every request; one named here replaces Ferry's own
    /// (`Host`, `Connection`, `X-User-Id`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Number of concurrent keep-alive connections (one task each).
    pub connections: usize,
    /// Requests per second per connection; `None` (or a value that is not a
    /// positive number) means as fast as the server answers. Connections'
    /// schedules are spread evenly over one period.
    pub rate_per_connection: Option<f64>,
    /// Hard bound: tasks stop after this long even if `stop` is never called.
    pub max_duration: Duration,
    /// Bound on each request, connecting included.
    pub request_timeout: Duration,
    /// Keep one [`Sample`] per request (for benchmarks that need timings).
    pub record_samples: bool,
    /// Open a new connection for every request (`Connection: close`)
    /// instead of keeping one alive: load made of new connections.
    pub close_each: bool,
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// When the answer (or the failure) arrived, since the load started.
    pub at_ms: u64,
    /// The HTTP status; `None` when no answer arrived.
    pub status: Option<u16>,
    /// The `X-Ferry-Revision` that answered, when Ferry's proxy said.
    pub revision: Option<u64>,
}

impl LoadConfig {
    /// `GET /` on `target` with 8 connections, unpaced, for at most 10
    /// minutes, 5 s per request.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            path: "/".to_string(),
            method: Method::GET,
            headers: Vec::new(),
            connections: 8,
            rate_per_connection: None,
            max_duration: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            record_samples: false,
            close_each: false,
        }
    }
}

/// Counters so far.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Requests attempted (live: includes the ones in flight).
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers, transport errors and timeouts.
    pub failed: u64,
    /// 2xx answers by their `X-Version` header (`"?"` when missing).
    pub by_version: BTreeMap<String, u64>,
    /// Every answer (2xx or not) by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Non-2xx answers by their `X-Version` header; transport errors and
    /// answers without the header (e.g. the proxy's own 502) are not here.
    pub failed_by_version: BTreeMap<String, u64>,
    /// The first 20 failure descriptions.
    pub errors: Vec<String>,
    /// Version of the most recent 2xx answer.
    pub last_version: Option<String>,
    /// Complete 4xx answers (also in `failed`).
    pub client_errors: u64,
    /// Complete 5xx answers (also in `failed`).
    pub server_errors: u64,
    /// Requests without a complete answer: no connection, transport errors
    /// (a body cut short included) and timeouts (also in `failed`).
    pub no_response: u64,
    /// Latency of the complete answers, whatever their status.
    pub latency: Latency,
}

/// Latency percentiles, from a log-bucketed histogram: a percentile is
/// the upper end of its bucket (at most 1/32 above the true value, and
/// never above `max`); `max` is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Latency {
    /// How many requests were timed.
    pub count: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// A running load generator; see the module docs.
pub struct LoadGen {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl LoadGen {
    /// Starts `connections` tasks, each with one persistent keep-alive
    /// connection. Requests carry `Connection: keep-alive` and
    /// `X-User-Id: user-<n>` with n cycling 0..100.
    ///
    /// Must be called within a Tokio runtime. Dropping the `LoadGen` stops
    /// the tasks too (after their current request).
    pub fn start(config: LoadConfig) -> LoadGen {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            tallies: (0..config.connections).map(|_| Slot::default()).collect(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let deadline = shared.started + config.max_duration;
        let config = Arc::new(config);
        let tasks = (0..config.connections)
            .map(|index| {
                let worker = Worker {
                    config: config.clone(),
                    shared: shared.clone(),
                    index,
                    stop: stop_rx.clone(),
                    deadline,
                    conn: None,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        LoadGen {
            shared,
            stop_tx,
            tasks,
        }
    }

    /// Every task has ended (after `stop`, or the duration bound).
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    /// Every request so far, when `record_samples` is on, in the order
    /// they finished.
    pub fn samples(&self) -> Vec<Sample> {
        let mut samples = Vec::new();
        for slot in &self.shared.tallies {
            samples.extend_from_slice(&slot.lock().samples);
        }
        samples.sort_by_key(|s| s.at_ms);
        samples
    }

    /// Live counters so far.
    pub fn report(&self) -> LoadReport {
        self.shared.report()
    }

    /// Versions seen in 2xx responses since the last call, and resets that
    /// window.
    pub fn take_window(&self) -> BTreeMap<String, u64> {
        let mut window = BTreeMap::new();
        for slot in &self.shared.tallies {
            for (version, n) in std::mem::take(&mut slot.lock().window) {
                *window.entry(version).or_insert(0) += n;
            }
        }
        window
    }

    /// Stops all tasks (after their current request) and returns the final
    /// report.
    pub async fn stop(self) -> LoadReport {
        let _ = self.stop_tx.send(true);
        self.join().await
    }

    /// Waits for the tasks to stop by themselves at `max_duration` (after
    /// their current request) and returns the final report.
    pub async fn finish(self) -> LoadReport {
        self.join().await
    }

    async fn join(self) -> LoadReport {
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "load generator task failed");
            }
        }
        self.shared.report()
    }
}

struct Shared {
    started: Instant,
    /// One per connection task.
    tallies: Vec<Slot>,
}

/// A task's tally on a cache line of its own: tasks on different cores do
/// not share lines.
#[derive(Default)]
#[repr(align(128))]
struct Slot(Mutex<Tally>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one task counted. `report.errors` and `report.last_version` stay
/// empty here; `errors` and `last_ok` carry them with their time.
#[derive(Default)]
struct Tally {
    report: LoadReport,
    errors: Vec<(Instant, String)>,
    last_ok: Option<Instant>,
    window: BTreeMap<String, u64>,
    samples: Vec<Sample>,
    latency: Histogram,
}

impl Shared {
    fn report(&self) -> LoadReport {
        let mut out = LoadReport::default();
        let mut latency = Histogram::default();
        let mut errors = Vec::new();
        let mut last: Option<(Instant, String)> = None;
        for slot in &self.tallies {
            let tally = slot.lock();
            let r = &tally.report;
            out.sent += r.sent;
            out.ok += r.ok;
            out.failed += r.failed;
            out.client_errors += r.client_errors;
            out.server_errors += r.server_errors;
            out.no_response += r.no_response;
            add_counts(&mut out.by_version, &r.by_version);
            add_counts(&mut out.failed_by_version, &r.failed_by_version);
            for (status, n) in &r.by_status {
                *out.by_status.entry(*status).or_insert(0) += n;
            }
            errors.extend(tally.errors.iter().cloned());
            if let (Some(at), Some(version)) = (tally.last_ok, &r.last_version)
                && last.as_ref().is_none_or(|(t, _)| at > *t)
            {
                last = Some((at, version.clone()));
            }
            latency.merge(&tally.latency);
        }
        errors.sort_by_key(|(at, _)| *at);
        out.errors = errors
            .into_iter()
            .take(MAX_ERRORS)
            .map(|(_, e)| e)
            .collect();
        out.last_version = last.map(|(_, v)| v);
        out.latency = latency.summary();
        out
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, n) in from {
        *into.entry(key.clone()).or_insert(0) += n;
    }
}

/// One more for `key`, allocating only for a key not seen before.
fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

impl Tally {
    /// Counts `outcome`, which took `latency` and ended at `done`; keeps a
    /// sample (timed from `started`) when `keep_sample`.
    fn record(
        &mut self,
        outcome: Outcome,
        done: Instant,
        latency: Duration,
        started: Instant,
        keep_sample: bool,
    ) {
        let report = &mut self.report;
        if let Some(status) = outcome.status {
            *report.by_status.entry(status).or_insert(0) += 1;
        }
        match outcome.status {
            Some(status) if outcome.complete => {
                self.latency.record(latency);
                match status {
                    400..=499 => report.client_errors += 1,
                    500..=599 => report.server_errors += 1,
                    _ => {}
                }
            }
            _ => report.no_response += 1,
        }
        let version = outcome.version.as_ref().and_then(|v| v.to_str().ok());
        match outcome.error {
            None => {
                let version = version.unwrap_or("?");
                report.ok += 1;
                bump(&mut report.by_version, version);
                bump(&mut self.window, version);
                if report.last_version.as_deref() != Some(version) {
                    report.last_version = Some(version.to_string());
                }
                self.last_ok = Some(done);
            }
            Some(error) => {
                report.failed += 1;
                if let Some(version) = version {
                    bump(&mut report.failed_by_version, version);
                }
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push((done, error));
                }
            }
        }
        if keep_sample {
            self.samples.push(Sample {
                at_ms: done.duration_since(started).as_millis() as u64,
                status: outcome.status,
                revision: outcome.revision,
            });
        }
    }
}

/// How one request ended.
struct Outcome {
    /// The answer's status, when one arrived.
    status: Option<u16>,
    /// The whole answer was read.
    complete: bool,
    /// The answer's `X-Version`.
    version: Option<HeaderValue>,
    /// `None` for a complete 2xx answer.
    error: Option<String>,
    /// The answer's `X-Ferry-Revision`, read only for samples.
    revision: Option<u64>,
}

impl Outcome {
    /// No answer at all.
    fn failed(error: String) -> Self {
        Outcome {
            status: None,
            complete: false,
            version: None,
            error: Some(error),
            revision: None,
        }
    }
}

/// Sub-buckets per power of two: a bucket is at most 1/32 of its values wide.
const SUB_BITS: u32 = 5;
/// Latencies are counted in nanoseconds up to 2^36 ns (about 69 s); longer
/// ones fall in the last bucket (`max` stays exact).
const TOP_BIT: u32 = 36;
const BUCKETS: usize = ((TOP_BIT - SUB_BITS + 1) << SUB_BITS) as usize;

/// A log-linear latency histogram (HDR-style): values below 64 ns have a
/// bucket each, above that every power of two is split into 32 buckets.
#[derive(Clone)]
struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_ns: 0,
        }
    }
}

impl Histogram {
    fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at quantile `q` (0..=1): the upper end of the bucket that
    /// holds it, capped at the largest value recorded. Zero when empty.
    fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(bucket);
                return Duration::from_nanos((low + (width - 1)).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    fn summary(&self) -> Latency {
        Latency {
            count: self.total,
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            max: Duration::from_nanos(self.max_ns),
        }
    }
}

/// The bucket holding `ns`.
fn bucket_of(ns: u64) -> usize {
    let ns = ns.min((1 << TOP_BIT) - 1);
    if ns < 2 << SUB_BITS {
        return ns as usize;
    }
    let top = 63 - ns.leading_zeros();
    // The value's leading SUB_BITS + 1 bits: 32..=63.
    let lead = ns >> (top - SUB_BITS);
    (((top - SUB_BITS + 1) as usize) << SUB_BITS) + (lead as usize - (1 << SUB_BITS))
}

/// A bucket's lowest value and width.
fn bucket_range(bucket: usize) -> (u64, u64) {
    if bucket < 2 << SUB_BITS {
        return (bucket as u64, 1);
    }
    let group = (bucket >> SUB_BITS) as u32;
    let lead = (1 << SUB_BITS) + (bucket as u64 & ((1 << SUB_BITS) - 1));
    let shift = group - 1;
    (lead << shift, 1 << shift)
}

type Sender = SendRequest<Empty<Bytes>>;

/// A task's requests, built once: each request clones the headers and
/// picks its `X-User-Id`.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// `user-0` .. `user-99`; empty when the config sets `X-User-Id`.
    users: Vec<HeaderValue>,
}

const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

impl Template {
    fn new(config: &LoadConfig) -> Result<Template, String> {
        let uri: Uri = config
            .path
            .parse()
            .map_err(|e| format!("invalid path {:?}: {e}", config.path))?;
        let mut headers = HeaderMap::with_capacity(3 + config.headers.len());
        let host = HeaderValue::try_from(config.target.to_string())
            .map_err(|e| format!("invalid Host: {e}"))?;
        headers.insert(HOST, host);
        headers.insert(
            CONNECTION,
            HeaderValue::from_static(if config.close_each {
                "close"
            } else {
                "keep-alive"
            }),
        );
        for (name, _) in &config.headers {
            headers.remove(name);
        }
        for (name, value) in &config.headers {
            headers.append(name.clone(), value.clone());
        }
        let users = if headers.contains_key(X_USER_ID) {
            Vec::new()
        } else {
            (0..USERS)
                .filter_map(|n| HeaderValue::try_from(format!("user-{n}")).ok())
                .collect()
        };
        Ok(Template {
            method: config.method.clone(),
            uri,
            headers,
            users,
        })
    }

    fn request(&self, user: u64) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(value) = self.users.get(user as usize) {
            request.headers_mut().insert(X_USER_ID, value.clone());
        }
        request
    }
}

struct Worker {
    config: Arc<LoadConfig>,
    shared: Arc<Shared>,
    /// This task's tally and place in the pacing schedule.
    index: usize,
    stop: watch::Receiver<bool>,
    deadline: Instant,
    conn: Option<Sender>,
}

impl Worker {
    fn should_stop(&self) -> bool {
        // A dropped `LoadGen` (closed channel) stops the task as well.
        *self.stop.borrow() || self.stop.has_changed().is_err() || Instant::now() >= self.deadline
    }

    /// Sleeps until `until`, or less if the run stops. Returns false if it
    /// should stop.
    async fn pause_until(&mut self, until: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(until.min(self.deadline)) => {}
            _ = self.stop.changed() => {}
        }
        !self.should_stop()
    }

    async fn run(mut self) {
        let period = self
            .config
            .rate_per_connection
            .filter(|rate| rate.is_finite() && *rate > 0.0)
            // Capped at a day so the interval arithmetic cannot overflow.
            .map(|rate| Duration::from_secs_f64((1.0 / rate).min(86_400.0)));
        let mut pacer = period.map(|period| {
            // Task i of n starts i/n of a period late: the connections'
            // requests interleave instead of leaving together.
            let offset = period.mul_f64(self.index as f64 / self.config.connections.max(1) as f64);
            let mut interval = tokio::time::interval_at(self.shared.started + offset, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            interval
        });
        let template = Template::new(&self.config);
        let keep_samples = self.config.record_samples;
        let timeout = self.config.request_timeout;
        let mut user = self.index as u64 % USERS;

        while !self.should_stop() {
            if let Some(pacer) = pacer.as_mut() {
                tokio::select! {
                    _ = pacer.tick() => {}
                    () = tokio::time::sleep_until(self.deadline) => break,
                    _ = self.stop.changed() => continue,
                }
                if self.should_stop() {
                    break;
                }
            }

            self.shared.tallies[self.index].lock().report.sent += 1;
            let begun = Instant::now();
            let outcome = match &template {
                Err(err) => Outcome::failed(err.clone()),
                Ok(template) => {
                    let this_user = user;
                    user = (user + 1) % USERS;
                    match tokio::time::timeout(timeout, self.send_one(template, this_user)).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            // The connection's state is unknown: start afresh.
                            self.conn = None;
                            Outcome::failed(format!("timeout after {timeout:?}"))
                        }
                    }
                }
            };
            let done = Instant::now();
            let no_response = outcome.status.is_none();
            self.shared.tallies[self.index].lock().record(
                outcome,
                done,
                done - begun,
                self.shared.started,
                keep_samples,
            );
            if no_response
                && pacer.is_none()
                && !self.pause_until(Instant::now() + TRANSPORT_BACKOFF).await
            {
                break;
            }
        }
        // Dropping the sender closes the connection.
        self.conn = None;
    }

    /// Sends one request, on the current connection if the server has not
    /// closed it, and reads the whole response.
    async fn send_one(&mut self, template: &Template, user: u64) -> Outcome {
        for _ in 0..SEND_ATTEMPTS {
            if let Some(sender) = &self.conn
                && sender.is_closed()
            {
                self.conn = None;
            }
            let sender = match &mut self.conn {
                Some(sender) => sender,
                None => match connect(self.config.target).await {
                    Ok(sender) => self.conn.insert(sender),
                    Err(err) => return Outcome::failed(err),
                },
            };
            if sender.ready().await.is_err() {
                // Closed by the server while idle: reconnect, not a failure.
                self.conn = None;
                continue;
            }
            let response = match sender.try_send_request(template.request(user)).await {
                Ok(response) => response,
                Err(mut err) => {
                    self.conn = None;
                    if err.take_message().is_some() {
                        // Never written: the connection closed first. Retry.
                        continue;
                    }
                    return Outcome::failed(format!("request: {}", error_chain(&err.into_error())));
                }
            };
            if self.config.close_each {
                self.conn = None;
            }
            let outcome = self.read_response(response).await;
            if !outcome.complete {
                self.conn = None;
            }
            return outcome;
        }
        Outcome::failed(format!(
            "connection closed before the request could be sent ({SEND_ATTEMPTS} tries)"
        ))
    }

    /// Reads a response to its end: a 2xx body is only drained, the start
    /// of any other goes into the failure's description.
    async fn read_response(&self, response: http::Response<Incoming>) -> Outcome {
        let status = response.status().as_u16();
        let revision = if self.config.record_samples {
            response
                .headers()
                .get("x-ferry-revision")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        let version = response.headers().get("x-version").cloned();
        let mut outcome = Outcome {
            status: Some(status),
            complete: false,
            version,
            error: None,
            revision,
        };
        let mut body = response.into_body();
        let mut shown = Vec::new();
        let ok = (200..300).contains(&status);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if !ok
                        && let Some(data) = frame.data_ref()
                        && shown.len() < ERROR_BODY_BYTES
                    {
                        let room = ERROR_BODY_BYTES - shown.len();
                        shown.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Err(err) => {
                    outcome.error = Some(format!("status {status}: body: {}", error_chain(&err)));
                    return outcome;
                }
            }
        }
        outcome.complete = true;
        if !ok {
            outcome.error = Some(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&shown).trim_end()
            ));
        }
        outcome
    }
}

async fn connect(target: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {}", io_error_text(&e)))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
    // Ends when the server closes the connection or the sender is dropped.
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "load generator connection ended with an error");
        }
    });
    Ok(sender)
}

/// "Connection refused" rather than "Connection refused (os error 111)".
fn io_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A small HTTP/1.1 server on 127.0.0.1 for the tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::future::Future;
    use tokio::net::TcpListener;

    pub(crate) type Answer = http::Response<Full<Bytes>>;

    /// Stops accepting when dropped.
    pub(crate) struct TestServer {
        pub(crate) addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A keep-alive server answering every request with `answer(request)`.
    pub(crate) async fn serve<F, Fut>(answer: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer { addr, task }
    }

    /// `status` with `body` and, when given, `X-Version: version`.
    pub(crate) fn answer(status: u16, body: &str, version: Option<&str>) -> Answer {
        let mut builder = http::Response::builder().status(status);
        if let Some(version) = version {
            builder = builder.header("x-version", version);
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestServer, answer, serve};
    use super::*;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    const GENEROUS: Duration = Duration::from_secs(20);

    /// Answers 200 `ok` with `X-Version: version`.
    async fn versioned(version: &'static str) -> TestServer {
        serve(move |_| async move { answer(200, "ok\n", Some(version)) }).await
    }

    fn load(target: SocketAddr, connections: usize) -> LoadConfig {
        LoadConfig {
            connections,
            max_duration: Duration::from_secs(60),
            ..LoadConfig::new(target)
        }
    }

    async fn stop(gen_: LoadGen) -> LoadReport {
        tokio::time::timeout(GENEROUS, gen_.stop())
            .await
            .expect("load generator stops")
    }

    /// Waits (generously) until at least `n` requests succeeded.
    async fn wait_ok(gen_: &LoadGen, n: u64) {
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().ok < n {
            assert!(std::time::Instant::now() < deadline, "{:?}", gen_.report());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn counts_versions() {
        let server = versioned("v1").await;
        let gen_ = LoadGen::start(load(server.addr, 4));
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_ok(&gen_, 1).await;
        let live = gen_.report();
        let window = gen_.take_window();
        assert!(window.get("v1").copied().unwrap_or(0) > 0, "{window:?}");
        let report = stop(gen_).await;
        assert!(report.ok > 0, "{report:?}");
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.sent, report.ok + report.failed);
        assert!(report.ok >= live.ok);
        assert_eq!(report.by_version.get("v1"), Some(&report.ok));
        assert_eq!(report.by_status.get(&200), Some(&report.ok));
        assert_eq!(report.last_version.as_deref(), Some("v1"));
        assert!(report.errors.is_empty());
        assert_eq!(
            (
                report.client_errors,
                report.server_errors,
                report.no_response
            ),
            (0, 0, 0)
        );
        let latency = report.latency;
        assert_eq!(latency.count, report.ok);
        assert!(latency.p50 > Duration::ZERO, "{latency:?}");
        assert!(
            latency.p50 <= latency.p95 && latency.p95 <= latency.p99,
            "{latency:?}"
        );
        assert!(latency.p99 <= latency.max, "{latency:?}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["failed"], 0);
    }

    #[tokio::test]
    async fn take_window_resets() {
        let server = versioned("w").await;
        let gen_ = LoadGen::start(load(server.addr, 2));
        wait_ok(&gen_, 5).await;
        let first = gen_.take_window();
        assert!(first["w"] >= 1);
        let report = stop(gen_).await;
        // Whatever came after the first window is in the second.
        let total: u64 = first.values().sum::<u64>();
        assert!(total <= report.ok);
    }

    #[tokio::test]
    async fn closed_port_counts_failures_with_a_message() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let gen_ = LoadGen::start(load(addr, 2));
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().failed == 0 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = stop(gen_).await;
        assert!(report.failed > 0, "{report:?}");
        assert_eq!(report.ok, 0);
        assert_eq!(report.sent, report.failed);
        assert_eq!(report.no_response, report.failed);
        assert_eq!(report.latency.count, 0, "only answers are timed");
        assert!(report.by_version.is_empty());
        assert!(!report.errors.is_empty());
        assert!(report.errors.len() <= MAX_ERRORS);
        assert!(
            report.errors[0].starts_with("connect: "),
            "{:?}",
            report.errors
        );
        assert!(
            !report.errors[0].contains("os error"),
            "{:?}",
            report.errors
        );
    }

    #[tokio::test]
    async fn non_2xx_answers_are_failures_with_body() {
        let server = serve(|_| async { answer(500, "error from broken\n", Some("broken")) }).await;
        let gen_ = LoadGen::start(load(server.addr, 2));
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().failed == 0 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = stop(gen_).await;
        assert_eq!(report.ok, 0);
        assert!(report.by_version.is_empty(), "2xx only");
        assert_eq!(report.by_status.get(&500), Some(&report.failed));
        assert_eq!(report.server_errors, report.failed);
        assert_eq!(report.no_response, 0);
        assert_eq!(report.latency.count, report.failed, "answers are timed");
        assert_eq!(report.errors[0], "status 500: error from broken");
        assert_eq!(
            report.failed_by_version.get("broken"),
            Some(&report.failed),
            "each failure is counted against the version that answered it"
        );
    }

    #[tokio::test]
    async fn client_errors_are_counted_apart() {
        let server = serve(|_| async { answer(404, "no such page", None) }).await;
        let gen_ = LoadGen::start(load(server.addr, 2));
        wait_failed(&gen_, 10).await;
        let report = stop(gen_).await;
        assert_eq!(report.client_errors, report.failed, "{report:?}");
        assert_eq!((report.server_errors, report.no_response), (0, 0));
        assert_eq!(report.errors[0], "status 404: no such page");
    }

    async fn wait_failed(gen_: &LoadGen, n: u64) {
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().failed < n {
            assert!(std::time::Instant::now() < deadline, "{:?}", gen_.report());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn sends_the_method_and_headers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = serve({
            let seen = seen.clone();
            move |req: Request<Incoming>| {
                let h = |name: &str| {
                    req.headers()
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                seen.lock().unwrap().push(format!(
                    "{} {} host={} token={} user={}",
                    req.method(),
                    req.uri(),
                    h("host"),
                    h("x-token"),
                    h("x-user-id")
                ));
                async { answer(200, "", None) }
            }
        })
        .await;
        let gen_ = LoadGen::start(LoadConfig {
            path: "/submit?a=1".into(),
            method: Method::POST,
            headers: vec![
                (
                    HeaderName::from_static("x-token"),
                    HeaderValue::from_static("t1"),
                ),
                (HOST, HeaderValue::from_static("web.example")),
                (X_USER_ID, HeaderValue::from_static("me")),
            ],
            ..load(server.addr, 1)
        });
        wait_ok(&gen_, 3).await;
        stop(gen_).await;
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0], "POST /submit?a=1 host=web.example token=t1 user=me",
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn rate_limits_each_connection() {
        let server = versioned("paced").await;
        let started = std::time::Instant::now();
        let gen_ = LoadGen::start(LoadConfig {
            rate_per_connection: Some(20.0),
            ..load(server.addr, 2)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait_ok(&gen_, 1).await;
        let report = stop(gen_).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!(report.ok > 0);
        assert_eq!(report.failed, 0);
        // At most one request per tick, the first tick immediate.
        let bound = 2.0 * (20.0 * elapsed + 1.0);
        assert!((report.sent as f64) <= bound, "{} > {bound}", report.sent);
    }

    #[tokio::test]
    async fn stops_by_itself_at_max_duration() {
        let server = versioned("bounded").await;
        let gen_ = LoadGen::start(LoadConfig {
            max_duration: Duration::from_millis(300),
            ..load(server.addr, 2)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The count settles without `stop` being called.
        let deadline = std::time::Instant::now() + GENEROUS;
        let mut previous = gen_.report().sent;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = gen_.report().sent;
            if now == previous {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still sending");
            previous = now;
        }
        let report = gen_.report();
        assert!(report.ok > 0);
        assert!(gen_.tasks.iter().all(|t| t.is_finished()));
        assert_eq!(stop(gen_).await.sent, report.sent);
    }

    #[tokio::test]
    async fn finish_waits_for_max_duration() {
        let server = versioned("f").await;
        let started = std::time::Instant::now();
        let gen_ = LoadGen::start(LoadConfig {
            max_duration: Duration::from_millis(300),
            ..load(server.addr, 2)
        });
        let report = tokio::time::timeout(GENEROUS, gen_.finish()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(report.ok > 0);
        assert_eq!(report.sent, report.ok + report.failed);
    }

    /// A server that closes every connection after one answer: the
    /// generator reconnects, and reconnecting is not a failure.
    #[tokio::test]
    async fn reconnects_when_server_closes_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<_>| async move {
                        assert_eq!(req.headers()["connection"], "keep-alive");
                        let user = req.headers()["x-user-id"].to_str().unwrap();
                        let n: u64 = user.strip_prefix("user-").unwrap().parse().unwrap();
                        assert!(n < 100);
                        let mut resp = hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok\n"),
                        ));
                        resp.headers_mut()
                            .insert("x-version", HeaderValue::from_static("closer"));
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let gen_ = LoadGen::start(load(addr, 2));
        wait_ok(&gen_, 20).await;
        let report = stop(gen_).await;
        server.abort();
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.by_version.get("closer"), Some(&report.ok));
    }

    #[tokio::test]
    async fn samples_are_kept_in_time_order() {
        let server = versioned("s").await;
        let gen_ = LoadGen::start(LoadConfig {
            record_samples: true,
            ..load(server.addr, 3)
        });
        wait_ok(&gen_, 30).await;
        let samples = gen_.samples();
        let report = stop(gen_).await;
        assert!(samples.len() >= 30 && samples.len() as u64 <= report.ok);
        assert!(samples.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(samples.iter().all(|s| s.status == Some(200)));
    }

    #[test]
    fn buckets_cover_every_value_once() {
        let mut previous_end = 0;
        for bucket in 0..BUCKETS {
            let (low, width) = bucket_range(bucket);
            assert_eq!(
                low, previous_end,
                "bucket {bucket} starts where the last ended"
            );
            assert!(width * 32 <= low.max(32), "bucket {bucket} is narrow");
            assert_eq!(bucket_of(low), bucket);
            assert_eq!(bucket_of(low + width - 1), bucket);
            previous_end = low + width;
        }
        assert_eq!(previous_end, 1 << TOP_BIT);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_close_to_exact() {
        // Deterministic pseudo-random latencies from 10 µs to about 1 s.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = Vec::new();
        let mut histogram = Histogram::default();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = 10_000 + (x % 1_000) * (x % 1_000) * 1_000;
            values.push(ns);
            histogram.record(Duration::from_nanos(ns));
        }
        values.sort_unstable();
        for q in [0.5, 0.95, 0.99, 1.0] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            let got = histogram.quantile(q).as_nanos() as u64;
            assert!(got >= exact, "q {q}: {got} < {exact}");
            assert!(got <= exact + exact / 32, "q {q}: {got} vs {exact}");
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 20_000);
        assert_eq!(summary.max.as_nanos() as u64, *values.last().unwrap());
        let mut merged = Histogram::default();
        merged.merge(&histogram);
        merged.merge(&histogram);
        assert_eq!(merged.summary().p95, summary.p95);
        assert_eq!(merged.total, 40_000);
        assert_eq!(Histogram::default().summary(), Latency::default());
    }

    #[test]
    fn error_texts() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert!(!io_error_text(&refused).contains("os error"));
        let config = LoadConfig::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(config.path, "/");
        assert_eq!(config.connections, 8);
        assert_eq!(config.method, Method::GET);
        assert!(config.headers.is_empty());
    }
}
