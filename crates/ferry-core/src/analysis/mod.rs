//! Release analysis: the checks a spec declares, and the pure judgement of
//! one measurement (pass, fail or inconclusive) from windowed observations.
//!
//! The shell gathers the numbers (the proxy's per-revision counters over a
//! sliding window, Prometheus query results); everything here is arithmetic.

mod check;
mod stats;
mod window;

use crate::duration::Dur;
use crate::spec::Problem;
pub use check::{Builtin, Check, JudgeMetric};
use serde::{Deserialize, Serialize};
pub use stats::{UTest, mann_whitney};
use stats::{midpoints, weighted_mean};
pub use window::WindowStats;

/// `[services.NAME.analysis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// How often every check is measured.
    #[serde(default = "defaults::interval")]
    pub interval: Dur,
    /// Failed measurements allowed; one more fails the rollout.
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements in a row allowed; one more pauses the rollout.
    #[serde(default = "defaults::inconclusive_limit")]
    pub inconclusive_limit: u32,
    /// Fewer requests than this in a window make a built-in check inconclusive.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    /// The sliding window built-in metrics are computed over.
    #[serde(default = "defaults::window")]
    pub window: Dur,
    /// Prometheus base URL for `prometheus` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Blue-green: checks the new set must pass before traffic switches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_promotion: Vec<CheckSpec>,
    /// Blue-green: passing rounds in a row needed before the switch.
    #[serde(default = "defaults::pre_promotion_passes")]
    pub pre_promotion_passes: u32,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: defaults::interval(),
            failure_limit: 0,
            inconclusive_limit: defaults::inconclusive_limit(),
            min_requests: defaults::min_requests(),
            window: defaults::window(),
            prometheus_url: None,
            checks: Vec::new(),
            pre_promotion: Vec::new(),
            pre_promotion_passes: defaults::pre_promotion_passes(),
        }
    }
}

mod defaults {
    use crate::duration::Dur;
    pub fn interval() -> Dur {
        Dur::secs(1)
    }
    pub fn inconclusive_limit() -> u32 {
        3
    }
    pub fn min_requests() -> u64 {
        20
    }
    pub fn window() -> Dur {
        Dur::secs(10)
    }
    pub fn pre_promotion_passes() -> u32 {
        3
    }
}

/// A threshold: a number, or a duration for latency (`"500ms"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Threshold {
    Number(f64),
    Duration(Dur),
}

impl Threshold {
    /// Seconds for durations, the number itself otherwise.
    pub fn value(&self) -> f64 {
        match self {
            Threshold::Number(n) => *n,
            Threshold::Duration(d) => d.0.as_secs_f64(),
        }
    }
}

