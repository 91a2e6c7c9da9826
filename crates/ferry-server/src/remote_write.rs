//! `[metrics] remote_write`: every sample the embedded store keeps is also
//! sent to each configured Prometheus remote-write receiver (protocol 1.0).
//!
//! One sender task per URL reads the store's [`Subscription`] (a bounded
//! queue of scrape batches that never blocks ingestion), gathers up to
//! [`MAX_SAMPLES_PER_SEND`] samples, or what came within
//! [`BATCH_SEND_DEADLINE`], into one request and POSTs it. A request that
//! fails on the network, with a 5xx or with a 429 is retried with
//! exponential backoff ([`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`], or
//! the receiver's `Retry-After`) for as long as it takes; meanwhile newer
//! batches wait in the queue, and those that do not fit are dropped and
//! counted. Any other answer (4xx) means the receiver will never take that
//! request: it is dropped, counted as failed and logged.
//!
//! Functional core, imperative shell: the wire encoding ([`encode`]),
//! batching ([`Batcher`]) and retry decisions ([`verdict`], [`retry_delay`])
//! are pure; [`spawn`] and `run` do the I/O.

use crate::tsdb::{Batch, MetricsDb, Subscription};
use ferry_core::metrics_config::RemoteWriteSpec;
use ferry_metrics::storage::Labels;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Samples in one request at most (Prometheus's `max_samples_per_send`).
pub const MAX_SAMPLES_PER_SEND: usize = 2000;
/// How long a sample waits for more to fill its request, at most.
/// Prometheus's `batch_send_deadline` is 5s; Ferry scrapes itself every
/// 10s by default, so 1s keeps the receiver close behind without sending
/// tiny requests.
pub const BATCH_SEND_DEADLINE: Duration = Duration::from_secs(1);
/// First retry delay; doubled on each retry up to [`MAX_BACKOFF`]
/// (Prometheus's `min_backoff` and `max_backoff` defaults).
pub const MIN_BACKOFF: Duration = Duration::from_millis(30);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one request may take (Prometheus's `remote_timeout`).
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrape batches queued per receiver while a request is being sent or
/// retried. A batch is one scrape of one target, so the memory this holds
/// is at most this many times the largest scrape (the daemon's own is a few
/// hundred samples of a few hundred bytes: ~100 KB; 512 of them ~50 MB).
/// At the default 10s interval with the daemon and a handful of exporters
/// that is over 10 minutes of receiver outage before anything is dropped;
/// at 200ms with the daemon alone, about 100s.
pub const QUEUE_BATCHES: usize = 512;
/// How much of a rejecting receiver's answer is logged.
const BODY_PREFIX: usize = 256;

// ---------------------------------------------------------------------------
// Wire format (pure)
// ---------------------------------------------------------------------------

/// One series of a request: its labels (`__name__` included) and its
/// samples `(ms, value)` in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

// The protobuf encoding is written by hand rather than with prost: the
// message is four types, only ever encoded, and prost's derive would add
// a proc-macro crate and its dependencies (anyhow, itertools) to every
// build for about sixty lines. The field numbers and wire types are those
// of Prometheus's `prompb` (remote.proto, types.proto):
//   WriteRequest { repeated TimeSeries timeseries = 1; }
//   TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//   Label        { string name = 1; string value = 2; }
//   Sample       { double value = 1; int64 timestamp = 2; }
// Every field is written, zero values included (valid protobuf: a decoder
// reads an explicit default as the default).

const LEN: u8 = 2; // wire type: length-delimited
const VARINT: u8 = 0;
const FIXED64: u8 = 1;

fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Key, length and bytes of a length-delimited field of `len` bytes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_len(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(key(field, LEN));
    put_varint(out, len as u64);
}

fn label_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(value.len())
}

fn sample_len(t: i64) -> usize {
    // value: key + 8 bytes; timestamp: key + varint (int64: two's complement).
    1 + 8 + 1 + varint_len(t as u64)
}

fn series_len(s: &Series) -> usize {
    s.labels
        .iter()
        .map(|(n, v)| field_len(label_len(n, v)))
        .sum::<usize>()
        + s.samples
            .iter()
            .map(|(t, _)| field_len(sample_len(*t)))
            .sum::<usize>()
}

/// The protobuf `WriteRequest` of `series` (uncompressed). Labels go out
/// in name order (a `Labels` map iterates so), samples as given.
pub fn encode(series: &[Series]) -> Vec<u8> {
    let total: usize = series.iter().map(|s| field_len(series_len(s))).sum();
    let mut out = Vec::with_capacity(total);
    for s in series {
        put_len(&mut out, 1, series_len(s));
        for (name, value) in &s.labels {
            put_len(&mut out, 1, label_len(name, value));
            put_len(&mut out, 1, name.len());
            out.extend_from_slice(name.as_bytes());
            put_len(&mut out, 2, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        for (t, v) in &s.samples {
            put_len(&mut out, 2, sample_len(*t));
            out.push(key(1, FIXED64));
            // Bits as they are: a stale marker's NaN payload is kept.
            out.extend_from_slice(&v.to_bits().to_le_bytes());
            out.push(key(2, VARINT));
            put_varint(&mut out, *t as u64);
        }
    }
    out
}

/// `encode`, snappy-compressed in the block format (not framed), as the
/// protocol wants the body.
pub fn body(series: &[Series]) -> Vec<u8> {
    let raw = encode(series);
    // Compressing a byte slice into a Vec cannot fail but for sizes above
    // 4 GiB, which a request of 2,000 samples never nears.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Batching (pure)
// ---------------------------------------------------------------------------

/// Scrape batches waiting to be sent, in arrival order.
#[derive(Debug, Default)]
pub struct Batcher {
    /// Each batch with the index of its first sample not yet taken.
    queue: VecDeque<(Arc<Batch>, usize)>,
    len: usize,
    /// When the oldest waiting sample arrived.
    since: Option<Instant>,
}

/// One request's worth of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub series: Vec<Series>,
    pub samples: usize,
    /// The newest sample's time (ms), for the lag gauge.
    pub newest_ms: i64,
}

impl Batcher {
    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, batch: Arc<Batch>, now: Instant) {
        if batch.is_empty() {
            return;
        }
        if self.len == 0 {
            self.since = Some(now);
        }
        self.len += batch.len();
        self.queue.push_back((batch, 0));
    }

    /// When the waiting samples must go at the latest.
    pub fn deadline(&self, wait: Duration) -> Option<Instant> {
        self.since.map(|s| s + wait)
    }

    /// Whether a request should go now: a full one is waiting, or the
    /// oldest sample has waited `wait`.
    pub fn due(&self, now: Instant, max: usize, wait: Duration) -> bool {
        self.len >= max || self.deadline(wait).is_some_and(|d| now >= d)
    }

    /// Take the oldest `max` samples (at most) as one request: grouped by
    /// series in order of first appearance, each series' samples sorted by
    /// time, and a repeated timestamp kept once (its last value), since a
    /// receiver rejects a whole request with a duplicate sample.
    pub fn take(&mut self, max: usize) -> Request {
        let mut index: BTreeMap<&Labels, usize> = BTreeMap::new();
        let mut series: Vec<(&Labels, Vec<(i64, f64)>)> = Vec::new();
        let mut taken = 0;
        let mut done = 0; // batches fully taken
        for (batch, start) in self.queue.iter_mut() {
            let end = (*start + (max - taken)).min(batch.len());
            for (labels, t, v) in &batch[*start..end] {
                let i = *index.entry(labels).or_insert_with(|| {
                    series.push((labels, Vec::new()));
                    series.len() - 1
                });
                series[i].1.push((*t, *v));
            }
            taken += end - *start;
            *start = end;
            if end == batch.len() {
                done += 1;
            }
            if taken == max {
                break;
            }
        }
        let mut newest_ms = i64::MIN;
        let series: Vec<Series> = series
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|(t, _)| *t); // stable: equal times keep order
                let mut out: Vec<(i64, f64)> = Vec::with_capacity(samples.len());
                for s in samples {
                    match out.last_mut() {
                        Some(last) if last.0 == s.0 => *last = s,
                        _ => out.push(s),
                    }
                }
                newest_ms = newest_ms.max(out.last().map_or(i64::MIN, |s| s.0));
                Series {
                    labels: labels.clone(),
                    samples: out,
                }
            })
            .collect();
        let samples = series.iter().map(|s| s.samples.len()).sum();
        self.queue.drain(..done);
        self.len -= taken;
        if self.len == 0 {
            self.since = None;
        }
        Request {
            series,
            samples,
            newest_ms,
        }
    }
}

