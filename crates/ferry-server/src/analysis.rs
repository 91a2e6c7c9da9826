//! The analysis runner: samples the proxy's per-revision counters into a
//! short history, and every `interval` measures each check of a rollout
//! (built-in metrics over the sliding window, Prometheus queries, the
//! statistical judge). Judging is `ferry_core::analysis::judge`; this file
//! only gathers numbers. Prometheus is queried off the reconcile loop, so a
//! slow Prometheus never holds a tick.

use ferry_core::Millis;
use ferry_core::analysis::{AnalysisSpec, Check, Inputs, Measurement, WindowStats, judge};
use ferry_core::revision::Revision;
use ferry_proxy::StatsSnapshot;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long sampled counters are kept at most.
const MAX_HISTORY_MS: u64 = 10 * 60 * 1000;

#[derive(Default)]
pub struct Sampler {
    history: BTreeMap<(String, u64), VecDeque<(Millis, StatsSnapshot)>>,
}

impl Sampler {
    /// Record the current counters of a revision.
    pub fn sample(
        &mut self,
        service: &str,
        revision: u64,
        stats: StatsSnapshot,
        now: Millis,
        keep_ms: u64,
    ) {
        let ring = self
            .history
            .entry((service.to_string(), revision))
            .or_default();
        ring.push_back((now, stats));
        let keep = keep_ms.min(MAX_HISTORY_MS) + 2_000;
        while ring
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > keep)
        {
            ring.pop_front();
        }
    }

    /// Forget revisions no longer sampled.
    pub fn retain(&mut self, keep: impl Fn(&(String, u64)) -> bool) {
        self.history.retain(|k, _| keep(k));
    }

    /// What the revision served over the last `window_ms`.
    pub fn window(
        &self,
        service: &str,
        revision: u64,
        window_ms: u64,
        now: Millis,
    ) -> Option<WindowStats> {
        let ring = self.history.get(&(service.to_string(), revision))?;
        let (t1, last) = ring.back()?;
        let start = now.saturating_sub(window_ms);
        let (t0, first) = ring
            .iter()
            .find(|(t, _)| *t >= start)
            .or_else(|| ring.front())?;
        Some(delta(first, last, (*t1 - *t0) as f64 / 1000.0))
    }
}

fn delta(a: &StatsSnapshot, b: &StatsSnapshot, seconds: f64) -> WindowStats {
    let mut latency = Vec::with_capacity(b.latency_buckets.len());
    let mut prev_b = 0;
    let mut prev_a = 0;
    for (i, (bound, cum_b)) in b.latency_buckets.iter().enumerate() {
        let cum_a = a.latency_buckets.get(i).map_or(0, |(_, c)| *c);
        let in_b = cum_b - prev_b;
        let in_a = cum_a - prev_a;
        latency.push((*bound, in_b.saturating_sub(in_a)));
        prev_b = *cum_b;
        prev_a = cum_a;
    }
    WindowStats {
        seconds,
        requests: b.total.saturating_sub(a.total),
        errors: b.by_class[4].saturating_sub(a.by_class[4]),
        latency,
    }
}

/// Fill `{{service}}`, `{{revision}}` and `{{version}}` into a query.
pub fn fill_query(query: &str, rev: &Revision) -> String {
    query
        .replace("{{service}}", &rev.service)
        .replace("{{revision}}", &rev.number.to_string())
        .replace("{{version}}", &rev.version)
}

/// One measurement round, prepared under the daemon's lock and finished
/// (Prometheus, judging) outside it.
pub struct Round {
    pub rollout: u64,
    pub spec: AnalysisSpec,
    pub checks: Vec<(String, Check)>,
    pub canary: WindowStats,
    pub baseline: Option<WindowStats>,
    pub revision: Arc<Revision>,
}

/// Finish a round: run queries where needed (against `prometheus_url`, or
/// the daemon's own store `local` without one), then judge every check.
pub async fn measure(
    round: Round,
    http: &reqwest::Client,
    local: &crate::tsdb::MetricsDb,
) -> Vec<Measurement> {
    let mut out = Vec::with_capacity(round.checks.len());
    for (label, check) in &round.checks {
        let prometheus = match (check, &round.spec.prometheus_url) {
            (Check::Prometheus { query, .. }, None) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Some(query_local(local, &fill_query(query, &round.revision), now))
            }
            (Check::Prometheus { query, .. }, Some(url)) => {
                let timeout = round
                    .spec
                    .interval
                    .0
                    .clamp(Duration::from_millis(200), Duration::from_secs(5));
                Some(
                    query_prometheus(http, url, &fill_query(query, &round.revision), timeout).await,
                )
            }
            _ => None,
        };
        out.push(judge(
            label,
            check,
            &Inputs {
                canary: &round.canary,
                baseline: round.baseline.as_ref(),
                prometheus,
                min_requests: round.spec.min_requests,
            },
        ));
    }
    out
}

/// An instant query against the daemon's own store, read as
/// [`query_prometheus`] reads Prometheus's answer.
pub fn query_local(db: &crate::tsdb::MetricsDb, query: &str, now: i64) -> Result<f64, String> {
    let value = match db.instant(query, now).map_err(|e| e.to_string())? {
        ferry_metrics::Value::Scalar(f) => f,
        ferry_metrics::Value::Vector(v) => match v.first() {
            Some(s) => s.v,
            None => return Err("the query returned no series (no data)".into()),
        },
        other => {
            return Err(format!(
                "the query returned a {}; use one that returns a number or a one-series vector",
                other.type_name()
            ));
        }
    };
    if value.is_nan() {
        return Err("the query returned NaN, not a number".into());
    }
    Ok(value)
}

/// An instant query against Prometheus' HTTP API: the first sample's value.
pub async fn query_prometheus(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    timeout: Duration,
) -> Result<f64, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .query(&[("query", query)])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("GET {url}: not JSON ({e})"))?;
    if body["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {} {}",
            body["errorType"].as_str().unwrap_or(""),
            body["error"].as_str().unwrap_or("query failed")
        ));
    }
    let data = &body["data"];
    let value = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|s| &s["value"][1]),
        Some("scalar") => Some(&data["result"][1]),
        other => {
            return Err(format!(
                "the query returned a {}; use one that returns a number or a one-series vector",
                other.unwrap_or("?")
            ));
        }
    };
    let Some(v) = value else {
        return Err("the query returned no series (no data)".into());
    };
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|x| !x.is_nan())
        .ok_or_else(|| format!("the query returned {v}, not a number"))
}

/// Measurements finished by background rounds, waiting for the next tick.
pub type Pending = Arc<Mutex<Vec<(u64, Measurement)>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_deltas_of_the_counters() {
        let stats = ferry_proxy::RevisionStats::new();
        let mut s = Sampler::default();
        s.sample("web", 1, stats.snapshot(), 1_000, 10_000);
        s.sample("web", 1, stats.snapshot(), 2_000, 10_000);
        let w = s.window("web", 1, 10_000, 2_000).unwrap();
        assert_eq!(w.requests, 0);
        assert!((w.seconds - 1.0).abs() < 1e-9);
        assert!(s.window("web", 2, 10_000, 2_000).is_none());
    }
}
