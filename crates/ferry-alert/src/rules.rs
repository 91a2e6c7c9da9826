//! Rule groups evaluated, as Prometheus's `rules` package does: recording
//! rules write their result under a new name; alerting rules run the alert
//! state machine (pending → firing → inactive, `for`, `keep_firing_for`,
//! resolved alerts kept 15 minutes) and write `ALERTS` and
//! `ALERTS_FOR_STATE`.
//!
//! Pure: no clock, no I/O. The caller passes the evaluation time, runs the
//! queries and stores the output through a [`RuleContext`], and sends what
//! [`Group::alerts_to_send`] returns.

use crate::alert::{Alert, LabelSet, Millis};
use crate::duration::PromDuration;
use crate::rulefmt::{GroupSpec, RuleKind, RuleSpec};
use crate::template::{self, AlertData, query_escape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

mod api;
pub use api::*;

/// How long a resolved alert is kept (and its resolution re-sent).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// What rule evaluation needs from the daemon.
pub trait RuleContext {
    /// An instant PromQL query at `ts_ms`: each sample's labels (with
    /// `__name__` when the result has one) and value.
    fn query(&self, expr: &str, ts_ms: i64) -> Result<Vec<(LabelSet, f64)>, String>;
    /// Store one rule's whole output at `ts_ms` under that rule's `key`.
    /// Every successful evaluation writes its full current set, even when
    /// empty: a series written under `key` last time and missing now has
    /// gone stale.
    fn write(&self, key: &str, ts_ms: i64, samples: Vec<(LabelSet, f64)>);
}

/// Samples: (labels with `__name__`, value).
pub type Samples = Vec<(LabelSet, f64)>;

/// `(rule name, alert labels)` → the last `ALERTS_FOR_STATE` sample
/// (timestamp ms, value).
pub type LastForState<'a> = &'a dyn Fn(&str, &LabelSet) -> Option<(Millis, f64)>;

/// What templates see besides the alert: `$externalLabels`, `$externalURL`.
#[derive(Debug, Clone, Copy)]
pub struct EvalEnv<'a> {
    pub external_labels: &'a LabelSet,
    pub external_url: &'a str,
}

/// An alert's state (Prometheus's `AlertState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inactive,
    Pending,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }
}

/// A rule's health after its last evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    Ok,
    Err,
}

/// One alert of an alerting rule (Prometheus's `rules.Alert`). Times in
/// Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAlert {
    pub labels: LabelSet,
    pub annotations: LabelSet,
    pub state: State,
    pub value: f64,
    pub active_at: Millis,
    #[serde(default)]
    pub fired_at: Option<Millis>,
    #[serde(default)]
    pub resolved_at: Option<Millis>,
    #[serde(default)]
    pub last_sent_at: Option<Millis>,
    #[serde(default)]
    pub keep_firing_since: Option<Millis>,
    /// The `endsAt` last sent while firing.
    #[serde(default)]
    pub valid_until: Option<Millis>,
}

/// A saved alert: which rule it belongs to, and the alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub rule: String,
    #[serde(flatten)]
    pub alert: RuleAlert,
}

/// One alert changing state in an evaluation (`from` Inactive: a new
/// alert; `to` Inactive: resolved, or a pending alert gone).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub rule: String,
    pub labels: LabelSet,
    pub from: State,
    pub to: State,
    pub value: f64,
    pub at: Millis,
}

/// What one group evaluation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupEval {
    pub transitions: Vec<Transition>,
}

/// One rule of a group and its evaluation state.
#[derive(Debug, Clone)]
pub struct Rule {
    pub spec: RuleSpec,
    /// The rule's labels with the group's labels under them.
    pub labels: LabelSet,
    /// Where its output is written ([`RuleContext::write`]).
    pub key: String,
    pub health: Health,
    pub last_error: Option<String>,
    /// The evaluation timestamp of the last evaluation.
    pub last_evaluation: Option<Millis>,
    /// How long the last evaluation took, when the caller measured it.
    pub evaluation_time: Option<Duration>,
    /// Alerting rules: alerts by label set, resolved ones included.
    active: BTreeMap<LabelSet, RuleAlert>,
}

