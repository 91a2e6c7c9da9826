//! Delivery metrics: the DORA four and the operations guide's deployment
//! metrics, computed from facts about past rollouts that the daemon
//! gathers from its store, and rendered as a text table or as Prometheus
//! gauges.
//!
//! Only deploys that started in `[since, until)` count (rollbacks in the
//! same period feed the rollback time and count). A deploy still running
//! is counted as `in_progress` and left out of every other figure. A
//! duration whose end lies before its start (e.g. a commit time from a
//! skewed clock) counts as 0. Percentiles are nearest-rank; the median is
//! the 50th.

use crate::Millis;
use crate::rollout::{Outcome, RolloutKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The name the all-services total carries in [`ServiceDelivery::service`]
/// (a service name has no spaces, so no service can have it).
pub const ALL_SERVICES: &str = "all services";

/// What the store knows about one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseFacts {
    pub service: String,
    pub rollout: u64,
    pub kind: RolloutKind,
    /// `None` while it runs.
    pub outcome: Option<Outcome>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// When all traffic reached the new revision.
    pub full_at: Option<Millis>,
    /// A failed or aborted deploy: when that was decided.
    pub failed_at: Option<Millis>,
    /// A failed or aborted deploy: when traffic was back on the previous
    /// revision.
    pub restored_at: Option<Millis>,
    /// The change's commit time, given at deploy.
    pub commit_time: Option<Millis>,
    /// Requests that failed (5xx at the proxy) while it ran; `None` =
    /// unknown.
    pub failed_requests: Option<u64>,
    /// A critical or emergency alert about the service fired in its
    /// monitoring window.
    #[serde(default)]
    pub critical_alert: bool,
    /// A later `ferry rollback` took the service off this release; when
    /// that rollback finished.
    pub rolled_back_later_at: Option<Millis>,
    /// Error rate and p95 the hour before and after.
    pub impact: Option<Impact>,
}

/// A release's effect on its service. Error rates are ratios (0..1). An
/// impact with a non-finite number is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Impact {
    pub error_rate_before: f64,
    pub error_rate_after: f64,
    pub p95_before_ms: f64,
    pub p95_after_ms: f64,
}

impl Impact {
    fn is_finite(&self) -> bool {
        [
            self.error_rate_before,
            self.error_rate_after,
            self.p95_before_ms,
            self.p95_after_ms,
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

/// A DORA performance band.
///
/// Ferry's thresholds, after the DORA reports (the elite row is the
/// operations guide's "on demand, < 1 day, 0–15 %, < 1 hour"):
///
/// | band   | frequency   | lead time (median) | change failure rate | recovery (median) |
/// |--------|-------------|--------------------|---------------------|-------------------|
/// | elite  | ≥ 1/day     | < 1 day            | ≤ 15 %              | < 1 hour          |
/// | high   | ≥ 1/week    | < 1 week           | ≤ 30 %              | < 1 day           |
/// | medium | ≥ 1/30 days | < 30 days          | ≤ 45 %              | < 1 week          |
/// | low    | less        | longer             | more                | longer            |
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Elite,
    High,
    Medium,
    Low,
}

impl Band {
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Elite => "elite",
            Band::High => "high",
            Band::Medium => "medium",
            Band::Low => "low",
        }
    }

    /// For successful deploys per day.
    pub fn for_frequency(per_day: f64) -> Band {
        if per_day >= 1.0 {
            Band::Elite
        } else if per_day >= 1.0 / 7.0 {
            Band::High
        } else if per_day >= 1.0 / 30.0 {
            Band::Medium
        } else {
            Band::Low
        }
    }

    /// For the median lead time.
    pub fn for_lead_time(ms: f64) -> Band {
        below(ms, [DAY, WEEK, 30 * DAY])
    }

    /// For the change failure rate in percent.
    pub fn for_change_failure(pct: f64) -> Band {
        if pct <= 15.0 {
            Band::Elite
        } else if pct <= 30.0 {
            Band::High
        } else if pct <= 45.0 {
            Band::Medium
        } else {
            Band::Low
        }
    }

    /// For the median recovery time.
    pub fn for_recovery(ms: f64) -> Band {
        below(ms, [HOUR, DAY, WEEK])
    }
}

/// Elite below the first limit, high below the second, medium below the
/// third, else low.
fn below(ms: f64, [elite, high, medium]: [u64; 3]) -> Band {
    if ms < elite as f64 {
        Band::Elite
    } else if ms < high as f64 {
        Band::High
    } else if ms < medium as f64 {
        Band::Medium
    } else {
        Band::Low
    }
}

/// Delivery metrics over a period, per service and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryReport {
    pub since: Millis,
    pub until: Millis,
    /// Services with a rollout that started in the period, by name.
    pub services: Vec<ServiceDelivery>,
    /// All services together (named [`ALL_SERVICES`]).
    pub total: ServiceDelivery,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceDelivery {
    pub service: String,
    pub counts: Counts,
    pub dora: Dora,
    pub deployment: DeploymentMetrics,
}

/// Rollouts that started in the period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    /// Deploys: succeeded + failed + aborted + in progress.
    pub deploys: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub aborted: u64,
    /// Deploys still running.
    pub in_progress: u64,
    /// Rollouts of kind rollback, running or not.
    pub rollbacks: u64,
}

/// The four DORA metrics, each with its band. `None` when there is
/// nothing to compute it from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Dora {
    /// Successful deploys per day of the period (`None` when the period is
    /// empty or no deploy finished in it).
    pub deployment_frequency_per_day: Option<f64>,
    pub deployment_frequency_band: Option<Band>,
    /// `full_at - commit_time` of successful deploys with a commit time.
    pub lead_time_median_ms: Option<f64>,
    pub lead_time_p95_ms: Option<f64>,
    /// Successful deploys whose lead time is known.
    pub lead_time_count: u64,
    pub lead_time_band: Option<Band>,
    /// Change failures ÷ finished deploys, percent. A change failure
    /// failed or was aborted, was rolled back later, or had a critical
    /// alert.
    pub change_failure_rate_pct: Option<f64>,
    pub change_failures: u64,
    pub change_failure_band: Option<Band>,
    /// Median recovery time: a failed or aborted deploy's
    /// `restored_at - started_at` (`finished_at` when not restored); a
    /// deploy rolled back later, `rolled_back_later_at - full_at`. A
    /// critical alert alone gives none.
    pub recovery_time_median_ms: Option<f64>,
    /// Change failures with a recovery time.
    pub recovery_count: u64,
    pub recovery_band: Option<Band>,
}

