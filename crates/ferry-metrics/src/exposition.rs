//! The Prometheus text exposition format (0.0.4) and OpenMetrics text, as
//! scraped from `/metrics`: samples with their labels, and each family's
//! type and help.

use crate::storage::Labels;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Scraped {
    pub labels: Labels,
    pub value: f64,
    /// The sample's own timestamp (ms), if the line has one.
    pub timestamp_ms: Option<i64>,
}

/// A family's `# TYPE` and `# HELP`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub kind: String,
    pub help: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Scraped>,
    pub metadata: BTreeMap<String, Metadata>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Which text format a body is in: OpenMetrics writes timestamps in
/// seconds and ends with `# EOF`; Prometheus's in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// From a response's `Content-Type`.
    pub fn from_content_type(ct: &str) -> Format {
        if ct.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// A sample as [`parse_cached`] gives it: its final labels (shared with
/// the cache), value and own timestamp (ms), if any.
pub type CachedSample = (Arc<Labels>, f64, Option<i64>);

/// What a scrape loop keeps between scrapes of one target, as
/// Prometheus's scrape cache does: each series line's text (name and
/// labels, as written) and the final label set made from it, so a series
/// seen before costs a lookup instead of parsing and building its labels.
/// Entries not seen in the last parse are dropped.
pub struct SeriesCache {
    map: HashMap<Box<str>, (Arc<Labels>, u64), foldhash::fast::RandomState>,
    generation: u64,
    finish: Box<dyn Fn(Labels) -> Labels + Send + Sync>,
}

impl SeriesCache {
    /// `finish` turns a line's parsed labels into the series' final ones
    /// (e.g. adds the target's labels).
    pub fn new(finish: impl Fn(Labels) -> Labels + Send + Sync + 'static) -> SeriesCache {
        SeriesCache {
            map: HashMap::default(),
            generation: 0,
            finish: Box::new(finish),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A label set made final as this cache makes those it parses.
    pub fn finish(&self, labels: Labels) -> Labels {
        (self.finish)(labels)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Where a sample line's series text (name and labels) ends: after the
/// name, or after the `}` that closes its labels (outside quotes).
fn series_end(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let name_end = b
        .iter()
        .position(|c| *c == b'{' || c.is_ascii_whitespace())
        .unwrap_or(b.len());
    if b.get(name_end) != Some(&b'{') {
        return Some(name_end);
    }
    let mut quoted = false;
    let mut i = name_end + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parse a body as [`parse`] does, into `out`, reusing and refreshing
/// `cache`; returns the families' metadata. A line whose series text is
/// cached is not parsed again: only its value and timestamp are.
pub fn parse_cached(
    text: &str,
    format: Format,
    cache: &mut SeriesCache,
    out: &mut Vec<CachedSample>,
) -> Result<BTreeMap<String, Metadata>, ParseError> {
    cache.generation += 1;
    let generation = cache.generation;
    let mut metadata = BTreeMap::new();
    for (n, line) in sample_lines(text, &mut metadata) {
        let bad = |reason: String| ParseError { line: n, reason };
        let end = series_end(line);
        let hit = end.and_then(|end| {
            let (series, rest) = line.split_at(end);
            let entry = cache.map.get_mut(series)?;
            entry.1 = generation;
            Some((entry.0.clone(), rest))
        });
        match hit {
            Some((labels, rest)) => {
                let (value, ts) = value_and_time(rest, format).map_err(bad)?;
                out.push((labels, value, ts));
            }
            None => {
                let s = parse_sample(line, format).map_err(bad)?;
                let labels = Arc::new((cache.finish)(s.labels));
                if let Some(end) = end {
                    cache
                        .map
                        .insert(line[..end].into(), (labels.clone(), generation));
                }
                out.push((labels, s.value, s.timestamp_ms));
            }
        }
    }
    cache.map.retain(|_, e| e.1 == generation);
    Ok(metadata)
}

/// The sample lines of a body, with their 1-based numbers: blank lines
/// are skipped, `#` lines go to `metadata`, and `# EOF` ends the body.
fn sample_lines<'a>(
    text: &'a str,
    metadata: &'a mut BTreeMap<String, Metadata>,
) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    let mut ended = false;
    text.lines().enumerate().filter_map(move |(i, raw)| {
        let line = raw.trim_end_matches('\r');
        if ended || line.trim().is_empty() {
            return None;
        }
        if line.starts_with('#') {
            ended = comment(line, metadata);
            return None;
        }
        Some((i + 1, line))
    })
}

/// A `#` line: record `TYPE` and `HELP`; true at `# EOF`.
fn comment(line: &str, metadata: &mut BTreeMap<String, Metadata>) -> bool {
    let rest = line[1..].trim_start();
    let mut words = rest.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("TYPE"), Some(name), Some(kind)) => {
            metadata.entry(name.to_string()).or_default().kind = kind.trim().to_string();
        }
        (Some("HELP"), Some(name), help) => {
            metadata.entry(name.to_string()).or_default().help = unescape_help(help.unwrap_or(""));
        }
        (Some("EOF"), None, None) => return true,
        _ => {}
    }
    false
}

/// Parse a whole body. The first bad line is an error: a target that
/// sends garbage is marked down rather than half-ingested.
pub fn parse(text: &str, format: Format) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (n, line) in sample_lines(text, &mut out.metadata) {
        let sample = parse_sample(line, format).map_err(|reason| ParseError { line: n, reason })?;
        out.samples.push(sample);
    }
    Ok(out)
}

fn unescape_help(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\\\", "\\")
}

fn parse_sample(line: &str, format: Format) -> Result<Scraped, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels = Labels::new();
    labels.insert("__name__".into(), name.to_string());
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        for (k, v) in parsed {
            if labels.insert(k.clone(), v).is_some() {
                return Err(format!("label {k:?} appears twice"));
            }
        }
        rest = after;
    }
    let (value, timestamp_ms) =
        value_and_time(rest, format).map_err(|e| format!("{e} for {name}"))?;
    Ok(Scraped {
        labels,
        value,
        timestamp_ms,
    })
}

