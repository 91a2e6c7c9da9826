//! The bundled demo service: the `ferry` binary run in its hidden `demo-app`
//! mode. It is a small HTTP/1.1 server whose behaviour (version, failures,
//! latency, start-up problems, readiness) is set through environment
//! variables, so a deploy can change it with `--set KEY=VALUE` and show what
//! Ferry does with a good, slow, broken or never-ready release.
//!
//! Routes: `GET /`, `GET /health`, `GET /metrics`, `GET /stream`,
//! `POST /echo`; anything else answers 404.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

/// How long a stopping server waits for in-flight requests before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code used by `DEMO_CRASH_ON_START=1`.
pub const CRASH_EXIT_CODE: i32 = 3;
/// Number of events sent by `GET /stream`.
const STREAM_TICKS: u32 = 5;
/// Pause between two events of `GET /stream`.
const STREAM_INTERVAL: Duration = Duration::from_millis(200);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Knobs, read from the environment so a deploy can change them with `--set KEY=VALUE`.
#[derive(Debug, Clone)]
pub struct DemoAppConfig {
    /// `PORT` (required).
    pub port: u16,
    /// `DEMO_VERSION` (default `"dev"`).
    pub version: String,
    /// `DEMO_FAILURE_RATE`, 0.0..=1.0: share of `/` requests answered 500 (default 0).
    pub failure_rate: f64,
    /// `DEMO_LATENCY_MS`, added to each `/` response (default 0).
    pub latency: Duration,
    /// `DEMO_STARTUP_DELAY_MS`, waited before the port is bound (default 0).
    pub startup_delay: Duration,
    /// `DEMO_CRASH_ON_START=1`: after `startup_delay`, print a message to
    /// stderr and exit with code 3 without ever binding the port.
    pub crash_on_start: bool,
    /// `DEMO_NEVER_READY=1`: serve normally but `/health` answers 503 forever.
    pub never_ready: bool,
    /// `DEMO_UNHEALTHY_AFTER_MS`: `/health` answers 503 once the app has
    /// served this long (a process that hangs, for liveness probes).
    pub unhealthy_after: Option<Duration>,
    /// `DEMO_FAILURE_AFTER_MS`: `failure_rate` and `latency` apply only
    /// once the app has run this long (a release that goes bad under load).
    pub misbehave_after: Option<Duration>,
}

impl DemoAppConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, String> {
        // `var_os` + lossy conversion, so a non-UTF-8 value is reported as a
        // bad value instead of silently counting as "unset".
        Self::from_lookup(|key| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the configuration through `get` (a variable name → its value).
    /// Empty values count as unset. Errors name the variable and the bad value.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let value = |key: &str| {
            get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let port = match value("PORT") {
            None => return Err("PORT is not set (the port to listen on)".to_string()),
            Some(raw) => raw
                .parse::<u16>()
                .map_err(|_| format!("PORT must be a port number (0-65535), got {raw:?}"))?,
        };

        let version = value("DEMO_VERSION").unwrap_or_else(|| "dev".to_string());
        if HeaderValue::from_str(&version).is_err() || version.chars().any(char::is_control) {
            return Err(format!(
                "DEMO_VERSION must be printable text usable in an HTTP header, got {version:?}"
            ));
        }

        let failure_rate = match value("DEMO_FAILURE_RATE") {
            None => 0.0,
            Some(raw) => match raw.parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => rate,
                _ => {
                    return Err(format!(
                        "DEMO_FAILURE_RATE must be a number from 0.0 to 1.0, got {raw:?}"
                    ));
                }
            },
        };

        let millis = |key: &str| -> Result<Duration, String> {
            match value(key) {
                None => Ok(Duration::ZERO),
                Some(raw) => raw.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    format!("{key} must be a whole number of milliseconds, got {raw:?}")
                }),
            }
        };
        let flag = |key: &str| -> Result<bool, String> {
            match value(key) {
                None => Ok(false),
                Some(raw) => match raw.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(format!("{key} must be 1 or 0 (or true/false), got {raw:?}")),
                },
            }
        };

        Ok(Self {
            port,
            version,
            failure_rate,
            latency: millis("DEMO_LATENCY_MS")?,
            startup_delay: millis("DEMO_STARTUP_DELAY_MS")?,
            crash_on_start: flag("DEMO_CRASH_ON_START")?,
            never_ready: flag("DEMO_NEVER_READY")?,
            unhealthy_after: match value("DEMO_UNHEALTHY_AFTER_MS") {
                None => None,
                Some(_) => Some(millis("DEMO_UNHEALTHY_AFTER_MS")?),
            },
            misbehave_after: match value("DEMO_FAILURE_AFTER_MS") {
                None => None,
                Some(_) => Some(millis("DEMO_FAILURE_AFTER_MS")?),
            },
        })
    }
}

