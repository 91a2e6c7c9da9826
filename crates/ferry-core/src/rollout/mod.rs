//! The rollout state machine: a pure function from stored state plus
//! observations plus time to the next stored state.
//!
//! The shell (ferry-server) persists what [`advance`] returns before acting on
//! it: it starts or stops instances until each revision runs `scale[rev]`
//! instances, and routes traffic to the available instances of the revisions
//! in `traffic`. Because the desired world is derived from stored state, a
//! daemon restarted after a crash simply calls `advance` again.
//!
//! This module holds the stored types. The machine is split by concept, and
//! the modules depend on each other in one direction only:
//! `step` (shared moves: scale, finish, revert) ← `rolling`, `blue_green`,
//! `canary`, `gate` (API requests: which apply when, and applying them) ←
//! `machine` (`advance`, `settle`) ← `plan` (the dry run, made by running
//! `advance` against a simulated world).

mod blue_green;
mod canary;
mod gate;
mod machine;
mod plan;
mod rolling;
mod step;
mod validate;

pub use crate::event::{Event, EventKind};
pub use gate::{Gate, GateRequest};
pub use machine::{advance, conclude_monitoring, settle};
pub use plan::plan;

use crate::Millis;
use crate::analysis::Measurement;
use crate::canary::{CanaryStep, OnFailure};
use crate::spec::{ServiceSpec, Strategy};
use crate::validation::{GateRun, GatesSpec, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What each service should look like right now. Persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceState {
    pub name: String,
    /// The revision that serves when no rollout is under way.
    pub stable: Option<u64>,
    /// Desired instance count per revision.
    pub scale: BTreeMap<u64, u32>,
    /// Revisions whose available instances receive traffic.
    pub traffic: Vec<u64>,
    /// Share of traffic per revision in percent, when split by weight (a
    /// canary); empty = spread over the available instances evenly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<u64, u32>,
    /// Revisions kept running after a blue-green switch, until a time.
    pub retiring: BTreeMap<u64, Millis>,
    /// The rollout in progress, if any.
    pub active_rollout: Option<u64>,
}

impl ServiceState {
    /// Does the service have anything to serve or start: a stable
    /// revision, a rollout under way, or instances wanted? A first deploy
    /// that failed leaves none of these.
    pub fn has_work(&self) -> bool {
        self.stable.is_some()
            || self.active_rollout.is_some()
            || self.scale.values().any(|n| *n > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    Deploy,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Running the `pre_deploy` hook; nothing else is touched yet.
    PreDeploy,
    /// Starting new instances (and, rolling, stopping old ones).
    Progressing,
    /// Blue-green: the new set is ready; waiting for `ferry approve`.
    /// Canary: at a manual pause step; waiting for `ferry promote`.
    AwaitingApproval,
    /// Held where it is (`ferry pause`, or analysis with `on_failure =
    /// "pause"`, or too many inconclusive rounds): traffic and instances
    /// stay, analysis keeps measuring quietly, until `ferry resume`,
    /// `ferry promote` or `ferry abort`. `Rollout::paused` says why.
    Paused,
    /// Serving all traffic, watched for the monitoring window: a failure
    /// rolls back through the fast path.
    Monitoring,
    /// Failed or aborted: bringing the previous revision back to full size
    /// before the new one stops.
    Reverting,
    Done,
}

impl Phase {
    /// The name, as serialized (`awaiting-approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreDeploy => "pre-deploy",
            Phase::Progressing => "progressing",
            Phase::AwaitingApproval => "awaiting-approval",
            Phase::Paused => "paused",
            Phase::Monitoring => "monitoring",
            Phase::Reverting => "reverting",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Aborted,
}

impl Outcome {
    /// The event that announces this outcome.
    pub fn event_kind(self) -> EventKind {
        match self {
            Outcome::Succeeded => EventKind::Done,
            Outcome::Failed => EventKind::Failed,
            Outcome::Aborted => EventKind::Aborted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The numbers a rollout follows, copied from the target revision's spec
/// when it starts so the rollout never depends on a later edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Params {
    pub instances: u32,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub min_ready_ms: u64,
    pub deploy_timeout_ms: u64,
    pub scale_down_delay_ms: u64,
    pub auto_promote: bool,
    pub has_pre_deploy: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Failed measurements allowed before the analysis fails the rollout.
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements in a row allowed before it pauses.
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// How long a release is watched after it reaches 100 %.
    #[serde(default)]
    pub monitor_ms: u64,
    /// Blue-green: passing analysis rounds in a row needed before the
    /// switch (0 = no pre-promotion analysis).
    #[serde(default)]
    pub pre_promotion_passes: u32,
    /// Canary: the shortest time a weight step holds, so that analysis
    /// judges the canary at that weight at least once (one analysis
    /// interval when the spec has checks, else 0).
    #[serde(default)]
    pub min_step_ms: u64,
    /// The validation gates' suites (`[services.X.deploy.validate]`).
    #[serde(default, skip_serializing_if = "GatesSpec::is_empty")]
    pub validate: GatesSpec,
}

impl Params {
    pub fn from_spec(spec: &ServiceSpec) -> Params {
        Params {
            instances: spec.instances,
            max_surge: spec.deploy.max_surge,
            max_unavailable: spec.deploy.max_unavailable,
            min_ready_ms: spec.deploy.min_ready.as_millis(),
            deploy_timeout_ms: spec.deploy.deploy_timeout.as_millis(),
            scale_down_delay_ms: spec.deploy.scale_down_delay.as_millis(),
            auto_promote: spec.deploy.auto_promote,
            has_pre_deploy: spec.pre_deploy.is_some(),
            steps: spec.deploy.steps.clone(),
            on_failure: spec.deploy.on_failure,
            failure_limit: spec.analysis.as_ref().map_or(0, |a| a.failure_limit),
            inconclusive_limit: spec.analysis.as_ref().map_or(0, |a| a.inconclusive_limit),
            monitor_ms: spec.deploy.monitor.as_millis(),
            pre_promotion_passes: spec
                .analysis
                .as_ref()
                .filter(|a| !a.pre_promotion.is_empty())
                .map_or(0, |a| a.pre_promotion_passes.max(1)),
            min_step_ms: spec
                .analysis
                .as_ref()
                .filter(|a| !a.checks.is_empty())
                .map_or(0, |a| a.interval.as_millis()),
            validate: spec.deploy.validate.clone(),
        }
    }
}

/// The result of the `pre_deploy` hook, recorded by the shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HookResult {
    pub ok: bool,
    pub summary: String,
    /// The last part of the hook's output.
    pub output: String,
}

/// One rollout. Persisted; `advance` returns its next value.
// `PartialEq` only: its `impact` holds floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: u64,
    pub service: String,
    pub kind: RolloutKind,
    pub from: Option<u64>,
    /// Instances the `from` revision had when the rollout started.
    pub from_instances: u32,
    pub to: u64,
    pub strategy: Strategy,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub params: Params,
    pub auto_approve: bool,
    /// Who approved the blue-green switch (set when the approval applies).
    pub approved_by: Option<String>,
    /// Who stopped the rollout, with `ferry abort` or `ferry rollback`
    /// (set when the request applies; `rolled_back` says which).
    pub abort_requested_by: Option<String>,
    /// The stop was a `ferry rollback` during the rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    pub hook: Option<HookResult>,
    pub started_at: Millis,
    pub phase_since: Millis,
    pub last_progress_at: Millis,
    /// Most instances of the new revision seen available so far.
    #[serde(default)]
    pub seen_available: u32,
    pub finished_at: Option<Millis>,
    /// The instance whose failure failed the rollout (the shell adds its log).
    pub failed_instance: Option<String>,
    /// Why the rollout holds where it is (`ferry pause`, inconclusive or
    /// failed analysis with `on_failure = "pause"`); set while `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The phase a paused rollout returns to when it resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_in: Option<Phase>,
    /// Requests from the API (approve, abort, rollback, promote, pause,
    /// resume), in the order they came, applied by the next `advance`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateRequest>,
    #[serde(default)]
    pub canary: CanaryProgress,
    #[serde(default)]
    pub analysis: AnalysisCounters,
    /// Requests served by the new revision, and failed, before it was
    /// promoted or pulled. Filled in by the shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    /// Who started it (the API's actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The validation gate the rollout waits on: the shell runs its
    /// suites and records a `GateRun` in `validations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validating: Option<Stage>,
    /// Every validation gate that ran, in order, with each check's result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<GateRun>,
    /// When the new revision first served all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at: Option<Millis>,
    /// When the rollout was failed or aborted (the revert began); it ends,
    /// traffic back on the previous revision, at `finished_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Millis>,
    /// What the release did to the service, filled in by the shell when
    /// it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<Impact>,
    /// The service's proxy counters (requests, 5xx) when the rollout
    /// began, filled in by the shell: the failed requests of `impact` are
    /// counted from here, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_counters: Option<[u64; 2]>,
    /// A critical or emergency alert about the service that fired while
    /// the release ran or was watched, whether or not it rolled it back
    /// (filled in by the shell; a change failure in delivery metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_alert: Option<String>,
}

/// A release's effect on its service, from the proxy's counters in the
/// metrics store: the hour before it against its own span (start to end,
/// the monitoring window included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Impact {
    /// 5xx share, percent (absent: no traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_during: Option<f64>,
    /// Latency quantiles, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_before_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_during_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_before_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_during_ms: Option<f64>,
    /// Requests answered 5xx (the proxy's own 502/504 included) while it
    /// ran; 0 = a zero-downtime release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// Where a canary is in its steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryProgress {
    /// Index of the current step; `steps.len()` = promoting to 100 %.
    pub step: usize,
    /// When the current step's pause started (after its weight applied).
    pub step_since: Millis,
    /// The step whose weight has been applied.
    pub applied: Option<usize>,
    /// The canary's current share of traffic, percent.
    pub weight: u32,
}

/// Running totals of the analysis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnalysisCounters {
    pub measurements: u64,
    pub failures: u32,
    pub inconclusive_in_row: u32,
    /// Failed analysis holds the rollout (`on_failure = "pause"`) until a
    /// human resumes, promotes or aborts it.
    #[serde(default)]
    pub held: bool,
    /// Rounds in a row where every measurement passed.
    #[serde(default)]
    pub passes_in_row: u32,
    #[serde(default)]
    pub pre_promotion_started: bool,
    #[serde(default)]
    pub pre_promotion_passed: bool,
    /// The last failing or inconclusive detail, for reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlastRadius {
    pub requests: u64,
    pub failed: u64,
}

impl Rollout {
    /// A rollout that begins now, in its first phase.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        id: u64,
        service: &str,
        kind: RolloutKind,
        from: Option<u64>,
        from_instances: u32,
        to: u64,
        strategy: Strategy,
        params: Params,
        auto_approve: bool,
        now: Millis,
    ) -> Rollout {
        let phase = if kind == RolloutKind::Deploy
            && (params.has_pre_deploy || !params.validate.before.is_empty())
        {
            Phase::PreDeploy
        } else {
            Phase::Progressing
        };
        Rollout {
            id,
            service: service.to_string(),
            kind,
            from,
            from_instances,
            to,
            strategy,
            phase,
            outcome: None,
            reason: None,
            params,
            auto_approve,
            approved_by: None,
            abort_requested_by: None,
            rolled_back: false,
            hook: None,
            started_at: now,
            phase_since: now,
            last_progress_at: now,
            seen_available: 0,
            finished_at: None,
            failed_instance: None,
            paused: None,
            paused_in: None,
            gates: Vec::new(),
            canary: CanaryProgress::default(),
            analysis: AnalysisCounters::default(),
            blast_radius: None,
            started_by: None,
            validating: None,
            validations: Vec::new(),
            full_at: None,
            failed_at: None,
            impact: None,
            start_counters: None,
            critical_alert: None,
        }
    }

    /// The `pre_deploy` hook is due: in `PreDeploy`, not run yet, and the
    /// `before` validation (if any) has passed.
    pub fn wants_hook(&self) -> bool {
        self.phase == Phase::PreDeploy
            && self.params.has_pre_deploy
            && self.hook.is_none()
            && self.validating.is_none()
            && (self.params.validate.before.is_empty() || self.gate_run(Stage::Before).is_some())
    }

    /// The stored run of a validation gate, if it ran.
    pub fn gate_run(&self, stage: Stage) -> Option<&GateRun> {
        self.validations.iter().find(|g| g.stage == stage)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The strategy as it runs: a canary's first deploy has no stable
    /// revision to split traffic with, and rolls out like a rolling deploy.
    pub fn ran_as(&self) -> String {
        match (self.strategy, self.from) {
            (Strategy::Canary, None) => "rolling (first deploy of a canary service)".into(),
            (s, _) => s.as_str().into(),
        }
    }

    /// Which of the service's analysis checks judge the rollout now. A
    /// canary is judged once it takes traffic (a measurement of a canary
    /// that serves nothing is noise, and three in a row would pause it); a
    /// blue-green set by its `pre_promotion` checks once it is ready and
    /// waits for them; every strategy by its `checks` in its monitoring
    /// window. A paused rollout is judged (quietly) as what it is
    /// underneath.
    pub fn judging(&self) -> Judging {
        let phase = self.effective_phase();
        let rolling_out =
            matches!(phase, Phase::Progressing | Phase::AwaitingApproval) && self.from.is_some();
        match (self.strategy, phase) {
            (_, Phase::Monitoring) => Judging::Checks,
            (Strategy::Canary, _) if rolling_out && self.canary.weight > 0 => Judging::Checks,
            (Strategy::BlueGreen, _)
                if rolling_out
                    && self.kind == RolloutKind::Deploy
                    && self.analysis.pre_promotion_started =>
            {
                Judging::PrePromotion
            }
            _ => Judging::Not,
        }
    }

    /// The phase that says what the rollout is doing, paused or not: a
    /// paused rollout is still rolling out (or monitoring) underneath.
    pub fn effective_phase(&self) -> Phase {
        match (self.phase, self.paused_in) {
            (Phase::Paused, Some(p)) => p,
            (Phase::Paused, None) => Phase::Progressing,
            (p, _) => p,
        }
    }
}

/// Which analysis checks judge a rollout now (`Rollout::judging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judging {
    Not,
    /// The `checks`.
    Checks,
    /// The `pre_promotion` checks.
    PrePromotion,
}

