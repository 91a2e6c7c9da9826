//! Service level objectives: `[[services.NAME.slo]]` as written, the
//! burn-rate rules generated from them (the Google SRE workbook's
//! multiwindow, multi-burn-rate alerts), and the error budget's arithmetic.
//! Pure: the daemon evaluates the queries and hands the numbers in.

use crate::duration::Dur;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

/// What an SLO measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SloKind {
    /// The share of requests answered well (by status).
    Availability,
    /// The share of requests answered within `threshold`.
    Latency,
}

/// One SLO of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// Default: the kind (`availability`, `latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: SloKind,
    /// Percent of requests that must be good, e.g. 99.95.
    pub objective: f64,
    /// The rolling window the objective holds over (default 30d).
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Availability: statuses that count as good (default `["2xx", "3xx",
    /// "404"]`, as seed 003 counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good_status: Option<Vec<String>>,
    /// Availability: statuses that count as failed (default `["5xx"]`: the
    /// proxy's own 502 and 504 for refused connections and timeouts
    /// included). Other statuses (400, 401, 429...) count as neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_status: Option<Vec<String>>,
    /// Latency: a request is good when answered within this; one of the
    /// proxy's histogram bounds (1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms,
    /// 250ms, 500ms, 1s, 2.5s, 5s, 10s), so the count is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Dur>,
    /// Generate the burn-rate alerts (default true).
    #[serde(default = "yes")]
    pub alerts: bool,
}

fn default_window() -> Dur {
    Dur::secs(30 * 86_400)
}

fn yes() -> bool {
    true
}

/// The proxy's latency histogram bounds, in ms, and their `le` labels.
pub const LATENCY_BOUNDS: [(u64, &str); 13] = [
    (1, "0.001"),
    (3, "0.0025"),
    (5, "0.005"),
    (10, "0.01"),
    (25, "0.025"),
    (50, "0.05"),
    (100, "0.1"),
    (250, "0.25"),
    (500, "0.5"),
    (1000, "1"),
    (2500, "2.5"),
    (5000, "5"),
    (10000, "10"),
];

/// The `le` label of a threshold, if it is a bound (2.5 ms is written
/// "2500us" or "2.5ms"; its `as_millis` is 2, so compare microseconds).
fn le_of(threshold: Dur) -> Option<&'static str> {
    let us = threshold.0.as_micros();
    let bounds_us: [u128; 13] = [
        1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ];
    bounds_us
        .iter()
        .position(|b| *b == us)
        .map(|i| LATENCY_BOUNDS[i].1)
}

/// What a release does when the service's error budget is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPolicy {
    /// Refuse the deploy (`--override-budget --reason` goes ahead).
    Block,
    /// Go ahead, with a warning in the rollout's events.
    #[default]
    Warn,
    /// Do not look.
    Off,
}

/// The multiwindow, multi-burn-rate alerts of the SRE workbook (chapter
/// 5): (severity, long window, short window, burn rate). A page when 2 %
/// of a 30-day budget burns in an hour (14.4×) or 5 % in six hours (6×);
/// a ticket when 10 % burns in a day (3×) or in three days (1×).
pub const BURN_ALERTS: [(&str, &str, &str, f64); 4] = [
    ("critical", "1h", "5m", 14.4),
    ("critical", "6h", "30m", 6.0),
    ("warning", "1d", "2h", 3.0),
    ("warning", "3d", "6h", 1.0),
];

/// The windows whose error ratio is recorded.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// The recording rule's name for a window: `ferry_slo:error_ratio:rate1h`.
pub fn ratio_metric(window: &str) -> String {
    format!("ferry_slo:error_ratio:rate{window}")
}

