//! SLOs in the daemon: each service's SLOs (from its serving revision),
//! measured against the metrics store; their burn-rate rules, handed to
//! the alerting engine whenever the serving revisions change; the cached
//! statuses `/metrics` exports.

use crate::daemon::{Core, Daemon};
use crate::tsdb::MetricsDb;
use ferry_core::Millis;
use ferry_core::slo::{Measured, SloSpec, SloStatus, WINDOWS};
use std::sync::Arc;

/// The budget gate of a deploy: `Err` with the refusal when a budget is
/// spent and the policy blocks; `Ok(Some(note))` when the deploy goes on
/// over a spent budget (warned, or overridden), for its first event.
pub fn gate(
    d: &Daemon,
    core: &mut Core,
    service: &str,
    policy: ferry_core::slo::BudgetPolicy,
    override_reason: Option<&str>,
    actor: &str,
) -> Result<Option<String>, String> {
    use ferry_core::slo::BudgetPolicy;
    if policy == BudgetPolicy::Off {
        return Ok(None);
    }
    let specs: Vec<(String, Vec<SloSpec>)> = specs(core)
        .into_iter()
        .filter(|(n, _)| n == service)
        .collect();
    let spent: Vec<SloStatus> = measure_all(d, specs, Some(service))
        .into_iter()
        .filter(SloStatus::spent)
        .collect();
    if spent.is_empty() {
        return Ok(None);
    }
    let what: Vec<String> = spent.iter().map(SloStatus::line).collect();
    let what = what.join("; ");
    match (policy, override_reason) {
        (BudgetPolicy::Block, None) => Err(format!(
            "the error budget of `{service}` is spent: {what}. budget_policy = \"block\" refuses deploys until it recovers; roll back with `ferry rollback {service}` (never blocked), or deploy anyway with `--override-budget --reason \"why\"` (audited)"
        )),
        (BudgetPolicy::Block, Some(reason)) => Ok(Some(format!(
            "deployed over a spent error budget, overridden by {actor}: \"{reason}\" ({what})"
        ))),
        _ => Ok(Some(format!(
            "WARNING: the error budget is spent (budget_policy = \"warn\"): {what}"
        ))),
    }
}

/// The revision that defines each service's SLOs: its stable one, else
/// its newest. Revisions never change, so this names the SLOs.
pub fn serving(core: &Core) -> Vec<(String, u64)> {
    core.states
        .iter()
        .filter_map(|(name, state)| {
            let number = state
                .stable
                .or_else(|| state.scale.keys().next_back().copied())?;
            Some((name.clone(), number))
        })
        .collect()
}

/// The SLOs of each service, from its serving revision.
pub fn specs(core: &mut Core) -> Vec<(String, Vec<SloSpec>)> {
    serving(core)
        .into_iter()
        .filter_map(|(name, number)| {
            let rev = core.revisions.get(&name, number)?;
            (!rev.spec.slo.is_empty()).then(|| (name, rev.spec.slo.clone()))
        })
        .collect()
}

/// A number from an instant query, or `None` (no series, NaN).
fn number(db: &MetricsDb, query: &str, now: Millis) -> Option<f64> {
    crate::analysis::query_local(db, query, now as i64).ok()
}

/// Measure one SLO. `since` is when the service was first released: the
/// data reaches back to then, or to the oldest sample the store still
/// keeps (its retention, 15 d by default), whichever is later.
pub fn measure(
    db: &MetricsDb,
    service: &str,
    spec: &SloSpec,
    since: Millis,
    now: Millis,
) -> Measured {
    let kept_since = db.oldest().map_or(now, |t| t.max(0) as Millis);
    let window_ms = spec.window.as_millis();
    let covered_ms = now.saturating_sub(since.max(kept_since)).min(window_ms);
    let range = format!("{}s", (window_ms / 1000).max(1));
    let (bad_q, total_q) = spec.counts(service, &range);
    let total = number(db, &total_q, now).unwrap_or(0.0);
    let bad = number(db, &bad_q, now).unwrap_or(0.0).max(0.0);
    let ratios = WINDOWS
        .iter()
        .filter_map(|w| {
            let r = number(db, &spec.error_ratio(service, w), now)?;
            r.is_finite().then(|| (w.to_string(), r.clamp(0.0, 1.0)))
        })
        .collect();
    Measured {
        bad,
        total,
        covered_ms,
        ratios,
    }
}

