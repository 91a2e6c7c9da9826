//! The rollout state machine: a pure function from stored state plus
//! observations plus time to the next stored state.
//!
//! The shell (ferry-server) persists what [`advance`] returns before acting on
//! it: it starts or stops instances until each revision runs `scale[rev]`
//! instances, and routes traffic to the available instances of the revisions
//! in `traffic`. Because the desired world is derived from stored state, a
//! daemon restarted after a crash simply calls `advance` again.

use crate::Millis;
use crate::analysis::{Measurement, Verdict};
use crate::canary::{self, CanaryStep, OnFailure, Pause};
use crate::spec::{ServiceSpec, Strategy};
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
    AwaitingApproval,
    /// Serving all traffic, watched for the monitoring window: a failure
    /// rolls back through the fast path.
    Monitoring,
    /// Failed or aborted: bringing the previous revision back to full size
    /// before the new one stops.
    Reverting,
    Done,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub approved_by: Option<String>,
    pub abort_requested_by: Option<String>,
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
    /// Why the rollout holds where it is (a manual pause step, `ferry
    /// pause`, inconclusive or failed analysis with `on_failure = "pause"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Requests from the API, consumed by the next `advance`.
    #[serde(default)]
    pub requests: Requests,
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
}

/// `ferry promote`, `ferry pause`, `ferry resume`, waiting to be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Requests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<PromoteRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PendingPromotion)]
pub struct PromoteRequest {
    pub by: String,
    /// Skip every remaining step.
    pub full: bool,
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
        let phase = if params.has_pre_deploy && kind == RolloutKind::Deploy {
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
            hook: None,
            started_at: now,
            phase_since: now,
            last_progress_at: now,
            seen_available: 0,
            finished_at: None,
            failed_instance: None,
            paused: None,
            requests: Requests::default(),
            canary: CanaryProgress::default(),
            analysis: AnalysisCounters::default(),
            blast_radius: None,
            started_by: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
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

pub use crate::event::{Event, EventKind};

fn event(kind: EventKind, message: String) -> Event {
    Event { kind, message }
}

/// Everything the shell observed for one `advance`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The service's live (not stopping) instances.
    pub instances: Vec<InstanceObs>,
    /// Analysis measurements taken since the last `advance`.
    pub measurements: Vec<Measurement>,
}

/// What `advance` decided: the next stored state and what to tell people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub state: ServiceState,
    pub rollout: Rollout,
    pub events: Vec<Event>,
}

struct Counts {
    desired: u32,
    available: u32,
}

fn counts(
    state: &ServiceState,
    obs: &[InstanceObs],
    rev: u64,
    min_ready: u64,
    now: Millis,
) -> Counts {
    Counts {
        desired: state.scale.get(&rev).copied().unwrap_or(0),
        available: obs
            .iter()
            .filter(|i| i.revision == rev && is_available(i.ready_since, min_ready, now))
            .count() as u32,
    }
}

