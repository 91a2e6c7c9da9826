//! Rolling: new instances start within the surge budget and old ones stop
//! as far as availability allows, batch by batch, until the new revision
//! runs every instance. Also how any first deploy runs (nothing to keep).

use super::step::{counts, event, progress_mark, reached_full, set_scale};
use super::validate;
use super::{Event, EventKind, InstanceObs, Rollout, ServiceState};
use crate::Millis;
use crate::validation::Stage;

pub(super) fn rolling(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) {
    if !validate::done(r, Stage::Candidate) && !candidate(s, r, obs, now, events) {
        return;
    }
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

/// The candidate gate of a rolling deploy: one new instance starts beside
/// every old one (whatever `max_surge` says), out of regular traffic, and
/// the candidate suites run against it by `X-Ferry-Revision`. Whether the
/// deploy may roll on.
fn candidate(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) -> bool {
    let new = counts(s, obs, r.to, r.params.min_ready_ms, now);
    if new.desired == 0 {
        set_scale(s, r.to, 1);
        events.push(event(
            EventKind::Scale,
            format!(
                "revision {} → 1 instance, the candidate: out of regular traffic until it passes its candidate validation",
                r.to
            ),
        ));
    }
    s.traffic = r.from.into_iter().collect();
    progress_mark(r, new.available, now);
    if new.available == 0 {
        return false;
    }
    validate::candidate_passed(s, r, obs, now, events)
}