// ---------------------------------------------------------------------------
// Retry decisions (pure)
// ---------------------------------------------------------------------------

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it.
    Sent,
    /// Try the same request again later: network error, 5xx, 429.
    Retry,
    /// The receiver will never take it: drop it.
    Reject,
}

/// `status` is the HTTP status, `None` for a network error or timeout.
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Sent,
        None | Some(429) | Some(500..=599) => Verdict::Retry,
        Some(_) => Verdict::Reject,
    }
}

/// How long to wait before retry number `attempt` (0 = the first retry):
/// [`MIN_BACKOFF`] doubled each time up to [`MAX_BACKOFF`], or what the
/// receiver asked for in `Retry-After` (seconds), at most [`MAX_BACKOFF`].
pub fn retry_delay(attempt: u32, retry_after: Option<&str>) -> Duration {
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(secs).min(MAX_BACKOFF);
    }
    MIN_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// `url` without its userinfo (`http://user:pass@host/` → `http://host/`),
/// for labels and logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// The first bytes of a rejecting receiver's answer, on one line.
fn body_prefix(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_PREFIX)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// One receiver's counters, shown on the daemon's `/metrics`.
#[derive(Debug)]
pub struct Stats {
    /// The receiver's URL without userinfo.
    pub url: String,
    pub samples_sent: AtomicU64,
    /// Dropped because the receiver rejected them (4xx but 429).
    pub samples_failed: AtomicU64,
    /// Dropped because the queue was full (the store's count).
    pub samples_dropped: Arc<AtomicU64>,
    /// Requests sent again after a retryable failure.
    pub retries: AtomicU64,
    /// Batches waiting in the queue, as last seen by the sender.
    pub queue_batches: AtomicU64,
    /// The newest sample time (ms) the receiver has taken; 0 before any.
    pub highest_sent_ms: AtomicI64,
}