/// Decide the next step of `rollout` given what was observed at `now`.
/// Pure: the same inputs always give the same outputs.
pub fn advance(state: &ServiceState, rollout: &Rollout, observed: &Observed, now: Millis) -> Step {
    let mut s = state.clone();
    let mut r = rollout.clone();
    let mut events = Vec::new();
    let obs = observed.instances.as_slice();
    if r.is_done() {
        return Step {
            state: s,
            rollout: r,
            events,
        };
    }

    if let Some(who) = r.abort_requested_by.clone()
        && r.phase != Phase::Reverting
    {
        begin_revert(
            &mut s,
            &mut r,
            Outcome::Aborted,
            format!("aborted by {who}"),
            None,
            obs,
            now,
            &mut events,
        );
        return Step {
            state: s,
            rollout: r,
            events,
        };
    }
    apply_requests(&mut r, now, &mut events);

    match r.phase {
        Phase::PreDeploy => match &r.hook {
            None => {}
            Some(h) if h.ok => {
                events.push(event(
                    EventKind::Hook,
                    format!("pre_deploy hook succeeded: {}", h.summary),
                ));
                set_phase(&mut r, Phase::Progressing, now);
                r.last_progress_at = now;
            }
            Some(h) => {
                let reason = format!("pre_deploy hook failed: {}", h.summary);
                // Nothing was touched yet: finish at once.
                finish(&mut s, &mut r, Outcome::Failed, reason, now, &mut events);
            }
        },
        Phase::Progressing | Phase::AwaitingApproval => {
            if let Some((instance, reason)) = failure(&r, obs, now) {
                fail(&mut s, &mut r, reason, instance, obs, now, &mut events);
            } else if let Some(reason) = judge_analysis(&mut r, &observed.measurements, &mut events)
            {
                match r.params.on_failure {
                    OnFailure::Rollback => {
                        fail(&mut s, &mut r, reason, None, obs, now, &mut events);
                    }
                    OnFailure::Pause => {
                        r.analysis_held();
                        r.paused = Some(reason.clone());
                        events.push(event(
EventKind::Paused,
                            format!(
                                "ANALYSIS FAILED, rollout {} PAUSED (on_failure = \"pause\"): traffic stays where it is until a human decides: `ferry resume {svc}`, `ferry promote {svc}` or `ferry abort {svc}`. {reason}",
                                r.id,
                                svc = r.service
                            ),
                        ));
                    }
                }
            } else if r.paused.is_some() {
                // Hold: traffic and instances stay as they are.
            } else {
                match (r.strategy, r.from) {
                    (Strategy::Rolling, _) | (Strategy::Canary, None) => {
                        rolling(&mut s, &mut r, obs, now, &mut events)
                    }
                    (Strategy::BlueGreen, _) => blue_green(&mut s, &mut r, obs, now, &mut events),
                    (Strategy::Canary, Some(from)) => {
                        canary_steps(&mut s, &mut r, from, obs, now, &mut events)
                    }
                }
            }
        }
        Phase::Monitoring => {
            if let Some((instance, reason)) = failure(&r, obs, now) {
                let reason = format!("during the monitoring window: {reason}");
                fail(&mut s, &mut r, reason, instance, obs, now, &mut events);
            } else if let Some(reason) = judge_analysis(&mut r, &observed.measurements, &mut events)
            {
                let reason = format!("during the monitoring window: {reason}");
                fail(&mut s, &mut r, reason, None, obs, now, &mut events);
            } else if now >= r.phase_since.saturating_add(r.params.monitor_ms) {
                let reason = format!(
                    "revision {} served all traffic through its {} monitoring window",
                    r.to,
                    fmt_ms(r.params.monitor_ms)
                );
                finish(&mut s, &mut r, Outcome::Succeeded, reason, now, &mut events);
            }
        }
        Phase::Reverting => revert(&mut s, &mut r, obs, now, &mut events),
        Phase::Done => {}
    }
    Step {
        state: s,
        rollout: r,
        events,
    }
}

/// The new revision serves all traffic: watch it for the monitoring window,
/// or finish.
fn reached_full(s: &mut ServiceState, r: &mut Rollout, now: Millis, events: &mut Vec<Event>) {
    if r.params.monitor_ms > 0 && r.from.is_some() {
        set_phase(r, Phase::Monitoring, now);
        r.analysis.failures = 0;
        r.analysis.inconclusive_in_row = 0;
        events.push(event(
EventKind::Monitoring,
            format!(
                "revision {} serves all traffic; watching it for {} (a failure rolls back to revision {})",
                r.to,
                fmt_ms(r.params.monitor_ms),
                r.from.unwrap_or_default()
            ),
        ));
        return;
    }
    finish(
        s,
        r,
        Outcome::Succeeded,
        format!("revision {} serves all traffic", r.to),
        now,
        events,
    );
}

impl Rollout {
    /// Mark that analysis failure holds the rollout (so later failed
    /// measurements do not fire again until a human resumes it).
    fn analysis_held(&mut self) {
        self.analysis.held = true;
        self.analysis.failures = 0;
        self.analysis.inconclusive_in_row = 0;
        self.analysis.last_problem = None;
    }
}