/// One entry of `checks = [...]`, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// A built-in metric: request_rate, error_rate, latency_p50/p95/p99, or
    /// `latency`/`error_rate` for a judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A PromQL query; `{{service}}`, `{{revision}}`, `{{version}}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
    /// A statistical judge comparing canary with baseline: `mann-whitney`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Threshold>,
    /// Canary ≤ this × baseline (stable) for the metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to_baseline: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// A name for reports (default: derived from the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl CheckSpec {
    /// Validate one check; `at` is the key path of the `checks` array, `i`
    /// its index.
    pub fn to_check(&self, at: &[String], i: usize) -> Result<Check, Problem> {
        let problem = |m: String| Problem {
            path: at.to_vec(),
            message: format!("checks[{i}]: {m}"),
        };
        let kinds = [
            self.metric.is_some() && self.judge.is_none(),
            self.prometheus.is_some(),
            self.judge.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(problem(
                "give exactly one of metric = \"error_rate\", prometheus = \"<query>\" or judge = \"mann-whitney\"".into(),
            ));
        }
        let min = self.min.as_ref().map(Threshold::value);
        let max = self.max.as_ref().map(Threshold::value);
        if let Some(judge) = &self.judge {
            if judge != "mann-whitney" {
                return Err(problem(format!(
                    "judge = \"{judge}\" is not known; use \"mann-whitney\""
                )));
            }
            let metric = match self.metric.as_deref() {
                Some("latency") | None => JudgeMetric::Latency,
                Some("error_rate") => JudgeMetric::ErrorRate,
                Some(m) => {
                    return Err(problem(format!(
                        "the judge compares metric = \"latency\" or \"error_rate\", not \"{m}\""
                    )));
                }
            };
            let confidence = self.confidence.unwrap_or(0.98);
            let tolerance = self.tolerance.unwrap_or(0.25);
            if !(0.5..1.0).contains(&confidence) {
                return Err(problem(format!(
                    "confidence = {confidence} must be in [0.5, 1), e.g. 0.98"
                )));
            }
            if !(0.0..=10.0).contains(&tolerance) {
                return Err(problem(format!(
                    "tolerance = {tolerance} must be between 0 and 10, e.g. 0.25"
                )));
            }
            return Ok(Check::MannWhitney {
                metric,
                confidence,
                tolerance,
            });
        }
        if self.confidence.is_some() || self.tolerance.is_some() {
            return Err(problem(
                "confidence and tolerance belong to judge checks".into(),
            ));
        }
        if let Some(query) = &self.prometheus {
            if query.trim().is_empty() {
                return Err(problem("prometheus query is empty".into()));
            }
            if min.is_none() && max.is_none() {
                return Err(problem(
                    "a prometheus check needs max = … or min = …".into(),
                ));
            }
            return Ok(Check::Prometheus {
                query: query.clone(),
                min,
                max,
            });
        }
        let name = self.metric.as_deref().unwrap_or_default();
        let metric = Builtin::parse(name).ok_or_else(|| {
            problem(format!(
                "metric = \"{name}\" is not built in; use request_rate, error_rate, latency_p50, latency_p95 or latency_p99"
            ))
        })?;
        for (key, t) in [("max", &self.max), ("min", &self.min)] {
            match (t, metric.is_latency()) {
                (Some(Threshold::Number(_)), true) => {
                    return Err(problem(format!(
                        "{key} of a latency metric takes a duration, e.g. \"500ms\""
                    )));
                }
                (Some(Threshold::Duration(_)), false) => {
                    return Err(problem(format!(
                        "{key} of {} takes a number",
                        metric.name()
                    )));
                }
                _ => {}
            }
        }
        if let Some(factor) = self.relative_to_baseline {
            if min.is_some() || max.is_some() {
                return Err(problem(
                    "use either relative_to_baseline or max/min, not both".into(),
                ));
            }
            if factor.is_nan() || factor <= 0.0 {
                return Err(problem(format!(
                    "relative_to_baseline = {factor} must be positive, e.g. 1.5"
                )));
            }
            return Ok(Check::Relative { metric, factor });
        }
        if min.is_none() && max.is_none() {
            return Err(problem(format!(
                "{} needs max = … (or min = …, or relative_to_baseline = …)",
                metric.name()
            )));
        }
        if metric == Builtin::ErrorRate && max.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            return Err(problem(
                "error_rate is a share between 0 and 1; e.g. max = 0.01 for 1 %".into(),
            ));
        }
        Ok(Check::Builtin { metric, min, max })
    }

    pub fn label(&self, check: &Check) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        check.label()
    }
}

