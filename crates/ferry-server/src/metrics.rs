//! `/metrics` in Prometheus text format: the proxy's per-revision counters
//! and histograms, plus instance, rollout and proxy gauges. Rendered from a
//! [`MetricsView`] taken with the daemon's snapshot (`daemon/publish.rs`),
//! so a scrape never waits for the reconcile loop; the request counters are
//! the live atomics.

use ferry_proxy::{ProxyCounters, RevisionStats};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

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
    /// (label set, live counters) per revision.
    stats: Vec<(String, Arc<RevisionStats>)>,
    /// Instances by (service, revision, state).
    instances: BTreeMap<(String, u64, &'static str), u64>,
    gauges: Vec<(String, Gauges)>,
    proxies: Vec<(String, ProxyCounters)>,
}

impl MetricsView {
    pub fn new(
        stats: Vec<(String, Arc<RevisionStats>)>,
        instances: BTreeMap<(String, u64, &'static str), u64>,
        gauges: Vec<(String, Gauges)>,
        proxies: Vec<(String, ProxyCounters)>,
    ) -> MetricsView {
        MetricsView {
            stats,
            instances,
            gauges,
            proxies,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let refs: Vec<(&str, &RevisionStats)> =
            self.stats.iter().map(|(l, s)| (l.as_str(), &**s)).collect();
        ferry_proxy::render_prometheus_all(&refs, &mut out);
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