/// Apply `ferry pause`, `ferry resume` and `ferry promote`.
fn apply_requests(r: &mut Rollout, now: Millis, events: &mut Vec<Event>) {
    let req = std::mem::take(&mut r.requests);
    if let Some(who) = req.pause
        && r.paused.is_none()
    {
        r.paused = Some(format!("paused by {who}"));
        events.push(event(
            EventKind::Paused,
            format!(
                "rollout {} paused by {who}; `ferry resume {}` continues it",
                r.id, r.service
            ),
        ));
    }
    if let Some(who) = req.resume
        && let Some(why) = r.paused.take()
    {
        r.analysis.inconclusive_in_row = 0;
        r.analysis.failures = 0;
        r.analysis.held = false;
        r.last_progress_at = now;
        events.push(event(
            EventKind::Resumed,
            format!("rollout {} resumed by {who} (it was held: {why})", r.id),
        ));
    }
    if let Some(p) = req.promote {
        r.paused = None;
        r.analysis.held = false;
        r.analysis.failures = 0;
        r.last_progress_at = now;
        match r.strategy {
            Strategy::Canary if p.full => {
                r.canary.step = r.params.steps.len();
                events.push(event(
                    EventKind::Promoted,
                    format!("promoted to 100 % by {} (remaining steps skipped)", p.by),
                ));
            }
            Strategy::Canary => {
                let i = r.canary.step;
                let pausing = r.params.steps.get(i).is_some_and(|s| s.pause.is_some());
                if pausing && r.canary.applied == Some(i) {
                    r.canary.step += 1;
                    r.canary.step_since = now;
                }
                events.push(event(
                    EventKind::Promoted,
                    format!("promoted by {}: on to the next step", p.by),
                ));
            }
            _ => {
                r.approved_by = Some(p.by.clone());
                events.push(event(EventKind::Promoted, format!("promoted by {}", p.by)));
            }
        }
        if r.phase == Phase::AwaitingApproval && r.strategy == Strategy::Canary {
            set_phase(r, Phase::Progressing, now);
        }
    }
}

/// Count new measurements; the reason to fail, when there is one.
fn judge_analysis(
    r: &mut Rollout,
    measurements: &[Measurement],
    events: &mut Vec<Event>,
) -> Option<String> {
    if !measurements.is_empty() {
        if measurements.iter().all(|m| m.verdict == Verdict::Pass) {
            r.analysis.passes_in_row += 1;
        } else {
            r.analysis.passes_in_row = 0;
        }
    }
    for m in measurements {
        r.analysis.measurements += 1;
        match m.verdict {
            Verdict::Pass => r.analysis.inconclusive_in_row = 0,
            Verdict::Fail => {
                r.analysis.failures += 1;
                r.analysis.last_problem = Some(format!("{}: {}", m.check, m.detail));
                events.push(event(
                    EventKind::AnalysisFailed,
                    format!(
                        "analysis: {} failed ({}/{} failures allowed): {}",
                        m.check, r.analysis.failures, r.params.failure_limit, m.detail
                    ),
                ));
            }
            Verdict::Inconclusive => {
                r.analysis.inconclusive_in_row += 1;
                r.analysis.last_problem = Some(format!("{}: {}", m.check, m.detail));
            }
        }
    }
    if r.analysis.failures > r.params.failure_limit && !r.analysis.held {
        return Some(format!(
            "analysis failed: {} failed measurements (failure_limit {}); last: {}",
            r.analysis.failures,
            r.params.failure_limit,
            r.analysis.last_problem.clone().unwrap_or_default()
        ));
    }
    if r.analysis.inconclusive_in_row > r.params.inconclusive_limit
        && r.paused.is_none()
        && r.phase != Phase::Monitoring
        && r.strategy == Strategy::Canary
    {
        let why = format!(
            "analysis inconclusive {} times in a row (inconclusive_limit {}): {}",
            r.analysis.inconclusive_in_row,
            r.params.inconclusive_limit,
            r.analysis.last_problem.clone().unwrap_or_default()
        );
        events.push(event(
EventKind::Paused,
            format!("rollout {} paused: {why}; it is not promoted on too little evidence. `ferry resume {}` to go on", r.id, r.service),
        ));
        r.paused = Some(why);
    }
    None
}

