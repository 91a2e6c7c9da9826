//! Validation gates inside a rollout: `before` (nothing started yet),
//! `candidate` (the new revision ready, out of regular traffic) and
//! `after` (all traffic, in the monitoring window). The machine asks for a
//! gate by setting `Rollout::validating`; the shell runs its suites and
//! stores a `GateRun`; the next `advance` reads it here.

use super::step::{event, fail};
use super::{Event, EventKind, InstanceObs, Rollout, RolloutKind, ServiceState};
use crate::Millis;
use crate::validation::Stage;

/// Where a gate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    /// Nothing to run, or it ran and nothing FAILED: go on.
    Passed,
    /// Its suites are running.
    Waiting,
    /// A check FAILED: the reason.
    Failed(String),
}

/// Does the rollout have suites to run at `stage`? Rollbacks never do.
pub(super) fn wanted(r: &Rollout, stage: Stage) -> bool {
    r.kind == RolloutKind::Deploy && !r.params.validate.suites(stage).is_empty()
}

/// Has the gate at `stage` ended (or is there none)?
pub(super) fn done(r: &Rollout, stage: Stage) -> bool {
    !wanted(r, stage) || (r.gate_run(stage).is_some() && r.validating != Some(stage))
}

/// Ask for the gate at `stage`, or read its result. Announces the start
/// once and the result once; waiting counts as progress.
pub(super) fn gate(r: &mut Rollout, stage: Stage, now: Millis, events: &mut Vec<Event>) -> Gate {
    if !wanted(r, stage) {
        return Gate::Passed;
    }
    let Some(run) = r.gate_run(stage).cloned() else {
        if r.validating != Some(stage) {
            r.validating = Some(stage);
            let suites = r.params.validate.suites(stage).join(", ");
            let what = match stage {
                Stage::Before => "before any new instance starts".to_string(),
                Stage::Candidate => format!(
                    "against revision {} (X-Ferry-Revision) before it takes regular traffic",
                    r.to
                ),
                Stage::After => format!("against revision {}, which serves all traffic", r.to),
            };
            events.push(event(
                EventKind::Validating,
                format!("{stage} validation: running suites {suites} {what}; a FAILED check fails the release"),
            ));
        }
        r.last_progress_at = now;
        return Gate::Waiting;
    };
    if r.validating == Some(stage) {
        r.validating = None;
        events.push(event(EventKind::Validated, run.describe()));
    }
    match run.first_failure() {
        Some(first) => Gate::Failed(format!(
            "{stage} validation failed ({}): {first}",
            run.summary()
        )),
        None => Gate::Passed,
    }
}

/// The candidate gate where a strategy meets it: run or read it, and fail
/// the rollout (the usual revert) on a FAILED. Whether it may go on.
pub(super) fn candidate_passed(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) -> bool {
    match gate(r, Stage::Candidate, now, events) {
        Gate::Passed => true,
        Gate::Waiting => false,
        Gate::Failed(reason) => {
            fail(s, r, reason, None, obs, now, events);
            false
        }
    }
}
