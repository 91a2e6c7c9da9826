//! Per-revision request metrics (atomics only) and their Prometheus rendering.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds as written in the `le` label.
const BUCKET_LABELS: [&str; 13] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10",
];

/// The same bounds in nanoseconds, for the hot path.
const BUCKET_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

const CLASS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `# HELP` / `# TYPE` lines for the three metric families written by
/// [`RevisionStats::render_prometheus`].
pub const PROMETHEUS_HELP: &str = "\
# HELP ferry_proxy_requests_total Requests answered through the proxy, by revision and status class.
# TYPE ferry_proxy_requests_total counter
# HELP ferry_proxy_upstream_errors_total Requests the proxy answered itself with 502/504 because the upstream failed.
# TYPE ferry_proxy_upstream_errors_total counter
# HELP ferry_proxy_request_duration_seconds Time from receiving the request head to receiving the upstream response head.
# TYPE ferry_proxy_request_duration_seconds histogram
";

const HELP_REQUESTS: &str = "\
# HELP ferry_proxy_requests_total Requests answered through the proxy, by revision and status class.
# TYPE ferry_proxy_requests_total counter
";
const HELP_ERRORS: &str = "\
# HELP ferry_proxy_upstream_errors_total Requests the proxy answered itself with 502/504 because the upstream failed.
# TYPE ferry_proxy_upstream_errors_total counter
";
const HELP_DURATION: &str = "\
# HELP ferry_proxy_request_duration_seconds Time from receiving the request head to receiving the upstream response head.
# TYPE ferry_proxy_request_duration_seconds histogram
";

/// Per-revision request metrics, shared by all upstreams of one revision. Atomics only.
#[derive(Debug, Default)]
pub struct RevisionStats {
    by_class: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    /// Non-cumulative bucket counts; the last slot is the `+Inf` overflow.
    buckets: [AtomicU64; 14],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of [`RevisionStats`]. Serializable (e.g. to JSON,
/// the `+Inf` bucket's bound as the string `"+Inf"`), and
/// [`saturating_add`](StatsSnapshot::saturating_add) sums two, so that
/// counts survive the restart of the process that kept them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Responses by status class: index 0 = 1xx .. 4 = 5xx.
    pub by_class: [u64; 5],
    /// Responses the proxy generated itself (502/504) because the upstream failed.
    /// They are also counted in `by_class[4]`.
    pub upstream_errors: u64,
    /// Sum of `by_class`.
    pub total: u64,
    /// Cumulative histogram: `(upper bound in seconds, observations <= bound)`,
    /// ending with `(f64::INFINITY, count)`.
    #[serde(with = "bucket_bounds")]
    pub latency_buckets: Vec<(f64, u64)>,
    /// Sum of all observed latencies, in seconds.
    pub latency_sum_seconds: f64,
}

impl RevisionStats {
    /// A fresh, zeroed set of counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Count one response with its latency.
    #[cfg(test)]
    pub(crate) fn record(&self, status: StatusCode, latency: Duration) {
        self.record_observation(status, Observation::of(latency));
    }

    /// Count a response the proxy generated because the upstream failed.
    #[cfg(test)]
    pub(crate) fn record_upstream_error(&self, status: StatusCode, latency: Duration) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        self.record(status, latency);
    }

    /// [`record`](Self::record) with the bucket already found (shared with
    /// the instance's [`HttpStats`]).
    pub(crate) fn record_observation(&self, status: StatusCode, obs: Observation) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.buckets[obs.bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(obs.nanos, Ordering::Relaxed);
    }

    /// [`record_upstream_error`](Self::record_upstream_error) with the
    /// bucket already found.
    pub(crate) fn record_upstream_error_observation(&self, status: StatusCode, obs: Observation) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        self.record_observation(status, obs);
    }

    /// Counts by status class, upstream errors and the latency histogram.
    pub fn snapshot(&self) -> StatsSnapshot {
        let by_class: [u64; 5] = std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed));
        let mut cumulative = 0u64;
        let mut latency_buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS_SECONDS
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            latency_buckets.push((bound, cumulative));
        }
        StatsSnapshot {
            by_class,
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            total: by_class.iter().sum(),
            latency_buckets,
            latency_sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Append Prometheus text-format sample lines (no HELP/TYPE lines) for this
    /// revision, with `labels` (e.g. `service="web",revision="3"`) prepended to
    /// each sample's own labels.
    ///
    /// When rendering several revisions into one exposition, prefer
    /// [`render_prometheus_all`], which keeps each metric family in one group
    /// as the text format requires.
    pub fn render_prometheus(&self, labels: &str, out: &mut String) {
        let snap = self.snapshot();
        snap.render_requests(labels, out);
        snap.render_errors(labels, out);
        snap.render_duration(labels, out);
    }
}