/// Why the new revision is failing, if it is.
fn failure(r: &Rollout, obs: &[InstanceObs], now: Millis) -> Option<(Option<String>, String)> {
    for i in obs.iter().filter(|i| i.revision == r.to) {
        if let Some(why) = &i.crash_loop {
            return Some((
                Some(i.id.clone()),
                format!("instance {} is crash-looping: {why}", i.id),
            ));
        }
        let waited = now.saturating_sub(i.created_at);
        if i.ready_since.is_none() && waited > r.params.deploy_timeout_ms {
            let saw = i.last_probe.as_deref().unwrap_or("no probe answered yet");
            return Some((
                Some(i.id.clone()),
                format!(
                    "instance {} was not ready within deploy_timeout ({}); readiness probe saw: {saw}",
                    i.id,
                    fmt_ms(r.params.deploy_timeout_ms)
                ),
            ));
        }
    }
    if r.phase == Phase::Progressing
        && r.paused.is_none()
        && now.saturating_sub(r.last_progress_at) > r.params.deploy_timeout_ms
    {
        return Some((
            None,
            format!(
                "no progress for deploy_timeout ({})",
                fmt_ms(r.params.deploy_timeout_ms)
            ),
        ));
    }
    None
}

fn fmt_ms(ms: u64) -> String {
    crate::duration::Dur::millis(ms).to_string()
}

fn set_phase(r: &mut Rollout, phase: Phase, now: Millis) {
    r.phase = phase;
    r.phase_since = now;
}

fn set_scale(s: &mut ServiceState, rev: u64, n: u32) {
    if n == 0 {
        s.scale.remove(&rev);
    } else {
        s.scale.insert(rev, n);
    }
}

fn rolling(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    let p = &r.params;
    let n = p.instances;
    let new = counts(s, obs, r.to, p.min_ready_ms, now);
    let old_desired = r
        .from
        .map_or(0, |f| counts(s, obs, f, p.min_ready_ms, now).desired);
    let want_traffic: Vec<u64> = r.from.into_iter().chain([r.to]).collect();
    if s.traffic != want_traffic {
        s.traffic = want_traffic;
    }

    // Scale the new revision up within the surge budget...
    let mut new_desired = new.desired;
    let max_total = n + p.max_surge;
    let total = old_desired + new_desired;
    if new_desired < n && total < max_total {
        new_desired += (max_total - total).min(n - new_desired);
    }
    // ...then the old one down as far as availability allows.
    let min_available = n.saturating_sub(p.max_unavailable);
    let new_unavailable = new_desired.saturating_sub(new.available);
    let total = old_desired + new_desired;
    let removable = total
        .saturating_sub(min_available)
        .saturating_sub(new_unavailable);
    let old_next = old_desired.saturating_sub(removable);

    if new_desired != new.desired || old_next != old_desired {
        set_scale(s, r.to, new_desired);
        if let Some(from) = r.from {
            set_scale(s, from, old_next);
            events.push(event(
                EventKind::Scale,
                format!(
                    "revision {} → {new_desired}/{n} instances, revision {from} → {old_next}",
                    r.to
                ),
            ));
        } else {
            events.push(event(
                EventKind::Scale,
                format!("revision {} → {new_desired}/{n} instances", r.to),
            ));
        }
    }
    if progress_mark(r, new.available, now) {
        events.push(event(
            EventKind::Available,
            format!(
                "revision {}: {}/{n} instances available",
                r.to,
                new.available.min(n)
            ),
        ));
    }
    if new_desired >= n && new.available >= n && old_next == 0 {
        s.stable = Some(r.to);
        s.traffic = vec![r.to];
        reached_full(s, r, now, events);
    }
}

/// Record progress when the new revision's availability grew.
fn progress_mark(r: &mut Rollout, available: u32, now: Millis) -> bool {
    if available > r.seen_available {
        r.seen_available = available;
        r.last_progress_at = now;
        return true;
    }
    false
}

