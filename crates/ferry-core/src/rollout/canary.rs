//! Canary: the new revision takes a growing share of traffic, step by step
//! (`weight`, `pause`), judged by analysis all along, then all of it.
//!
//! Every step is announced: its weight applying, a timed hold starting and
//! ending, a manual pause waiting (or skipped by `--auto-approve`). A weight
//! step without a pause still holds `min_step_ms` (one analysis interval),
//! so that the canary is judged at that weight at least once.

use super::step::{counts, event, fmt_ms, progress_mark, reached_full, set_phase, set_scale};
use super::validate;
use super::{Event, EventKind, InstanceObs, Phase, Rollout, ServiceState};
use crate::Millis;
use crate::canary::{self, Pause};

pub(super) fn canary_steps(
    s: &mut ServiceState,
    r: &mut Rollout,
    from: u64,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    let n = r.params.instances;
    let steps = r.params.steps.clone();
    let total = steps.len();
    // The canary is out of regular traffic (reachable by X-Ferry-Revision
    // only) until a step gives it a weight.
    let want_traffic = if r.canary.weight > 0 {
        vec![from, r.to]
    } else {
        vec![from]
    };
    if s.traffic != want_traffic {
        s.traffic = want_traffic;
    }
    while r.canary.step < total {
        let i = r.canary.step;
        let step = &steps[i];
        let label = format!("step {}/{total}", i + 1);
        // How long this step holds once applied.
        let hold = match step.pause {
            Some(Pause::For(d)) => d.as_millis(),
            None if step.weight.is_some() => r.params.min_step_ms,
            _ => 0,
        };
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
                // The candidate gate, before the canary's first share of
                // traffic.
                if w > 0 && !validate::candidate_passed(s, r, obs, now, events) {
                    return;
                }
                if w > 0 {
                    s.traffic = vec![from, r.to];
                }
                s.weights = [(from, 100 - w), (r.to, w)]
                    .into_iter()
                    .filter(|(_, w)| *w > 0)
                    .collect();
                r.canary.weight = w;
                let held = if step.pause.is_none() && hold > 0 {
                    format!(", held {} (one analysis interval)", fmt_ms(hold))
                } else {
                    String::new()
                };
                events.push(event(
                    EventKind::Step,
                    format!(
                        "{label}: canary (revision {}) takes {w} % of traffic on {need} instance{}{held}",
                        r.to,
                        if need == 1 { "" } else { "s" }
                    ),
                ));
            }
            match step.pause {
                Some(Pause::For(d)) => events.push(event(
                    EventKind::Step,
                    format!(
                        "{label}: holding {d} at {} % while analysis judges",
                        r.canary.weight
                    ),
                )),
                Some(Pause::Manual) if r.auto_approve => events.push(event(
                    EventKind::Step,
                    format!(
                        "{label}: manual pause at {} % skipped (--auto-approve)",
                        r.canary.weight
                    ),
                )),
                _ => {}
            }
            r.canary.applied = Some(i);
            r.canary.step_since = now;
            r.last_progress_at = now;
        }
        if now < r.canary.step_since.saturating_add(hold) {
            // Waiting out a hold is progress, not a stall.
            r.last_progress_at = now;
            return;
        }
        match step.pause {
            Some(Pause::Manual) if !r.auto_approve => {
                if r.phase != Phase::AwaitingApproval {
                    set_phase(r, Phase::AwaitingApproval, now);
                    events.push(event(
                        EventKind::AwaitingApproval,
                        format!(
                            "{label}: paused at {} %; `ferry promote {}` goes on",
                            r.canary.weight, r.service
                        ),
                    ));
                }
                return;
            }
            Some(Pause::For(d)) => events.push(event(
                EventKind::Step,
                format!("{label}: the {d} hold at {} % ended", r.canary.weight),
            )),
            _ => {}
        }
        r.canary.step += 1;
        r.canary.step_since = now;
    }
    if r.phase == Phase::AwaitingApproval {
        set_phase(r, Phase::Progressing, now);
    }
    // Every step passed: promote to 100 %.
    if r.canary.applied != Some(total) {
        r.canary.applied = Some(total);
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
    // No weight step took traffic before: the candidate gate is here.
    if !validate::candidate_passed(s, r, obs, now, events) {
        return;
    }
    s.weights.clear();
    s.traffic = vec![r.to];
    s.stable = Some(r.to);
    set_scale(s, from, 0);
    r.canary.weight = 100;
    reached_full(s, r, now, events);
}