/// Every receiver's counters, on the daemon (`Daemon::remote_write`).
#[derive(Debug, Default)]
pub struct Senders(Mutex<Vec<Arc<Stats>>>);

impl Senders {
    fn add(&self, stats: Arc<Stats>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(stats);
    }

    fn all(&self) -> Vec<Arc<Stats>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "ferry_remote_write_samples_sent_total",
        "counter",
        "Samples the remote-write receiver accepted.",
    ),
    (
        "ferry_remote_write_samples_failed_total",
        "counter",
        "Samples dropped because the receiver rejected their request (4xx other than 429).",
    ),
    (
        "ferry_remote_write_samples_dropped_total",
        "counter",
        "Samples dropped because the queue to the receiver was full.",
    ),
    (
        "ferry_remote_write_retries_total",
        "counter",
        "Requests sent again after a network error, 5xx or 429.",
    ),
    (
        "ferry_remote_write_queue_batches",
        "gauge",
        "Scrape batches waiting to be sent to the receiver.",
    ),
    (
        "ferry_remote_write_queue_capacity_batches",
        "gauge",
        "Scrape batches the queue to the receiver holds before dropping.",
    ),
    (
        "ferry_remote_write_highest_sent_timestamp_seconds",
        "gauge",
        "Time of the newest sample the receiver accepted.",
    ),
];

/// The counters in the text format, one family after another; nothing
/// when no receiver is configured.
pub fn render(senders: &Senders) -> String {
    let all = senders.all();
    let mut out = String::new();
    if all.is_empty() {
        return out;
    }
    for (i, (family, kind, help)) in FAMILIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for s in &all {
            let value = match i {
                0 => s.samples_sent.load(Ordering::Relaxed).to_string(),
                1 => s.samples_failed.load(Ordering::Relaxed).to_string(),
                2 => s.samples_dropped.load(Ordering::Relaxed).to_string(),
                3 => s.retries.load(Ordering::Relaxed).to_string(),
                4 => s.queue_batches.load(Ordering::Relaxed).to_string(),
                5 => QUEUE_BATCHES.to_string(),
                _ => {
                    let ms = s.highest_sent_ms.load(Ordering::Relaxed);
                    format!("{}", ms as f64 / 1000.0)
                }
            };
            let _ = writeln!(out, "{family}{{url=\"{}\"}} {value}", escape(&s.url));
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ---------------------------------------------------------------------------
// Shell
// ---------------------------------------------------------------------------

/// Start one sender per configured receiver, each on its own subscription
/// to `tsdb`, with its counters added to `senders`. Call before the first
/// scrape so that nothing stored is missed.
pub fn spawn(
    tsdb: &MetricsDb,
    specs: &[RemoteWriteSpec],
    senders: &Senders,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = match reqwest::Client::builder().timeout(REMOTE_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("remote write: cannot build an HTTP client: {e}; nothing is sent");
            return Vec::new();
        }
    };
    let mut tasks = Vec::new();
    for spec in specs {
        let url = redact_url(spec.url());
        let headers = match headers(spec) {
            Ok(h) => h,
            Err(name) => {
                // The value may be a token: only the name is said.
                tracing::error!(
                    "remote write to {url}: header {name:?} is not a valid HTTP header; nothing is sent there"
                );
                continue;
            }
        };
        let sub = tsdb.subscribe(QUEUE_BATCHES);
        let stats = Arc::new(Stats {
            url,
            samples_sent: AtomicU64::new(0),
            samples_failed: AtomicU64::new(0),
            samples_dropped: sub.dropped.clone(),
            retries: AtomicU64::new(0),
            queue_batches: AtomicU64::new(0),
            highest_sent_ms: AtomicI64::new(0),
        });
        senders.add(stats.clone());
        let target = Target {
            client: client.clone(),
            url: spec.url().to_string(),
            headers,
        };
        tasks.push(tokio::spawn(run(target, sub, stats)));
    }
    tasks
}

/// The request headers of `spec`: the protocol's, then the spec's. `Err`
/// names a header that is not valid HTTP.
fn headers(spec: &RemoteWriteSpec) -> Result<http::HeaderMap, String> {
    use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
    let mut h = http::HeaderMap::new();
    h.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    h.insert(
        "x-prometheus-remote-write-version",
        HeaderValue::from_static("0.1.0"),
    );
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("ferry/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in spec.headers() {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| name.clone())?;
        let mut v = HeaderValue::from_str(&value).map_err(|_| name.clone())?;
        v.set_sensitive(true);
        h.insert(n, v);
    }
    Ok(h)
}

struct Target {
    client: reqwest::Client,
    url: String,
    headers: http::HeaderMap,
}

/// What one attempt came back with.
struct Answer {
    status: Option<u16>,
    retry_after: Option<String>,
    /// The error or the body's first bytes, for the log.
    detail: String,
}

impl Target {
    async fn post(&self, body: &[u8]) -> Answer {
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Err(e) => Answer {
                status: None,
                retry_after: None,
                detail: error_chain(e),
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp.bytes().await.unwrap_or_default();
                Answer {
                    status: Some(status),
                    retry_after,
                    detail: body_prefix(&body),
                }
            }
        }
    }
}