fn canary_steps(
    s: &mut ServiceState,
    r: &mut Rollout,
    from: u64,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    let n = r.params.instances;
    let steps = r.params.steps.clone();
    let want_traffic = vec![from, r.to];
    if s.traffic != want_traffic {
        s.traffic = want_traffic;
    }
    while r.canary.step < steps.len() {
        let i = r.canary.step;
        let step = &steps[i];
        if r.canary.applied != Some(i) {
            if let Some(w) = step.weight {
                let need = canary::instances_for(w, n);
                if counts(s, obs, r.to, r.params.min_ready_ms, now).desired != need {
                    set_scale(s, r.to, need);
                }
                let available = counts(s, obs, r.to, r.params.min_ready_ms, now).available;
                progress_mark(r, available, now);
                if available < need {
                    return;
                }
                s.weights = [(from, 100 - w), (r.to, w)]
                    .into_iter()
                    .filter(|(_, w)| *w > 0)
                    .collect();
                r.canary.weight = w;
                events.push(event(
EventKind::Step,
                    format!(
                        "step {}/{}: canary (revision {}) takes {w} % of traffic on {need} instance{}",
                        i + 1,
                        steps.len(),
                        r.to,
                        if need == 1 { "" } else { "s" }
                    ),
                ));
            }
            r.canary.applied = Some(i);
            r.canary.step_since = now;
            r.last_progress_at = now;
        }
        match step.pause {
            Some(Pause::For(d)) if now < r.canary.step_since + d.as_millis() => {
                // Waiting out a timed pause is progress, not a stall.
                r.last_progress_at = now;
                return;
            }
            None | Some(Pause::For(_)) => {}
            Some(Pause::Manual) if !r.auto_approve => {
                if r.phase != Phase::AwaitingApproval {
                    set_phase(r, Phase::AwaitingApproval, now);
                    events.push(event(
                        EventKind::AwaitingApproval,
                        format!(
                            "step {}/{}: paused at {} %; `ferry promote {}` goes on",
                            i + 1,
                            steps.len(),
                            r.canary.weight,
                            r.service
                        ),
                    ));
                }
                return;
            }
            Some(Pause::Manual) => {}
        }
        r.canary.step += 1;
        r.canary.step_since = now;
    }
    if r.phase == Phase::AwaitingApproval {
        set_phase(r, Phase::Progressing, now);
    }
    // Every step passed: promote to 100 %.
    if r.canary.applied != Some(steps.len()) {
        r.canary.applied = Some(steps.len());
        events.push(event(
            EventKind::Promoting,
            format!("all steps passed: promoting revision {} to 100 %", r.to),
        ));
    }
    if counts(s, obs, r.to, r.params.min_ready_ms, now).desired != n {
        set_scale(s, r.to, n);
    }
    let available = counts(s, obs, r.to, r.params.min_ready_ms, now).available;
    progress_mark(r, available, now);
    if available < n {
        return;
    }
    s.weights.clear();
    s.traffic = vec![r.to];
    s.stable = Some(r.to);
    set_scale(s, from, 0);
    r.canary.weight = 100;
    reached_full(s, r, now, events);
}