impl Rule {
    pub fn name(&self) -> &str {
        self.spec.name()
    }
    pub fn is_alert(&self) -> bool {
        self.spec.is_alert()
    }
    /// Alerts that are pending or firing, sorted by labels.
    pub fn active_alerts(&self) -> impl Iterator<Item = &RuleAlert> {
        self.active.values().filter(|a| a.state != State::Inactive)
    }
    /// Every alert held, resolved ones (kept 15 minutes) included.
    pub fn alerts(&self) -> impl Iterator<Item = &RuleAlert> {
        self.active.values()
    }
    /// Firing if any alert fires, else pending if any is, else inactive.
    pub fn state(&self) -> State {
        self.active_alerts()
            .map(|a| a.state)
            .max()
            .unwrap_or(State::Inactive)
    }
}

/// A rule group: its rules, evaluated in order at every interval.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub interval: PromDuration,
    pub limit: usize,
    pub query_offset: PromDuration,
    pub labels: LabelSet,
    pub rules: Vec<Rule>,
    pub last_evaluation: Option<Millis>,
    pub evaluation_time: Option<Duration>,
    /// Added to alerts sent, where absent (as Prometheus's notifier does);
    /// from the last [`Group::eval`].
    external_labels: LabelSet,
    external_url: String,
}

