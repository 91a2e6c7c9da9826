//! `/metrics` in Prometheus text format: the proxy's per-revision counters
//! and histograms, plus instance, rollout and proxy gauges. Rendered from a
//! [`MetricsView`] taken with the daemon's snapshot (`daemon/publish.rs`),
//! so a scrape never waits for the reconcile loop; the request counters are
//! the live atomics.

use crate::dataplane::Report;
use ferry_proxy::{ProxyCounters, StatsSnapshot};
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

/// What `/metrics` shows, taken under the daemon's lock at publish time.
#[derive(Default)]
pub struct MetricsView {
    /// (label set, counters) per revision.
    stats: Vec<(String, StatsSnapshot)>,
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
    ) -> MetricsView {
        let mut view = MetricsView {
            stats: Vec::new(),
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
