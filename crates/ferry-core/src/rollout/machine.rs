//! `advance`: the next step of a rollout, from stored state, observations
//! and the time; `settle`: housekeeping without a rollout. Both pure.

use super::step::{event, fail, finish, fmt_ms, hold, revert, set_phase};
use super::{
    Event, EventKind, InstanceObs, Observed, Outcome, Phase, Rollout, RolloutKind, ServiceState,
    Step,
    blue_green::blue_green,
    canary::canary_steps,
    gate,
    rolling::rolling,
    validate::{self, Gate},
};
use crate::Millis;
use crate::analysis::{Measurement, Verdict};
use crate::canary::OnFailure;
use crate::spec::Strategy;
use crate::validation::Stage;

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
    upgrade_record(&mut r);
    if gate::apply(&mut s, &mut r, obs, now, &mut events) {
        return Step {
            state: s,
            rollout: r,
            events,
        };
    }

    match r.phase {
        Phase::PreDeploy => match validate::gate(&mut r, Stage::Before, now, &mut events) {
            Gate::Waiting => {}
            Gate::Failed(reason) => {
                // Nothing was touched yet: finish at once.
                finish(&mut s, &mut r, Outcome::Failed, reason, now, &mut events);
            }
            Gate::Passed if !r.params.has_pre_deploy => {
                set_phase(&mut r, Phase::Progressing, now);
                r.last_progress_at = now;
            }
            Gate::Passed => match r.hook.clone() {
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
        },
        Phase::Progressing | Phase::AwaitingApproval | Phase::Paused | Phase::Monitoring
            if r.kind == RolloutKind::Deploy && !observed.alerts.is_empty() =>
        {
            let a = &observed.alerts[0];
            events.push(event(EventKind::Alert, a.describe()));
            let reason = if r.effective_phase() == Phase::Monitoring {
                format!("during the monitoring window: {}", a.describe())
            } else {
                a.describe()
            };
            fail(&mut s, &mut r, reason, None, obs, now, &mut events);
        }
        Phase::Progressing | Phase::AwaitingApproval => {
            if let Some((instance, reason)) = failure(&r, obs, now) {
                fail(&mut s, &mut r, reason, instance, obs, now, &mut events);
            } else if let Some(reason) =
                judge_analysis(&mut r, &observed.measurements, now, &mut events)
            {
                match r.params.on_failure {
                    OnFailure::Rollback => {
                        fail(&mut s, &mut r, reason, None, obs, now, &mut events);
                    }
                    OnFailure::Pause => {
                        r.analysis.held = true;
                        hold(&mut r, reason.clone(), now);
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
            } else if r.phase != Phase::Paused {
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
        Phase::Paused => {
            // Held: traffic and instances stay; a failing instance still
            // fails the rollout; analysis measures quietly.
            if let Some((instance, reason)) = failure(&r, obs, now) {
                fail(&mut s, &mut r, reason, instance, obs, now, &mut events);
            } else {
                judge_analysis(&mut r, &observed.measurements, now, &mut events);
            }
        }
        Phase::Monitoring => {
            if let Some((instance, reason)) = failure(&r, obs, now) {
                let reason = format!("during the monitoring window: {reason}");
                fail(&mut s, &mut r, reason, instance, obs, now, &mut events);
            } else if let Some(reason) =
                judge_analysis(&mut r, &observed.measurements, now, &mut events)
            {
                let reason = format!("during the monitoring window: {reason}");
                fail(&mut s, &mut r, reason, None, obs, now, &mut events);
            } else {
                match validate::gate(&mut r, Stage::After, now, &mut events) {
                    Gate::Waiting => {}
                    Gate::Failed(reason) => {
                        let reason = format!("during the monitoring window: {reason}");
                        fail(&mut s, &mut r, reason, None, obs, now, &mut events);
                    }
                    Gate::Passed if now >= r.phase_since.saturating_add(r.params.monitor_ms) => {
                        let reason = if r.params.monitor_ms == 0 {
                            format!(
                                "revision {} serves all traffic and passed its after validation",
                                r.to
                            )
                        } else {
                            format!(
                                "revision {} served all traffic through its {} monitoring window",
                                r.to,
                                fmt_ms(r.params.monitor_ms)
                            )
                        };
                        finish(&mut s, &mut r, Outcome::Succeeded, reason, now, &mut events);
                    }
                    Gate::Passed => {}
                }
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

/// Rollouts stored by a Ferry from before `Phase::Paused` and gate
/// requests: a held one is paused, a stop that was asked for is a request.
fn upgrade_record(r: &mut Rollout) {
    if r.paused.is_some()
        && matches!(
            r.phase,
            Phase::Progressing | Phase::AwaitingApproval | Phase::Monitoring
        )
    {
        r.paused_in = Some(r.phase);
        r.phase = Phase::Paused;
    }
    if let Some(by) = r.abort_requested_by.clone()
        && r.outcome.is_none()
        && r.phase != Phase::Reverting
        && r.gates.is_empty()
    {
        r.abort_requested_by = None;
        let (gate, by) = match by.strip_prefix("rollback by ") {
            Some(who) => (gate::Gate::Rollback, who.to_string()),
            None => (gate::Gate::Abort, by),
        };
        r.gates.push(gate::GateRequest { gate, by });
    }
}

/// Count new measurements; the reason to fail, when there is one. While
/// the rollout is paused it only counts: a held rollout is not announced
/// again, nor failed twice.
fn judge_analysis(
    r: &mut Rollout,
    measurements: &[Measurement],
    now: Millis,
    events: &mut Vec<Event>,
) -> Option<String> {
    let quiet = r.phase == Phase::Paused;
    if !measurements.is_empty() {
        if measurements.iter().all(|m| m.verdict == Verdict::Pass) {
            r.analysis.passes_in_row += 1;
        } else {
            r.analysis.passes_in_row = 0;
        }
    }
    for m in measurements {
        r.analysis.measurements += 1;
        if m.verdict != Verdict::Pass {
            r.analysis.last_problem = Some(format!("{}: {}", m.check, m.detail));
        }
        if quiet {
            continue;
        }
        match m.verdict {
            Verdict::Pass => r.analysis.inconclusive_in_row = 0,
            Verdict::Fail => {
                r.analysis.failures += 1;
                events.push(event(
                    EventKind::AnalysisFailed,
                    format!(
                        "analysis: {} failed ({}/{} failures allowed): {}",
                        m.check, r.analysis.failures, r.params.failure_limit, m.detail
                    ),
                ));
            }
            Verdict::Inconclusive => r.analysis.inconclusive_in_row += 1,
        }
    }
    if quiet {
        return None;
    }
    if r.analysis.failures > r.params.failure_limit {
        return Some(format!(
            "analysis failed: {} failed measurements (failure_limit {}); last: {}",
            r.analysis.failures,
            r.params.failure_limit,
            r.analysis.last_problem.clone().unwrap_or_default()
        ));
    }
    if r.analysis.inconclusive_in_row > r.params.inconclusive_limit
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
        hold(r, why, now);
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
