//! `WindowStats`: what a revision served over the analysis window (requests,
//! 5xx, a latency histogram), and the arithmetic on it: error rate, request
//! rate, histogram quantiles, the value of a built-in metric.

use super::check::Builtin;
use serde::{Deserialize, Serialize};

/// What the proxy saw of one revision over the analysis window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowStats {
    pub seconds: f64,
    pub requests: u64,
    /// 5xx answers, including the proxy's own 502/504 for this revision.
    pub errors: u64,
    /// Latency histogram of the window: (upper bound in seconds, count in
    /// that bucket — not cumulative). The last bound may be infinite.
    pub latency: Vec<(f64, u64)>,
}

impl WindowStats {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
    /// Quantile by linear interpolation inside the bucket, as Prometheus'
    /// `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|(_, c)| c).sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        let mut lower = 0.0;
        for (upper, count) in &self.latency {
            if *count > 0 && (seen + count) as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let into = (rank - seen as f64) / *count as f64;
                return Some(lower + (upper - lower) * into.clamp(0.0, 1.0));
            }
            seen += count;
            if upper.is_finite() {
                lower = *upper;
            }
        }
        Some(lower)
    }
    pub(super) fn builtin(&self, m: Builtin) -> Option<f64> {
        match m {
            Builtin::RequestRate => Some(self.rate()),
            Builtin::ErrorRate => self.error_rate(),
            Builtin::LatencyP50 => self.quantile(0.50),
            Builtin::LatencyP95 => self.quantile(0.95),
            Builtin::LatencyP99 => self.quantile(0.99),
        }
    }
}