/// The operations guide's deployment metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentMetrics {
    /// Succeeded ÷ finished deploys, percent.
    pub success_rate_pct: Option<f64>,
    /// `full_at - started_at` of finished deploys that reached full
    /// traffic.
    pub deployment_time_mean_ms: Option<f64>,
    pub deployment_time_p95_ms: Option<f64>,
    /// Failed or aborted deploys' `restored_at - failed_at`, and
    /// successful rollback rollouts' `full_at - started_at`.
    pub rollback_time_mean_ms: Option<f64>,
    pub rollback_time_p95_ms: Option<f64>,
    /// Finished deploys with no failed request ÷ those where the count is
    /// known, percent.
    pub zero_downtime_pct: Option<f64>,
    pub zero_downtime: u64,
    pub zero_downtime_known: u64,
    /// Mean of `p95_after_ms - p95_before_ms` over finished deploys with
    /// an impact.
    pub p95_impact_ms: Option<f64>,
    /// Mean of `error_rate_after - error_rate_before`, percentage points.
    pub error_rate_impact_pp: Option<f64>,
    pub impact_count: u64,
}

/// Delivery metrics of the deploys that started in `[since, until)`, per
/// service and in total.
pub fn compute(facts: &[ReleaseFacts], since: Millis, until: Millis) -> DeliveryReport {
    let in_period: Vec<&ReleaseFacts> = facts
        .iter()
        .filter(|f| f.started_at >= since && f.started_at < until)
        .collect();
    let mut by_service: BTreeMap<&str, Vec<&ReleaseFacts>> = BTreeMap::new();
    for f in &in_period {
        by_service.entry(f.service.as_str()).or_default().push(f);
    }
    DeliveryReport {
        since,
        until,
        services: by_service
            .into_iter()
            .map(|(name, rollouts)| measure(name, &rollouts, since, until))
            .collect(),
        total: measure(ALL_SERVICES, &in_period, since, until),
    }
}

fn measure(
    service: &str,
    rollouts: &[&ReleaseFacts],
    since: Millis,
    until: Millis,
) -> ServiceDelivery {
    let deploys = rollouts.iter().filter(|f| f.kind == RolloutKind::Deploy);
    let finished: Vec<(&ReleaseFacts, Outcome)> = deploys
        .clone()
        .filter_map(|f| f.outcome.map(|o| (*f, o)))
        .collect();
    let with = |o: Outcome| finished.iter().filter(|(_, x)| *x == o).count() as u64;
    let counts = Counts {
        deploys: deploys.clone().count() as u64,
        succeeded: with(Outcome::Succeeded),
        failed: with(Outcome::Failed),
        aborted: with(Outcome::Aborted),
        in_progress: deploys.filter(|f| f.outcome.is_none()).count() as u64,
        rollbacks: rollouts
            .iter()
            .filter(|f| f.kind == RolloutKind::Rollback)
            .count() as u64,
    };
    let n_finished = finished.len() as u64;
    let succeeded = || {
        finished
            .iter()
            .filter(|(_, o)| *o == Outcome::Succeeded)
            .map(|(f, _)| *f)
    };

    let frequency = (until > since && n_finished > 0)
        .then(|| (counts.succeeded * DAY) as f64 / (until - since) as f64);
    let lead = Summary::of(
        succeeded()
            .filter_map(|f| Some(f.full_at?.saturating_sub(f.commit_time?)))
            .collect(),
    );
    let change_failures = finished
        .iter()
        .filter(|(f, o)| is_failure(*o) || f.rolled_back_later_at.is_some() || f.critical_alert)
        .count() as u64;
    let change_failure_rate = percent(change_failures, n_finished);
    let recovery = Summary::of(
        finished
            .iter()
            .filter_map(|(f, o)| recovery_ms(f, *o))
            .collect(),
    );
    let dora = Dora {
        deployment_frequency_per_day: frequency,
        deployment_frequency_band: frequency.map(Band::for_frequency),
        lead_time_median_ms: lead.median,
        lead_time_p95_ms: lead.p95,
        lead_time_count: lead.count,
        lead_time_band: lead.median.map(Band::for_lead_time),
        change_failure_rate_pct: change_failure_rate,
        change_failures,
        change_failure_band: change_failure_rate.map(Band::for_change_failure),
        recovery_time_median_ms: recovery.median,
        recovery_count: recovery.count,
        recovery_band: recovery.median.map(Band::for_recovery),
    };

    let deployment_time = Summary::of(
        finished
            .iter()
            .filter_map(|(f, _)| Some(f.full_at?.saturating_sub(f.started_at)))
            .collect(),
    );
    let reverts = finished
        .iter()
        .filter(|(_, o)| is_failure(*o))
        .filter_map(|(f, _)| Some(f.restored_at?.saturating_sub(f.failed_at?)));
    let rollbacks = rollouts
        .iter()
        .filter(|f| f.kind == RolloutKind::Rollback && f.outcome == Some(Outcome::Succeeded))
        .filter_map(|f| Some(f.full_at?.saturating_sub(f.started_at)));
    let rollback_time = Summary::of(reverts.chain(rollbacks).collect());
    let known: Vec<u64> = finished
        .iter()
        .filter_map(|(f, _)| f.failed_requests)
        .collect();
    let zero_downtime = known.iter().filter(|n| **n == 0).count() as u64;
    let impacts: Vec<Impact> = finished
        .iter()
        .filter_map(|(f, _)| f.impact)
        .filter(Impact::is_finite)
        .collect();
    let deployment = DeploymentMetrics {
        success_rate_pct: percent(counts.succeeded, n_finished),
        deployment_time_mean_ms: deployment_time.mean,
        deployment_time_p95_ms: deployment_time.p95,
        rollback_time_mean_ms: rollback_time.mean,
        rollback_time_p95_ms: rollback_time.p95,
        zero_downtime_pct: percent(zero_downtime, known.len() as u64),
        zero_downtime,
        zero_downtime_known: known.len() as u64,
        p95_impact_ms: mean(impacts.iter().map(|i| i.p95_after_ms - i.p95_before_ms)),
        error_rate_impact_pp: mean(
            impacts
                .iter()
                .map(|i| (i.error_rate_after - i.error_rate_before) * 100.0),
        ),
        impact_count: impacts.len() as u64,
    };
    ServiceDelivery {
        service: service.to_string(),
        counts,
        dora,
        deployment,
    }
}

fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::Failed | Outcome::Aborted)
}

/// How long a finished deploy's change failure took to recover from.
fn recovery_ms(f: &ReleaseFacts, o: Outcome) -> Option<u64> {
    if is_failure(o) {
        Some(
            f.restored_at
                .or(f.finished_at)?
                .saturating_sub(f.started_at),
        )
    } else {
        Some(f.rolled_back_later_at?.saturating_sub(f.full_at?))
    }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part * 100) as f64 / whole as f64)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = values.fold((0u64, 0.0), |(n, s), v| (n + 1, s + v));
    (n > 0).then(|| sum / n as f64)
}