fn blue_green(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    let n = r.params.instances;
    let new = counts(s, obs, r.to, r.params.min_ready_ms, now);
    if new.desired != n {
        set_scale(s, r.to, n);
        events.push(event(
            EventKind::Scale,
            format!("starting the new set: revision {} → {n} instances", r.to),
        ));
    }
    let Some(from) = r.from else {
        s.traffic = vec![r.to];
        if progress_mark(r, new.available, now) {
            events.push(event(
                EventKind::Available,
                format!(
                    "revision {}: {}/{n} instances available",
                    r.to,
                    new.available.min(n)
                ),
            ));
        }
        if new.available >= n {
            s.stable = Some(r.to);
            reached_full(s, r, now, events);
        }
        return;
    };
    s.traffic = vec![from];
    if progress_mark(r, new.available, now) {
        events.push(event(
            EventKind::Available,
            format!(
                "revision {}: {}/{n} instances available",
                r.to,
                new.available.min(n)
            ),
        ));
    }
    if new.available < n {
        return;
    }
    // Pre-promotion analysis: the new set must pass before the switch.
    if r.params.pre_promotion_passes > 0 && r.kind == RolloutKind::Deploy {
        if r.analysis.passes_in_row < r.params.pre_promotion_passes {
            if !r.analysis.pre_promotion_started {
                r.analysis.pre_promotion_started = true;
                events.push(event(
EventKind::PrePromotion,
                    format!(
                        "the new set (revision {}) is ready; pre-promotion analysis needs {} passing rounds in a row before the switch (send it traffic with `X-Ferry-Revision: {}`)",
                        r.to, r.params.pre_promotion_passes, r.to
                    ),
                ));
            }
            return;
        }
        if !r.analysis.pre_promotion_passed {
            r.analysis.pre_promotion_passed = true;
            events.push(event(
                EventKind::PrePromotion,
                format!(
                    "pre-promotion analysis passed {} rounds in a row",
                    r.analysis.passes_in_row
                ),
            ));
        }
    }
    let approved = r.auto_approve
        || r.params.auto_promote
        || r.kind == RolloutKind::Rollback
        || r.approved_by.is_some();
    if !approved {
        if r.phase != Phase::AwaitingApproval {
            set_phase(r, Phase::AwaitingApproval, now);
            events.push(event(
EventKind::AwaitingApproval,
                format!(
                    "the new set (revision {}) is ready; traffic stays on revision {from} until `ferry approve {}`",
                    r.to, r.service
                ),
            ));
        }
        return;
    }
    if let Some(who) = &r.approved_by {
        events.push(event(EventKind::Approved, format!("approved by {who}")));
    }
    s.traffic = vec![r.to];
    s.stable = Some(r.to);
    if r.params.scale_down_delay_ms == 0 {
        set_scale(s, from, 0);
    } else {
        s.retiring.insert(from, now + r.params.scale_down_delay_ms);
    }
    events.push(event(
EventKind::Switched,
        format!(
            "all traffic switched to revision {}; revision {from} keeps running for {} (instant rollback)",
            r.to,
            fmt_ms(r.params.scale_down_delay_ms)
        ),
    ));
    reached_full(s, r, now, events);
}

/// Fail the rollout and put the previous revision back.
#[allow(clippy::too_many_arguments)]
fn fail(
    s: &mut ServiceState,
    r: &mut Rollout,
    reason: String,
    instance: Option<String>,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    begin_revert(s, r, Outcome::Failed, reason, instance, obs, now, events);
}

#[allow(clippy::too_many_arguments)]
fn begin_revert(
    s: &mut ServiceState,
    r: &mut Rollout,
    outcome: Outcome,
    reason: String,
    instance: Option<String>,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    r.failed_instance = instance;
    r.outcome = Some(outcome);
    r.reason = Some(reason.clone());
    events.push(event(outcome.event_kind(), reason));
    match r.from {
        Some(from) => {
            s.retiring.remove(&from);
            set_scale(s, from, r.from_instances.max(1));
            // Healthy new instances keep serving until the old revision is
            // back at full size; the rest stop now.
            let new_available = counts(s, obs, r.to, r.params.min_ready_ms, now).available;
            let old_available = counts(s, obs, from, 0, now).available;
            set_scale(s, r.to, new_available);
            // A canary's weight goes to 0 in this very tick; a rolling
            // deploy keeps healthy new instances serving until the old
            // revision is back at full size.
            s.weights.clear();
            let old_full = old_available >= r.from_instances.max(1);
            s.traffic = if new_available > 0 && s.traffic.contains(&r.to) && !old_full {
                vec![from, r.to]
            } else {
                vec![from]
            };
            events.push(event(
                EventKind::Reverting,
                format!(
                    "traffic returns to revision {from}; revision {} is being stopped",
                    r.to
                ),
            ));
            set_phase(r, Phase::Reverting, now);
            revert(s, r, obs, now, events);
        }
        None => {
            set_scale(s, r.to, 0);
            s.traffic.clear();
            s.weights.clear();
            let reason = r.reason.clone().unwrap_or_default();
            finish(s, r, outcome, reason, now, events);
        }
    }
}

