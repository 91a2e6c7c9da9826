//! Events: what a rollout (or housekeeping) tells people, one kind each.
//! The kinds are one enum, used by the rollout machine, the store, the
//! webhooks (every kind can be subscribed to), the API and the CLI.

use serde::{Deserialize, Serialize};

/// What happened. Serialized in kebab-case (`awaiting-approval`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A rollout began.
    Started,
    /// The `pre_deploy` hook ended.
    Hook,
    /// Instance counts changed (a rolling batch, a blue-green set).
    Scale,
    /// More instances of the new revision became available.
    Available,
    /// A canary step's weight applied.
    Step,
    /// Waiting for `ferry approve` or `ferry promote`.
    AwaitingApproval,
    /// A blue-green switch was approved.
    Approved,
    /// `ferry promote` applied.
    Promoted,
    /// A canary passed every step and goes to 100 %.
    Promoting,
    /// The rollout holds (by hand, or analysis with `on_failure = "pause"`).
    Paused,
    /// A held rollout goes on.
    Resumed,
    /// One analysis measurement failed.
    AnalysisFailed,
    /// An alert about the service fired while its rollout ran or was
    /// watched.
    Alert,
    /// Blue-green pre-promotion analysis started or passed.
    PrePromotion,
    /// A validation gate's suites started running.
    Validating,
    /// A validation gate's suites finished: the counts, and what failed
    /// or warned.
    Validated,
    /// The new revision serves all traffic and is watched.
    Monitoring,
    /// Blue-green: all traffic switched to the new set.
    Switched,
    /// The canary's requests and failures before it was pulled or promoted.
    BlastRadius,
    /// The rollout failed.
    Failed,
    /// The rollout was aborted (or rolled back while it ran).
    Aborted,
    /// Traffic returns to the previous revision.
    Reverting,
    /// Something is off but the rollout goes on.
    Warning,
    /// A revision kept after a blue-green switch was stopped.
    Retired,
    /// The rollout ended.
    Done,
}

impl EventKind {
    /// Every kind, in the order above.
    pub const ALL: [EventKind; 25] = [
        EventKind::Started,
        EventKind::Hook,
        EventKind::Scale,
        EventKind::Available,
        EventKind::Step,
        EventKind::AwaitingApproval,
        EventKind::Approved,
        EventKind::Promoted,
        EventKind::Promoting,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::AnalysisFailed,
        EventKind::Alert,
        EventKind::PrePromotion,
        EventKind::Validating,
        EventKind::Validated,
        EventKind::Monitoring,
        EventKind::Switched,
        EventKind::BlastRadius,
        EventKind::Failed,
        EventKind::Aborted,
        EventKind::Reverting,
        EventKind::Warning,
        EventKind::Retired,
        EventKind::Done,
    ];

    /// The name, as stored and sent (`awaiting-approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Hook => "hook",
            EventKind::Scale => "scale",
            EventKind::Available => "available",
            EventKind::Step => "step",
            EventKind::AwaitingApproval => "awaiting-approval",
            EventKind::Approved => "approved",
            EventKind::Promoted => "promoted",
            EventKind::Promoting => "promoting",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::AnalysisFailed => "analysis-failed",
            EventKind::Alert => "alert",
            EventKind::PrePromotion => "pre-promotion",
            EventKind::Validating => "validating",
            EventKind::Validated => "validated",
            EventKind::Monitoring => "monitoring",
            EventKind::Switched => "switched",
            EventKind::BlastRadius => "blast-radius",
            EventKind::Failed => "failed",
            EventKind::Aborted => "aborted",
            EventKind::Reverting => "reverting",
            EventKind::Warning => "warning",
            EventKind::Retired => "retired",
            EventKind::Done => "done",
        }
    }

    /// The kind named `name`, if there is one.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line for a rollout's (or a service's) event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub kind: EventKind,
    pub message: String,
}

impl Event {
    pub fn new(kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn names_are_the_serialized_form_and_parse_back() {
        for k in EventKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            EventKind::ALL.len(),
            "ALL lists each kind once"
        );
    }
}