/// The value at the nearest rank for `p` percent of sorted values: the
/// `ceil(p/100 × n)`-th smallest.
fn nearest_rank(sorted: &[u64], p: u64) -> Option<u64> {
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).clamp(1, n.max(1));
    sorted.get(rank as usize - 1).copied()
}

/// Count, mean, median and p95 of durations in ms.
struct Summary {
    count: u64,
    mean: Option<f64>,
    median: Option<f64>,
    p95: Option<f64>,
}

impl Summary {
    fn of(mut values: Vec<u64>) -> Summary {
        values.sort_unstable();
        Summary {
            count: values.len() as u64,
            mean: mean(values.iter().map(|v| *v as f64)),
            median: nearest_rank(&values, 50).map(|v| v as f64),
            p95: nearest_rank(&values, 95).map(|v| v as f64),
        }
    }
}

/// The report as text: the period, then for each service and for all
/// services a table of metric, value and band ("—" where there is none).
pub fn render_text(report: &DeliveryReport) -> String {
    let mut out = String::new();
    let days = report.until.saturating_sub(report.since) as f64 / DAY as f64;
    let _ = writeln!(
        out,
        "Delivery from {} to {} ({} days)",
        crate::time::rfc3339(report.since),
        crate::time::rfc3339(report.until),
        decimal(days, 1)
    );
    for s in report.services.iter().chain([&report.total]) {
        out.push('\n');
        render_service(&mut out, s);
    }
    out
}

