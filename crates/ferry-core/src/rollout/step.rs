//! The moves every strategy shares: announcing, counting instances,
//! changing scale and phase, holding, finishing, and putting the previous
//! revision back when a rollout fails or is stopped.

use super::{Event, EventKind, InstanceObs, Outcome, Phase, Rollout, ServiceState, is_available};
use crate::Millis;

pub(super) fn event(kind: EventKind, message: String) -> Event {
    Event { kind, message }
}

pub(super) struct Counts {
    pub desired: u32,
    pub available: u32,
}

pub(super) fn counts(
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

/// Record progress when the new revision's availability grew.
pub(super) fn progress_mark(r: &mut Rollout, available: u32, now: Millis) -> bool {
    if available > r.seen_available {
        r.seen_available = available;
        r.last_progress_at = now;
        return true;
    }
    false
}

pub(super) fn fmt_ms(ms: u64) -> String {
    crate::duration::Dur::millis(ms).to_string()
}

pub(super) fn set_phase(r: &mut Rollout, phase: Phase, now: Millis) {
    r.phase = phase;
    r.phase_since = now;
}

pub(super) fn set_scale(s: &mut ServiceState, rev: u64, n: u32) {
    if n == 0 {
        s.scale.remove(&rev);
    } else {
        s.scale.insert(rev, n);
    }
}

/// Hold the rollout where it is, for `why`: traffic and instances stay.
/// The caller announces it.
pub(super) fn hold(r: &mut Rollout, why: String, now: Millis) {
    if r.phase != Phase::Paused {
        r.paused_in = Some(r.phase);
        set_phase(r, Phase::Paused, now);
    }
    r.paused = Some(why);
}

/// Let a held rollout go on from where it was held.
pub(super) fn release(r: &mut Rollout, now: Millis) {
    r.paused = None;
    r.analysis.held = false;
    r.analysis.failures = 0;
    r.analysis.inconclusive_in_row = 0;
    r.last_progress_at = now;
    if r.phase == Phase::Paused {
        let back = r.paused_in.take().unwrap_or(Phase::Progressing);
        set_phase(r, back, now);
    }
}

/// The new revision serves all traffic: watch it for the monitoring window,
/// or finish.
pub(super) fn reached_full(
    s: &mut ServiceState,
    r: &mut Rollout,
    now: Millis,
    events: &mut Vec<Event>,
) {
    r.full_at.get_or_insert(now);
    let validate_after = super::validate::wanted(r, crate::validation::Stage::After);
    if (r.params.monitor_ms > 0 && r.from.is_some()) || validate_after {
        set_phase(r, Phase::Monitoring, now);
        r.analysis.failures = 0;
        r.analysis.inconclusive_in_row = 0;
        let watch = if r.params.monitor_ms > 0 {
            format!("watching it for {}", fmt_ms(r.params.monitor_ms))
        } else {
            "watching it while its after validation runs".to_string()
        };
        let failure = match r.from {
            Some(from) => format!("a failure rolls back to revision {from}"),
            None => "a failure stops it: there is no previous revision".to_string(),
        };
        events.push(event(
            EventKind::Monitoring,
            format!("revision {} serves all traffic; {watch} ({failure})", r.to),
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

/// Fail the rollout and put the previous revision back.
#[allow(clippy::too_many_arguments)]
pub(super) fn fail(
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
pub(super) fn begin_revert(
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
    r.failed_at = Some(now);
    r.paused = None;
    r.paused_in = None;
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
            r.canary.weight = 0;
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
            r.canary.weight = 0;
            let reason = r.reason.clone().unwrap_or_default();
            finish(s, r, outcome, reason, now, events);
        }
    }
}

pub(super) fn revert(
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

pub(super) fn finish(
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
    r.paused = None;
    r.paused_in = None;
    set_phase(r, Phase::Done, now);
    s.active_rollout = None;
    events.push(event(
        EventKind::Done,
        format!("rollout {} {}: {reason}", r.id, outcome.as_str()),
    ));
}
