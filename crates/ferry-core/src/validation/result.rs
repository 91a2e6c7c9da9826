//! What running checks found: each check's status, and a release gate's
//! run as a rollout stores it.

use super::spec::{CheckKind, Stage};
use crate::Millis;
use serde::{Deserialize, Serialize};

/// A check's result, as seed 001 names them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Passed,
    Failed,
    Warning,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "PASSED",
            Status::Failed => "FAILED",
            Status::Warning => "WARNING",
            Status::Skipped => "SKIPPED",
        }
    }
    /// The symbol the operations guide gives each result.
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Passed => "✅",
            Status::Failed => "❌",
            Status::Warning => "⚠️",
            Status::Skipped => "⏭️",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub suite: String,
    pub name: String,
    pub kind: CheckKind,
    pub status: Status,
    pub duration_ms: u64,
    /// What was measured (`200`, `412 req/s`, `expires in 12 days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// One line: why it has this status.
    pub reason: String,
    /// A command's output (its last part), when it printed any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// How many checks ended in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub warning: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(results: &[CheckResult]) -> Summary {
        let mut s = Summary {
            total: results.len(),
            ..Summary::default()
        };
        for r in results {
            match r.status {
                Status::Passed => s.passed += 1,
                Status::Failed => s.failed += 1,
                Status::Warning => s.warning += 1,
                Status::Skipped => s.skipped += 1,
            }
        }
        s
    }
    /// Nothing FAILED.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} checks: {} passed, {} failed, {} warning{}, {} skipped",
            self.total,
            self.passed,
            self.failed,
            self.warning,
            if self.warning == 1 { "" } else { "s" },
            self.skipped
        )
    }
}

/// A release gate's run: which suites ran against which revision, and
/// what they found. Stored with the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRun {
    pub stage: Stage,
    pub suites: Vec<String>,
    /// The revision the checks were sent to (`X-Ferry-Revision`), for a
    /// candidate gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub results: Vec<CheckResult>,
}

impl GateRun {
    pub fn summary(&self) -> Summary {
        Summary::of(&self.results)
    }

    /// The first FAILED check, as a reason: `smoke/home: expected …`.
    pub fn first_failure(&self) -> Option<String> {
        self.results
            .iter()
            .find(|r| r.status == Status::Failed)
            .map(|r| format!("{}/{}: {}", r.suite, r.name, r.reason))
    }

    /// One line for events: the counts, and what failed or warned.
    pub fn describe(&self) -> String {
        let summary = self.summary();
        let mut line = format!(
            "{} validation ({}): {summary}",
            self.stage,
            self.suites.join(", ")
        );
        let notable: Vec<String> = self
            .results
            .iter()
            .filter(|r| matches!(r.status, Status::Failed | Status::Warning))
            .take(3)
            .map(|r| format!("{} {}/{}: {}", r.status, r.suite, r.name, r.reason))
            .collect();
        if !notable.is_empty() {
            line.push_str("; ");
            line.push_str(&notable.join("; "));
        }
        line
    }
}
