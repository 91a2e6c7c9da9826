//! What a receiver is given for one notification of one alert group:
//! Alertmanager's template data (`template.Data`), which is also the body
//! of its version-4 webhook.

use crate::alert::{LabelSet, Millis};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One alert in a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyAlert {
    pub status: Status,
    pub labels: LabelSet,
    pub annotations: LabelSet,
    pub starts_at: Millis,
    /// 0 while firing with no known end (Alertmanager prints Go's zero
    /// time, `0001-01-01T00:00:00Z`).
    pub ends_at: Millis,
    pub generator_url: String,
    /// [`crate::alert::Fingerprint`] as 16 hex digits.
    pub fingerprint: String,
}

/// One notification: an alert group as one receiver sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub receiver: String,
    /// `<route key>:<group labels>`, e.g. `{}/{team="db"}:{alertname="X"}`.
    pub group_key: String,
    /// Firing if any alert in the group fires.
    pub status: Status,
    pub group_labels: LabelSet,
    pub common_labels: LabelSet,
    pub common_annotations: LabelSet,
    /// The matchers' labels of the route that sent it (`routeLabels`).
    pub route_labels: LabelSet,
    pub external_url: String,
    pub alerts: Vec<NotifyAlert>,
    /// Alerts left out by a receiver's `max_alerts`.
    pub truncated_alerts: usize,
    /// Why it is sent (Ferry's own): "new alerts", "resolved", "repeat",
    /// "acknowledged".
    pub reason: String,
}

impl Notification {
    pub fn firing(&self) -> impl Iterator<Item = &NotifyAlert> {
        self.alerts.iter().filter(|a| a.status == Status::Firing)
    }
    pub fn resolved(&self) -> impl Iterator<Item = &NotifyAlert> {
        self.alerts.iter().filter(|a| a.status == Status::Resolved)
    }
}