impl Group {
    /// A group from its spec; `default_interval` is used when the group
    /// sets none (Prometheus's `global.evaluation_interval`).
    pub fn new(spec: &GroupSpec, file: &str, default_interval: PromDuration) -> Group {
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut labels = spec.labels.clone();
                labels.extend(r.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                Rule {
                    spec: r.clone(),
                    labels,
                    key: format!("{file};{};{i}", spec.name),
                    health: Health::Unknown,
                    last_error: None,
                    last_evaluation: None,
                    evaluation_time: None,
                    active: BTreeMap::new(),
                }
            })
            .collect();
        Group {
            name: spec.name.clone(),
            file: file.to_string(),
            interval: spec.interval.unwrap_or(default_interval),
            limit: spec.limit,
            query_offset: spec.query_offset.unwrap_or_default(),
            labels: spec.labels.clone(),
            rules,
            last_evaluation: None,
            evaluation_time: None,
            external_labels: LabelSet::new(),
            external_url: String::new(),
        }
    }

    /// Evaluate every rule in order at `ts_ms` (queries at
    /// `ts_ms - query_offset`). A failing rule is marked `err` and the
    /// others go on.
    pub fn eval(&mut self, ts_ms: Millis, ctx: &dyn RuleContext, env: &EvalEnv<'_>) -> GroupEval {
        self.eval_timed(ts_ms, ctx, env, &|| Duration::ZERO)
    }

    /// [`Group::eval`] with a monotonic clock (`elapsed()` = time since
    /// any fixed point) to measure each rule's and the group's evaluation
    /// time.
    pub fn eval_timed(
        &mut self,
        ts_ms: Millis,
        ctx: &dyn RuleContext,
        env: &EvalEnv<'_>,
        elapsed: &dyn Fn() -> Duration,
    ) -> GroupEval {
        self.external_labels = env.external_labels.clone();
        self.external_url = env.external_url.to_string();
        let group_start = elapsed();
        let mut out = GroupEval::default();
        let offset = self.query_offset.millis();
        for rule in &mut self.rules {
            let start = elapsed();
            let res = if rule.is_alert() {
                eval_alerting(rule, ts_ms, offset, self.limit, ctx, env, &mut out)
            } else {
                eval_recording(rule, ts_ms, offset, self.limit, ctx)
            };
            match res {
                Ok(()) => {
                    rule.health = Health::Ok;
                    rule.last_error = None;
                }
                Err(e) => {
                    rule.health = Health::Err;
                    rule.last_error = Some(e);
                }
            }
            rule.last_evaluation = Some(ts_ms);
            rule.evaluation_time = Some(elapsed().saturating_sub(start));
        }
        self.last_evaluation = Some(ts_ms);
        self.evaluation_time = Some(elapsed().saturating_sub(group_start));
        out
    }

    /// The alerts to send to Alertmanager after an evaluation at `ts_ms`
    /// (Prometheus's `sendAlerts`): never pending ones; firing ones when
    /// they first fire and then every `resend_delay_ms`; resolved ones when
    /// they resolve, and again every `resend_delay_ms` while kept. Marks
    /// them sent. Rules whose last evaluation failed send nothing.
    pub fn alerts_to_send(
        &mut self,
        ts_ms: Millis,
        resend_delay_ms: i64,
        eval_interval_ms: i64,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            if !rule.is_alert() || rule.health == Health::Err {
                continue;
            }
            let url = format!(
                "{}/graph?g0.expr={}&g0.tab=1",
                self.external_url,
                query_escape(&rule.spec.expr)
            );
            for a in rule.active.values_mut() {
                if !needs_sending(a, ts_ms, resend_delay_ms) {
                    continue;
                }
                a.last_sent_at = Some(ts_ms);
                let valid_until = ts_ms + 4 * eval_interval_ms.max(resend_delay_ms);
                a.valid_until = Some(valid_until);
                let mut labels = a.labels.clone();
                for (k, v) in &self.external_labels {
                    if labels.get(k).is_none_or(String::is_empty) {
                        labels.insert(k.clone(), v.clone());
                    }
                }
                out.push(Alert {
                    labels,
                    annotations: a.annotations.clone(),
                    starts_at: a.fired_at.unwrap_or(a.active_at),
                    ends_at: a.resolved_at.unwrap_or(valid_until),
                    generator_url: url.clone(),
                    updated_at: ts_ms,
                });
            }
        }
        out
    }

    /// Every alert held, for saving across a restart.
    pub fn snapshot(&self) -> Vec<AlertState> {
        self.rules
            .iter()
            .filter(|r| r.is_alert())
            .flat_map(|r| {
                r.active.values().map(|a| AlertState {
                    rule: r.name().to_string(),
                    alert: a.clone(),
                })
            })
            .collect()
    }

    /// Take back alerts saved by [`Group::snapshot`] (before a restart or
    /// a reload), so that pending alerts keep their `for` progress and
    /// firing ones are not sent again before their resend delay. Each goes
    /// to the first alerting rule of that name whose fixed labels it
    /// carries; resolved alerts past their retention at `now_ms` and
    /// alerts of rules no longer there are dropped. Returns how many were
    /// restored.
    pub fn restore(&mut self, states: Vec<AlertState>, now_ms: Millis) -> usize {
        let mut n = 0;
        for s in states {
            if s.alert.state == State::Inactive
                && s.alert
                    .resolved_at
                    .is_none_or(|r| now_ms - r > RESOLVED_RETENTION_MS)
            {
                continue;
            }
            let rule = self.rules.iter_mut().find(|r| {
                r.is_alert()
                    && r.name() == s.rule
                    && s.alert.labels.get("alertname") == Some(&s.rule)
                    && r.labels
                        .iter()
                        .filter(|(_, v)| !v.contains("{{"))
                        .all(|(k, v)| s.alert.labels.get(k) == Some(v))
            });
            if let Some(rule) = rule {
                rule.active.insert(s.alert.labels.clone(), s.alert);
                n += 1;
            }
        }
        n
    }

    /// Prometheus's restore of `for` progress from `ALERTS_FOR_STATE`
    /// (`RestoreForState`), run once after the first evaluation following
    /// a start. `last_for_state(rule_name, alert_labels)` gives the last
    /// `ALERTS_FOR_STATE` sample (timestamp ms, value = ActiveAt in
    /// seconds) no older than `for_outage_tolerance` before `now_ms`, or
    /// None (or a stale marker: pass None).
    pub fn restore_for_state(
        &mut self,
        now_ms: Millis,
        for_grace_period: PromDuration,
        last_for_state: LastForState<'_>,
    ) {
        for rule in &mut self.rules {
            if !rule.is_alert() {
                continue;
            }
            let hold = rule.spec.for_.millis();
            if hold < for_grace_period.millis() {
                continue;
            }
            let name = rule.name().to_string();
            for a in rule.active.values_mut() {
                if let Some((t, v)) = last_for_state(&name, &a.labels)
                    && let Some(at) =
                        restored_active_at(hold, t, v, now_ms, for_grace_period.millis())
                {
                    a.active_at = at;
                }
            }
        }
    }
}

