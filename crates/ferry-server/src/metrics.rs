//! `/metrics` in Prometheus text format: the proxy's per-revision counters
//! and histograms, plus instance, rollout and proxy gauges. Rendered from a
//! [`MetricsView`] taken with the daemon's snapshot (`daemon/publish.rs`),
//! so a scrape never waits for the reconcile loop; the request counters are
//! the live atomics.

use crate::dataplane::Report;
use ferry_proxy::{HttpSnapshot, ProxyCounters, StatsSnapshot, escape_label_value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The per-service gauges, in the order of [`GAUGES`].
pub type Gauges = [Option<u64>; 4];

const GAUGES: [(&str, &str); 4] = [
    (
        "ferry_service_serving_instances",
        "Instances taking traffic now.",
    ),
    (
        "ferry_service_stable_revision",
        "The revision serving when no rollout runs.",
    ),
    (
        "ferry_rollout_active",
        "1 while a rollout of the service is in progress.",
    ),
    (
        "ferry_canary_weight_percent",
        "The canary's share of traffic during a canary rollout.",
    ),
];

/// The proxies' own counters, per service.
type ProxyFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProxyCounters) -> u64,
);

const PROXY_FAMILIES: [ProxyFamily; 5] = [
    (
        "ferry_proxy_connections_open",
        "gauge",
        "Client connections open now.",
        |c| c.connections_open,
    ),
    (
        "ferry_proxy_connections_rejected_total",
        "counter",
        "Connections answered 503 at max_connections.",
        |c| c.connections_rejected,
    ),
    (
        "ferry_proxy_rate_limited_total",
        "counter",
        "Requests answered 429 by the rate limit.",
        |c| c.rate_limited,
    ),
    (
        "ferry_proxy_upgraded_connections_open",
        "gauge",
        "Upgraded (WebSocket) connections open now.",
        |c| c.upgraded_open,
    ),
    (
        "ferry_proxy_access_log_dropped_total",
        "counter",
        "Access-log lines dropped under overload.",
        |c| c.access_log_dropped,
    ),
];

/// The version string of each (service, revision), for the `version` label.
pub type Versions = BTreeMap<(String, u64), String>;

