//! The request and response types of Ferry's HTTP API (documented in
//! `docs/api.md` and described in `docs/openapi.json`), shared by the daemon,
//! which serves them, and the CLI, which reads them. Plain data: no I/O.
#![forbid(unsafe_code)]

use ferry_core::duration::Dur;
use ferry_core::rollout::{Phase, Rollout, RolloutKind};
use ferry_core::spec::{Problem, ServiceSpec, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use ferry_core::records::{AuditEntry, StoredEvent, StoredMeasurement};
pub use ferry_core::time::rfc3339;

/// Where `ferry serve` says how to reach it: `<data-dir>/api.json`.
pub const API_FILE: &str = "api.json";
/// The admin token, mode 0600: `<data-dir>/token`.
pub const TOKEN_FILE: &str = "token";
/// Header the CLI uses to say who is acting (user@host); recorded in audit.
pub const ACTOR_HEADER: &str = "x-ferry-actor";
/// The most audit entries one request returns.
pub const AUDIT_LIMIT_MAX: u32 = 10_000;

/// The content of `<data-dir>/api.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    pub url: String,
    pub pid: u32,
}

/// `POST /v1/services/{name}/deploys`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub spec: ServiceSpec,
    pub version: String,
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub auto_approve: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// Override the spec's monitoring window for this rollout.
    #[serde(default)]
    pub monitor: Option<Dur>,
    /// Directory relative paths resolve against (the config file's).
    pub base_dir: String,
    #[serde(default)]
    pub config_file: String,
    /// The validation suites the service's gates name
    /// (`[services.NAME.deploy.validate]`), stored with the revision.
    #[serde(default, skip_serializing_if = "is_default_validation")]
    pub validation: ferry_core::validation::ValidationConfig,
    /// Deploy although an SLO's error budget is spent and the service's
    /// `budget_policy` is `block`; needs `override_reason`. Audited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub override_budget: bool,
    /// Why the budget is overridden (kept in the audit log and the
    /// rollout's first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// When the change was committed, ms since the epoch (for lead time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<u64>,
}

fn is_default_validation(v: &ferry_core::validation::ValidationConfig) -> bool {
    *v == ferry_core::validation::ValidationConfig::default()
}

/// `POST /v1/services/{name}/rollback` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to_revision: Option<u64>,
}

/// `POST /v1/services/{name}/promote` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Skip every remaining step.
    #[serde(default)]
    pub full: bool,
}

/// What a deploy, rollback or gate request started or changed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutAccepted {
    pub rollout: Option<u64>,
    pub revision: u64,
    pub message: String,
    #[serde(default)]
    pub plan: Vec<String>,
}

/// `POST /v1/system/upgrade`: the binary to upgrade to (default: the one
/// the daemon was started from, as it is on disk now).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    #[serde(default)]
    pub binary: Option<String>,
}

/// What `POST /v1/system/upgrade` or `/v1/system/shutdown` set going.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LifecycleAccepted {
    pub message: String,
    /// The version being upgraded to (upgrade only).
    #[serde(default)]
    pub version: Option<String>,
}

/// The control plane, in `/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControlPlaneView {
    pub pid: u32,
    pub version: String,
    /// RFC 3339: when this control plane (this process image) started.
    pub started_at: String,
}

/// The data plane (the proxies), in `/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataPlaneView {
    /// `process` (its own process, which outlives the control plane) or
    /// `inline` (inside the daemon).
    pub mode: String,
    pub pid: Option<u32>,
    pub version: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// The control plane talks to it now (else its routes may be stale).
    pub attached: bool,
    /// Data-plane processes this control plane started after a crash, a
    /// hang or an upgrade.
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A rollout with the versions it moves between.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub from_version: Option<String>,
    pub to_version: String,
    /// Instances of the new revision that take traffic now.
    pub available: u32,
    pub active: bool,
}

/// One service: what serves, its instances, the rollout in progress.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub listen: Option<String>,
    pub stable: Option<u64>,
    pub version: Option<String>,
    pub traffic: Vec<u64>,
    pub scale: BTreeMap<u64, u32>,
    pub instances: Vec<InstanceView>,
    pub rollout: Option<RolloutView>,
    /// Why the service's proxy is not listening, when it should be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_error: Option<String>,
}

/// What an instance is doing, as `ferry status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Started, not ready yet.
    Starting,
    /// Ready, not yet for `min_ready`.
    Warming,
    /// Available and taking traffic.
    Serving,
    /// Available, not in traffic (a blue-green set before its switch).
    Standby,
    /// Exited; starts again after its backoff.
    Restarting,
    /// Exited too often without becoming healthy.
    CrashLoop,
    /// Out of traffic, draining, then stopped.
    Stopping,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Warming => "warming",
            InstanceState::Serving => "serving",
            InstanceState::Standby => "standby",
            InstanceState::Restarting => "restarting",
            InstanceState::CrashLoop => "crash-loop",
            InstanceState::Stopping => "stopping",
        }
    }
}

/// One instance.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub revision: u64,
    /// Where it listens (`host:port`).
    #[serde(default)]
    pub address: String,
    pub port: u16,
    pub pid: Option<i32>,
    pub state: InstanceState,
    pub ready: bool,
    pub restarts: u32,
    pub last_probe: Option<String>,
    pub last_exit: Option<String>,
    pub log: String,
}

/// One rollout of `GET /v1/services/{name}/history`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub rollout: u64,
    pub kind: RolloutKind,
    pub revision: u64,
    pub version: String,
    pub from: Option<u64>,
    pub strategy: Strategy,
    /// What actually ran, e.g. `rolling (first deploy of a canary service)`.
    #[serde(default)]
    pub ran_as: String,
    pub phase: Phase,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub author: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub hook_output: Option<String>,
}

/// `GET /health`: the daemon's own checks.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `healthy` when every check is, `degraded` when the daemon works but
    /// could not record something yet, else `unhealthy`.
    pub status: String,
    /// Ferry's version.
    pub version: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub uptime_seconds: u64,
    /// `store`, and `service:<name>` for each service with a serving
    /// revision: `healthy`, `degraded` or `unhealthy`.
    pub checks: BTreeMap<String, String>,
    /// Why each check that is not healthy is not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, String>,
    #[serde(default)]
    pub control_plane: ControlPlaneView,
    #[serde(default)]
    pub data_plane: DataPlaneView,
}

/// The API's error body: `{"error": {"code", "message", "problems"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

#[cfg(test)]
mod tests {
    use super::InstanceState;

    #[test]
    fn instance_states_serialize_as_their_names() {
        for s in [
            InstanceState::Starting,
            InstanceState::Warming,
            InstanceState::Serving,
            InstanceState::Standby,
            InstanceState::Restarting,
            InstanceState::CrashLoop,
            InstanceState::Stopping,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
