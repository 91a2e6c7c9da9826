//! What one scrape stores, decided without I/O: target labels merged into
//! scraped samples (Prometheus's `honor_labels`), the synthetic `up`,
//! `scrape_duration_seconds` and `scrape_samples_scraped`, and the limits a
//! scrape must keep.

use crate::tsdb::Batch;
use ferry_metrics::exposition::{CachedSample, Format, Metadata, ParseError, SeriesCache};
use ferry_metrics::storage::Labels;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest response body a scrape reads (16 MiB); a bigger one fails
/// the scrape, and reading stops there.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The most samples one scrape may bring (50,000); more fail the scrape
/// and none of them is stored, as Prometheus's `sample_limit` does.
pub const MAX_SAMPLES: usize = 50_000;

/// The longest a scrape may take by default (at most the interval).
pub const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a scrape asks for: OpenMetrics first, then the text format.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Why a scrape failed (the target is down for it).
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("the response is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{count} samples, more than the limit of {limit}")]
    TooManySamples { count: usize, limit: usize },
    #[error("the response is not UTF-8 text")]
    NotUtf8,
    #[error("the response does not parse: {0}")]
    Parse(#[from] ParseError),
    #[error("cannot read {what}: {error}")]
    Read { what: &'static str, error: String },
    #[error("the instance is not ready")]
    NotReady,
}

/// Which synthetic series a target gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    /// `up`, `scrape_duration_seconds` and `scrape_samples_scraped`.
    Full,
    /// `up` only: an instance that has no metrics of its own to scrape.
    UpOnly,
}

