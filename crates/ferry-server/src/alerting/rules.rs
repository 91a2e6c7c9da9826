//! Running rule groups: one task per group, each evaluation on a blocking
//! thread (PromQL is CPU work and holds the store's read lock while it
//! loads series), at Prometheus's aligned times: `k·interval + offset`,
//! the offset fixed per group so that groups spread over the interval.

use super::load::{GroupDef, Loaded};
use super::store::NewEntry;
use super::{Alerting, lock};
use crate::daemon::Daemon;
use ferry_alert::alert::{LabelSet, Millis};
use ferry_alert::rules::{AlertState, EvalEnv, Group, RuleContext, State, Transition};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A group and its task.
pub struct Running {
    pub group: Arc<Mutex<Group>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// The store key of a group's alert states.
fn key(file: &str, group: &str) -> String {
    format!("rules/{file};{group}")
}

/// Start every group of `loaded`; a group takes its alerts' state from
/// `states` (a reload) or else from the store (a restart).
pub fn start(
    a: &Arc<Alerting>,
    d: &Arc<Daemon>,
    loaded: &Loaded,
    states: Vec<(String, String, Vec<AlertState>)>,
) {
    let now = d.clock.now() as Millis;
    let mut running = Vec::new();
    let slo = lock(&a.slo_groups).clone();
    for GroupDef { file, spec } in loaded.groups.iter().chain(slo.iter()) {
        let mut group = Group::new(spec, file, loaded.eval_interval);
        let saved = match states.iter().find(|(f, g, _)| f == file && *g == spec.name) {
            Some((_, _, s)) => Some(s.clone()),
            None => a
                .store
                .load::<Vec<AlertState>>(&key(file, &spec.name))
                .unwrap_or_else(|e| {
                    tracing::warn!("{e}; group {} starts without its alerts' state", spec.name);
                    None
                }),
        };
        if let Some(s) = saved {
            let n = group.restore(s, now);
            if n > 0 {
                tracing::info!("rule group {}: {n} alerts restored", spec.name);
            }
        }
        let group = Arc::new(Mutex::new(group));
        let task = tokio::spawn(run(a.clone(), d.clone(), group.clone()));
        running.push(Running { group, task });
    }
    *lock(&a.groups) = running;
}

/// The group's offset within its interval: a hash of its file and name,
/// so that it is the same after a restart.
fn offset(file: &str, name: &str, interval: i64) -> i64 {
    let mut h: u64 = 14695981039346656037;
    for b in file.bytes().chain([0xff]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(1099511628211);
    }
    (h % interval.max(1) as u64) as i64
}

/// The first evaluation time at or after `now`.
fn next_eval(now: Millis, interval: i64, offset: i64) -> Millis {
    let base = now - now.rem_euclid(interval) + offset;
    if base >= now { base } else { base + interval }
}

async fn run(a: Arc<Alerting>, d: Arc<Daemon>, group: Arc<Mutex<Group>>) {
    let (interval, off) = {
        let g = lock(&group);
        let i = g.interval.millis().max(1000);
        (i, offset(&g.file, &g.name, i))
    };
    loop {
        let now = d.clock.now() as Millis;
        let ts = next_eval(now, interval, off);
        tokio::time::sleep(Duration::from_millis((ts - now).max(0) as u64)).await;
        let (a2, d2, g2) = (a.clone(), d.clone(), group.clone());
        let done = tokio::task::spawn_blocking(move || eval(&a2, &d2, &g2, ts, interval)).await;
        if let Err(e) = done {
            tracing::error!("rule evaluation stopped: {e}");
        }
    }
}

struct Ctx<'a> {
    d: &'a Daemon,
}