impl StatsSnapshot {
    /// The sum of two snapshots (e.g. counts carried over from a previous
    /// process plus the current one's), each count saturating at
    /// `u64::MAX`. Histograms with the same bounds (always, between
    /// snapshots of this crate) add bucket by bucket; otherwise the result
    /// has every bound of either, each counting what both counted up to it.
    pub fn saturating_add(&self, other: &StatsSnapshot) -> StatsSnapshot {
        let by_class = std::array::from_fn(|i| self.by_class[i].saturating_add(other.by_class[i]));
        let latency_buckets = add_histograms(&self.latency_buckets, &other.latency_buckets);
        StatsSnapshot {
            by_class,
            upstream_errors: self.upstream_errors.saturating_add(other.upstream_errors),
            total: self.total.saturating_add(other.total),
            latency_buckets,
            latency_sum_seconds: self.latency_sum_seconds + other.latency_sum_seconds,
        }
    }

    fn render_requests(&self, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (class, count) in CLASS_LABELS.iter().zip(self.by_class) {
            let _ = writeln!(
                out,
                "ferry_proxy_requests_total{{{labels}{sep}code=\"{class}\"}} {count}"
            );
        }
    }

    fn render_errors(&self, labels: &str, out: &mut String) {
        let errors = self.upstream_errors;
        if labels.is_empty() {
            let _ = writeln!(out, "ferry_proxy_upstream_errors_total {errors}");
        } else {
            let _ = writeln!(
                out,
                "ferry_proxy_upstream_errors_total{{{labels}}} {errors}"
            );
        }
    }

    fn render_duration(&self, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut count = 0;
        for (i, &(_, cumulative)) in self.latency_buckets.iter().enumerate() {
            let le = BUCKET_LABELS.get(i).copied().unwrap_or("+Inf");
            let _ = writeln!(
                out,
                "ferry_proxy_request_duration_seconds_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
            count = cumulative;
        }
        let sum = self.latency_sum_seconds;
        if labels.is_empty() {
            let _ = writeln!(out, "ferry_proxy_request_duration_seconds_sum {sum}");
            let _ = writeln!(out, "ferry_proxy_request_duration_seconds_count {count}");
        } else {
            let _ = writeln!(
                out,
                "ferry_proxy_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "ferry_proxy_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
    }
}

/// The sum of two cumulative histograms. With the same bounds (always,
/// between snapshots of this crate) they add bucket by bucket; otherwise
/// the result has every bound of either, each counting what both counted up
/// to it.
fn add_histograms(a: &[(f64, u64)], b: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let same_bounds = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0);
    if same_bounds {
        return a
            .iter()
            .zip(b)
            .map(|(&(bound, x), &(_, y))| (bound, x.saturating_add(y)))
            .collect();
    }
    // Cumulative counts: what a histogram counted up to `bound` is the
    // count of its largest bound not above it.
    let up_to = |buckets: &[(f64, u64)], bound: f64| {
        buckets
            .iter()
            .take_while(|(b, _)| *b <= bound)
            .last()
            .map_or(0, |&(_, count)| count)
    };
    let mut bounds: Vec<f64> = a.iter().chain(b).map(|&(bound, _)| bound).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
        .into_iter()
        .map(|bound| (bound, up_to(a, bound).saturating_add(up_to(b, bound))))
        .collect()
}

/// Serde for the histogram's `(bound, count)` pairs: a bound that is not
/// finite (the last, `+Inf`) is written as a string, which JSON can carry.
mod bucket_bounds {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct Bound(f64);

    impl Serialize for Bound {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                b if b.is_finite() => s.serialize_f64(b),
                b if b.is_nan() => s.serialize_str("NaN"),
                b if b > 0.0 => s.serialize_str("+Inf"),
                _ => s.serialize_str("-Inf"),
            }
        }
    }