/// Runs until SIGTERM or SIGINT; on either, stops accepting, lets in-flight
/// requests finish (up to 10 s), then returns Ok.
///
/// With `crash_on_start` this exits the process with code 3 after
/// `startup_delay`, as the knob asks.
pub async fn run(config: DemoAppConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Install the handlers first, so a signal during the start-up delay is
    // handled (and does not kill the process with the default action).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    run_until(config, stop).await
}

/// Like [`run`], but stops when `shutdown` completes instead of on a signal.
/// Waits `startup_delay` (cut short by `shutdown`), honours `crash_on_start`,
/// binds 127.0.0.1:`port`, then [`serve`]s.
pub async fn run_until(
    config: DemoAppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    if !config.startup_delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(config.startup_delay) => {}
            () = shutdown.as_mut() => {
                println!("demo-app {} stopping before it started", config.version);
                return Ok(());
            }
        }
    }
    if config.crash_on_start {
        eprintln!("demo-app: crashing on start as DEMO_CRASH_ON_START asks");
        std::process::exit(CRASH_EXIT_CODE);
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("demo-app: cannot listen on {addr}"))?;
    serve(listener, config, shutdown).await
}

/// Serves on an already-bound listener until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and
/// returns. `config.port`, `startup_delay` and `crash_on_start` are not used
/// here.
pub async fn serve(
    listener: TcpListener,
    config: DemoAppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    let state = Arc::new(AppState::new(config));
    println!("demo-app {} listening on {local}", state.config.version);

    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, state.clone(), stop_rx.clone()));
                }
                Err(err) => {
                    // Typically EMFILE; do not spin on it.
                    tracing::warn!(error = %err, "demo-app: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    println!(
        "demo-app {} stopping: no longer accepting, finishing {} open connection(s)",
        state.config.version,
        connections.len()
    );
    // Idle keep-alive connections close at once; busy ones after their
    // current response.
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "demo-app: {} connection(s) still busy after {}s; closing them",
            connections.len(),
            DRAIN_TIMEOUT.as_secs()
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    // No timer is configured, so idle keep-alive connections stay open until
    // the client closes them or the server stops: a proxy's pooled
    // connection is never closed under it by an idle timeout.
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "demo-app: connection ended with an error");
            }
            return;
        }
        // An Err means the server is gone: stop too.
        _ = stop.wait_for(|stopping| *stopping) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(err) = conn.await {
        tracing::debug!(error = %err, "demo-app: connection ended with an error while stopping");
    }
}