/// The statuses of every SLO (of `service` only, when given).
pub async fn statuses(d: &Arc<Daemon>, service: Option<&str>) -> Vec<SloStatus> {
    let specs = {
        let mut core = d.core.lock().await;
        specs(&mut core)
    };
    measure_all(d, specs, service)
}

/// The statuses of the SLOs in `specs` (of `service` only, when given).
pub fn measure_all(
    d: &Daemon,
    specs: Vec<(String, Vec<SloSpec>)>,
    service: Option<&str>,
) -> Vec<SloStatus> {
    let now = d.clock.now();
    let mut out = Vec::new();
    for (name, slos) in specs {
        if service.is_some_and(|s| s != name) {
            continue;
        }
        let since = d
            .store
            .revisions(&name)
            .ok()
            .and_then(|r| r.first().map(|r| r.created_at))
            .unwrap_or(now);
        for spec in &slos {
            let m = measure(&d.tsdb, &name, spec, since, now);
            out.push(SloStatus::compute(&name, spec, &m));
        }
    }
    out
}

/// The rule groups of every service's SLOs, for the alerting engine.
pub fn rule_groups(specs: &[(String, Vec<SloSpec>)]) -> Vec<crate::alerting::load::GroupDef> {
    let mut groups = Vec::new();
    for (service, slos) in specs {
        let Some(text) = ferry_core::slo::rule_file(service, slos) else {
            continue;
        };
        let file = format!("slo:{service}");
        match ferry_alert::rulefmt::parse(&file, &text) {
            Ok(f) => {
                groups.extend(
                    f.groups
                        .into_iter()
                        .map(|spec| crate::alerting::load::GroupDef {
                            file: file.clone(),
                            spec,
                        }),
                )
            }
            Err(errs) => {
                for e in errs {
                    tracing::error!("the SLO rules of {service} do not load: {e}");
                }
            }
        }
    }
    groups
}

/// A gauge family: name, help, and the value of one status.
type Family = (&'static str, &'static str, fn(&SloStatus) -> Option<f64>);

/// `/metrics` gauges from the last computed statuses.
pub fn render(statuses: &[SloStatus]) -> String {
    use std::fmt::Write;
    if statuses.is_empty() {
        return String::new();
    }
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let families: [Family; 4] = [
        (
            "ferry_slo_objective_ratio",
            "The SLO's objective (0.9995 for 99.95 %).",
            |s| Some(s.objective / 100.0),
        ),
        (
            "ferry_slo_sli_ratio",
            "The share of good requests over the SLO's window (as far as data reaches).",
            |s| s.sli_window.map(|v| v / 100.0),
        ),
        (
            "ferry_slo_error_budget_remaining_ratio",
            "The share of the error budget left (1 = untouched, 0 or less = spent).",
            |s| Some(s.budget_remaining),
        ),
        (
            "ferry_slo_error_budget_seconds",
            "The error budget as time: (1 - objective) x window.",
            |s| Some(s.budget_ms as f64 / 1000.0),
        ),
    ];
    for (name, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in statuses {
            if let Some(v) = get(s).filter(|v| v.is_finite()) {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",slo=\"{}\"}} {v}",
                    esc(&s.service),
                    esc(&s.slo)
                );
            }
        }
    }
    let name = "ferry_slo_burn_rate";
    let _ = writeln!(
        out,
        "# HELP {name} Error ratio over a window divided by the ratio the objective allows.\n# TYPE {name} gauge"
    );
    for s in statuses {
        for (w, b) in &s.burn_rates {
            if b.is_finite() {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",slo=\"{}\",window=\"{w}\"}} {b}",
                    esc(&s.service),
                    esc(&s.slo)
                );
            }
        }
    }
    out
}