impl AnalysisSpec {
    pub fn validate(&self, at: &[String]) -> Vec<Problem> {
        let mut p = Vec::new();
        let key = |k: &str| {
            let mut v = at.to_vec();
            v.push(k.into());
            v
        };
        if self.interval.0 < std::time::Duration::from_millis(100) {
            p.push(Problem {
                path: key("interval"),
                message: "interval must be at least 100ms".into(),
            });
        }
        if self.window < self.interval {
            p.push(Problem {
                path: key("window"),
                message: "window must be at least one interval long".into(),
            });
        }
        if let Some(url) = &self.prometheus_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            p.push(Problem {
                path: key("prometheus_url"),
                message: format!("prometheus_url = \"{url}\" must start with http:// or https://"),
            });
        }
        let all = self
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| ("checks", i, c))
            .chain(
                self.pre_promotion
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ("pre_promotion", i, c)),
            );
        for (table, i, c) in all {
            match c.to_check(&key(table), i) {
                Err(e) => p.push(e),
                Ok(Check::Prometheus { .. }) if self.prometheus_url.is_none() => p.push(Problem {
                                        path: key(table),
                    message: format!(
                        "{table}[{i}] queries Prometheus: set prometheus_url = \"http://127.0.0.1:9090\" in this table"),
                }),
                Ok(_) => {}
            }
        }
        p
    }

    /// The validated checks with their labels.
    pub fn checks(&self) -> Vec<(String, Check)> {
        Self::labelled(&self.checks)
    }

    /// The validated pre-promotion checks with their labels.
    pub fn pre_promotion_checks(&self) -> Vec<(String, Check)> {
        Self::labelled(&self.pre_promotion)
    }

    fn labelled(checks: &[CheckSpec]) -> Vec<(String, Check)> {
        checks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.to_check(&[], i).ok().map(|k| (c.label(&k), k)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

/// One judged measurement, kept in the rollout's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Measurement {
    pub check: String,
    pub verdict: Verdict,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub detail: String,
}

/// Inputs for judging one check.
pub struct Inputs<'a> {
    pub canary: &'a WindowStats,
    pub baseline: Option<&'a WindowStats>,
    /// The result of the check's Prometheus query, if it has one.
    pub prometheus: Option<Result<f64, String>>,
    pub min_requests: u64,
}

fn bounded(value: f64, min: Option<f64>, max: Option<f64>) -> bool {
    min.is_none_or(|m| value >= m) && max.is_none_or(|m| value <= m)
}

fn fmt_value(m: Option<Builtin>, v: f64) -> String {
    match m {
        Some(b) if b.is_latency() => format!("{:.1}ms", v * 1000.0),
        Some(Builtin::ErrorRate) => format!("{:.2}%", v * 100.0),
        Some(Builtin::RequestRate) => format!("{v:.1}/s"),
        _ => format!("{v}"),
    }
}