/// The `ActiveAt` Prometheus restores from an `ALERTS_FOR_STATE` sample
/// written at `down_at_ms` with value `active_at_secs`, for a rule with
/// `for` = `hold_ms`, at `now_ms`: unchanged (None) when the alert had
/// already waited its `for`; otherwise moved so that it fires no sooner
/// than `grace_ms` from now, and its remaining wait is not shortened by
/// the time the daemon was down.
pub fn restored_active_at(
    hold_ms: i64,
    down_at_ms: Millis,
    active_at_secs: f64,
    now_ms: Millis,
    grace_ms: i64,
) -> Option<Millis> {
    // Prometheus keeps second precision here.
    let down_at = down_at_ms.div_euclid(1000) * 1000;
    let active_at = (active_at_secs as i64) * 1000;
    let remaining = hold_ms - (down_at - active_at);
    if remaining <= 0 {
        None
    } else if remaining < grace_ms {
        Some(now_ms + grace_ms - hold_ms)
    } else {
        Some(active_at + (now_ms - down_at))
    }
}

fn needs_sending(a: &RuleAlert, ts: Millis, resend_delay: i64) -> bool {
    if a.state == State::Pending {
        return false;
    }
    // Resolved since it was last sent.
    if let Some(r) = a.resolved_at
        && a.last_sent_at.is_none_or(|s| r > s)
    {
        return true;
    }
    // Never sent: Go's zero time is long before any `ts`.
    a.last_sent_at.is_none_or(|s| s + resend_delay < ts)
}

const DUP_RECORD: &str =
    "vector contains metrics with the same labelset after applying rule labels";
const DUP_ALERT: &str =
    "vector contains metrics with the same labelset after applying alert labels";

fn eval_recording(
    rule: &mut Rule,
    ts: Millis,
    offset: i64,
    limit: usize,
    ctx: &dyn RuleContext,
) -> Result<(), String> {
    let RuleKind::Record(name) = &rule.spec.kind else {
        unreachable!("a recording rule")
    };
    let at = ts - offset;
    let mut res = ctx.query(&rule.spec.expr, at)?;
    let mut seen = std::collections::BTreeSet::new();
    for (labels, _) in &mut res {
        labels.insert("__name__".into(), name.clone());
        labels.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !seen.insert(labels.clone()) {
            return Err(DUP_RECORD.into());
        }
    }
    if limit > 0 && res.len() > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            res.len()
        ));
    }
    ctx.write(&rule.key, at, res);
    Ok(())
}