    impl<'de> Deserialize<'de> for Bound {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
            struct BoundVisitor;
            impl Visitor<'_> for BoundVisitor {
                type Value = Bound;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a number, \"+Inf\", \"-Inf\" or \"NaN\"")
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bound, E> {
                    Ok(Bound(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bound, E> {
                    Ok(Bound(v as f64))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bound, E> {
                    Ok(Bound(v as f64))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Bound, E> {
                    match v {
                        "+Inf" | "Inf" | "inf" | "+inf" => Ok(Bound(f64::INFINITY)),
                        "-Inf" | "-inf" => Ok(Bound(f64::NEG_INFINITY)),
                        "NaN" => Ok(Bound(f64::NAN)),
                        _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                    }
                }
            }
            d.deserialize_any(BoundVisitor)
        }
    }

    pub(super) fn serialize<S: Serializer>(
        buckets: &[(f64, u64)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(buckets.iter().map(|&(bound, count)| (Bound(bound), count)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(f64, u64)>, D::Error> {
        let pairs = Vec::<(Bound, u64)>::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(bound, count)| (bound.0, count))
            .collect())
    }
}

/// Render a complete exposition (HELP/TYPE lines included) for several
/// revisions, each given as `(labels, stats)`, with every metric family kept
/// in a single group as the Prometheus text format requires.
pub fn render_prometheus_all(revisions: &[(&str, &RevisionStats)], out: &mut String) {
    let snaps: Vec<(&str, StatsSnapshot)> = revisions
        .iter()
        .map(|(labels, stats)| (*labels, stats.snapshot()))
        .collect();
    let refs: Vec<(&str, &StatsSnapshot)> = snaps.iter().map(|(l, s)| (*l, s)).collect();
    render_prometheus_snapshots(&refs, out);
}

/// [`render_prometheus_all`] from snapshots (e.g. received from a data-plane
/// process, or summed with [`StatsSnapshot::saturating_add`]).
pub fn render_prometheus_snapshots(revisions: &[(&str, &StatsSnapshot)], out: &mut String) {
    out.push_str(HELP_REQUESTS);
    for (labels, snap) in revisions {
        snap.render_requests(labels, out);
    }
    out.push_str(HELP_ERRORS);
    for (labels, snap) in revisions {
        snap.render_errors(labels, out);
    }
    out.push_str(HELP_DURATION);
    for (labels, snap) in revisions {
        snap.render_duration(labels, out);
    }
}

/// One latency observation: its nanoseconds and its histogram slot (the
/// last slot is `+Inf`), found once per request for every histogram it
/// goes into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    nanos: u64,
    bucket: usize,
}

impl Observation {
    pub(crate) fn of(latency: Duration) -> Observation {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKET_NANOS.len());
        Observation { nanos, bucket }
    }
}

/// The lowest status code [`HttpStats`] counts by itself.
const FIRST_CODE: u16 = 100;
/// How many codes it counts: every three-digit code (100..=999), which is
/// what both paths let through (RFC 9110 allows 100..=599; an upstream
/// may still send 600..=999 and the client gets it as is).
const CODES: usize = 900;

/// Request metrics of one upstream instance (or of the answers a proxy
/// gave without any upstream), as an ordinary instrumented service keeps
/// them: a counter per exact status code and a latency histogram with the
/// bounds of [`LATENCY_BUCKETS_SECONDS`]. Atomics only, allocated once (at
/// plan time), never resized: a request is three relaxed `fetch_add`s.
///
/// Memory: 900 × 8 B of code counters + 15 × 8 B of histogram ≈ 7.3 KB
/// per instance, for an exact count of any code without a lock or an
/// allocation (a map keyed by code would need one or the other).
#[derive(Debug)]
pub struct HttpStats {
    /// Responses by status code: index `code - 100`.
    codes: Box<[AtomicU64]>,
    /// Non-cumulative bucket counts; the last slot is the `+Inf` overflow.
    buckets: [AtomicU64; 14],
    sum_nanos: AtomicU64,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            codes: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of [`HttpStats`], serializable (the data plane
/// sends it to the control plane) and summable across processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpSnapshot {
    /// `(status code, responses)` for every code counted at least once,
    /// ascending.
    pub codes: Vec<(u16, u64)>,
    /// Cumulative histogram: `(upper bound in seconds, observations <= bound)`,
    /// ending with `(f64::INFINITY, count)`.
    #[serde(with = "bucket_bounds")]
    pub latency_buckets: Vec<(f64, u64)>,
    /// Sum of all observed latencies, in seconds.
    pub latency_sum_seconds: f64,
}

impl HttpStats {
    /// A fresh, zeroed set of counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Count one response with its latency.
    pub fn record(&self, status: StatusCode, latency: Duration) {
        self.record_observation(status, Observation::of(latency));
    }

    pub(crate) fn record_observation(&self, status: StatusCode, obs: Observation) {
        // `StatusCode` is always 100..=999.
        let slot = usize::from(status.as_u16().saturating_sub(FIRST_CODE)).min(CODES - 1);
        self.codes[slot].fetch_add(1, Ordering::Relaxed);
        self.buckets[obs.bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(obs.nanos, Ordering::Relaxed);
    }

    /// Counts by code and the latency histogram.
    pub fn snapshot(&self) -> HttpSnapshot {
        let codes = self
            .codes
            .iter()
            .enumerate()
            .map(|(i, n)| (FIRST_CODE + i as u16, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        let mut cumulative = 0u64;
        let latency_buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                cumulative += bucket.load(Ordering::Relaxed);
                let bound = LATENCY_BUCKETS_SECONDS
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY);
                (bound, cumulative)
            })
            .collect();
        HttpSnapshot {
            codes,
            latency_buckets,
            latency_sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl HttpSnapshot {
    /// Responses counted (the histogram's count).
    pub fn count(&self) -> u64 {
        self.latency_buckets.last().map_or(0, |&(_, n)| n)
    }

    /// Responses with status `code`.
    pub fn of_code(&self, code: u16) -> u64 {
        self.codes
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(0, |&(_, n)| n)
    }

    /// The sum of two snapshots (counts of a data plane that is gone plus
    /// the current one's), saturating.
    pub fn saturating_add(&self, other: &HttpSnapshot) -> HttpSnapshot {
        let mut codes = self.codes.clone();
        for &(code, n) in &other.codes {
            match codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m = m.saturating_add(n),
                None => codes.push((code, n)),
            }
        }
        codes.sort_unstable();
        HttpSnapshot {
            codes,
            latency_buckets: add_histograms(&self.latency_buckets, &other.latency_buckets),
            latency_sum_seconds: self.latency_sum_seconds + other.latency_sum_seconds,
        }
    }
}

/// `# HELP` / `# TYPE` of `http_requests_total`.
const HELP_HTTP_REQUESTS: &str = "\
# HELP http_requests_total Requests answered through the proxy, by exact status code (the proxy's own 502/504 counted against the instance that failed).
# TYPE http_requests_total counter
";
/// `# HELP` / `# TYPE` of `http_request_duration_seconds`.
const HELP_HTTP_DURATION: &str = "\
# HELP http_request_duration_seconds Time from receiving the request head to receiving the upstream response head.
# TYPE http_request_duration_seconds histogram
";

/// The `le` label of a bound.
fn le_label(bound: f64) -> String {
    match LATENCY_BUCKETS_SECONDS.iter().position(|&b| b == bound) {
        Some(i) => BUCKET_LABELS[i].to_string(),
        None if bound == f64::INFINITY => "+Inf".to_string(),
        None => bound.to_string(),
    }
}

/// Render `http_requests_total` and `http_request_duration_seconds`, each
/// one family block with HELP and TYPE, for `series` given as `(labels,
/// snapshot)` (`labels` e.g. `service="web",revision="3",version="1.2",
/// instance="web-3-a"`, already escaped). Codes never seen have no line, as
/// in client libraries that create a labelled child on first use; the
/// histogram of a series is always written.
pub fn render_http_families(series: &[(&str, &HttpSnapshot)], out: &mut String) {
    out.push_str(HELP_HTTP_REQUESTS);
    for (labels, snap) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        for (code, n) in &snap.codes {
            let _ = writeln!(
                out,
                "http_requests_total{{{labels}{sep}status=\"{code}\"}} {n}"
            );
        }
    }
    out.push_str(HELP_HTTP_DURATION);
    for (labels, snap) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        for &(bound, cumulative) in &snap.latency_buckets {
            let le = le_label(bound);
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let (sum, count) = (snap.latency_sum_seconds, snap.count());
        let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "http_request_duration_seconds_count{{{labels}}} {count}"
        );
    }
}

/// A label value escaped for the text format (`\`, `"` and newlines).
pub fn escape_label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn records_and_renders() {
        let stats = RevisionStats::new();
        stats.record(StatusCode::OK, Duration::from_millis(3));
        stats.record(StatusCode::NOT_FOUND, Duration::from_millis(30));
        stats.record_upstream_error(StatusCode::BAD_GATEWAY, Duration::from_secs(20));
        let snap = stats.snapshot();
        assert_eq!(snap.by_class, [0, 1, 0, 1, 1]);
        assert_eq!(snap.upstream_errors, 1);
        assert_eq!(snap.total, 3);
        assert_eq!(snap.latency_buckets.len(), 14);
        assert_eq!(snap.latency_buckets[2], (0.005, 1));
        assert_eq!(snap.latency_buckets[4], (0.025, 1));
        assert_eq!(snap.latency_buckets[5], (0.05, 2));
        assert_eq!(snap.latency_buckets[12], (10.0, 2));
        assert_eq!(snap.latency_buckets[13], (f64::INFINITY, 3));
        assert!((snap.latency_sum_seconds - 20.033).abs() < 1e-9);

        let mut out = String::new();
        stats.render_prometheus("service=\"web\",revision=\"3\"", &mut out);
        for line in [
            "ferry_proxy_requests_total{service=\"web\",revision=\"3\",code=\"1xx\"} 0\n",
            "ferry_proxy_requests_total{service=\"web\",revision=\"3\",code=\"2xx\"} 1\n",
            "ferry_proxy_requests_total{service=\"web\",revision=\"3\",code=\"5xx\"} 1\n",
            "ferry_proxy_upstream_errors_total{service=\"web\",revision=\"3\"} 1\n",
            "ferry_proxy_request_duration_seconds_bucket{service=\"web\",revision=\"3\",le=\"0.005\"} 1\n",
            "ferry_proxy_request_duration_seconds_bucket{service=\"web\",revision=\"3\",le=\"1\"} 2\n",
            "ferry_proxy_request_duration_seconds_bucket{service=\"web\",revision=\"3\",le=\"+Inf\"} 3\n",
            "ferry_proxy_request_duration_seconds_sum{service=\"web\",revision=\"3\"} 20.033\n",
            "ferry_proxy_request_duration_seconds_count{service=\"web\",revision=\"3\"} 3\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains('#'));

        let mut bare = String::new();
        stats.render_prometheus("", &mut bare);
        assert!(bare.contains("ferry_proxy_requests_total{code=\"2xx\"} 1\n"));
        assert!(bare.contains("ferry_proxy_upstream_errors_total 1\n"));
        assert!(bare.contains("ferry_proxy_request_duration_seconds_count 3\n"));
    }

    #[test]
    fn snapshots_round_trip_through_json_and_add_up() {
        let stats = RevisionStats::new();
        stats.record(StatusCode::OK, Duration::from_millis(3));
        stats.record_upstream_error(StatusCode::BAD_GATEWAY, Duration::from_secs(20));
        let snap = stats.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains(r#"["+Inf",2]"#), "{json}");
        let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);

        // Carried over a restart: the old process's counts plus the new one's.
        let later = RevisionStats::new();
        later.record(StatusCode::NOT_FOUND, Duration::from_millis(30));
        let sum = back.saturating_add(&later.snapshot());
        assert_eq!(sum.by_class, [0, 1, 0, 1, 1]);
        assert_eq!((sum.total, sum.upstream_errors), (3, 1));
        assert_eq!(sum.latency_buckets.len(), 14);
        assert_eq!(sum.latency_buckets[2], (0.005, 1));
        assert_eq!(sum.latency_buckets[5], (0.05, 2));
        assert_eq!(sum.latency_buckets[13], (f64::INFINITY, 3));
        assert!((sum.latency_sum_seconds - 20.033).abs() < 1e-9);
        // The same as one process counting all three.
        let all = RevisionStats::new();
        all.record(StatusCode::OK, Duration::from_millis(3));
        all.record_upstream_error(StatusCode::BAD_GATEWAY, Duration::from_secs(20));
        all.record(StatusCode::NOT_FOUND, Duration::from_millis(30));
        let mut expected = all.snapshot();
        expected.latency_sum_seconds = sum.latency_sum_seconds;
        assert_eq!(sum, expected);

        // Saturating, and histograms with other bounds merge by bound.
        let mut big = snap.clone();
        big.total = u64::MAX;
        assert_eq!(big.saturating_add(&snap).total, u64::MAX);
        let mut odd = snap.clone();
        odd.latency_buckets = vec![(0.004, 1), (f64::INFINITY, 2)];
        let merged = snap.saturating_add(&odd);
        assert_eq!(merged.latency_buckets.len(), 15);
        assert_eq!(merged.latency_buckets[2], (0.004, 1));
        assert_eq!(merged.latency_buckets[3], (0.005, 2));
        assert_eq!(merged.latency_buckets[14], (f64::INFINITY, 4));
        let empty = StatsSnapshot {
            latency_buckets: Vec::new(),
            ..snap.clone()
        };
        assert_eq!(
            empty.saturating_add(&snap).latency_buckets,
            snap.latency_buckets
        );
    }

    #[test]
    fn render_all_groups_families() {
        let a = RevisionStats::new();
        let b = RevisionStats::new();
        a.record(StatusCode::OK, Duration::from_millis(1));
        b.record(StatusCode::OK, Duration::from_millis(1));
        let mut out = String::new();
        render_prometheus_all(&[("revision=\"1\"", &a), ("revision=\"2\"", &b)], &mut out);
        assert!(out.starts_with("# HELP ferry_proxy_requests_total"));
        let first_error = out.find("ferry_proxy_upstream_errors_total{").unwrap();
        let last_request = out.rfind("ferry_proxy_requests_total{").unwrap();
        assert!(last_request < first_error);
        let help: String = [HELP_REQUESTS, HELP_ERRORS, HELP_DURATION].concat();
        assert_eq!(help, PROMETHEUS_HELP);
        // The same from snapshots.
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let mut from_snapshots = String::new();
        render_prometheus_snapshots(
            &[("revision=\"1\"", &sa), ("revision=\"2\"", &sb)],
            &mut from_snapshots,
        );
        assert_eq!(from_snapshots, out);
    }

    #[test]
    fn http_stats_count_exact_codes_and_render_two_families() {
        let h = HttpStats::new();
        h.record(StatusCode::OK, Duration::from_millis(3));
        h.record(StatusCode::OK, Duration::from_millis(30));
        h.record(StatusCode::from_u16(418).unwrap(), Duration::from_millis(1));
        h.record(StatusCode::from_u16(599).unwrap(), Duration::from_secs(20));
        h.record(StatusCode::from_u16(999).unwrap(), Duration::ZERO);
        h.record(StatusCode::CONTINUE, Duration::ZERO);
        let snap = h.snapshot();
        assert_eq!(
            snap.codes,
            [(100, 1), (200, 2), (418, 1), (599, 1), (999, 1)]
        );
        assert_eq!(
            (snap.count(), snap.of_code(200), snap.of_code(500)),
            (6, 2, 0)
        );
        assert_eq!(snap.latency_buckets[0], (0.001, 3));
        assert_eq!(snap.latency_buckets[2], (0.005, 4));
        assert_eq!(snap.latency_buckets[13], (f64::INFINITY, 6));
        assert!((snap.latency_sum_seconds - 20.034).abs() < 1e-9);

        // Through JSON (the data plane's report) and summed with a later
        // process's counts.
        let back: HttpSnapshot =
            serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        let later = HttpStats::new();
        later.record(StatusCode::OK, Duration::from_millis(3));
        later.record(StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        let sum = back.saturating_add(&later.snapshot());
        assert_eq!(
            sum.codes,
            [(100, 1), (200, 3), (418, 1), (502, 1), (599, 1), (999, 1)]
        );
        assert_eq!(sum.count(), 8);

        let mut out = String::new();
        render_http_families(
            &[
                ("service=\"web\",instance=\"a\"", &snap),
                ("service=\"web\",instance=\"b\"", &later.snapshot()),
            ],
            &mut out,
        );
        for line in [
            "http_requests_total{service=\"web\",instance=\"a\",status=\"200\"} 2\n",
            "http_requests_total{service=\"web\",instance=\"a\",status=\"999\"} 1\n",
            "http_requests_total{service=\"web\",instance=\"b\",status=\"502\"} 1\n",
            "http_request_duration_seconds_bucket{service=\"web\",instance=\"a\",le=\"0.005\"} 4\n",
            "http_request_duration_seconds_bucket{service=\"web\",instance=\"a\",le=\"+Inf\"} 6\n",
            "http_request_duration_seconds_count{service=\"web\",instance=\"b\"} 2\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.contains("status=\"500\""),
            "codes never seen have no line"
        );
        // One block per family, each under its HELP and TYPE.
        let requests = out.find("# TYPE http_requests_total counter\n").unwrap();
        let duration = out
            .find("# TYPE http_request_duration_seconds histogram\n")
            .unwrap();
        assert!(requests < duration);
        assert!(out.rfind("http_requests_total{").unwrap() < duration);
        assert!(out.find("http_request_duration_seconds_bucket{").unwrap() > duration);

        assert_eq!(escape_label_value("1.2"), "1.2");
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