/// The value and optional timestamp after a sample's series text.
fn value_and_time(rest: &str, format: Format) -> Result<(f64, Option<i64>), String> {
    // OpenMetrics exemplars follow ` # `.
    let rest = match rest.find(" # ") {
        Some(i) if format == Format::OpenMetrics => &rest[..i],
        _ => rest,
    };
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| "no value".to_string())
        .and_then(parse_float)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(ts) => Some(match format {
            Format::Prometheus => ts
                .parse::<i64>()
                .map_err(|_| format!("invalid timestamp {ts:?}"))?,
            Format::OpenMetrics => {
                let secs = parse_float(ts)?;
                (secs * 1000.0).round() as i64
            }
        }),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok((value, timestamp_ms))
}

/// Label pairs, and what follows the closing brace.
type LabelsAndRest<'a> = (Vec<(String, String)>, &'a str);

fn parse_labels(mut s: &str) -> Result<LabelsAndRest<'_>, String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((out, rest));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        let after = s[eq + 1..].trim_start();
        let body = after
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        s = body[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("invalid value {s:?}")),
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_with_types_escapes_and_timestamps() {
        let text = "# HELP http_requests_total Requests.\\nAll of them.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{code=\"200\",path=\"/a \\\"b\\\"\\\\\"} 1027 1395066363000\n\
                    http_requests_total{code=\"400\"} 3\n\
                    up 1\n\
                    temp{le=\"+Inf\"} -Inf\n\
                    nan_metric NaN\n";
        let e = parse(text, Format::Prometheus).unwrap();
        assert_eq!(e.samples.len(), 5);
        let s = &e.samples[0];
        assert_eq!(s.labels["__name__"], "http_requests_total");
        assert_eq!(s.labels["path"], "/a \"b\"\\");
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(e.samples[2].labels.len(), 1);
        assert_eq!(e.samples[3].value, f64::NEG_INFINITY);
        assert!(e.samples[4].value.is_nan());
        let m = &e.metadata["http_requests_total"];
        assert_eq!(m.kind, "counter");
        assert_eq!(m.help, "Requests.\nAll of them.");
    }

    #[test]
    fn openmetrics_seconds_exemplars_and_eof() {
        let text = "# TYPE foo counter\n\
                    foo_total{a=\"b\"} 17.0 1520879607.789 # {trace_id=\"x\"} 1.0 1520879607.1\n\
                    # EOF\n\
                    ignored 1\n";
        let e = parse(text, Format::OpenMetrics).unwrap();
        assert_eq!(e.samples.len(), 1);
        assert_eq!(e.samples[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(e.samples[0].value, 17.0);
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        for (text, line) in [
            ("ok 1\n{bad} 1\n", 2),
            ("ok 1\nx{a=b} 1\n", 2),
            ("x{a=\"b\" 1\n", 1),
            ("x 1 2 3\n", 1),
            ("x one\n", 1),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("<html>\n", 1),
        ] {
            let e = parse(text, Format::Prometheus).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
