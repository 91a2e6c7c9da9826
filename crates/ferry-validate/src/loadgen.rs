//! A bounded HTTP load generator over keep-alive connections.
//!
//! `ferry demo` runs it through the proxy to show that a deploy loses no
//! requests, and the integration tests use it to assert zero failed requests
//! and which versions answered.
//!
//! Each of the `connections` tasks owns ONE persistent HTTP/1.1 connection
//! and sends its requests on it one after the other. A task reconnects only
//! when the server has closed the connection; a reconnect is not a failure,
//! and a request that hyper hands back unsent (the connection closed before
//! it was written) is retried on the new connection. A request that was
//! written and then fails (status other than 2xx, transport error, timeout)
//! is a failure, and so is a request that cannot get a connection at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How many failure descriptions a report keeps.
pub const MAX_ERRORS: usize = 20;
/// How much of a failed response's body goes into its description.
const ERROR_BODY_BYTES: usize = 100;
/// Pause after a failure that got no response at all (e.g. connection
/// refused), so a task does not spin while nothing listens.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(50);
/// Attempts to send one request when connections keep closing under it.
const SEND_ATTEMPTS: usize = 3;

/// What to load and how hard.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send requests (a loopback address).
    pub target: SocketAddr,
    /// Request path (and query), e.g. `"/"`.
    pub path: String,
    /// Number of concurrent keep-alive connections (one task each).
    pub connections: usize,
    /// Requests per second per connection; `None` (or a value that is not a
    /// positive number) means as fast as the server answers.
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
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let deadline = Instant::now() + config.max_duration;
        let config = Arc::new(config);
        let tasks = (0..config.connections)
            .map(|_| {
                let worker = Worker {
                    config: config.clone(),
                    shared: shared.clone(),
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

    /// Every request so far, when `record_samples` is on.
    /// Every task has ended (after `stop`, or the duration bound).
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.shared.lock().samples.clone()
    }

    /// Live counters so far.
    pub fn report(&self) -> LoadReport {
        self.shared.lock().report.clone()
    }

    /// Versions seen in 2xx responses since the last call, and resets that
    /// window.
    pub fn take_window(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.shared.lock().window)
    }

    /// Stops all tasks (after their current request) and returns the final
    /// report.
    pub async fn stop(self) -> LoadReport {
        let _ = self.stop_tx.send(true);
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "load generator task failed");
            }
        }
        self.shared.lock().report.clone()
    }
}

struct Shared {
    state: Mutex<State>,
    user_seq: AtomicU64,
    started: Instant,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::default(),
            user_seq: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

#[derive(Default)]
struct State {
    report: LoadReport,
    window: BTreeMap<String, u64>,
    samples: Vec<Sample>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sample(&self, status: Option<u16>, revision: Option<u64>) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.lock().samples.push(Sample {
            at_ms,
            status,
            revision,
        });
    }

    fn record(&self, outcome: Outcome) {
        let mut state = self.lock();
        let State { report, window, .. } = &mut *state;
        match outcome {
            Outcome::Ok { status, version } => {
                report.ok += 1;
                *report.by_status.entry(status).or_insert(0) += 1;
                *report.by_version.entry(version.clone()).or_insert(0) += 1;
                *window.entry(version.clone()).or_insert(0) += 1;
                report.last_version = Some(version);
            }
            Outcome::Failed {
                status,
                version,
                error,
            } => {
                report.failed += 1;
                if let Some(status) = status {
                    *report.by_status.entry(status).or_insert(0) += 1;
                }
                if let Some(version) = version {
                    *report.failed_by_version.entry(version).or_insert(0) += 1;
                }
                if report.errors.len() < MAX_ERRORS {
                    report.errors.push(error);
                }
            }
        }
    }
}

enum Outcome {
    Ok {
        status: u16,
        version: String,
    },
    Failed {
        /// `None` when no response arrived.
        status: Option<u16>,
        /// The answering version, when the answer said.
        version: Option<String>,
        error: String,
    },
}

impl Outcome {
    fn failed(error: String) -> Self {
        Outcome::Failed {
            version: None,
            status: None,
            error,
        }
    }
}

type Sender = SendRequest<Empty<Bytes>>;

struct Worker {
    config: Arc<LoadConfig>,
    shared: Arc<Shared>,
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
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            interval
        });
        let uri: Result<Uri, String> = self
            .config
            .path
            .parse()
            .map_err(|e| format!("invalid path {:?}: {e}", self.config.path));

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

            self.shared.lock().report.sent += 1;
            let timeout = self.config.request_timeout;
            let outcome = match &uri {
                Err(err) => Outcome::failed(err.clone()),
                Ok(uri) => {
                    let uri = uri.clone();
                    match tokio::time::timeout(timeout, self.send_one(uri)).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            // The connection's state is unknown: start afresh.
                            self.conn = None;
                            Outcome::failed(format!("timeout after {timeout:?}"))
                        }
                    }
                }
            };
            let no_response = matches!(outcome, Outcome::Failed { status: None, .. });
            if no_response && self.config.record_samples {
                self.shared.sample(None, None);
            }
            self.shared.record(outcome);
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
    async fn send_one(&mut self, uri: Uri) -> Outcome {
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
            let user = self.shared.user_seq.fetch_add(1, Ordering::Relaxed) % 100;
            let request =
                match build_request(&uri, self.config.target, user, self.config.close_each) {
                    Ok(request) => request,
                    Err(err) => return Outcome::failed(err),
                };
            let response = match sender.try_send_request(request).await {
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
            let status = response.status().as_u16();
            if self.config.record_samples {
                let revision = response
                    .headers()
                    .get("x-ferry-revision")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                self.shared.sample(Some(status), revision);
            }
            let version = response
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if self.config.close_each {
                self.conn = None;
            }
            let body = match response.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(err) => {
                    self.conn = None;
                    return Outcome::Failed {
                        status: Some(status),
                        version,
                        error: format!("status {status}: body: {}", error_chain(&err)),
                    };
                }
            };
            return if (200..300).contains(&status) {
                Outcome::Ok {
                    status,
                    version: version.unwrap_or_else(|| "?".to_string()),
                }
            } else {
                let shown = &body[..body.len().min(ERROR_BODY_BYTES)];
                Outcome::Failed {
                    status: Some(status),
                    version,
                    error: format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(shown).trim_end()
                    ),
                }
            };
        }
        Outcome::failed(format!(
            "connection closed before the request could be sent ({SEND_ATTEMPTS} tries)"
        ))
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

fn build_request(
    uri: &Uri,
    target: SocketAddr,
    user: u64,
    close: bool,
) -> Result<Request<Empty<Bytes>>, String> {
    Request::get(uri.clone())
        .header(HOST, target.to_string())
        .header(
            CONNECTION,
            HeaderValue::from_static(if close { "close" } else { "keep-alive" }),
        )
        .header("x-user-id", format!("user-{user}"))
        .body(Empty::new())
        .map_err(|e| format!("invalid request: {e}"))
}

/// "Connection refused" rather than "Connection refused (os error 111)".
pub fn io_error_text(err: &std::io::Error) -> String {
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
