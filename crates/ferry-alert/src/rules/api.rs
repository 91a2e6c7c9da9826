//! `/api/v1/rules` and `/api/v1/alerts` in Prometheus's JSON shapes.

use super::{Group, Health, Rule, RuleAlert, State};
use crate::alert::{LabelSet, Millis};
use serde::Serialize;

/// `data` of `/api/v1/rules`.
#[derive(Debug, Clone, Serialize)]
pub struct RuleDiscovery {
    pub groups: Vec<RuleGroupView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleGroupView {
    pub name: String,
    pub file: String,
    pub rules: Vec<RuleView>,
    /// Seconds.
    pub interval: f64,
    pub limit: usize,
    /// Seconds.
    pub evaluation_time: f64,
    pub last_evaluation: String,
}

/// One rule; `type` is "alerting" or "recording".
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RuleView {
    Alerting(AlertingRuleView),
    Recording(RecordingRuleView),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertingRuleView {
    /// "firing", "pending" or "inactive".
    pub state: String,
    pub name: String,
    pub query: String,
    /// `for`, in seconds.
    pub duration: f64,
    /// Seconds.
    pub keep_firing_for: f64,
    pub labels: LabelSet,
    pub annotations: LabelSet,
    pub alerts: Vec<AlertView>,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub evaluation_time: f64,
    pub last_evaluation: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingRuleView {
    pub name: String,
    pub query: String,
    pub labels: LabelSet,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub evaluation_time: f64,
    pub last_evaluation: String,
}

/// One alert, as `/api/v1/alerts` and the rules' `alerts` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    pub labels: LabelSet,
    pub annotations: LabelSet,
    pub state: String,
    pub active_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_firing_since: Option<String>,
    /// As Go's `strconv.FormatFloat(v, 'e', -1, 64)`.
    pub value: String,
}

/// `data` of `/api/v1/alerts`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertDiscovery {
    pub alerts: Vec<AlertView>,
}

impl AlertView {
    pub fn from_alert(a: &RuleAlert) -> AlertView {
        AlertView {
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            state: a.state.as_str().into(),
            active_at: rfc3339(Some(a.active_at)),
            keep_firing_since: a.keep_firing_since.map(|t| rfc3339(Some(t))),
            value: go_float_e(a.value),
        }
    }
}

impl RuleView {
    pub fn from_rule(r: &Rule) -> RuleView {
        let evaluation_time = r.evaluation_time.map_or(0.0, |d| d.as_secs_f64());
        let last_evaluation = rfc3339(r.last_evaluation);
        if r.is_alert() {
            RuleView::Alerting(AlertingRuleView {
                state: r.state().as_str().into(),
                name: r.name().into(),
                query: r.spec.expr.clone(),
                duration: r.spec.for_.millis() as f64 / 1000.0,
                keep_firing_for: r.spec.keep_firing_for.millis() as f64 / 1000.0,
                labels: r.labels.clone(),
                annotations: r.spec.annotations.clone(),
                alerts: r.active_alerts().map(AlertView::from_alert).collect(),
                health: r.health,
                last_error: r.last_error.clone(),
                evaluation_time,
                last_evaluation,
            })
        } else {
            RuleView::Recording(RecordingRuleView {
                name: r.name().into(),
                query: r.spec.expr.clone(),
                labels: r.labels.clone(),
                health: r.health,
                last_error: r.last_error.clone(),
                evaluation_time,
                last_evaluation,
            })
        }
    }
}

impl RuleGroupView {
    pub fn from_group(g: &Group) -> RuleGroupView {
        RuleGroupView {
            name: g.name.clone(),
            file: g.file.clone(),
            rules: g.rules.iter().map(RuleView::from_rule).collect(),
            interval: g.interval.millis() as f64 / 1000.0,
            limit: g.limit,
            evaluation_time: g.evaluation_time.map_or(0.0, |d| d.as_secs_f64()),
            last_evaluation: rfc3339(g.last_evaluation),
        }
    }
}

/// `/api/v1/rules` over the given groups.
pub fn rules_view<'a>(groups: impl IntoIterator<Item = &'a Group>) -> RuleDiscovery {
    RuleDiscovery {
        groups: groups.into_iter().map(RuleGroupView::from_group).collect(),
    }
}

/// `/api/v1/alerts`: every pending or firing alert of the given groups.
pub fn alerts_view<'a>(groups: impl IntoIterator<Item = &'a Group>) -> AlertDiscovery {
    AlertDiscovery {
        alerts: groups
            .into_iter()
            .flat_map(|g| g.rules.iter())
            .flat_map(|r| r.active_alerts())
            .map(AlertView::from_alert)
            .collect(),
    }
}

/// Go's RFC 3339 with nanoseconds (trailing zeros dropped), UTC; None is
/// Go's zero time.
pub fn rfc3339(ms: Option<Millis>) -> String {
    let Some(ms) = ms else {
        return "0001-01-01T00:00:00Z".into();
    };
    let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) else {
        return "0001-01-01T00:00:00Z".into();
    };
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = ms.rem_euclid(1000);
    if frac == 0 {
        format!("{base}Z")
    } else {
        let f = format!("{frac:03}");
        format!("{base}.{}Z", f.trim_end_matches('0'))
    }
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`: `1e+00`, `2.5e-01`, `NaN`,
/// `+Inf`.
pub fn go_float_e(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{v:e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mant}e{sign}{:02}", exp.abs())
}

impl State {
    /// Whether the alert is pending or firing.
    pub fn is_active(self) -> bool {
        self != State::Inactive
    }
}
