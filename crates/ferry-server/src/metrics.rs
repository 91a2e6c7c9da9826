//! `/metrics` in Prometheus text format: the proxy's per-revision counters
//! and histograms, plus instance and rollout gauges.

use crate::daemon::Core;
use ferry_core::Millis;
use ferry_core::rollout::ServiceState;
use std::fmt::Write;

/// How a per-service gauge is read off the daemon state.
type Gauge = fn(&Core, &str, &ServiceState, Millis) -> Option<u64>;

pub fn render(core: &Core, now: Millis) -> String {
    let mut out = String::with_capacity(4096);
    let labelled: Vec<(String, &ferry_proxy::RevisionStats)> = core
        .supervisor
        .all_stats()
        .map(|((service, revision), stats)| {
            (
                format!("service=\"{service}\",revision=\"{revision}\""),
                &**stats,
            )
        })
        .collect();
    let refs: Vec<(&str, &ferry_proxy::RevisionStats)> =
        labelled.iter().map(|(l, s)| (l.as_str(), *s)).collect();
    ferry_proxy::render_prometheus_all(&refs, &mut out);
    out.push_str("# HELP ferry_instances Instances by service, revision and state.\n# TYPE ferry_instances gauge\n");
    let mut counts: std::collections::BTreeMap<(String, u64, String), u64> = Default::default();
    for (s, state) in &core.states {
        for v in core.supervisor.views(s, &state.traffic) {
            *counts
                .entry((s.clone(), v.revision, v.state.as_str().to_string()))
                .or_default() += 1;
        }
    }
    for ((service, revision, state), n) in counts {
        let _ = writeln!(
            out,
            "ferry_instances{{service=\"{service}\",revision=\"{revision}\",state=\"{state}\"}} {n}"
        );
    }
    // One family at a time: the text format wants each family's samples
    // right under its own HELP and TYPE lines.
    let families: [(&str, &str, Gauge); 4] = [
        (
            "ferry_service_serving_instances",
            "Instances taking traffic now.",
            |core, _, state, now| Some(core.supervisor.routable(state, now).len() as u64),
        ),
        (
            "ferry_service_stable_revision",
            "The revision serving when no rollout runs.",
            |_, _, state, _| state.stable,
        ),
        (
            "ferry_rollout_active",
            "1 while a rollout of the service is in progress.",
            |_, _, state, _| Some(u64::from(state.active_rollout.is_some())),
        ),
        (
            "ferry_canary_weight_percent",
            "The canary's share of traffic during a canary rollout.",
            |core, _, state, _| {
                let r = core.rollouts.get(&state.active_rollout?)?;
                state.weights.get(&r.to).map(|w| u64::from(*w))
            },
        ),
    ];
    // The proxies' own counters, per service.
    type ProxyFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ferry_proxy::ProxyCounters) -> u64,
    );
    let proxy_families: [ProxyFamily; 5] = [
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
    let counters: Vec<(&String, ferry_proxy::ProxyCounters)> = core
        .proxies
        .iter()
        .map(|(n, p)| (n, p.counters()))
        .collect();
    for (family, kind, help, value) in proxy_families {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        for (name, c) in &counters {
            let _ = writeln!(out, "{family}{{service=\"{name}\"}} {}", value(c));
        }
    }
    for (family, help, value) in families {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} gauge");
        for (name, state) in &core.states {
            if let Some(v) = value(core, name, state, now) {
                let _ = writeln!(out, "{family}{{service=\"{name}\"}} {v}");
            }
        }
    }
    out
}