/// What the shell saw of one live (not stopping) instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceObs {
    pub id: String,
    pub revision: u64,
    /// When the instance was first created (restarts keep it).
    pub created_at: Millis,
    /// Since when its readiness probe has passed, if it passes now.
    pub ready_since: Option<Millis>,
    /// Set when the instance crash-loops: what happened.
    pub crash_loop: Option<String>,
    /// The last probe result, for error messages.
    pub last_probe: Option<String>,
}

/// An instance takes traffic once it has been ready for `min_ready`.
pub fn is_available(ready_since: Option<Millis>, min_ready_ms: u64, now: Millis) -> bool {
    ready_since.is_some_and(|t| now >= t.saturating_add(min_ready_ms))
}

/// Everything the shell observed for one `advance`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The service's live (not stopping) instances.
    pub instances: Vec<InstanceObs>,
    /// Analysis measurements taken since the last `advance`.
    pub measurements: Vec<Measurement>,
    /// Alerts about the service that fire now and started firing after
    /// the rollout began, as the service's `rollback_on_alerts` selects
    /// them (the shell matches; the machine decides).
    pub alerts: Vec<AlertObs>,
}

/// A firing alert, as a rollout's record names it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertObs {
    pub name: String,
    pub value: Option<f64>,
    /// `{k="v", ...}`, as Prometheus prints a label set.
    pub labels: String,
    /// When it started firing.
    pub since: Millis,
}

impl AlertObs {
    pub fn describe(&self) -> String {
        let value = self
            .value
            .map(|v| format!(" with value {v}"))
            .unwrap_or_default();
        format!("alert {} is firing{value}: {}", self.name, self.labels)
    }
}

/// What `advance` decided: the next stored state and what to tell people.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: ServiceState,
    pub rollout: Rollout,
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests;