/// A scraped sample's labels with the target's: with `honor` (Prometheus's
/// `honor_labels: true`) the sample's own values win; without, the
/// target's win and a sample's conflicting value is kept as
/// `exported_<name>` (`exported_exported_<name>` if that is taken too).
/// Labels with empty values are dropped, as Prometheus treats them as
/// absent.
pub fn merge_labels(sample: &Labels, target: &Labels, honor: bool) -> Labels {
    let mut out = sample.clone();
    if honor {
        for (k, v) in target {
            if out.get(k).is_none_or(|s| s.is_empty()) {
                out.insert(k.clone(), v.clone());
            }
        }
    } else {
        let mut conflicts: Vec<(String, String)> = Vec::new();
        for (k, v) in target {
            if let Some(old) = out.insert(k.clone(), v.clone())
                && !old.is_empty()
            {
                conflicts.push((k.clone(), old));
            }
        }
        // Shorter names first, so `job` takes `exported_job` before an
        // exposed `exported_job` would be pushed further out.
        conflicts.sort_by_key(|(k, _)| k.len());
        for (k, old) in conflicts {
            let mut name = format!("exported_{k}");
            while out.get(&name).is_some_and(|v| !v.is_empty()) {
                name = format!("exported_{name}");
            }
            out.insert(name, old);
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// Everything one scrape of a target stores at `now_ms`: its samples
/// (their labels final, see [`merge_labels`]; their own timestamps
/// honored), or none when the scrape failed, and the synthetic series.
pub fn scrape_batch(
    target: &Labels,
    synthetic: Synthetic,
    result: &Result<Vec<CachedSample>, ScrapeError>,
    now_ms: i64,
    duration: Duration,
) -> Batch {
    let mut batch: Batch = match result {
        Ok(samples) => samples
            .iter()
            .map(|(labels, v, ts)| (labels.clone(), ts.unwrap_or(now_ms), *v))
            .collect(),
        Err(_) => Vec::new(),
    };
    let synth = |name: &str| {
        let mut l = target.clone();
        l.retain(|_, v| !v.is_empty());
        l.insert("__name__".into(), name.into());
        Arc::new(l)
    };
    batch.push((synth("up"), now_ms, if result.is_ok() { 1.0 } else { 0.0 }));
    if synthetic == Synthetic::Full {
        batch.push((
            synth("scrape_duration_seconds"),
            now_ms,
            duration.as_secs_f64(),
        ));
        let n = result.as_ref().map_or(0, Vec::len);
        batch.push((synth("scrape_samples_scraped"), now_ms, n as f64));
    }
    batch
}

/// A target's samples and its families' metadata.
pub type Fetched = (Vec<CachedSample>, BTreeMap<String, Metadata>);

/// A response body read chunk by chunk, refused past `limit` bytes.
pub struct BodyBuf {
    buf: Vec<u8>,
    limit: usize,
}

impl BodyBuf {
    pub fn new(limit: usize) -> BodyBuf {
        BodyBuf {
            buf: Vec::new(),
            limit,
        }
    }

    /// Add a chunk; an error once the body is over the limit (the caller
    /// stops reading).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ScrapeError> {
        if self.buf.len() + chunk.len() > self.limit {
            return Err(ScrapeError::BodyTooLarge { limit: self.limit });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The body as text, parsed in the format its `Content-Type` says
    /// (through the target's `cache`), and held to `sample_limit`.
    pub fn parse(
        self,
        content_type: &str,
        sample_limit: usize,
        cache: &mut SeriesCache,
    ) -> Result<Fetched, ScrapeError> {
        let text = String::from_utf8(self.buf).map_err(|_| ScrapeError::NotUtf8)?;
        parse_limited(
            &text,
            Format::from_content_type(content_type),
            sample_limit,
            cache,
        )
    }
}

/// Parse an exposition through a target's `cache`, refusing more than
/// `limit` samples.
pub fn parse_limited(
    text: &str,
    format: Format,
    limit: usize,
    cache: &mut SeriesCache,
) -> Result<Fetched, ScrapeError> {
    let mut samples = Vec::new();
    let metadata = ferry_metrics::exposition::parse_cached(text, format, cache, &mut samples)?;
    if samples.len() > limit {
        return Err(ScrapeError::TooManySamples {
            count: samples.len(),
            limit,
        });
    }
    Ok((samples, metadata))
}

/// A target's series cache: each new series line's labels made final with
/// the target's labels ([`merge_labels`]).
pub fn series_cache(target: &Labels, honor: bool) -> SeriesCache {
    let target = target.clone();
    SeriesCache::new(move |l| merge_labels(&l, &target, honor))
}

/// How long a scrape may take: the target's `timeout`, else the interval,
/// at most [`MAX_DEFAULT_TIMEOUT`].
pub fn timeout_for(interval: Duration, timeout: Option<Duration>) -> Duration {
    timeout.unwrap_or(interval.min(MAX_DEFAULT_TIMEOUT))
}

/// The `instance` label of a scrape URL: its `host:port` (port 80 when
/// the URL has none), without any user or password.
pub fn instance_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = match host.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    } && !host.ends_with(']');
    if has_port {
        host.to_string()
    } else {
        format!("{host}:80")
    }
}

/// A URL as logs may show it: no user, password or query string.
pub fn loggable_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn target_labels_win_and_exposed_ones_are_renamed_exported() {
        let target = labels(&[
            ("job", "api"),
            ("instance", "127.0.0.1:9000"),
            ("env", "prod"),
        ]);
        let sample = labels(&[("__name__", "m"), ("job", "inner"), ("code", "200")]);
        assert_eq!(
            merge_labels(&sample, &target, false),
            labels(&[
                ("__name__", "m"),
                ("job", "api"),
                ("exported_job", "inner"),
                ("instance", "127.0.0.1:9000"),
                ("env", "prod"),
                ("code", "200"),
            ])
        );
        // An exposed exported_job pushes the conflict one step further.
        let sample = labels(&[("__name__", "m"), ("job", "inner"), ("exported_job", "x")]);
        let merged = merge_labels(&sample, &target, false);
        assert_eq!(merged["exported_job"], "x");
        assert_eq!(merged["exported_exported_job"], "inner");
        assert_eq!(merged["job"], "api");
        // An empty value is no conflict; an equal one is (as in Prometheus).
        let sample = labels(&[("__name__", "m"), ("job", "api"), ("env", "")]);
        assert_eq!(
            merge_labels(&sample, &target, false),
            labels(&[
                ("__name__", "m"),
                ("job", "api"),
                ("exported_job", "api"),
                ("instance", "127.0.0.1:9000"),
                ("env", "prod"),
            ])
        );
    }

    #[test]
    fn honored_labels_keep_the_samples_own_values() {
        let target = labels(&[("job", "ferry"), ("instance", "127.0.0.1:7000")]);
        let sample = labels(&[("__name__", "m"), ("instance", "web-1-abc"), ("x", "")]);
        assert_eq!(
            merge_labels(&sample, &target, true),
            labels(&[
                ("__name__", "m"),
                ("job", "ferry"),
                ("instance", "web-1-abc")
            ])
        );
    }

    fn cache() -> SeriesCache {
        series_cache(&labels(&[("job", "j")]), false)
    }

    #[test]
    fn a_targets_cache_gives_merged_labels_and_forgets_series_that_left() {
        let mut c = series_cache(&labels(&[("job", "j"), ("instance", "h:1")]), false);
        let first = parse_limited("a{job=\"x\"} 1\nb 2\n", Format::Prometheus, 10, &mut c)
            .unwrap()
            .0;
        assert_eq!(first[0].0["exported_job"], "x");
        assert_eq!(first[0].0["job"], "j");
        let again = parse_limited("a{job=\"x\"} 5 123\n", Format::Prometheus, 10, &mut c)
            .unwrap()
            .0;
        assert!(
            Arc::ptr_eq(&first[0].0, &again[0].0),
            "the same labels, not rebuilt"
        );
        assert_eq!((again[0].1, again[0].2), (5.0, Some(123)));
        assert_eq!(c.len(), 1, "b left the cache with the target");
        assert!(parse_limited("a{job=\"x\"} oops\n", Format::Prometheus, 10, &mut c).is_err());
    }

    /// A sample as a target's cache makes it: its labels merged.
    fn sample(target: &Labels, name: &str, value: f64, ts: Option<i64>) -> CachedSample {
        let labels = merge_labels(&labels(&[("__name__", name)]), target, false);
        (Arc::new(labels), value, ts)
    }

    #[test]
    fn a_good_scrape_stores_its_samples_and_up_1() {
        let target = labels(&[("job", "j"), ("instance", "h:1")]);
        let result = Ok(vec![
            sample(&target, "a", 1.0, None),
            sample(&target, "b", 2.0, Some(500)),
        ]);
        let batch = scrape_batch(
            &target,
            Synthetic::Full,
            &result,
            1000,
            Duration::from_millis(250),
        );
        let find = |name: &str| {
            batch
                .iter()
                .find(|(l, _, _)| l["__name__"] == name)
                .map(|(l, t, v)| (l["job"].clone(), *t, *v))
                .unwrap()
        };
        assert_eq!(find("a"), ("j".into(), 1000, 1.0));
        assert_eq!(find("b"), ("j".into(), 500, 2.0), "its own timestamp");
        assert_eq!(find("up"), ("j".into(), 1000, 1.0));
        assert_eq!(find("scrape_duration_seconds").2, 0.25);
        assert_eq!(find("scrape_samples_scraped").2, 2.0);
        assert_eq!(batch.len(), 5);
    }

    #[test]
    fn a_failed_scrape_stores_only_up_0_and_its_synthetic_series() {
        let target = labels(&[("job", "j"), ("instance", "h:1")]);
        let batch = scrape_batch(
            &target,
            Synthetic::Full,
            &Err(ScrapeError::Status(500)),
            1000,
            Duration::from_millis(3),
        );
        let names: Vec<(&str, f64)> = batch
            .iter()
            .map(|(l, _, v)| (l["__name__"].as_str(), *v))
            .collect();
        assert_eq!(
            names,
            [
                ("up", 0.0),
                ("scrape_duration_seconds", 0.003),
                ("scrape_samples_scraped", 0.0)
            ]
        );
        let up_only = scrape_batch(
            &target,
            Synthetic::UpOnly,
            &Err(ScrapeError::NotReady),
            1000,
            Duration::ZERO,
        );
        assert_eq!(up_only.len(), 1);
        assert_eq!(
            *up_only[0].0,
            labels(&[("__name__", "up"), ("job", "j"), ("instance", "h:1")])
        );
    }

    #[test]
    fn body_and_sample_limits() {
        let mut body = BodyBuf::new(10);
        body.push(b"a 1\n").unwrap();
        body.push(b"b 2\n").unwrap();
        assert!(matches!(
            body.push(b"c 3\n"),
            Err(ScrapeError::BodyTooLarge { limit: 10 })
        ));
        let mut body = BodyBuf::new(100);
        body.push(b"a 1\nb 2\n").unwrap();
        assert_eq!(
            body.parse("text/plain; version=0.0.4", 2, &mut cache())
                .unwrap()
                .0
                .len(),
            2
        );
        let text = "a 1\nb 2\nc 3\n";
        assert!(matches!(
            parse_limited(text, Format::Prometheus, 2, &mut cache()),
            Err(ScrapeError::TooManySamples { count: 3, limit: 2 })
        ));
        let mut bad = BodyBuf::new(100);
        bad.push(&[0xff, 0xfe]).unwrap();
        assert!(matches!(
            bad.parse("text/plain", 10, &mut cache()),
            Err(ScrapeError::NotUtf8)
        ));
        let mut garbage = BodyBuf::new(100);
        garbage.push(b"<html>not metrics</html>").unwrap();
        assert!(matches!(
            garbage.parse("text/html", 10, &mut cache()),
            Err(ScrapeError::Parse(_))
        ));
    }

    #[test]
    fn openmetrics_by_content_type() {
        let mut body = BodyBuf::new(1000);
        // OpenMetrics timestamps are seconds; Prometheus text's are ms.
        body.push(b"a 1 2.5\n# EOF\n").unwrap();
        let e = body
            .parse(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                10,
                &mut cache(),
            )
            .unwrap();
        assert_eq!(e.0[0].2, Some(2500));
    }

    #[test]
    fn timeouts_instances_and_loggable_urls() {
        assert_eq!(
            timeout_for(Duration::from_secs(30), None),
            Duration::from_secs(10)
        );
        assert_eq!(
            timeout_for(Duration::from_millis(200), None),
            Duration::from_millis(200)
        );
        assert_eq!(
            timeout_for(Duration::from_secs(30), Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            instance_of("http://127.0.0.1:9100/metrics"),
            "127.0.0.1:9100"
        );
        assert_eq!(
            instance_of("http://user:pw@db.local/metrics?x=1"),
            "db.local:80"
        );
        assert_eq!(instance_of("http://[::1]:9100/m"), "[::1]:9100");
        assert_eq!(instance_of("http://[::1]/m"), "[::1]:80");
        assert_eq!(
            loggable_url("http://user:secret@h:1/metrics?token=abc"),
            "http://h:1/metrics"
        );
    }
}