/// What `/metrics` shows, taken under the daemon's lock at publish time.
#[derive(Default)]
pub struct MetricsView {
    /// (label set, counters) per revision.
    stats: Vec<(String, StatsSnapshot)>,
    /// (label set, counters) per instance, and per service for the
    /// proxy's own answers: `http_requests_total` and
    /// `http_request_duration_seconds`.
    http: Vec<(String, HttpSnapshot)>,
    versions: Versions,
    /// Instances by (service, revision, state).
    instances: BTreeMap<(String, u64, &'static str), u64>,
    gauges: Vec<(String, Gauges)>,
    proxies: Vec<(String, ProxyCounters)>,
}

impl MetricsView {
    pub fn new(
        report: &Report,
        instances: BTreeMap<(String, u64, &'static str), u64>,
        gauges: Vec<(String, Gauges)>,
        versions: Versions,
    ) -> MetricsView {
        let mut view = MetricsView {
            stats: Vec::new(),
            http: Vec::new(),
            versions,
            instances,
            gauges,
            proxies: Vec::new(),
        };
        view.set_proxies(report);
        view
    }

    /// This view with the proxies' counters of `report` (a fresher one
    /// than the view was published with).
    pub fn with_proxies(&self, report: &Report) -> MetricsView {
        let mut view = MetricsView {
            stats: Vec::new(),
            http: Vec::new(),
            versions: self.versions.clone(),
            instances: self.instances.clone(),
            gauges: self.gauges.clone(),
            proxies: Vec::new(),
        };
        view.set_proxies(report);
        view
    }

    fn set_proxies(&mut self, report: &Report) {
        self.stats = report
            .stats
            .iter()
            .map(|(service, revision, snap)| {
                (
                    format!("service=\"{service}\",revision=\"{revision}\""),
                    snap.clone(),
                )
            })
            .collect();
        // Labels as an ordinary service's: `instance` is the Ferry instance
        // id; the proxy's own answers (no upstream chosen) carry empty
        // `revision`, `version` and `instance` (one series set per service).
        self.http = report
            .http
            .iter()
            .map(|h| {
                let service = escape_label_value(&h.service);
                let (revision, version) = match h.revision {
                    Some(r) => (
                        r.to_string(),
                        self.versions
                            .get(&(h.service.clone(), r))
                            .map_or("", String::as_str),
                    ),
                    None => (String::new(), ""),
                };
                let version = escape_label_value(version);
                let instance = escape_label_value(&h.instance);
                (
                    format!(
                        "service=\"{service}\",revision=\"{revision}\",version=\"{version}\",instance=\"{instance}\""
                    ),
                    h.stats.clone(),
                )
            })
            .collect();
        self.http.sort_by(|a, b| a.0.cmp(&b.0));
        self.proxies = report
            .proxies
            .iter()
            .filter(|(_, p)| p.addr.is_some())
            .map(|(n, p)| (n.clone(), p.counters))
            .collect();
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let refs: Vec<(&str, &StatsSnapshot)> =
            self.stats.iter().map(|(l, s)| (l.as_str(), s)).collect();
        ferry_proxy::render_prometheus_snapshots(&refs, &mut out);
        let http: Vec<(&str, &HttpSnapshot)> =
            self.http.iter().map(|(l, s)| (l.as_str(), s)).collect();
        ferry_proxy::render_http_families(&http, &mut out);
        out.push_str("# HELP ferry_instances Instances by service, revision and state.\n# TYPE ferry_instances gauge\n");
        for ((service, revision, state), n) in &self.instances {
            let _ = writeln!(
                out,
                "ferry_instances{{service=\"{service}\",revision=\"{revision}\",state=\"{state}\"}} {n}"
            );
        }
        // One family at a time: the text format wants each family's samples
        // right under its own HELP and TYPE lines.
        for (family, kind, help, value) in PROXY_FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for (name, c) in &self.proxies {
                let _ = writeln!(out, "{family}{{service=\"{name}\"}} {}", value(c));
            }
        }
        for (i, (family, help)) in GAUGES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} gauge");
            for (name, values) in &self.gauges {
                if let Some(v) = values[i] {
                    let _ = writeln!(out, "{family}{{service=\"{name}\"}} {v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::HttpReport;
    use ferry_metrics::exposition::{Format, parse};
    use ferry_proxy::HttpStats;
    use http::StatusCode;
    use std::time::Duration;

    #[test]
    fn http_families_carry_service_revision_version_and_instance() {
        let a = HttpStats::new();
        a.record(StatusCode::OK, Duration::from_millis(2));
        a.record(StatusCode::BAD_GATEWAY, Duration::from_millis(2));
        let own = HttpStats::new();
        own.record(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO);
        let report = Report {
            http: vec![
                HttpReport {
                    service: "web".into(),
                    revision: Some(3),
                    instance: "web-3-a".into(),
                    stats: a.snapshot(),
                },
                HttpReport {
                    service: "web".into(),
                    revision: None,
                    instance: String::new(),
                    stats: own.snapshot(),
                },
            ],
            ..Report::default()
        };
        let versions = [(("web".to_string(), 3), "1.2 \"rc\"".to_string())].into();
        let text = MetricsView::new(&report, BTreeMap::new(), Vec::new(), versions).render();
        for line in [
            "http_requests_total{service=\"web\",revision=\"3\",version=\"1.2 \\\"rc\\\"\",instance=\"web-3-a\",status=\"502\"} 1\n",
            "http_requests_total{service=\"web\",revision=\"\",version=\"\",instance=\"\",status=\"503\"} 1\n",
            "http_request_duration_seconds_count{service=\"web\",revision=\"3\",version=\"1.2 \\\"rc\\\"\",instance=\"web-3-a\"} 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let parsed = parse(&text, Format::Prometheus).unwrap();
        assert_eq!(parsed.metadata["http_requests_total"].kind, "counter");
        assert_eq!(
            parsed.metadata["http_request_duration_seconds"].kind,
            "histogram"
        );
        let version = parsed
            .samples
            .iter()
            .find(|s| s.labels.get("status").map(String::as_str) == Some("502"))
            .and_then(|s| s.labels.get("version"))
            .cloned();
        assert_eq!(version.as_deref(), Some("1.2 \"rc\""));
        // Each family's samples in one block, right under its TYPE line.
        let mut seen: Vec<&str> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .filter(|f| f.ends_with("_seconds"))
                .unwrap_or(name);
            if seen.last() != Some(&family) {
                assert!(!seen.contains(&family), "{family} split in two blocks");
                seen.push(family);
            }
        }
    }
}
