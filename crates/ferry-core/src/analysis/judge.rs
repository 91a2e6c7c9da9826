//! The judge: one validated `Check` and the numbers for it (the canary's
//! window, the baseline's, a Prometheus result) in; one `Measurement` with
//! its `Verdict` and a detail for people out. Pure.

use super::check::{Builtin, Check, JudgeMetric};
use super::stats::{mann_whitney, midpoints, weighted_mean};
use super::window::WindowStats;
use serde::{Deserialize, Serialize};

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
    use crate::analysis::spec::{CheckSpec, Threshold};
    use crate::duration::Dur;

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
}
