//! `[services.NAME.analysis]` as written in ferry.toml: `AnalysisSpec`,
//! `CheckSpec`, `Threshold` and their defaults, and their validation into
//! `Check`s (`CheckSpec::to_check`, `AnalysisSpec::validate`).

use super::check::{Builtin, Check, JudgeMetric};
use crate::duration::Dur;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

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
    /// Prometheus base URL for `prometheus` checks; without it they query
    /// the daemon's own metrics store.
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
            // A query without prometheus_url runs against the daemon's
            // own metrics store.
            if let Err(e) = c.to_check(&key(table), i) {
                p.push(e);
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

#[cfg(test)]
mod tests {
    use super::*;

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