/// Judge one check. Pure.
pub fn judge(label: &str, check: &Check, inputs: &Inputs<'_>) -> Measurement {
    let m = |verdict, value, baseline, detail: String| Measurement {
        check: label.to_string(),
        verdict,
        value,
        baseline,
        detail,
    };
    let few = |w: &WindowStats, who: &str| {
        m(
            Verdict::Inconclusive,
            None,
            None,
            format!(
                "only {} {who} requests in the window (min_requests {})",
                w.requests, inputs.min_requests
            ),
        )
    };
    match check {
        Check::Builtin { metric, min, max } => {
            if *metric != Builtin::RequestRate && inputs.canary.requests < inputs.min_requests {
                return few(inputs.canary, "canary");
            }
            let Some(v) = inputs.canary.builtin(*metric) else {
                return m(Verdict::Inconclusive, None, None, "no data".into());
            };
            let ok = bounded(v, *min, *max);
            m(
                if ok { Verdict::Pass } else { Verdict::Fail },
                Some(v),
                None,
                format!(
                    "{} = {} ({} requests)",
                    metric.name(),
                    fmt_value(Some(*metric), v),
                    inputs.canary.requests
                ),
            )
        }
        Check::Relative { metric, factor } => {
            let Some(base) = inputs.baseline else {
                return m(
                    Verdict::Inconclusive,
                    None,
                    None,
                    "no baseline revision to compare with".into(),
                );
            };
            if inputs.canary.requests < inputs.min_requests {
                return few(inputs.canary, "canary");
            }
            if base.requests < inputs.min_requests {
                return few(base, "baseline");
            }
            let (Some(v), Some(b)) = (inputs.canary.builtin(*metric), base.builtin(*metric)) else {
                return m(Verdict::Inconclusive, None, None, "no data".into());
            };
            // A zero baseline error rate would make any error a failure;
            // allow the rate of one error in the window.
            let floor = if *metric == Builtin::ErrorRate {
                1.0 / base.requests.max(1) as f64
            } else {
                0.0
            };
            let limit = factor * b.max(floor);
            let ok = v <= limit;
            m(
                if ok { Verdict::Pass } else { Verdict::Fail },
                Some(v),
                Some(b),
                format!(
                    "canary {} vs baseline {} (limit {factor} × baseline = {})",
                    fmt_value(Some(*metric), v),
                    fmt_value(Some(*metric), b),
                    fmt_value(Some(*metric), limit)
                ),
            )
        }
        Check::Prometheus { min, max, .. } => match &inputs.prometheus {
            Some(Ok(v)) => {
                let ok = bounded(*v, *min, *max);
                m(
                    if ok { Verdict::Pass } else { Verdict::Fail },
                    Some(*v),
                    None,
                    format!("query returned {v}"),
                )
            }
            Some(Err(e)) => m(
                Verdict::Inconclusive,
                None,
                None,
                format!("prometheus error: {e}"),
            ),
            None => m(
                Verdict::Inconclusive,
                None,
                None,
                "prometheus was not queried".into(),
            ),
        },
        Check::MannWhitney {
            metric,
            confidence,
            tolerance,
        } => {
            let Some(base) = inputs.baseline else {
                return m(
                    Verdict::Inconclusive,
                    None,
                    None,
                    "no baseline revision to compare with".into(),
                );
            };
            if inputs.canary.requests < inputs.min_requests {
                return few(inputs.canary, "canary");
            }
            if base.requests < inputs.min_requests {
                return few(base, "baseline");
            }
            let (a, b) = match metric {
                JudgeMetric::Latency => {
                    (midpoints(&inputs.canary.latency), midpoints(&base.latency))
                }
                JudgeMetric::ErrorRate => (outcomes(inputs.canary), outcomes(base)),
            };
            let Some(t) = mann_whitney(&a, &b) else {
                return m(
                    Verdict::Inconclusive,
                    None,
                    None,
                    "not enough samples".into(),
                );
            };
            let (ca, cb) = (weighted_mean(&a), weighted_mean(&b));
            let significant = t.p_value < 1.0 - confidence;
            // Relative effect: how much worse the canary is than baseline.
            let effect = if cb > 0.0 {
                (ca - cb) / cb
            } else if ca > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            let worse = significant && effect > *tolerance;
            m(
                if worse { Verdict::Fail } else { Verdict::Pass },
                Some(ca),
                Some(cb),
                format!(
                    "U = {:.1}, z = {:.2}, p = {:.4}; canary mean {:.4} vs baseline {:.4} ({:+.0}%); {}",
                    t.u,
                    t.z,
                    t.p_value,
                    ca,
                    cb,
                    effect * 100.0,
                    if worse {
                        "canary is significantly worse beyond tolerance"
                    } else if significant {
                        "different but within tolerance"
                    } else {
                        "no significant difference"
                    }
                ),
            )
        }
    }
}