fn revert(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    let Some(from) = r.from else { return };
    let old = counts(s, obs, from, 0, now);
    let timed_out = now.saturating_sub(r.phase_since) > r.params.deploy_timeout_ms;
    if old.available >= old.desired || timed_out {
        set_scale(s, r.to, 0);
        s.traffic = vec![from];
        s.weights.clear();
        s.stable = Some(from);
        let outcome = r.outcome.unwrap_or(Outcome::Failed);
        let reason = r.reason.clone().unwrap_or_default();
        if timed_out {
            events.push(event(
                EventKind::Warning,
                format!(
                    "revision {from} has only {}/{} instances available",
                    old.available, old.desired
                ),
            ));
        }
        finish(s, r, outcome, reason, now, events);
    }
}

fn finish(
    s: &mut ServiceState,
    r: &mut Rollout,
    outcome: Outcome,
    reason: String,
    now: Millis,
    events: &mut Vec<Event>,
) {
    r.outcome = Some(outcome);
    r.reason = Some(reason.clone());
    r.finished_at = Some(now);
    set_phase(r, Phase::Done, now);
    s.active_rollout = None;
    events.push(event(
        EventKind::Done,
        format!("rollout {} {}: {reason}", r.id, outcome.as_str()),
    ));
}

/// Housekeeping when no rollout is under way: retire revisions whose
/// scale-down delay has passed. Pure.
pub fn settle(state: &ServiceState, now: Millis) -> (ServiceState, Vec<Event>) {
    let mut s = state.clone();
    let mut events = Vec::new();
    let expired: Vec<u64> = s
        .retiring
        .iter()
        .filter(|(rev, until)| **until <= now && Some(**rev) != s.stable)
        .map(|(rev, _)| *rev)
        .collect();
    for rev in expired {
        s.retiring.remove(&rev);
        s.scale.remove(&rev);
        s.traffic.retain(|t| *t != rev);
        events.push(event(
            EventKind::Retired,
            format!("revision {rev} stopped after its scale-down delay"),
        ));
    }
    s.retiring.retain(|rev, _| Some(*rev) != s.stable);
    (s, events)
}

#[cfg(test)]
mod tests;

/// The plan `--dry-run` prints: the rollout simulated against instances that
/// become ready at once, one line per batch, gate and timeout.
pub fn plan(state: &ServiceState, r: &Rollout) -> Vec<String> {
    let mut lines = Vec::new();
    let p = &r.params;
    if p.has_pre_deploy {
        lines.push("run the pre_deploy hook once, to completion; if it fails, stop here (nothing else is touched)".to_string());
    }
    if r.strategy == Strategy::Canary
        && let Some(from) = r.from
    {
        canary_plan(r, from, &mut lines);
        lines.push(format!(
            "each new instance must be ready (and ready for min_ready {}) within deploy_timeout {}, or the deploy fails and traffic stays on the previous revision",
            fmt_ms(p.min_ready_ms),
            fmt_ms(p.deploy_timeout_ms)
        ));
        return lines;
    }
    let mut sim = r.clone();
    sim.phase = Phase::Progressing;
    sim.auto_approve = true;
    let mut s = state.clone();
    let mut world: Vec<InstanceObs> = Vec::new();
    for (rev, n) in &s.scale {
        for i in 0..*n {
            world.push(InstanceObs {
                id: format!("{rev}-{i}"),
                revision: *rev,
                created_at: 0,
                ready_since: Some(0),
                crash_loop: None,
                last_probe: None,
            });
        }
    }
    let mut now = r.started_at.max(1);
    let mut batch = 0;
    for _ in 0..10_000 {
        let observed = Observed {
            instances: world.clone(),
            measurements: Vec::new(),
        };
        let step = advance(&s, &sim, &observed, now);
        for e in &step.events {
            if e.kind == EventKind::Scale {
                batch += 1;
                lines.push(format!("batch {batch}: {}", e.message));
            }

            if e.kind == EventKind::Switched
                && !(r.auto_approve || p.auto_promote || r.kind == RolloutKind::Rollback)
            {
                lines.push(format!(
                    "gate: wait for `ferry approve {}` once the new set is ready (or deploy with --auto-approve)",
                    r.service
                ));
            }
            if e.kind == EventKind::Switched {
                lines.push(e.message.clone());
            }
        }
        s = step.state;
        sim = step.rollout;
        if sim.is_done() {
            break;
        }
        // Converge the simulated world to the new scale.
        world.retain(|i| s.scale.contains_key(&i.revision));
        for (rev, n) in &s.scale {
            let have = world.iter().filter(|i| i.revision == *rev).count() as u32;
            for _ in have..*n {
                world.push(InstanceObs {
                    id: format!("{rev}-{now}"),
                    revision: *rev,
                    created_at: now,
                    ready_since: Some(now),
                    crash_loop: None,
                    last_probe: None,
                });
            }
            let mut extra = have.saturating_sub(*n);
            world.retain(|i| {
                if i.revision == *rev && extra > 0 {
                    extra -= 1;
                    false
                } else {
                    true
                }
            });
        }
        now += p.min_ready_ms.max(1).max(
            p.steps
                .iter()
                .filter_map(|st| match st.pause {
                    Some(Pause::For(d)) => Some(d.as_millis()),
                    _ => None,
                })
                .max()
                .unwrap_or(1),
        );
    }
    lines.push(format!(
        "each new instance must be ready (and ready for min_ready {}) within deploy_timeout {}, or the deploy fails and traffic stays on the previous revision",
        fmt_ms(p.min_ready_ms),
        fmt_ms(p.deploy_timeout_ms)
    ));
    lines
}