/// The service's proxy counters now: (requests, 5xx), over every revision.
pub fn counters(report: &crate::dataplane::Report, service: &str) -> [u64; 2] {
    report
        .stats
        .iter()
        .filter(|(s, _, _)| s == service)
        .fold([0, 0], |[n, f], (_, _, snap)| {
            [n + snap.total, f + snap.by_class[4]]
        })
}

/// What a release did: error rate and latency over its span against the
/// hour before (from the metrics store), and its failed requests (from the
/// proxy's counters, exactly, when the start was recorded).
pub fn impact(
    db: &MetricsDb,
    r: &ferry_core::rollout::Rollout,
    counters_now: [u64; 2],
    now: Millis,
) -> ferry_core::rollout::Impact {
    let svc = ferry_core::slo::promql_string(&r.service);
    let error_rate = |range: &str, at: Millis| {
        number(
            db,
            &format!(
                "100 * sum(increase(http_requests_total{{service={svc},status=~\"5..\"}}[{range}])) / sum(increase(http_requests_total{{service={svc}}}[{range}]))"
            ),
            at,
        )
        .filter(|v| v.is_finite())
    };
    let quantile = |q: f64, range: &str, at: Millis| {
        number(
            db,
            &format!(
                "1000 * histogram_quantile({q}, sum by (le) (increase(http_request_duration_seconds_bucket{{service={svc}}}[{range}])))"
            ),
            at,
        )
        .filter(|v| v.is_finite())
    };
    let span = format!("{}ms", now.saturating_sub(r.started_at).max(1000));
    let (requests, failed) = match r.start_counters {
        Some([n0, f0]) => (
            Some(counters_now[0].saturating_sub(n0)),
            Some(counters_now[1].saturating_sub(f0)),
        ),
        None => (None, None),
    };
    ferry_core::rollout::Impact {
        error_rate_before: error_rate("1h", r.started_at),
        error_rate_during: error_rate(&span, now),
        p95_before_ms: quantile(0.95, "1h", r.started_at),
        p95_during_ms: quantile(0.95, &span, now),
        p99_before_ms: quantile(0.99, "1h", r.started_at),
        p99_during_ms: quantile(0.99, &span, now),
        failed_requests: failed,
        requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn requests(db: &MetricsDb, t_ms: i64, value: f64) {
        let labels: BTreeMap<String, String> = [
            ("__name__", "http_requests_total"),
            ("service", "web"),
            ("status", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        db.ingest_target(
            "t",
            vec![(Arc::new(labels), t_ms, value)],
            BTreeMap::new(),
            t_ms,
        );
    }

    #[test]
    fn the_window_is_covered_only_as_far_back_as_the_store_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetricsDb::open(dir.path(), &crate::tsdb::TsdbOptions::default()).unwrap();
        let spec: SloSpec =
            serde_json::from_value(serde_json::json!({"kind": "availability", "objective": 99.9}))
                .unwrap();
        let day: Millis = 86_400_000;
        let now = 40 * day;
        // Nothing stored: nothing covered, whenever the service began.
        assert_eq!(measure(&db, "web", &spec, 0, now).covered_ms, 0);
        // Samples from day 38 on, of a service released on day 1: the
        // data, not the release, bounds what the SLI saw.
        for i in 0..=20 {
            requests(&db, (38 * day + i * 3_600_000) as i64, (i * 100) as f64);
        }
        let m = measure(&db, "web", &spec, day, now);
        assert!(
            (2 * day - 3_600_000..=2 * day).contains(&m.covered_ms),
            "{}",
            m.covered_ms
        );
        assert!(m.total > 0.0, "{m:?}");
        // A service released after the oldest sample: its release bounds it.
        let m = measure(&db, "web", &spec, 39 * day, now);
        assert_eq!(m.covered_ms, day);
        // Never more than the window.
        let m = measure(&db, "web", &spec, 0, 400 * day);
        assert!(m.covered_ms <= spec.window.as_millis());
    }
}