fn render_service(out: &mut String, s: &ServiceDelivery) {
    let c = &s.counts;
    let name: String = s
        .service
        .chars()
        .map(|ch| if ch.is_control() { '?' } else { ch })
        .collect();
    let _ = writeln!(
        out,
        "{name}: {} ({} succeeded, {} failed, {} aborted, {} in progress), {}",
        count(c.deploys, "deploy"),
        c.succeeded,
        c.failed,
        c.aborted,
        c.in_progress,
        count(c.rollbacks, "rollback")
    );
    let (d, m) = (&s.dora, &s.deployment);
    let band = |b: Option<Band>| b.map_or("—", Band::as_str).to_string();
    let time = |v: Option<f64>| v.map_or("—".to_string(), human);
    let of = |v: Option<f64>, part: u64, whole: u64| {
        v.map_or("—".to_string(), |p| {
            format!("{p:.1}% ({part} of {whole})")
        })
    };
    let rows: Vec<[String; 3]> = vec![
        [
            "deployment frequency".into(),
            d.deployment_frequency_per_day
                .map_or("—".into(), |f| format!("{f:.2}/day")),
            band(d.deployment_frequency_band),
        ],
        [
            "lead time, median".into(),
            d.lead_time_median_ms.map_or("—".into(), |v| {
                format!("{} (of {})", human(v), d.lead_time_count)
            }),
            band(d.lead_time_band),
        ],
        [
            "lead time, p95".into(),
            time(d.lead_time_p95_ms),
            String::new(),
        ],
        [
            "change failure rate".into(),
            of(
                d.change_failure_rate_pct,
                d.change_failures,
                c.succeeded + c.failed + c.aborted,
            ),
            band(d.change_failure_band),
        ],
        [
            "recovery time, median".into(),
            d.recovery_time_median_ms.map_or("—".into(), |v| {
                format!("{} (of {})", human(v), d.recovery_count)
            }),
            band(d.recovery_band),
        ],
        [
            "success rate".into(),
            of(
                m.success_rate_pct,
                c.succeeded,
                c.succeeded + c.failed + c.aborted,
            ),
            String::new(),
        ],
        [
            "deployment time, mean".into(),
            time(m.deployment_time_mean_ms),
            String::new(),
        ],
        [
            "deployment time, p95".into(),
            time(m.deployment_time_p95_ms),
            String::new(),
        ],
        [
            "rollback time, mean".into(),
            time(m.rollback_time_mean_ms),
            String::new(),
        ],
        [
            "rollback time, p95".into(),
            time(m.rollback_time_p95_ms),
            String::new(),
        ],
        [
            "zero-downtime deploys".into(),
            of(m.zero_downtime_pct, m.zero_downtime, m.zero_downtime_known),
            String::new(),
        ],
        [
            "p95 impact".into(),
            m.p95_impact_ms.map_or("—".into(), signed_ms),
            String::new(),
        ],
        [
            "error rate impact".into(),
            m.error_rate_impact_pp
                .map_or("—".into(), |v| format!("{v:+.2} pp")),
            String::new(),
        ],
    ];
    let header = ["metric".to_string(), "value".into(), "band".into()];
    let width = |i: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    for [metric, value, mark] in [&header].into_iter().chain(&rows) {
        let line = format!("  {metric:<w0$}  {value:<w1$}  {mark}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration for people: `850ms`, `42s`, `4m 30s`, `42m`, `3h 10m`, `2.5d`.
fn human(ms: f64) -> String {
    if ms < 999.5 {
        return format!("{}ms", ms.round() as u64);
    }
    let secs = (ms / SECOND as f64).round() as u64;
    if secs < 60 {
        return format!("{secs}s");
    }
    if secs < 600 {
        return with_rest(secs / 60, "m", secs % 60, "s");
    }
    let mins = (ms / MINUTE as f64).round() as u64;
    if mins < 60 {
        return format!("{mins}m");
    }
    if mins < 24 * 60 {
        return with_rest(mins / 60, "h", mins % 60, "m");
    }
    format!("{}d", decimal(ms / DAY as f64, 1))
}

fn with_rest(major: u64, major_unit: &str, minor: u64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit} {minor}{minor_unit}")
    }
}

/// `v` with at most `places` decimals, without a trailing `.0`.
fn decimal(v: f64, places: usize) -> String {
    let text = format!("{v:.places$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn signed_ms(v: f64) -> String {
    if v.abs() < 1000.0 {
        format!("{v:+.0}ms")
    } else {
        format!("{:+.2}s", v / 1000.0)
    }
}

/// An optional extra label and a value, for one service's series.
type Points = Vec<(Option<(&'static str, &'static str)>, Option<f64>)>;

struct Gauge {
    name: &'static str,
    help: &'static str,
    points: fn(&ServiceDelivery) -> Points,
}

fn secs(ms: Option<f64>) -> Option<f64> {
    ms.map(|v| v / 1000.0)
}

fn ratio(pct: Option<f64>) -> Option<f64> {
    pct.map(|v| v / 100.0)
}

fn gauges() -> [Gauge; 12] {
    [
        Gauge {
            name: "ferry_delivery_deployment_frequency_per_day",
            help: "Successful deploys per day over the report's period.",
            points: |s| vec![(None, s.dora.deployment_frequency_per_day)],
        },
        Gauge {
            name: "ferry_delivery_lead_time_seconds",
            help: "Lead time for changes (commit to full traffic) of successful deploys, by quantile.",
            points: |s| {
                vec![
                    (Some(("quantile", "0.5")), secs(s.dora.lead_time_median_ms)),
                    (Some(("quantile", "0.95")), secs(s.dora.lead_time_p95_ms)),
                ]
            },
        },
        Gauge {
            name: "ferry_delivery_change_failure_ratio",
            help: "Finished deploys that failed, were aborted, were rolled back later or had a critical alert (0..1).",
            points: |s| vec![(None, ratio(s.dora.change_failure_rate_pct))],
        },
        Gauge {
            name: "ferry_delivery_recovery_time_seconds",
            help: "Median time to recover from a failed deployment.",
            points: |s| vec![(None, secs(s.dora.recovery_time_median_ms))],
        },
        Gauge {
            name: "ferry_delivery_success_ratio",
            help: "Succeeded / finished deploys (0..1).",
            points: |s| vec![(None, ratio(s.deployment.success_rate_pct))],
        },
        Gauge {
            name: "ferry_delivery_deployment_duration_seconds",
            help: "Time from a deploy's start to full traffic, mean and p95.",
            points: |s| {
                vec![
                    (
                        Some(("stat", "mean")),
                        secs(s.deployment.deployment_time_mean_ms),
                    ),
                    (
                        Some(("stat", "p95")),
                        secs(s.deployment.deployment_time_p95_ms),
                    ),
                ]
            },
        },
        Gauge {
            name: "ferry_delivery_rollback_duration_seconds",
            help: "Time to put traffic back on the previous revision (failed deploys and rollbacks), mean and p95.",
            points: |s| {
                vec![
                    (
                        Some(("stat", "mean")),
                        secs(s.deployment.rollback_time_mean_ms),
                    ),
                    (
                        Some(("stat", "p95")),
                        secs(s.deployment.rollback_time_p95_ms),
                    ),
                ]
            },
        },
        Gauge {
            name: "ferry_delivery_zero_downtime_ratio",
            help: "Finished deploys with no failed request, of those where it is known (0..1).",
            points: |s| vec![(None, ratio(s.deployment.zero_downtime_pct))],
        },
        Gauge {
            name: "ferry_delivery_p95_impact_seconds",
            help: "Mean change in p95 response time from the hour before a deploy to after it.",
            points: |s| vec![(None, secs(s.deployment.p95_impact_ms))],
        },
        Gauge {
            name: "ferry_delivery_error_rate_impact_ratio",
            help: "Mean change in error rate (0..1) from the hour before a deploy to after it.",
            points: |s| vec![(None, s.deployment.error_rate_impact_pp.map(|v| v / 100.0))],
        },
        Gauge {
            name: "ferry_delivery_deployments",
            help: "Deploys that started in the period, by outcome.",
            points: |s| {
                let c = &s.counts;
                [
                    ("succeeded", c.succeeded),
                    ("failed", c.failed),
                    ("aborted", c.aborted),
                    ("in_progress", c.in_progress),
                ]
                .into_iter()
                .map(|(o, n)| (Some(("outcome", o)), Some(n as f64)))
                .collect()
            },
        },
        Gauge {
            name: "ferry_delivery_rollbacks",
            help: "Rollback rollouts that started in the period.",
            points: |s| vec![(None, Some(s.counts.rollbacks as f64))],
        },
    ]
}

/// The report as Prometheus gauges, each family's series together. A
/// service's series carry `service="name"`; the all-services total's carry
/// no `service` label. Series without a value are left out.
pub fn render_prometheus(report: &DeliveryReport) -> String {
    let mut out = String::new();
    let all = report
        .services
        .iter()
        .map(|s| (Some(s.service.as_str()), s))
        .chain([(None, &report.total)]);
    for gauge in gauges() {
        let mut lines = String::new();
        for (service, s) in all.clone() {
            for (extra, value) in (gauge.points)(s) {
                let Some(value) = value.filter(|v| v.is_finite()) else {
                    continue;
                };
                let labels: Vec<String> = service
                    .map(|v| ("service", v))
                    .into_iter()
                    .chain(extra)
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", labels.join(","))
                };
                let _ = writeln!(lines, "{}{labels} {value}", gauge.name);
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", gauge.name, gauge.help);
            let _ = writeln!(out, "# TYPE {} gauge", gauge.name);
            out.push_str(&lines);
        }
    }
    out
}

/// A label value as the text format writes it: `\`, `"` and newline
/// escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-01T00:00:00Z
    const T0: Millis = 1_767_225_600_000;
    const SINCE: Millis = T0;
    const UNTIL: Millis = T0 + 10 * DAY;
    const EPS: f64 = 1e-9;

    fn deploy(
        service: &str,
        rollout: u64,
        started_at: Millis,
        outcome: Option<Outcome>,
    ) -> ReleaseFacts {
        ReleaseFacts {
            service: service.into(),
            rollout,
            kind: RolloutKind::Deploy,
            outcome,
            started_at,
            finished_at: None,
            full_at: None,
            failed_at: None,
            restored_at: None,
            commit_time: None,
            failed_requests: None,
            critical_alert: false,
            rolled_back_later_at: None,
            impact: None,
        }
    }

    /// A successful deploy at `s`: full after `full`, finished 30m later.
    fn success(
        service: &str,
        rollout: u64,
        s: Millis,
        full: u64,
        commit_before: Option<u64>,
    ) -> ReleaseFacts {
        ReleaseFacts {
            full_at: Some(s + full),
            finished_at: Some(s + full + 30 * MINUTE),
            commit_time: commit_before.map(|c| s - c),
            ..deploy(service, rollout, s, Some(Outcome::Succeeded))
        }
    }

    fn impact(er: (f64, f64), p95: (f64, f64)) -> Option<Impact> {
        Some(Impact {
            error_rate_before: er.0,
            error_rate_after: er.1,
            p95_before_ms: p95.0,
            p95_after_ms: p95.1,
        })
    }

    /// Ten days, two services. Durations in the comments are from each
    /// rollout's start `s`.
    fn history() -> Vec<ReleaseFacts> {
        let web_rollback = T0 + 4 * DAY + 15 * MINUTE + 3 * HOUR - 2 * MINUTE;
        vec![
            // web 0: before the period — left out.
            success("web", 0, T0 - HOUR, 10 * MINUTE, Some(HOUR)),
            // web 1: full at +10m, commit 2h before: lead 2h 10m. 0 failed
            // requests. p95 100 → 110, errors 1.0 % → 1.2 %.
            ReleaseFacts {
                failed_requests: Some(0),
                impact: impact((0.010, 0.012), (100.0, 110.0)),
                ..success("web", 1, T0 + HOUR, 10 * MINUTE, Some(2 * HOUR))
            },
            // web 2: failed, decided at +5m, restored at +7m, finished at
            // +8m: recovery 7m, rollback 2m. 12 failed requests.
            ReleaseFacts {
                failed_at: Some(T0 + DAY + HOUR + 5 * MINUTE),
                restored_at: Some(T0 + DAY + HOUR + 7 * MINUTE),
                finished_at: Some(T0 + DAY + HOUR + 8 * MINUTE),
                commit_time: Some(T0 + DAY),
                failed_requests: Some(12),
                ..deploy("web", 2, T0 + DAY + HOUR, Some(Outcome::Failed))
            },
            // web 3: full at +20m, commit 1d before: lead 1d 20m. A
            // critical alert (a change failure, no recovery time).
            // Failed requests unknown. p95 100 → 300, errors 1 % → 5 %.
            ReleaseFacts {
                critical_alert: true,
                impact: impact((0.010, 0.050), (100.0, 300.0)),
                ..success("web", 3, T0 + 2 * DAY, 20 * MINUTE, Some(DAY))
            },
            // web 4: full at +15m, commit 30m before: lead 45m. Rolled
            // back 3h after full: recovery 3h. 0 failed requests.
            ReleaseFacts {
                failed_requests: Some(0),
                rolled_back_later_at: Some(T0 + 4 * DAY + 15 * MINUTE + 3 * HOUR),
                ..success("web", 4, T0 + 4 * DAY, 15 * MINUTE, Some(30 * MINUTE))
            },
            // web 5: the rollback that took web 4 off: full after 90s.
            ReleaseFacts {
                kind: RolloutKind::Rollback,
                full_at: Some(web_rollback + 90 * SECOND),
                finished_at: Some(web_rollback + 2 * MINUTE),
                ..deploy("web", 5, web_rollback, Some(Outcome::Succeeded))
            },
            // web 6: full at +12m, commit 5h before: lead 5h 12m. 0 failed.
            ReleaseFacts {
                failed_requests: Some(0),
                ..success("web", 6, T0 + 6 * DAY, 12 * MINUTE, Some(5 * HOUR))
            },
            // web 7: still running — only `in_progress`.
            ReleaseFacts {
                commit_time: Some(T0 + 9 * DAY - HOUR),
                failed_requests: Some(0),
                critical_alert: true,
                ..deploy("web", 7, T0 + 9 * DAY, None)
            },
            // web 8: starts at `until` — left out.
            success("web", 8, UNTIL, 10 * MINUTE, Some(HOUR)),
            // api 1: full at +8m, commit 4h before: lead 4h 8m. 0 failed.
            // p95 50 → 45, errors 0.2 % → 0.1 %.
            ReleaseFacts {
                failed_requests: Some(0),
                impact: impact((0.002, 0.001), (50.0, 45.0)),
                ..success("api", 1, T0 + 3 * HOUR, 8 * MINUTE, Some(4 * HOUR))
            },
            // api 2: aborted at +6m, never marked restored, finished at
            // +9m: recovery 9m (from finished_at), no rollback time. 3
            // failed requests.
            ReleaseFacts {
                failed_at: Some(T0 + 3 * DAY + 6 * MINUTE),
                finished_at: Some(T0 + 3 * DAY + 9 * MINUTE),
                failed_requests: Some(3),
                ..deploy("api", 2, T0 + 3 * DAY, Some(Outcome::Aborted))
            },
            // api 3: full at +9m, commit 2d before: lead 2d 9m. Failed
            // requests unknown.
            success("api", 3, T0 + 5 * DAY, 9 * MINUTE, Some(2 * DAY)),
            // api 4: full at +3m, failed in its monitoring window at +4m,
            // restored at +5m, finished at +6m: recovery 5m, rollback 1m,
            // deployment time 3m. 40 failed requests.
            ReleaseFacts {
                full_at: Some(T0 + 8 * DAY + 3 * MINUTE),
                failed_at: Some(T0 + 8 * DAY + 4 * MINUTE),
                restored_at: Some(T0 + 8 * DAY + 5 * MINUTE),
                finished_at: Some(T0 + 8 * DAY + 6 * MINUTE),
                commit_time: Some(T0 + 8 * DAY - HOUR),
                failed_requests: Some(40),
                ..deploy("api", 4, T0 + 8 * DAY, Some(Outcome::Failed))
            },
            // api 5: full at +10m, commit 6h before: lead 6h 10m. 0 failed.
            ReleaseFacts {
                failed_requests: Some(0),
                ..success("api", 5, T0 + 9 * DAY, 10 * MINUTE, Some(6 * HOUR))
            },
        ]
    }

    fn close(actual: Option<f64>, expected: f64, what: &str) {
        let v = actual.unwrap_or_else(|| panic!("{what}: None, expected {expected}"));
        assert!(
            (v - expected).abs() < EPS,
            "{what}: {v}, expected {expected}"
        );
    }

    #[test]
    fn web_by_hand() {
        let report = compute(&history(), SINCE, UNTIL);
        let names: Vec<&str> = report.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let web = &report.services[1];
        // In the period: deploys 1, 2, 3, 4, 6, 7 and rollback 5.
        assert_eq!(
            web.counts,
            Counts {
                deploys: 6,
                succeeded: 4,
                failed: 1,
                aborted: 0,
                in_progress: 1,
                rollbacks: 1
            }
        );
        let (d, m) = (&web.dora, &web.deployment);
        // 4 succeeded / 10 days.
        close(d.deployment_frequency_per_day, 0.4, "frequency");
        assert_eq!(d.deployment_frequency_band, Some(Band::High));
        // Lead times sorted: 45m, 2h 10m, 5h 12m, 1d 20m. Median = rank
        // ceil(0.5×4) = 2nd; p95 = rank ceil(0.95×4) = 4th.
        assert_eq!(d.lead_time_count, 4);
        close(d.lead_time_median_ms, (130 * MINUTE) as f64, "lead median");
        close(d.lead_time_p95_ms, (DAY + 20 * MINUTE) as f64, "lead p95");
        assert_eq!(d.lead_time_band, Some(Band::Elite));
        // Change failures of 5 finished: 2 (failed), 3 (alert), 4 (rolled
        // back later) = 60 %.
        assert_eq!(d.change_failures, 3);
        close(d.change_failure_rate_pct, 60.0, "change failure rate");
        assert_eq!(d.change_failure_band, Some(Band::Low));
        // Recovery: 7m (web 2), 3h (web 4); median = 1st = 7m.
        assert_eq!(d.recovery_count, 2);
        close(d.recovery_time_median_ms, (7 * MINUTE) as f64, "recovery");
        assert_eq!(d.recovery_band, Some(Band::Elite));
        // 4 of 5 finished succeeded.
        close(m.success_rate_pct, 80.0, "success rate");
        // To full: 10m, 20m, 15m, 12m: mean 57m / 4 = 14m 15s; p95 = 20m.
        close(
            m.deployment_time_mean_ms,
            (14 * MINUTE + 15 * SECOND) as f64,
            "deploy mean",
        );
        close(m.deployment_time_p95_ms, (20 * MINUTE) as f64, "deploy p95");
        // Rollback: 2m (web 2), 90s (web 5): mean 105s; p95 = 2nd = 2m.
        close(
            m.rollback_time_mean_ms,
            (105 * SECOND) as f64,
            "rollback mean",
        );
        close(m.rollback_time_p95_ms, (2 * MINUTE) as f64, "rollback p95");
        // Known failed requests: 0, 12, 0, 0 → 3 of 4.
        assert_eq!((m.zero_downtime, m.zero_downtime_known), (3, 4));
        close(m.zero_downtime_pct, 75.0, "zero downtime");
        // p95: +10, +200 → +105 ms. Errors: +0.2, +4.0 pp → +2.1 pp.
        assert_eq!(m.impact_count, 2);
        close(m.p95_impact_ms, 105.0, "p95 impact");
        close(m.error_rate_impact_pp, 2.1, "error impact");
    }

    #[test]
    fn api_by_hand() {
        let report = compute(&history(), SINCE, UNTIL);
        let api = &report.services[0];
        assert_eq!(
            api.counts,
            Counts {
                deploys: 5,
                succeeded: 3,
                failed: 1,
                aborted: 1,
                in_progress: 0,
                rollbacks: 0
            }
        );
        let (d, m) = (&api.dora, &api.deployment);
        // 3 succeeded / 10 days.
        close(d.deployment_frequency_per_day, 0.3, "frequency");
        assert_eq!(d.deployment_frequency_band, Some(Band::High));
        // Lead times sorted: 4h 8m, 6h 10m, 2d 9m. Median = rank 2, p95 =
        // rank ceil(2.85) = 3.
        assert_eq!(d.lead_time_count, 3);
        close(
            d.lead_time_median_ms,
            (6 * HOUR + 10 * MINUTE) as f64,
            "lead median",
        );
        close(
            d.lead_time_p95_ms,
            (2 * DAY + 9 * MINUTE) as f64,
            "lead p95",
        );
        assert_eq!(d.lead_time_band, Some(Band::Elite));
        // Change failures: 2 (aborted), 4 (failed) of 5 = 40 %.
        assert_eq!(d.change_failures, 2);
        close(d.change_failure_rate_pct, 40.0, "change failure rate");
        assert_eq!(d.change_failure_band, Some(Band::Medium));
        // Recovery: 5m, 9m; median = 1st = 5m.
        assert_eq!(d.recovery_count, 2);
        close(d.recovery_time_median_ms, (5 * MINUTE) as f64, "recovery");
        assert_eq!(d.recovery_band, Some(Band::Elite));
        close(m.success_rate_pct, 60.0, "success rate");
        // To full: 8m, 9m, 3m, 10m: mean 7m 30s; p95 = 4th = 10m.
        close(
            m.deployment_time_mean_ms,
            (7 * MINUTE + 30 * SECOND) as f64,
            "deploy mean",
        );
        close(m.deployment_time_p95_ms, (10 * MINUTE) as f64, "deploy p95");
        // Rollback: api 4 only (api 2 was never marked restored): 1m.
        close(m.rollback_time_mean_ms, MINUTE as f64, "rollback mean");
        close(m.rollback_time_p95_ms, MINUTE as f64, "rollback p95");
        // Known failed requests: 0, 3, 40, 0 → 2 of 4.
        assert_eq!((m.zero_downtime, m.zero_downtime_known), (2, 4));
        close(m.zero_downtime_pct, 50.0, "zero downtime");
        // api 1 only: p95 −5 ms, errors −0.1 pp.
        assert_eq!(m.impact_count, 1);
        close(m.p95_impact_ms, -5.0, "p95 impact");
        close(m.error_rate_impact_pp, -0.1, "error impact");
    }

    #[test]
    fn total_by_hand() {
        let report = compute(&history(), SINCE, UNTIL);
        let t = &report.total;
        assert_eq!(t.service, ALL_SERVICES);
        assert_eq!(
            t.counts,
            Counts {
                deploys: 11,
                succeeded: 7,
                failed: 2,
                aborted: 1,
                in_progress: 1,
                rollbacks: 1
            }
        );
        let (d, m) = (&t.dora, &t.deployment);
        close(d.deployment_frequency_per_day, 0.7, "frequency");
        assert_eq!(d.deployment_frequency_band, Some(Band::High));
        // Lead times sorted: 45m, 2h 10m, 4h 8m, 5h 12m, 6h 10m, 1d 20m,
        // 2d 9m. Median = rank ceil(3.5) = 4th; p95 = rank ceil(6.65) = 7th.
        assert_eq!(d.lead_time_count, 7);
        close(
            d.lead_time_median_ms,
            (5 * HOUR + 12 * MINUTE) as f64,
            "lead median",
        );
        close(
            d.lead_time_p95_ms,
            (2 * DAY + 9 * MINUTE) as f64,
            "lead p95",
        );
        assert_eq!(d.lead_time_band, Some(Band::Elite));
        // 3 + 2 of 10 finished.
        assert_eq!(d.change_failures, 5);
        close(d.change_failure_rate_pct, 50.0, "change failure rate");
        assert_eq!(d.change_failure_band, Some(Band::Low));
        // Recovery sorted: 5m, 7m, 9m, 3h; median = 2nd = 7m.
        assert_eq!(d.recovery_count, 4);
        close(d.recovery_time_median_ms, (7 * MINUTE) as f64, "recovery");
        assert_eq!(d.recovery_band, Some(Band::Elite));
        close(m.success_rate_pct, 70.0, "success rate");
        // To full: 57m + 30m over 8 = 10m 52.5s; p95 = 8th = 20m.
        close(
            m.deployment_time_mean_ms,
            (87 * MINUTE) as f64 / 8.0,
            "deploy mean",
        );
        close(m.deployment_time_p95_ms, (20 * MINUTE) as f64, "deploy p95");
        // Rollback: 2m, 90s, 1m: mean 90s; p95 = rank ceil(2.85) = 3rd = 2m.
        close(
            m.rollback_time_mean_ms,
            (90 * SECOND) as f64,
            "rollback mean",
        );
        close(m.rollback_time_p95_ms, (2 * MINUTE) as f64, "rollback p95");
        assert_eq!((m.zero_downtime, m.zero_downtime_known), (5, 8));
        close(m.zero_downtime_pct, 62.5, "zero downtime");
        // p95: (10 + 200 − 5) / 3; errors: (0.2 + 4.0 − 0.1) / 3 pp.
        assert_eq!(m.impact_count, 3);
        close(m.p95_impact_ms, 205.0 / 3.0, "p95 impact");
        close(m.error_rate_impact_pp, 4.1 / 3.0, "error impact");
    }

    #[test]
    fn text_shows_the_figures() {
        let text = render_text(&compute(&history(), SINCE, UNTIL));
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            "Delivery from 2026-01-01T00:00:00.000Z to 2026-01-11T00:00:00.000Z (10 days)"
        );
        for expected in [
            "web: 6 deploys (4 succeeded, 1 failed, 0 aborted, 1 in progress), 1 rollback",
            "all services: 11 deploys (7 succeeded, 2 failed, 1 aborted, 1 in progress), 1 rollback",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
        let web = text
            .split("\nweb:")
            .nth(1)
            .unwrap()
            .split("\nall services:")
            .next()
            .unwrap();
        let row = |metric: &str| -> Vec<String> {
            let line = web
                .lines()
                .find(|l| l.trim_start().starts_with(metric))
                .unwrap_or_else(|| panic!("no {metric} row:\n{web}"));
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            row("deployment frequency"),
            ["deployment frequency", "0.40/day", "high"]
        );
        assert_eq!(
            row("lead time, median"),
            ["lead time, median", "2h 10m (of 4)", "elite"]
        );
        assert_eq!(row("lead time, p95"), ["lead time, p95", "1d"]);
        assert_eq!(
            row("change failure rate"),
            ["change failure rate", "60.0% (3 of 5)", "low"]
        );
        assert_eq!(
            row("recovery time, median"),
            ["recovery time, median", "7m (of 2)", "elite"]
        );
        assert_eq!(
            row("deployment time, mean"),
            ["deployment time, mean", "14m"]
        );
        assert_eq!(
            row("rollback time, mean"),
            ["rollback time, mean", "1m 45s"]
        );
        assert_eq!(
            row("zero-downtime deploys"),
            ["zero-downtime deploys", "75.0% (3 of 4)"]
        );
        assert_eq!(row("p95 impact"), ["p95 impact", "+105ms"]);
        assert_eq!(row("error rate impact"), ["error rate impact", "+2.10 pp"]);
        // The band column lines up.
        let cols: Vec<usize> = web
            .lines()
            .filter(|l| l.ends_with("elite") || l.ends_with("high") || l.ends_with("band"))
            .map(|l| l.chars().count() - l.split_whitespace().last().unwrap().chars().count())
            .collect();
        assert!(
            cols.len() >= 4 && cols.windows(2).all(|w| w[0] == w[1]),
            "{web}"
        );
    }

    #[test]
    fn human_durations() {
        let cases: [(u64, &str); 9] = [
            (850, "850ms"),
            (42 * SECOND, "42s"),
            (4 * MINUTE + 30 * SECOND, "4m 30s"),
            (5 * MINUTE, "5m"),
            (42 * MINUTE, "42m"),
            (3 * HOUR + 10 * MINUTE, "3h 10m"),
            (2 * HOUR, "2h"),
            (DAY * 5 / 2, "2.5d"),
            (3 * DAY, "3d"),
        ];
        for (ms, text) in cases {
            assert_eq!(human(ms as f64), text, "{ms} ms");
        }
        // Rounding up to the next unit shows in that unit.
        assert_eq!(human((59 * SECOND + 600) as f64), "1m");
        assert_eq!(human((DAY - 10 * SECOND) as f64), "1d");
    }

    #[test]
    fn nearest_rank_picks_a_value() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 50), Some(7));
        assert_eq!(nearest_rank(&[7], 95), Some(7));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4, 5], 50), Some(3));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&hundred, 95), Some(95));
        assert_eq!(nearest_rank(&hundred, 100), Some(100));
    }

    #[test]
    fn band_boundaries() {
        assert_eq!(Band::for_frequency(1.0), Band::Elite);
        assert_eq!(Band::for_frequency(0.999), Band::High);
        assert_eq!(Band::for_frequency(1.0 / 7.0), Band::High);
        assert_eq!(Band::for_frequency(1.0 / 30.0), Band::Medium);
        assert_eq!(Band::for_frequency(0.03), Band::Low);
        assert_eq!(Band::for_change_failure(0.0), Band::Elite);
        assert_eq!(Band::for_change_failure(15.0), Band::Elite);
        assert_eq!(Band::for_change_failure(15.1), Band::High);
        assert_eq!(Band::for_change_failure(30.0), Band::High);
        assert_eq!(Band::for_change_failure(45.0), Band::Medium);
        assert_eq!(Band::for_change_failure(45.1), Band::Low);
        assert_eq!(Band::for_lead_time((DAY - 1) as f64), Band::Elite);
        assert_eq!(Band::for_lead_time(DAY as f64), Band::High);
        assert_eq!(Band::for_lead_time(WEEK as f64), Band::Medium);
        assert_eq!(Band::for_lead_time((30 * DAY) as f64), Band::Low);
        assert_eq!(Band::for_recovery((HOUR - 1) as f64), Band::Elite);
        assert_eq!(Band::for_recovery(HOUR as f64), Band::High);
        assert_eq!(Band::for_recovery(DAY as f64), Band::Medium);
        assert_eq!(Band::for_recovery(WEEK as f64), Band::Low);
        assert_eq!(serde_json::to_string(&Band::Elite).unwrap(), "\"elite\"");
    }

    #[test]
    fn band_boundaries_through_compute() {
        // 10 successful deploys in 10 days, each 1 day from commit to full:
        // exactly 1/day (elite) and a 1-day lead time (high).
        let mut facts: Vec<ReleaseFacts> = (0..10)
            .map(|i| success("web", i, T0 + i * DAY, 10 * MINUTE, Some(DAY - 10 * MINUTE)))
            .collect();
        let d = compute(&facts, SINCE, UNTIL).total.dora;
        assert_eq!(d.deployment_frequency_per_day, Some(1.0));
        assert_eq!(d.deployment_frequency_band, Some(Band::Elite));
        assert_eq!(d.lead_time_median_ms, Some(DAY as f64));
        assert_eq!(d.lead_time_band, Some(Band::High));
        assert_eq!(d.change_failure_rate_pct, Some(0.0));
        assert_eq!(d.change_failure_band, Some(Band::Elite));
        // 3 failures of 20 finished = 15 % exactly: elite.
        facts.extend((10..20).map(|i| success("web", i, T0 + (i - 10) * DAY + HOUR, MINUTE, None)));
        for f in &mut facts[..3] {
            f.critical_alert = true;
        }
        let d = compute(&facts, SINCE, UNTIL).total.dora;
        assert_eq!(d.change_failure_rate_pct, Some(15.0));
        assert_eq!(d.change_failure_band, Some(Band::Elite));
        // 151 of 1000 = 15.1 %: high.
        let many: Vec<ReleaseFacts> = (0..1000)
            .map(|i| ReleaseFacts {
                critical_alert: i < 151,
                ..success("web", i, T0 + i * MINUTE, MINUTE, None)
            })
            .collect();
        let d = compute(&many, SINCE, UNTIL).total.dora;
        close(d.change_failure_rate_pct, 15.1, "15.1 %");
        assert_eq!(d.change_failure_band, Some(Band::High));
    }

    fn assert_no_nan(report: &DeliveryReport) {
        let text = render_text(report);
        let json = serde_json::to_string(report).unwrap();
        let prom = render_prometheus(report);
        for out in [&text, &json, &prom] {
            let lower = out.to_lowercase();
            assert!(!lower.contains("nan") && !lower.contains("inf"), "{out}");
        }
        let back: DeliveryReport = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, report);
        check_prometheus(&prom);
    }

    #[test]
    fn empty_input_gives_nothing_to_compute() {
        for (since, until) in [(SINCE, UNTIL), (UNTIL, SINCE), (SINCE, SINCE)] {
            let report = compute(&[], since, until);
            assert!(report.services.is_empty());
            let t = &report.total;
            assert_eq!(t.counts, Counts::default());
            assert_eq!(t.dora, Dora::default());
            assert_eq!(t.deployment, DeploymentMetrics::default());
            assert_no_nan(&report);
            let text = render_text(&report);
            assert!(
                text.lines().any(|l| l.split_whitespace().eq([
                    "deployment",
                    "frequency",
                    "—",
                    "—"
                ])),
                "{text}"
            );
        }
    }

    #[test]
    fn a_service_with_only_running_or_broken_facts_has_no_rates() {
        let mut odd = deploy("web", 1, T0, None);
        odd.impact = impact((f64::NAN, 0.0), (f64::INFINITY, 1.0));
        let mut rollback = deploy("web", 2, T0 + HOUR, Some(Outcome::Failed));
        rollback.kind = RolloutKind::Rollback;
        let mut noisy = deploy("api", 3, T0 + 2 * HOUR, Some(Outcome::Succeeded));
        noisy.impact = impact((f64::NAN, 0.0), (1.0, 2.0));
        // A commit time after full traffic (a skewed clock) counts as 0.
        noisy.full_at = Some(T0 + 3 * HOUR);
        noisy.commit_time = Some(T0 + 4 * HOUR);
        let report = compute(&[odd, rollback, noisy], SINCE, UNTIL);
        let web = &report.services[1];
        assert_eq!(web.counts.in_progress, 1);
        assert_eq!(web.counts.rollbacks, 1);
        assert_eq!(web.dora, Dora::default());
        let api = &report.services[0];
        assert_eq!(api.deployment.impact_count, 0);
        assert_eq!(api.deployment.p95_impact_ms, None);
        assert_eq!(api.dora.lead_time_median_ms, Some(0.0));
        assert_no_nan(&report);
    }

    /// Each sample line is `name{labels} value` with a finite value, and
    /// each family's lines come together after its HELP and TYPE.
    fn check_prometheus(text: &str) {
        let mut seen: Vec<String> = Vec::new();
        let mut declared: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&name), "{name} split:\n{text}");
                seen.push(name.clone());
                declared = Some(name);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert_eq!(
                    Some(format!("{} gauge", declared.as_deref().unwrap())),
                    Some(rest.to_string())
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(value.is_finite(), "{line}");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}")),
                ),
                None => (series, ""),
            };
            assert_eq!(Some(name), declared.as_deref(), "{line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            // Labels: k="v" pairs, separated by commas, with escapes.
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            let (_, c) = chars.next().unwrap();
                            assert!(matches!(c, '\\' | '"' | 'n'), "{line}");
                        }
                        Some((i, '"')) => break i,
                        Some((_, c)) => assert!(c != '\n', "{line}"),
                        None => panic!("unterminated label in {line}"),
                    }
                };
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
        ferry_metrics::exposition::parse(text, ferry_metrics::exposition::Format::Prometheus)
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    }

    #[test]
    fn prometheus_gauges() {
        let report = compute(&history(), SINCE, UNTIL);
        let prom = render_prometheus(&report);
        check_prometheus(&prom);
        assert_no_nan(&report);
        for line in [
            "# TYPE ferry_delivery_deployment_frequency_per_day gauge",
            "ferry_delivery_deployment_frequency_per_day{service=\"web\"} 0.4",
            "ferry_delivery_lead_time_seconds{service=\"web\",quantile=\"0.5\"} 7800",
            "ferry_delivery_lead_time_seconds{service=\"web\",quantile=\"0.95\"} 87600",
            "ferry_delivery_lead_time_seconds{quantile=\"0.5\"} 18720",
            "ferry_delivery_change_failure_ratio{service=\"web\"} 0.6",
            "ferry_delivery_change_failure_ratio 0.5",
            "ferry_delivery_recovery_time_seconds{service=\"web\"} 420",
            "ferry_delivery_success_ratio{service=\"api\"} 0.6",
            "ferry_delivery_deployment_duration_seconds{service=\"web\",stat=\"mean\"} 855",
            "ferry_delivery_deployment_duration_seconds{service=\"web\",stat=\"p95\"} 1200",
            "ferry_delivery_rollback_duration_seconds{service=\"api\",stat=\"p95\"} 60",
            "ferry_delivery_zero_downtime_ratio{service=\"web\"} 0.75",
            "ferry_delivery_p95_impact_seconds{service=\"api\"} -0.005",
            "ferry_delivery_deployments{service=\"web\",outcome=\"in_progress\"} 1",
            "ferry_delivery_deployments{outcome=\"succeeded\"} 7",
            "ferry_delivery_rollbacks{service=\"web\"} 1",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} missing:\n{prom}");
        }
        // A family without any value has no lines at all.
        let empty = render_prometheus(&compute(&[], SINCE, UNTIL));
        assert!(
            !empty.contains("ferry_delivery_lead_time_seconds"),
            "{empty}"
        );
        assert!(
            empty.contains("ferry_delivery_deployments{outcome=\"succeeded\"} 0"),
            "{empty}"
        );
    }

    #[test]
    fn prometheus_escapes_label_values() {
        let name = "we\"b\\x\ny";
        let report = compute(&[success(name, 1, T0, MINUTE, None)], SINCE, UNTIL);
        let prom = render_prometheus(&report);
        assert!(prom.contains("{service=\"we\\\"b\\\\x\\ny\"}"), "{prom}");
        check_prometheus(&prom);
        let parsed =
            ferry_metrics::exposition::parse(&prom, ferry_metrics::exposition::Format::Prometheus)
                .unwrap();
        assert!(
            parsed
                .samples
                .iter()
                .any(|s| s.labels.get("service").map(String::as_str) == Some(name)),
            "{prom}"
        );
        // The text never prints the newline raw.
        assert!(render_text(&report).contains("we\"b\\x?y: 1 deploy ("));
    }
}