impl RuleContext for Ctx<'_> {
    fn query(&self, expr: &str, ts_ms: i64) -> Result<Vec<(LabelSet, f64)>, String> {
        use ferry_metrics::Value;
        match self.d.tsdb.instant(expr, ts_ms) {
            Ok(Value::Vector(v)) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
            Ok(Value::Scalar(v)) => Ok(vec![(LabelSet::new(), v)]),
            Ok(other) => Err(format!(
                "rule result is not a vector or scalar: {}",
                other.type_name()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn write(&self, key: &str, ts_ms: i64, samples: Vec<(LabelSet, f64)>) {
        let batch = samples
            .into_iter()
            .map(|(l, v)| (Arc::new(l), ts_ms, v))
            .collect();
        self.d
            .tsdb
            .ingest_target(&format!("rule:{key}"), batch, BTreeMap::new(), ts_ms);
    }
}

/// One evaluation of one group at `ts`, then what follows from it: its
/// state saved with the history of its transitions, its alerts sent.
fn eval(a: &Alerting, d: &Daemon, group: &Mutex<Group>, ts: Millis, interval: i64) {
    let loaded = a.loaded();
    let external_url = a.external_url();
    let env = EvalEnv {
        external_labels: &loaded.external_labels,
        external_url: &external_url,
    };
    let started = Instant::now();
    let mut g = lock(group);
    let result = g.eval_timed(ts, &Ctx { d }, &env, &|| started.elapsed());
    a.counters
        .evaluations
        .fetch_add(g.rules.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let failed = g
        .rules
        .iter()
        .filter(|r| r.health == ferry_alert::rules::Health::Err)
        .count();
    a.counters
        .evaluation_failures
        .fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
    let to_send = g.alerts_to_send(ts, loaded.resend_delay.millis(), interval);
    // The value of every firing alert, for a rollout's record.
    {
        let mut values = lock(&a.values);
        for rule in &g.rules {
            for alert in rule.active_alerts() {
                if alert.state == State::Firing {
                    let labels =
                        super::with_external(alert.labels.clone(), &loaded.external_labels);
                    values.insert(ferry_alert::alert::fingerprint(&labels), alert.value);
                }
            }
        }
        if values.len() > 100_000 {
            values.clear();
        }
    }
    if !result.transitions.is_empty() || !to_send.is_empty() {
        let history: Vec<NewEntry> = result
            .transitions
            .iter()
            .map(|t| history_of(t, &g.name, &loaded.external_labels))
            .collect();
        if let Err(e) = a
            .store
            .save(&key(&g.file, &g.name), &g.snapshot(), &history)
        {
            tracing::error!("{e}; the alerts of group {} are not saved", g.name);
        }
    }
    drop(g);
    if !to_send.is_empty() {
        a.pusher().send(&to_send);
        let now = d.clock.now() as Millis;
        a.receive(to_send, now);
    }
}

fn history_of(t: &Transition, group: &str, external: &LabelSet) -> NewEntry {
    let labels = super::with_external(t.labels.clone(), external);
    let to = match t.to {
        State::Inactive => "inactive",
        State::Pending => "pending",
        State::Firing => "firing",
    };
    // Rule-side states are named for the rule; the notifier records when
    // an alert fires and resolves for receivers.
    let kind = format!("rule-{to}");
    let message = match (t.from, t.to) {
        (State::Pending, State::Inactive) => format!(
            "{} stopped matching before its `for` (was pending; value {})",
            t.rule, t.value
        ),
        (State::Firing, State::Inactive) => format!("{} resolved (value {})", t.rule, t.value),
        (_, State::Firing) => format!("{} fires (value {})", t.rule, t.value),
        (_, State::Pending) => format!("{} is pending (value {})", t.rule, t.value),
        _ => format!("{}: {} → {to}", t.rule, t.from.as_str()),
    };
    NewEntry {
        at: t.at,
        kind,
        alertname: t.rule.clone(),
        fingerprint: ferry_alert::alert::fingerprint(&labels).to_string(),
        receiver: String::new(),
        message,
        detail: serde_json::json!({
            "group": group,
            "labels": labels,
            "value": if t.value.is_finite() { serde_json::json!(t.value) } else { serde_json::json!(t.value.to_string()) },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_are_aligned_and_spread() {
        assert_eq!(next_eval(10_000, 15_000, 0), 15_000);
        assert_eq!(next_eval(15_000, 15_000, 0), 15_000);
        assert_eq!(next_eval(16_000, 15_000, 2_000), 17_000);
        assert_eq!(next_eval(18_000, 15_000, 2_000), 32_000);
        let a = offset("f", "a", 15_000);
        assert_eq!(a, offset("f", "a", 15_000));
        assert!((0..15_000).contains(&a));
    }
}