struct AppState {
    config: DemoAppConfig,
    rng: AtomicU64,
    requests: Mutex<BTreeMap<u16, u64>>,
    in_flight: AtomicUsize,
    started: std::time::Instant,
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AppState {
    fn new(config: DemoAppConfig) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Self {
            config,
            rng: AtomicU64::new(if seed == 0 { 1 } else { seed }),
            requests: Mutex::new(BTreeMap::new()),
            in_flight: AtomicUsize::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// A uniform number in [0, 1) from a shared xorshift64* generator.
    fn random_unit(&self) -> f64 {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let previous = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or_else(|x| x);
        let out = step(previous).wrapping_mul(0x2545_F491_4F6C_DD1D);
        (out >> 11) as f64 / (1u64 << 53) as f64
    }

    fn record(&self, status: StatusCode) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry(status.as_u16()).or_insert(0) += 1;
    }
}

async fn handle(state: &AppState, req: Request<Incoming>) -> Response<RespBody> {
    let _in_flight = InFlight::enter(&state.in_flight);
    let config = &state.config;
    let mut response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            let misbehaving = config
                .misbehave_after
                .is_none_or(|after| state.started.elapsed() >= after);
            if misbehaving && !config.latency.is_zero() {
                tokio::time::sleep(config.latency).await;
            }
            if misbehaving && config.failure_rate > 0.0 && state.random_unit() < config.failure_rate
            {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("error from {}\n", config.version),
                )
            } else {
                text(StatusCode::OK, format!("hello from {}\n", config.version))
            }
        }
        (&Method::GET, "/health") => {
            let gone_bad = config
                .unhealthy_after
                .is_some_and(|after| state.started.elapsed() >= after);
            let (status, word) = if config.never_ready || gone_bad {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            } else {
                (StatusCode::OK, "healthy")
            };
            let body = serde_json::json!({ "status": word, "version": config.version });
            full(status, "application/json", body.to_string())
        }
        (&Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(state),
        ),
        (&Method::GET, "/stream") => {
            let mut response = Response::new(UnsyncBoxBody::new(Ticks::new()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        (&Method::POST, "/echo") => {
            let content_type = req.headers().get(CONTENT_TYPE).cloned();
            let body = req.into_body().map_err(BoxError::from).boxed_unsync();
            let mut response = Response::new(body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                content_type
                    .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream")),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    // Checked when the configuration was read.
    if let Ok(version) = HeaderValue::from_str(&config.version) {
        response.headers_mut().insert("x-version", version);
    }
    state.record(response.status());
    response
}

fn text(status: StatusCode, body: String) -> Response<RespBody> {
    full(status, "text/plain; charset=utf-8", body)
}

fn full(status: StatusCode, content_type: &'static str, body: String) -> Response<RespBody> {
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn render_metrics(state: &AppState) -> String {
    let mut counts = state
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    counts.entry(200).or_insert(0);
    let mut out = String::new();
    out.push_str("# HELP demo_requests_total Requests answered by the demo app, by status code.\n");
    out.push_str("# TYPE demo_requests_total counter\n");
    for (code, count) in counts {
        let _ = writeln!(out, "demo_requests_total{{code=\"{code}\"}} {count}");
    }
    out.push_str("# HELP demo_requests_in_flight Requests being handled, this scrape included.\n");
    out.push_str("# TYPE demo_requests_in_flight gauge\n");
    let _ = writeln!(
        out,
        "demo_requests_in_flight {}",
        state.in_flight.load(Ordering::Relaxed)
    );
    out.push_str("# HELP demo_app_info The demo app's version.\n");
    out.push_str("# TYPE demo_app_info gauge\n");
    let _ = writeln!(
        out,
        "demo_app_info{{version=\"{}\"}} 1",
        ferry_proxy::escape_label_value(&state.config.version)
    );
    out
}

/// The body of `GET /stream`: `STREAM_TICKS` server-sent events, the first at
/// once, then one every `STREAM_INTERVAL`.
struct Ticks {
    sent: u32,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Ticks {
    fn new() -> Self {
        Self {
            sent: 0,
            pause: None,
        }
    }
}

impl Body for Ticks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.sent >= STREAM_TICKS {
            return Poll::Ready(None);
        }
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
        }
        this.sent += 1;
        this.pause = Some(Box::pin(tokio::time::sleep(STREAM_INTERVAL)));
        let event = format!("event: tick\ndata: {}\n\n", this.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= STREAM_TICKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use std::collections::HashMap;
    use std::time::Instant;
    use tokio::sync::oneshot;

    const GENEROUS: Duration = Duration::from_secs(20);

    fn config(version: &str) -> DemoAppConfig {
        DemoAppConfig {
            port: 0,
            version: version.to_string(),
            failure_rate: 0.0,
            latency: Duration::ZERO,
            startup_delay: Duration::ZERO,
            crash_on_start: false,
            never_ready: false,
            unhealthy_after: None,
            misbehave_after: None,
        }
    }

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    /// A demo app on an ephemeral port; dropping/sending `stop` shuts it down.
    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Running {
        async fn start(config: DemoAppConfig) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, config, async {
                let _ = rx.await;
            }));
            Self {
                addr,
                stop: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(GENEROUS, self.task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }

    async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<RespBody> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn request(method: Method, path: &str, body: &'static str) -> Request<RespBody> {
        let body = if body.is_empty() {
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync()
        } else {
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "demo")
            .body(body)
            .unwrap()
    }

    /// One request on a fresh connection: (status, x-version, content-type, body).
    async fn call(
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: &'static str,
    ) -> (u16, String, String, String) {
        tokio::time::timeout(GENEROUS, async {
            let mut sender = connect(addr).await;
            let resp = sender
                .send_request(request(method, path, body))
                .await
                .unwrap();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            let (version, content_type) = (header("x-version"), header("content-type"));
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                version,
                content_type,
                String::from_utf8(body.to_vec()).unwrap(),
            )
        })
        .await
        .expect("request finishes")
    }

    /// Polls `/metrics` on `sender` until at least `n` requests (the scrape
    /// included) are in flight.
    async fn wait_in_flight(
        sender: &mut hyper::client::conn::http1::SendRequest<RespBody>,
        n: usize,
    ) {
        let deadline = Instant::now() + GENEROUS;
        loop {
            let resp = sender
                .send_request(request(Method::GET, "/metrics", ""))
                .await
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            let current: usize = body
                .lines()
                .find_map(|l| l.strip_prefix("demo_requests_in_flight "))
                .unwrap()
                .parse()
                .unwrap();
            if current >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "request never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn config_defaults() {
        let c = DemoAppConfig::from_lookup(lookup(&[("PORT", "8080")])).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.version, "dev");
        assert_eq!(c.failure_rate, 0.0);
        assert_eq!(c.latency, Duration::ZERO);
        assert_eq!(c.startup_delay, Duration::ZERO);
        assert!(!c.crash_on_start);
        assert!(!c.never_ready);
    }

    #[test]
    fn config_all_knobs() {
        let c = DemoAppConfig::from_lookup(lookup(&[
            ("PORT", " 9001 "),
            ("DEMO_VERSION", "v2"),
            ("DEMO_FAILURE_RATE", "0.25"),
            ("DEMO_LATENCY_MS", "150"),
            ("DEMO_STARTUP_DELAY_MS", "2000"),
            ("DEMO_CRASH_ON_START", "1"),
            ("DEMO_NEVER_READY", "true"),
        ]))
        .unwrap();
        assert_eq!(c.port, 9001);
        assert_eq!(c.version, "v2");
        assert_eq!(c.failure_rate, 0.25);
        assert_eq!(c.latency, Duration::from_millis(150));
        assert_eq!(c.startup_delay, Duration::from_secs(2));
        assert!(c.crash_on_start);
        assert!(c.never_ready);
        // Empty means unset.
        let c = DemoAppConfig::from_lookup(lookup(&[("PORT", "1"), ("DEMO_FAILURE_RATE", "")]))
            .unwrap();
        assert_eq!(c.failure_rate, 0.0);
    }

    #[test]
    fn config_errors_name_variable_and_value() {
        for bad in ["abc", "1.5", "-0.1", "NaN"] {
            let err =
                DemoAppConfig::from_lookup(lookup(&[("PORT", "8080"), ("DEMO_FAILURE_RATE", bad)]))
                    .unwrap_err();
            assert!(err.contains("DEMO_FAILURE_RATE"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
        let err = DemoAppConfig::from_lookup(lookup(&[])).unwrap_err();
        assert!(err.contains("PORT"), "{err}");
        let err = DemoAppConfig::from_lookup(lookup(&[("PORT", "70000")])).unwrap_err();
        assert!(err.contains("PORT") && err.contains("70000"), "{err}");
        let err = DemoAppConfig::from_lookup(lookup(&[("PORT", "1"), ("DEMO_LATENCY_MS", "soon")]))
            .unwrap_err();
        assert!(
            err.contains("DEMO_LATENCY_MS") && err.contains("soon"),
            "{err}"
        );
        let err =
            DemoAppConfig::from_lookup(lookup(&[("PORT", "1"), ("DEMO_NEVER_READY", "maybe")]))
                .unwrap_err();
        assert!(
            err.contains("DEMO_NEVER_READY") && err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn prng_stays_in_unit_interval_and_varies() {
        let state = AppState::new(config("x"));
        let draws: Vec<f64> = (0..1000).map(|_| state.random_unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = draws.iter().filter(|x| **x < 0.5).count();
        assert!((300..700).contains(&below_half), "{below_half}");
    }

    #[tokio::test]
    async fn routes() {
        let app = Running::start(config("v1")).await;
        let (status, version, content_type, body) = call(app.addr, Method::GET, "/", "").await;
        assert_eq!(status, 200);
        assert_eq!(version, "v1");
        assert!(content_type.starts_with("text/plain"));
        assert_eq!(body, "hello from v1\n");

        let (status, _, content_type, body) = call(app.addr, Method::GET, "/health", "").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "healthy");
        assert_eq!(json["version"], "v1");

        let (status, ..) = call(app.addr, Method::GET, "/nope", "").await;
        assert_eq!(status, 404);

        let (status, _, _, body) = call(app.addr, Method::POST, "/echo", "ping pong").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ping pong");

        let (status, _, content_type, body) = call(app.addr, Method::GET, "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(
            body.contains("# TYPE demo_requests_total counter"),
            "{body}"
        );
        assert!(
            body.contains("demo_requests_total{code=\"200\"} 3"),
            "{body}"
        );
        assert!(
            body.contains("demo_requests_total{code=\"404\"} 1"),
            "{body}"
        );
        assert!(body.contains("demo_app_info{version=\"v1\"} 1"), "{body}");
        app.stop().await;
    }

    #[tokio::test]
    async fn keep_alive_serves_many_requests_on_one_connection() {
        let app = Running::start(config("ka")).await;
        let mut sender = connect(app.addr).await;
        for _ in 0..5 {
            let resp = sender
                .send_request(request(Method::GET, "/", ""))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        drop(sender);
        app.stop().await;
    }

    #[tokio::test]
    async fn never_ready_health_is_503() {
        let app = Running::start(DemoAppConfig {
            never_ready: true,
            ..config("v3")
        })
        .await;
        let (status, _, _, body) = call(app.addr, Method::GET, "/health", "").await;
        assert_eq!(status, 503);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "unhealthy");
        // The service itself still answers.
        let (status, ..) = call(app.addr, Method::GET, "/", "").await;
        assert_eq!(status, 200);
        app.stop().await;
    }

    #[tokio::test]
    async fn failure_rate_one_always_fails() {
        let app = Running::start(DemoAppConfig {
            failure_rate: 1.0,
            ..config("bad")
        })
        .await;
        for _ in 0..3 {
            let (status, version, _, body) = call(app.addr, Method::GET, "/", "").await;
            assert_eq!(status, 500);
            assert_eq!(version, "bad");
            assert_eq!(body, "error from bad\n");
        }
        app.stop().await;
    }

    #[tokio::test]
    async fn stream_yields_events_incrementally() {
        let app = Running::start(config("s")).await;
        let started = Instant::now();
        let mut sender = connect(app.addr).await;
        let resp = tokio::time::timeout(
            GENEROUS,
            sender.send_request(request(Method::GET, "/stream", "")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        let mut body = resp.into_body();
        let first = tokio::time::timeout(GENEROUS, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        // Only the first event has arrived: the others are still to come.
        assert_eq!(&first[..], b"event: tick\ndata: 1\n\n");
        assert!(!body.is_end_stream());
        let rest = tokio::time::timeout(GENEROUS, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        let rest = String::from_utf8(rest.to_vec()).unwrap();
        assert_eq!(rest.matches("event: tick\n").count(), 4, "{rest}");
        assert!(rest.ends_with("data: 5\n\n"), "{rest}");
        // Four pauses between five events.
        assert!(started.elapsed() >= STREAM_INTERVAL * 4);
        app.stop().await;
    }

    #[tokio::test]
    async fn stop_lets_in_flight_requests_finish() {
        let app = Running::start(DemoAppConfig {
            latency: Duration::from_millis(500),
            ..config("slow")
        })
        .await;
        let addr = app.addr;
        let in_flight = tokio::spawn(call(addr, Method::GET, "/", ""));
        let mut idle = connect(addr).await;
        wait_in_flight(&mut idle, 2).await;
        app.stop().await;
        let (status, _, _, body) = in_flight.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "hello from slow\n");
        // The idle keep-alive connection was closed, and nothing listens any more.
        assert!(
            idle.send_request(request(Method::GET, "/", ""))
                .await
                .is_err()
        );
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_during_startup_delay_returns_promptly() {
        let started = Instant::now();
        let result = tokio::time::timeout(
            GENEROUS,
            run_until(
                DemoAppConfig {
                    startup_delay: Duration::from_secs(3600),
                    ..config("late")
                },
                async {},
            ),
        )
        .await
        .expect("returns before the delay");
        result.unwrap();
        assert!(started.elapsed() < GENEROUS);
    }

    #[tokio::test]
    async fn run_until_binds_configured_port_after_delay() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_until(
            DemoAppConfig {
                port,
                startup_delay: Duration::from_millis(100),
                ..config("bound")
            },
            async {
                let _ = rx.await;
            },
        ));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + GENEROUS;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "demo app never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, version, ..) = call(addr, Method::GET, "/", "").await;
        assert_eq!((status, version.as_str()), (200, "bound"));
        tx.send(()).unwrap();
        tokio::time::timeout(GENEROUS, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// `run` stops on a real SIGTERM and lets the in-flight request finish.
    /// Safe in a shared test process: `run` installs its handler before it
    /// listens, and the test only signals once the port answers.
    #[tokio::test]
    async fn run_stops_gracefully_on_sigterm() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let task = tokio::spawn(run(DemoAppConfig {
            port,
            latency: Duration::from_millis(400),
            ..config("sig")
        }));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + GENEROUS;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "demo app never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let in_flight = tokio::spawn(call(addr, Method::GET, "/", ""));
        wait_in_flight(&mut connect(addr).await, 2).await;
        nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        tokio::time::timeout(GENEROUS, task)
            .await
            .expect("run returns after SIGTERM")
            .unwrap()
            .unwrap();
        let (status, version, ..) = in_flight.await.unwrap();
        assert_eq!((status, version.as_str()), (200, "sig"));
    }
}