impl SloSpec {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.kind {
            SloKind::Availability => "availability".into(),
            SloKind::Latency => "latency".into(),
        })
    }

    /// The share of requests allowed to be bad (0.0005 for 99.95 %).
    pub fn budget_ratio(&self) -> f64 {
        round12((100.0 - self.objective) / 100.0)
    }

    fn statuses(list: &Option<Vec<String>>, default: &[&str]) -> Vec<String> {
        match list {
            Some(l) => l.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn good(&self) -> Vec<String> {
        Self::statuses(&self.good_status, &["2xx", "3xx", "404"])
    }

    pub fn bad(&self) -> Vec<String> {
        Self::statuses(&self.bad_status, &["5xx"])
    }

    /// The series the SLO divides, as selectors: the bad requests
    /// (availability) or those within the threshold (latency), and all
    /// the requests that count.
    fn selectors(&self, service: &str) -> (String, String) {
        let svc = promql_string(service);
        match self.kind {
            SloKind::Availability => {
                let bad = status_regex(&self.bad());
                let all = status_regex(&[self.good(), self.bad()].concat());
                (
                    format!("http_requests_total{{service={svc},status=~\"{bad}\"}}"),
                    format!("http_requests_total{{service={svc},status=~\"{all}\"}}"),
                )
            }
            SloKind::Latency => {
                let le = self.threshold.and_then(le_of).unwrap_or("+Inf");
                (
                    format!("http_request_duration_seconds_bucket{{service={svc},le=\"{le}\"}}"),
                    format!("http_request_duration_seconds_count{{service={svc}}}"),
                )
            }
        }
    }

    /// The PromQL of the error ratio of `service` over `range` (e.g.
    /// `5m`): bad requests ÷ requests that count (good + bad); for
    /// latency, 1 − within threshold ÷ all.
    pub fn error_ratio(&self, service: &str, range: &str) -> String {
        let (part, all) = self.selectors(service);
        let ratio = format!("sum(rate({part}[{range}])) / sum(rate({all}[{range}]))");
        match self.kind {
            SloKind::Availability => ratio,
            SloKind::Latency => format!("1 - {ratio}"),
        }
    }

    /// Bad and counted requests over `range`, as two queries (for the
    /// budget over the whole window).
    pub fn counts(&self, service: &str, range: &str) -> (String, String) {
        let (part, all) = self.selectors(service);
        let part = format!("sum(increase({part}[{range}]))");
        let all = format!("sum(increase({all}[{range}]))");
        match self.kind {
            SloKind::Availability => (part, all),
            SloKind::Latency => (format!("{all} - {part}"), all),
        }
    }

    /// What it promises, in words: `99.95 % of requests answered 2xx, 3xx
    /// or 404 (not 5xx) over 30d`.
    pub fn describe(&self) -> String {
        match self.kind {
            SloKind::Availability => format!(
                "{} % of requests answered {} (failed: {}) over {}",
                self.objective,
                self.good().join(", "),
                self.bad().join(", "),
                window_text(self.window)
            ),
            SloKind::Latency => format!(
                "{} % of requests answered within {} over {}",
                self.objective,
                self.threshold.map_or("?".into(), |t| t.to_string()),
                window_text(self.window)
            ),
        }
    }

    /// Problems, at `services.NAME.slo.I`.
    pub fn validate(&self, at: &[String]) -> Vec<Problem> {
        let mut p = Vec::new();
        let key = |k: &str| -> Vec<String> { [at, &[k.to_string()]].concat() };
        if !(self.objective > 0.0 && self.objective < 100.0) {
            p.push(Problem::new(
                &key("objective"),
                format!(
                    "objective = {} must be a percentage above 0 and below 100, e.g. 99.9",
                    self.objective
                ),
            ));
        }
        if self.window < Dur::secs(3600) || self.window > Dur::secs(90 * 86_400) {
            p.push(Problem::new(
                &key("window"),
                format!(
                    "window = \"{}\" must be between 1h and 90d (default 30d)",
                    self.window
                ),
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            p.push(Problem::new(
                &key("name"),
                format!("name \"{n}\" may only use letters, digits, `_`, `-` and `.`"),
            ));
        }
        match self.kind {
            SloKind::Availability => {
                if self.threshold.is_some() {
                    p.push(Problem::new(
                        &key("threshold"),
                        "threshold is for kind = \"latency\"; an availability SLO counts statuses (good_status, bad_status)",
                    ));
                }
                for (field, list) in [
                    ("good_status", &self.good_status),
                    ("bad_status", &self.bad_status),
                ] {
                    for s in list.iter().flatten() {
                        if !valid_status(s) {
                            p.push(Problem::new(
                                &key(field),
                                format!("\"{s}\" is not a status or a class; write e.g. \"2xx\" or \"404\""),
                            ));
                        }
                    }
                    if list.as_ref().is_some_and(Vec::is_empty) {
                        p.push(Problem::new(&key(field), format!("{field} is empty")));
                    }
                }
                let good = self.good();
                if let Some(both) = self.bad().iter().find(|b| good.contains(b)) {
                    p.push(Problem::new(
                        &key("bad_status"),
                        format!("\"{both}\" is in both good_status and bad_status"),
                    ));
                }
            }
            SloKind::Latency => {
                if self.good_status.is_some() || self.bad_status.is_some() {
                    p.push(Problem::new(
                        &key("good_status"),
                        "good_status and bad_status are for kind = \"availability\"",
                    ));
                }
                match self.threshold {
                    None => p.push(Problem::new(
                        &key("threshold"),
                        "a latency SLO needs `threshold` (e.g. \"100ms\"): a request answered within it is good",
                    )),
                    Some(t) if le_of(t).is_none() => p.push(Problem::new(
                        &key("threshold"),
                        format!(
                            "threshold = \"{t}\" is not one of the proxy's histogram bounds, so requests under it cannot be counted exactly; use one of 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms, 1s, 2.5s, 5s, 10s"
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
        p
    }
}

/// Rounded to 12 decimals: 0.0005, not 0.000499999999999972, in rules
/// people read.
fn round12(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

fn valid_status(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 3
        && (b'1'..=b'5').contains(&b[0])
        && ((b[1] == b'x' && b[2] == b'x') || (b[1].is_ascii_digit() && b[2].is_ascii_digit()))
}

/// `["2xx", "404"]` → `2..|404`.
fn status_regex(list: &[String]) -> String {
    list.iter()
        .map(|s| s.replace('x', "."))
        .collect::<Vec<_>>()
        .join("|")
}

/// A PromQL double-quoted string.
pub fn promql_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The rule file (Prometheus's format) of a service's SLOs: one group
/// with a recording rule per SLO and window, and the burn-rate alerts.
/// `None` when the service has no SLO.
pub fn rule_file(service: &str, slos: &[SloSpec]) -> Option<String> {
    if slos.is_empty() {
        return None;
    }
    let mut y = String::from("groups:\n");
    y.push_str(&format!(
        "  - name: {}\n    rules:\n",
        yaml_string(&format!("ferry_slo_{service}"))
    ));
    for slo in slos {
        let name = slo.name();
        for w in WINDOWS {
            y.push_str(&format!(
                "      - record: {}\n        expr: {}\n        labels:\n          service: {}\n          slo: {}\n",
                ratio_metric(w),
                yaml_string(&slo.error_ratio(service, w)),
                yaml_string(service),
                yaml_string(&name),
            ));
        }
    }
    for slo in slos.iter().filter(|s| s.alerts) {
        let name = slo.name();
        let budget = slo.budget_ratio();
        let sel = format!(
            "{{service={},slo={}}}",
            promql_string(service),
            promql_string(&name)
        );
        for (severity, long, short, burn) in BURN_ALERTS {
            let limit = round12(burn * budget);
            let expr = format!(
                "{long_m}{sel} > {limit} and on (service, slo) {short_m}{sel} > {limit}",
                long_m = ratio_metric(long),
                short_m = ratio_metric(short),
            );
            let summary = format!(
                "{service}'s {name} SLO ({}) burns its error budget at {burn}x over {long} and {short}: {{{{ $value | humanizePercentage }}}} of requests fail it (allowed: {})",
                pct(slo.objective),
                pct_ratio(budget)
            );
            y.push_str(&format!(
                "      - alert: ErrorBudgetBurn\n        expr: {}\n        labels:\n          severity: {severity}\n          service: {}\n          slo: {}\n          long_window: {long}\n          short_window: {short}\n          burn_rate: {}\n        annotations:\n          summary: {}\n",
                yaml_string(&expr),
                yaml_string(service),
                yaml_string(&name),
                yaml_string(&burn.to_string()),
                yaml_string(&summary),
            ));
        }
    }
    Some(y)
}

/// A window as people write it: `30d`, `6h`, `90m`.
pub fn window_text(d: Dur) -> String {
    let s = d.0.as_secs();
    if s > 0 && d.0.subsec_nanos() == 0 {
        if s.is_multiple_of(86_400) {
            return format!("{}d", s / 86_400);
        }
        if s.is_multiple_of(3600) {
            return format!("{}h", s / 3600);
        }
        if s.is_multiple_of(60) {
            return format!("{}m", s / 60);
        }
    }
    d.to_string()
}

fn pct(p: f64) -> String {
    format!("{} %", trim(p))
}

fn pct_ratio(r: f64) -> String {
    format!("{} %", trim(r * 100.0))
}

/// A number without float noise: 0.05, 99.95, 14.4.
fn trim(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// `21m 36s`, `2h 9m`, `3d 4h`.
pub fn human_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return "never".into();
    }
    let neg = ms < 0.0;
    let exact = ms.abs() / 1000.0;
    let s = exact.round() as u64;
    let text = if exact < 10.0 {
        trim((exact * 10.0).round() / 10.0) + "s"
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    };
    if neg { format!("-{text}") } else { text }
}

/// What the daemon measured for one SLO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Measured {
    /// Bad and counted requests over the window (as far as the metrics
    /// store's data reaches).
    pub bad: f64,
    pub total: f64,
    /// How much of the window the data covers, ms.
    pub covered_ms: u64,
    /// Error ratio per recorded window (`5m` … `3d`); NaN-free: absent
    /// when there was no traffic.
    pub ratios: Vec<(String, f64)>,
}

/// An SLO's state: the SLI, the budget, the burn rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloStatus {
    pub service: String,
    pub slo: String,
    pub kind: SloKind,
    pub objective: f64,
    pub window: String,
    pub window_ms: u64,
    pub describe: String,
    /// Good share over the last 5 minutes, percent (absent: no traffic).
    pub sli_now: Option<f64>,
    /// Good share over the window, percent.
    pub sli_window: Option<f64>,
    /// The budget: the share of requests allowed to fail, and as time.
    pub budget_ratio: f64,
    pub budget_ms: u64,
    /// Share of the budget left (1 = untouched, ≤ 0 = spent).
    pub budget_remaining: f64,
    pub budget_remaining_ms: f64,
    /// Error ratio ÷ budget ratio per window.
    pub burn_rates: Vec<(String, f64)>,
    /// At the last hour's burn rate, when the budget runs out (ms from
    /// now); absent when nothing burns.
    pub exhausted_in_ms: Option<f64>,
    pub bad: f64,
    pub total: f64,
    pub covered_ms: u64,
}

impl SloStatus {
    pub fn compute(service: &str, spec: &SloSpec, m: &Measured) -> SloStatus {
        let budget_ratio = spec.budget_ratio();
        let window_ms = spec.window.as_millis();
        let budget_ms = (budget_ratio * window_ms as f64).round() as u64;
        let error_window = (m.total > 0.0).then(|| m.bad / m.total);
        let consumed = error_window.map_or(0.0, |e| e / budget_ratio);
        let remaining = 1.0 - consumed;
        let burn_rates: Vec<(String, f64)> = m
            .ratios
            .iter()
            .map(|(w, r)| (w.clone(), r / budget_ratio))
            .collect();
        let burn_1h = burn_rates.iter().find(|(w, _)| w == "1h").map(|(_, b)| *b);
        let exhausted_in_ms = match burn_1h {
            Some(b) if b > 0.0 && remaining > 0.0 => Some(remaining * window_ms as f64 / b),
            Some(b) if b > 0.0 => Some(0.0),
            _ => None,
        };
        SloStatus {
            service: service.to_string(),
            slo: spec.name(),
            kind: spec.kind,
            objective: spec.objective,
            window: window_text(spec.window),
            window_ms,
            describe: spec.describe(),
            sli_now: m
                .ratios
                .iter()
                .find(|(w, _)| w == "5m")
                .map(|(_, r)| 100.0 * (1.0 - r)),
            sli_window: error_window.map(|e| 100.0 * (1.0 - e)),
            budget_ratio,
            budget_ms,
            budget_remaining: remaining,
            budget_remaining_ms: remaining * budget_ms as f64,
            burn_rates,
            exhausted_in_ms,
            bad: m.bad,
            total: m.total,
            covered_ms: m.covered_ms,
        }
    }

    /// The budget is spent.
    pub fn spent(&self) -> bool {
        self.budget_remaining <= 0.0
    }

    /// One line: `web/availability: 99.95 % over 30d; budget 21m 36s, 38 % left`.
    pub fn line(&self) -> String {
        format!(
            "{}/{}: objective {} over {}; error budget {} ({} of requests), {:.1} % left ({})",
            self.service,
            self.slo,
            pct(self.objective),
            self.window,
            human_ms(self.budget_ms as f64),
            pct_ratio(self.budget_ratio),
            self.budget_remaining * 100.0,
            human_ms(self.budget_remaining_ms)
        )
    }
}

/// `ferry slo`'s text.
pub fn render_text(statuses: &[SloStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let opt =
            |v: Option<f64>| v.map_or("— (no traffic)".to_string(), |v| format!("{v:.3} %"));
        out.push_str(&format!("{}/{}: {}\n", s.service, s.slo, s.describe));
        out.push_str(&format!("  SLI now (5m):       {}\n", opt(s.sli_now)));
        let covered = if s.covered_ms + 60_000 < s.window_ms {
            format!(" (data covers {} of it)", human_ms(s.covered_ms as f64))
        } else {
            String::new()
        };
        let label = format!("SLI over {}:", s.window);
        out.push_str(&format!("  {label:<20}{}{covered}\n", opt(s.sli_window)));
        out.push_str(&format!(
            "  error budget:       {} of requests = {} of {}\n",
            pct_ratio(s.budget_ratio),
            human_ms(s.budget_ms as f64),
            s.window
        ));
        let state = if s.spent() { " — SPENT" } else { "" };
        out.push_str(&format!(
            "  budget left:        {:.1} % ({}){state}\n",
            s.budget_remaining * 100.0,
            human_ms(s.budget_remaining_ms)
        ));
        if !s.burn_rates.is_empty() {
            let rates: Vec<String> = s
                .burn_rates
                .iter()
                .map(|(w, b)| format!("{w} {}x", trim((b * 100.0).round() / 100.0)))
                .collect();
            out.push_str(&format!("  burn rate:          {}\n", rates.join(", ")));
        }
        match s.exhausted_in_ms {
            Some(ms) if ms <= 0.0 => out.push_str("  runs out:           already spent\n"),
            Some(ms) => out.push_str(&format!(
                "  runs out:           in {} at the last hour's burn rate\n",
                human_ms(ms)
            )),
            None => out.push_str(
                "  runs out:           not at the last hour's burn rate (nothing failing)\n",
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn availability(objective: f64) -> SloSpec {
        SloSpec {
            name: None,
            kind: SloKind::Availability,
            objective,
            window: default_window(),
            good_status: None,
            bad_status: None,
            threshold: None,
            alerts: true,
        }
    }

    #[test]
    fn the_budget_of_99_95_over_30_days_is_21_minutes_36_seconds() {
        // Seed 003 says "2.16 hours"; 0.05 % of 30 days is 21.6 minutes.
        let s = SloStatus::compute("web", &availability(99.95), &Measured::default());
        assert_eq!(s.budget_ms, 1_296_000);
        assert_eq!(human_ms(s.budget_ms as f64), "21m 36s");
        assert_eq!(s.budget_remaining, 1.0);
        assert!(s.exhausted_in_ms.is_none());
    }

    #[test]
    fn burn_and_exhaustion() {
        let m = Measured {
            bad: 25.0,
            total: 100_000.0,
            covered_ms: 86_400_000,
            ratios: vec![("5m".into(), 0.01), ("1h".into(), 0.005)],
        };
        let s = SloStatus::compute("web", &availability(99.9), &m);
        // 25 of 100 000 failed: 0.025 % of the 0.1 % allowed = 25 % used.
        assert!((s.budget_remaining - 0.75).abs() < 1e-9);
        // 1h burn: 0.5 % / 0.1 % = 5×; 75 % of 30 days at 5× = 4.5 days.
        assert!((s.burn_rates[1].1 - 5.0).abs() < 1e-9);
        assert!((s.exhausted_in_ms.unwrap() - 4.5 * 86_400_000.0).abs() < 1.0);
        assert!((s.sli_now.unwrap() - 99.0).abs() < 1e-9);
        let text = render_text(&[s]);
        assert!(
            text.contains("budget left:        75.0 % (32m 24s)"),
            "{text}"
        );
        assert!(text.contains("runs out:           in 4d 12h"), "{text}");
        assert!(text.contains("burn rate:          5m 10x, 1h 5x"), "{text}");
    }

    #[test]
    fn spent() {
        let m = Measured {
            bad: 2.0,
            total: 1000.0,
            covered_ms: 1,
            ratios: vec![("1h".into(), 0.002)],
        };
        let s = SloStatus::compute("web", &availability(99.9), &m);
        assert!(s.spent());
        assert!(render_text(&[s]).contains("SPENT"));
    }

    #[test]
    fn rules_parse_and_carry_the_workbook_thresholds() {
        let mut lat = availability(95.0);
        lat.kind = SloKind::Latency;
        lat.threshold = Some(Dur::millis(100));
        let text = rule_file("web", &[availability(99.95), lat.clone()]).unwrap();
        let file = ferry_alert::rulefmt::parse("slo.yml", &text).unwrap_or_else(|e| {
            panic!(
                "{text}\n{}",
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        let rules = &file.groups[0].rules;
        // 7 recordings per SLO, 4 alerts per SLO.
        assert_eq!(rules.len(), 2 * 7 + 2 * 4);
        assert!(text.contains(r#"ferry_slo:error_ratio:rate1h{service=\"web\",slo=\"availability\"} > 0.0072 and on (service, slo) ferry_slo:error_ratio:rate5m{service=\"web\",slo=\"availability\"} > 0.0072"#), "{text}");
        assert!(text.contains(r#"status=~\"5..\"}[5m])) / sum(rate(http_requests_total{service=\"web\",status=~\"2..|3..|404|5..\"}[5m]))"#), "{text}");
        assert!(text.contains(r#"le=\"0.1\""#), "{text}");
        assert!(rule_file("web", &[]).is_none());
    }

    #[test]
    fn bad_specs_are_explained() {
        let at = vec![
            "services".to_string(),
            "web".into(),
            "slo".into(),
            "0".into(),
        ];
        let mut s = availability(100.0);
        s.good_status = Some(vec!["2xx".into(), "6xx".into()]);
        s.threshold = Some(Dur::millis(100));
        let p: Vec<String> = s
            .validate(&at)
            .into_iter()
            .map(|p| format!("{}: {}", p.key(), p.message))
            .collect();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("services.web.slo.0.objective: objective = 100"));
        let mut l = availability(99.0);
        l.kind = SloKind::Latency;
        l.threshold = Some(Dur::millis(120));
        let p = l.validate(&at);
        assert!(
            p[0].message
                .contains("not one of the proxy's histogram bounds"),
            "{p:?}"
        );
        l.threshold = Some(Dur(std::time::Duration::from_micros(2500)));
        assert!(l.validate(&at).is_empty());
    }
}