fn outcomes(w: &WindowStats) -> Vec<(f64, u64)> {
    vec![(0.0, w.requests.saturating_sub(w.errors)), (1.0, w.errors)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(requests: u64, errors: u64, latency: &[(f64, u64)]) -> WindowStats {
        WindowStats {
            seconds: 10.0,
            requests,
            errors,
            latency: latency.to_vec(),
        }
    }

    fn check(spec: CheckSpec) -> Check {
        spec.to_check(&["checks".into()], 0).unwrap()
    }

    #[test]
    fn builtin_error_rate_passes_fails_and_is_inconclusive_on_little_data() {
        let c = check(CheckSpec {
            metric: Some("error_rate".into()),
            max: Some(Threshold::Number(0.01)),
            ..Default::default()
        });
        let judge_with = |canary: &WindowStats| {
            judge(
                "e",
                &c,
                &Inputs {
                    canary,
                    baseline: None,
                    prometheus: None,
                    min_requests: 20,
                },
            )
        };
        assert_eq!(judge_with(&w(100, 0, &[])).verdict, Verdict::Pass);
        let bad = judge_with(&w(100, 30, &[]));
        assert_eq!(bad.verdict, Verdict::Fail);
        assert!(bad.detail.contains("30.00%"), "{}", bad.detail);
        assert_eq!(judge_with(&w(5, 5, &[])).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn latency_quantiles_interpolate_like_prometheus() {
        let s = w(
            100,
            0,
            &[(0.1, 50), (0.2, 40), (0.5, 10), (f64::INFINITY, 0)],
        );
        assert!((s.quantile(0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((s.quantile(0.9).unwrap() - 0.2).abs() < 1e-9);
        assert!((s.quantile(0.99).unwrap() - 0.47).abs() < 1e-9);
        let c = check(CheckSpec {
            metric: Some("latency_p99".into()),
            max: Some(Threshold::Duration(Dur::millis(300))),
            ..Default::default()
        });
        let r = judge(
            "p99",
            &c,
            &Inputs {
                canary: &s,
                baseline: None,
                prometheus: None,
                min_requests: 20,
            },
        );
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.detail.contains("470.0ms"), "{}", r.detail);
    }

    #[test]
    fn relative_to_baseline() {
        let c = check(CheckSpec {
            metric: Some("error_rate".into()),
            relative_to_baseline: Some(1.5),
            ..Default::default()
        });
        let base = w(1000, 10, &[]);
        let judge_with = |canary: &WindowStats| {
            judge(
                "r",
                &c,
                &Inputs {
                    canary,
                    baseline: Some(&base),
                    prometheus: None,
                    min_requests: 20,
                },
            )
        };
        assert_eq!(judge_with(&w(100, 1, &[])).verdict, Verdict::Pass);
        assert_eq!(judge_with(&w(100, 5, &[])).verdict, Verdict::Fail);
    }

    #[test]
    fn mann_whitney_matches_a_known_value_and_judges_latency() {
        // Two samples, no ties: a = 1..=10, b = 11..=20 → U = 0, z ≈ -3.78.
        let a: Vec<(f64, u64)> = (1..=10).map(|v| (v as f64, 1)).collect();
        let b: Vec<(f64, u64)> = (11..=20).map(|v| (v as f64, 1)).collect();
        let t = mann_whitney(&a, &b).unwrap();
        assert_eq!(t.u, 0.0);
        assert!((t.z + 3.7796).abs() < 1e-3, "{t:?}");
        assert!(t.p_value < 0.001);
        let same = mann_whitney(&a, &a).unwrap();
        assert!(same.p_value > 0.9, "{same:?}");

        let c = check(CheckSpec {
            judge: Some("mann-whitney".into()),
            metric: Some("latency".into()),
            confidence: Some(0.98),
            tolerance: Some(0.25),
            ..Default::default()
        });
        let base = w(
            500,
            0,
            &[(0.01, 450), (0.025, 50), (0.1, 0), (f64::INFINITY, 0)],
        );
        let slow = w(
            100,
            0,
            &[(0.01, 0), (0.025, 10), (0.1, 90), (f64::INFINITY, 0)],
        );
        let r = judge(
            "mw",
            &c,
            &Inputs {
                canary: &slow,
                baseline: Some(&base),
                prometheus: None,
                min_requests: 20,
            },
        );
        assert_eq!(r.verdict, Verdict::Fail, "{}", r.detail);
        assert!(r.detail.contains("U = "));
        let alike = w(
            100,
            0,
            &[(0.01, 90), (0.025, 10), (0.1, 0), (f64::INFINITY, 0)],
        );
        let r = judge(
            "mw",
            &c,
            &Inputs {
                canary: &alike,
                baseline: Some(&base),
                prometheus: None,
                min_requests: 20,
            },
        );
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.detail);
    }

    #[test]
    fn bad_checks_are_explained() {
        let err = |s: CheckSpec| s.to_check(&["x".into()], 3).unwrap_err().message;
        assert!(
            err(CheckSpec {
                metric: Some("errors".into()),
                max: Some(Threshold::Number(1.0)),
                ..Default::default()
            })
            .contains("not built in")
        );
        assert!(
            err(CheckSpec {
                metric: Some("latency_p99".into()),
                max: Some(Threshold::Number(0.5)),
                ..Default::default()
            })
            .contains("duration")
        );
        assert!(
            err(CheckSpec {
                metric: Some("error_rate".into()),
                ..Default::default()
            })
            .contains("needs max")
        );
        assert!(
            err(CheckSpec {
                judge: Some("t-test".into()),
                ..Default::default()
            })
            .contains("mann-whitney")
        );
        assert!(err(CheckSpec::default()).contains("exactly one"));
    }
}