/// A canary's plan, read straight off its steps.
fn canary_plan(r: &Rollout, from: u64, lines: &mut Vec<String>) {
    let p = &r.params;
    let total = p.steps.len();
    for (i, step) in p.steps.iter().enumerate() {
        if let Some(w) = step.weight {
            let n = canary::instances_for(w, p.instances);
            lines.push(format!(
                "step {}/{total}: canary (revision {}) takes {w} % of traffic on {n} instance{}",
                i + 1,
                r.to,
                if n == 1 { "" } else { "s" }
            ));
        }
        match step.pause {
            Some(Pause::For(d)) => lines.push(format!("step {}/{total}: hold for {d} while analysis judges", i + 1)),
            Some(Pause::Manual) if r.auto_approve => {
                lines.push(format!("step {}/{total}: manual pause skipped (--auto-approve)", i + 1))
            }
            Some(Pause::Manual) => lines.push(format!(
                "step {}/{total}: gate: wait for `ferry promote {}` (or deploy with --auto-approve)",
                i + 1,
                r.service
            )),
            None => {}
        }
    }
    lines.push(format!(
        "all steps passed: promoting revision {} to 100 % ({} instances), then revision {from} stops",
        r.to, p.instances
    ));
    let on_failure = match p.on_failure {
        OnFailure::Rollback => {
            format!("the canary's weight goes to 0 at once and traffic stays on revision {from}")
        }
        OnFailure::Pause => {
            "traffic holds where it is and the rollout waits for a human".to_string()
        }
    };
    lines.push(format!(
        "analysis: more than {} failed measurements → {on_failure}; more than {} inconclusive in a row → pause",
        p.failure_limit, p.inconclusive_limit
    ));
}

/// End a monitoring window early (a new deploy supersedes it): the release
/// stands as succeeded. Pure.
pub fn conclude_monitoring(
    state: &ServiceState,
    rollout: &Rollout,
    why: &str,
    now: Millis,
) -> Step {
    let mut s = state.clone();
    let mut r = rollout.clone();
    let mut events = Vec::new();
    if r.phase == Phase::Monitoring {
        let reason = format!(
            "revision {} serves all traffic; monitoring ended early: {why}",
            r.to
        );
        finish(&mut s, &mut r, Outcome::Succeeded, reason, now, &mut events);
    }
    Step {
        state: s,
        rollout: r,
        events,
    }
}
