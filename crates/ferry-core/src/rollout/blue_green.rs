//! Blue-green: the new set starts beside the old one with no traffic
//! (reachable by `X-Ferry-Revision`), passes pre-promotion analysis if any,
//! waits for approval, then takes all traffic at once; the old set keeps
//! running for `scale_down_delay` (instant rollback).

use super::step::{counts, event, fmt_ms, progress_mark, reached_full, set_phase, set_scale};
use super::validate;
use super::{Event, EventKind, InstanceObs, Phase, Rollout, RolloutKind, ServiceState};
use crate::Millis;
use crate::validation::Stage;

pub(super) fn blue_green(
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
        // A first deploy: nothing serves yet, so the candidate gate only
        // keeps the new set out of traffic until it passes.
        if !validate::done(r, Stage::Candidate) {
            s.traffic.clear();
            progress_mark(r, new.available, now);
            if new.available >= n && validate::candidate_passed(s, r, obs, now, events) {
                s.traffic = vec![r.to];
            }
            return;
        }
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
    // The candidate gate: the new set, reached by X-Ferry-Revision only.
    if !validate::candidate_passed(s, r, obs, now, events) {
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
