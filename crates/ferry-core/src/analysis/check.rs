//! The validated check: `Check` and the metrics it names (`Builtin`,
//! `JudgeMetric`) with their spellings and report labels. `spec` turns
//! what ferry.toml says into these; `window` and `judge` evaluate them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    RequestRate,
    ErrorRate,
    LatencyP50,
    LatencyP95,
    LatencyP99,
}

impl Builtin {
    pub fn parse(s: &str) -> Option<Builtin> {
        Some(match s {
            "request_rate" => Builtin::RequestRate,
            "error_rate" => Builtin::ErrorRate,
            "latency_p50" => Builtin::LatencyP50,
            "latency_p95" => Builtin::LatencyP95,
            "latency_p99" => Builtin::LatencyP99,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Builtin::RequestRate => "request_rate",
            Builtin::ErrorRate => "error_rate",
            Builtin::LatencyP50 => "latency_p50",
            Builtin::LatencyP95 => "latency_p95",
            Builtin::LatencyP99 => "latency_p99",
        }
    }
    pub(super) fn is_latency(self) -> bool {
        matches!(
            self,
            Builtin::LatencyP50 | Builtin::LatencyP95 | Builtin::LatencyP99
        )
    }
}

/// What the judge compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMetric {
    Latency,
    ErrorRate,
}

/// A check, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Check {
    Builtin {
        metric: Builtin,
        min: Option<f64>,
        max: Option<f64>,
    },
    Relative {
        metric: Builtin,
        factor: f64,
    },
    Prometheus {
        query: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    MannWhitney {
        metric: JudgeMetric,
        confidence: f64,
        tolerance: f64,
    },
}

impl Check {
    pub fn label(&self) -> String {
        let bound = |min: &Option<f64>, max: &Option<f64>| match (min, max) {
            (Some(a), Some(b)) => format!(" in [{a}, {b}]"),
            (None, Some(b)) => format!(" ≤ {b}"),
            (Some(a), None) => format!(" ≥ {a}"),
            (None, None) => String::new(),
        };
        match self {
            Check::Builtin { metric, min, max } => format!("{}{}", metric.name(), bound(min, max)),
            Check::Relative { metric, factor } => {
                format!("{} ≤ {factor} × baseline", metric.name())
            }
            Check::Prometheus { query, min, max } => {
                format!("prometheus `{query}`{}", bound(min, max))
            }
            Check::MannWhitney {
                metric,
                confidence,
                tolerance,
            } => {
                format!("mann-whitney {metric:?} (confidence {confidence}, tolerance {tolerance})")
                    .to_lowercase()
            }
        }
    }
}