/// A request error with its causes, without the URL (it may hold
/// userinfo).
pub(crate) fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// The sender: gather batches into requests and send them, in order, each
/// until the receiver takes or rejects it.
async fn run(target: Target, mut sub: Subscription, stats: Arc<Stats>) {
    let mut batcher = Batcher::default();
    // The first failure of a run of them is a warning, the rest debug.
    let mut failing = false;
    let mut rejected = false;
    loop {
        let mut closed = false;
        while batcher.len() < MAX_SAMPLES_PER_SEND {
            match sub.rx.try_recv() {
                Ok(b) => batcher.push(b, Instant::now()),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        stats
            .queue_batches
            .store(sub.rx.len() as u64, Ordering::Relaxed);
        if batcher.due(Instant::now(), MAX_SAMPLES_PER_SEND, BATCH_SEND_DEADLINE)
            || (closed && !batcher.is_empty())
        {
            let request = batcher.take(MAX_SAMPLES_PER_SEND);
            let body = body(&request.series);
            let mut attempt = 0;
            loop {
                let answer = target.post(&body).await;
                match verdict(answer.status) {
                    Verdict::Sent => {
                        stats
                            .samples_sent
                            .fetch_add(request.samples as u64, Ordering::Relaxed);
                        stats
                            .highest_sent_ms
                            .fetch_max(request.newest_ms, Ordering::Relaxed);
                        if failing {
                            tracing::info!("remote write to {}: sending again", stats.url);
                        }
                        failing = false;
                        rejected = false;
                        break;
                    }
                    Verdict::Reject => {
                        stats
                            .samples_failed
                            .fetch_add(request.samples as u64, Ordering::Relaxed);
                        let status = answer.status.unwrap_or_default();
                        if rejected {
                            tracing::debug!(
                                "remote write to {}: HTTP {status}, {} samples dropped: {}",
                                stats.url,
                                request.samples,
                                answer.detail
                            );
                        } else {
                            tracing::warn!(
                                "remote write to {}: the receiver answered HTTP {status}; {} samples dropped (and any more it rejects, counted in ferry_remote_write_samples_failed_total): {}",
                                stats.url,
                                request.samples,
                                answer.detail
                            );
                        }
                        rejected = true;
                        failing = false;
                        break;
                    }
                    Verdict::Retry => {
                        let what = match answer.status {
                            Some(s) => format!("HTTP {s}: {}", answer.detail),
                            None => answer.detail.clone(),
                        };
                        if failing {
                            tracing::debug!("remote write to {}: {what}; retrying", stats.url);
                        } else {
                            tracing::warn!(
                                "remote write to {}: {what}; retrying with backoff (newer samples queue up meanwhile)",
                                stats.url
                            );
                        }
                        failing = true;
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(retry_delay(attempt, answer.retry_after.as_deref()))
                            .await;
                        attempt = attempt.saturating_add(1);
                        stats
                            .queue_batches
                            .store(sub.rx.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            continue;
        }
        if closed {
            return;
        }
        let deadline = batcher.deadline(BATCH_SEND_DEADLINE);
        tokio::select! {
            b = sub.rx.recv() => match b {
                Some(b) => batcher.push(b, Instant::now()),
                None if batcher.is_empty() => return,
                None => {}
            },
            _ = sleep_until(deadline), if deadline.is_some() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

#[cfg(test)]
mod tests;