fn eval_alerting(
    rule: &mut Rule,
    ts: Millis,
    offset: i64,
    limit: usize,
    ctx: &dyn RuleContext,
    env: &EvalEnv<'_>,
    out: &mut GroupEval,
) -> Result<(), String> {
    let name = rule.name().to_string();
    let hold = rule.spec.for_.millis();
    let keep_firing_for = rule.spec.keep_firing_for.millis();
    let at = ts - offset;
    let res = ctx.query(&rule.spec.expr, at)?;

    let query = |q: &str| ctx.query(q, ts);
    let mut current: BTreeMap<LabelSet, RuleAlert> = BTreeMap::new();
    for (metric, value) in res {
        let data = AlertData {
            labels: &metric,
            external_labels: env.external_labels,
            external_url: env.external_url,
            value,
        };
        let expand = |text: &str| template::expand_alert(&name, text, &data, Some(&query), ts);
        let mut labels = metric.clone();
        labels.remove("__name__");
        for (k, v) in &rule.labels {
            labels.insert(k.clone(), expand(v));
        }
        labels.insert("alertname".into(), name.clone());
        let annotations = rule
            .spec
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), expand(v)))
            .collect();
        if current.contains_key(&labels) {
            return Err(DUP_ALERT.into());
        }
        current.insert(
            labels.clone(),
            RuleAlert {
                labels,
                annotations,
                state: State::Pending,
                value,
                active_at: ts,
                fired_at: None,
                resolved_at: None,
                last_sent_at: None,
                keep_firing_since: None,
                valid_until: None,
            },
        );
    }

    let mut transitions = Vec::new();
    let mut tr = |a: &RuleAlert, from: State, to: State| {
        transitions.push(Transition {
            rule: name.clone(),
            labels: a.labels.clone(),
            from,
            to,
            value: a.value,
            at: ts,
        })
    };
    let returned: std::collections::BTreeSet<LabelSet> = current.keys().cloned().collect();
    for (l, a) in current {
        match rule.active.get_mut(&l) {
            Some(old) if old.state != State::Inactive => {
                old.value = a.value;
                old.annotations = a.annotations;
            }
            _ => {
                tr(&a, State::Inactive, State::Pending);
                rule.active.insert(l, a);
            }
        }
    }

    let mut samples = Vec::new();
    let mut gone = Vec::new();
    let mut active_pending = 0;
    for (l, a) in rule.active.iter_mut() {
        if !returned.contains(l) {
            let mut keep_firing = false;
            if a.state == State::Firing && keep_firing_for > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                keep_firing = ts - since < keep_firing_for;
            }
            if a.state == State::Pending
                || a.resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
            {
                gone.push(l.clone());
            }
            if a.state != State::Inactive && !keep_firing {
                tr(a, a.state, State::Inactive);
                a.state = State::Inactive;
                a.resolved_at = Some(ts);
            }
            if !keep_firing {
                continue;
            }
        } else {
            a.keep_firing_since = None;
        }
        active_pending += 1;

        if a.state == State::Pending && ts - a.active_at >= hold {
            tr(a, State::Pending, State::Firing);
            a.state = State::Firing;
            a.fired_at = Some(ts);
        }
        // `for` grew (a reload or a restore) past the time it has been active.
        if a.state == State::Firing && ts - a.active_at < hold {
            tr(a, State::Firing, State::Pending);
            a.state = State::Pending;
            a.fired_at = None;
            a.last_sent_at = None;
            a.keep_firing_since = None;
        }

        let mut s = a.labels.clone();
        s.insert("__name__".into(), "ALERTS".into());
        s.insert("alertname".into(), name.clone());
        s.insert("alertstate".into(), a.state.as_str().into());
        samples.push((s, 1.0));
        let mut f = a.labels.clone();
        f.insert("__name__".into(), "ALERTS_FOR_STATE".into());
        f.insert("alertname".into(), name.clone());
        samples.push((f, (a.active_at.div_euclid(1000)) as f64));
    }
    for l in gone {
        rule.active.remove(&l);
    }

    if limit > 0 && active_pending > limit {
        for a in rule.active.values() {
            if a.state != State::Inactive {
                tr(a, a.state, State::Inactive);
            }
        }
        rule.active.clear();
        out.transitions.extend(transitions);
        return Err(format!(
            "exceeded limit of {limit} with {active_pending} alerts"
        ));
    }
    out.transitions.extend(transitions);
    ctx.write(&rule.key, at, samples);
    Ok(())
}

#[cfg(test)]
mod tests;
