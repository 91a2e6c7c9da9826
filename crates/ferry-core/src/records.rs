//! Records the daemon keeps and shows: the audit log, stored events and
//! stored measurements. Plain data; the store writes them, the API returns
//! them.

use crate::Millis;
use crate::analysis::Measurement;
use crate::event::EventKind;
use serde::{Deserialize, Serialize};

/// One entry of the audit log: who did what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: u64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Parameters, with secrets already redacted by the caller.
    pub detail: serde_json::Value,
    pub outcome: String,
}

/// An event as stored, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub seq: u64,
    pub at: Millis,
    pub service: String,
    pub rollout: Option<u64>,
    pub kind: EventKind,
    pub message: String,
}

/// A measurement as stored, with when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredMeasurement {
    pub at: Millis,
    #[serde(flatten)]
    pub measurement: Measurement,
}
