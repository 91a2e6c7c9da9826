//! Delivery metrics from Ferry's own history: each stored rollout as
//! `ReleaseFacts` (its times, outcome, commit time, failed requests,
//! alerts, a later rollback), for `ferry_core::delivery::compute`.

use crate::daemon::Daemon;
use ferry_core::Millis;
use ferry_core::delivery::{self, DeliveryReport, ReleaseFacts};
use ferry_core::rollout::{Outcome, Rollout, RolloutKind};
use ferry_store::StoreError;

/// The facts of every rollout of `services`.
pub fn facts(d: &Daemon, services: &[String]) -> Result<Vec<ReleaseFacts>, StoreError> {
    let mut out = Vec::new();
    for name in services {
        let rollouts = d.store.rollouts(name)?;
        let revisions = d.store.revisions(name)?;
        for r in &rollouts {
            let commit_time = revisions
                .iter()
                .find(|rev| rev.number == r.to)
                .and_then(|rev| rev.commit_time);
            out.push(ReleaseFacts {
                service: name.clone(),
                rollout: r.id,
                kind: r.kind,
                outcome: r.outcome.filter(|_| r.is_done()),
                started_at: r.started_at,
                finished_at: r.finished_at,
                full_at: r.full_at,
                failed_at: r.failed_at,
                restored_at: r
                    .failed_at
                    .and(r.finished_at)
                    .filter(|_| r.outcome != Some(Outcome::Succeeded)),
                commit_time,
                failed_requests: r.impact.as_ref().and_then(|i| i.failed_requests),
                // A critical alert about the service fired while it ran or
                // was watched (recorded by the loop; one that failed it
                // counts through the outcome too).
                critical_alert: r.critical_alert.is_some(),
                rolled_back_later_at: rolled_back_later(r, &rollouts),
                impact: r.impact.as_ref().and_then(|i| {
                    Some(delivery::Impact {
                        error_rate_before: i.error_rate_before? / 100.0,
                        error_rate_after: i.error_rate_during? / 100.0,
                        p95_before_ms: i.p95_before_ms?,
                        p95_after_ms: i.p95_during_ms?,
                    })
                }),
            });
        }
    }
    Ok(out)
}

/// When a later, successful `ferry rollback` took the service off the
/// revision this deploy released.
fn rolled_back_later(r: &Rollout, all: &[Rollout]) -> Option<Millis> {
    if r.kind != RolloutKind::Deploy || r.outcome != Some(Outcome::Succeeded) {
        return None;
    }
    all.iter()
        .filter(|b| {
            b.kind == RolloutKind::Rollback
                && b.from == Some(r.to)
                && b.id > r.id
                && b.outcome == Some(Outcome::Succeeded)
        })
        .filter_map(|b| b.finished_at)
        .min()
}

/// What changes when a rollout starts or ends: each service's stable
/// revision and rollout in progress.
pub async fn history_key(d: &Daemon) -> Vec<(String, Option<u64>, Option<u64>)> {
    let core = d.core.lock().await;
    core.states
        .values()
        .map(|s| (s.name.clone(), s.stable, s.active_rollout))
        .collect()
}

/// The report over `[since, until)` for `service` (all when `None`).
pub async fn report(
    d: &std::sync::Arc<Daemon>,
    service: Option<&str>,
    since: Millis,
    until: Millis,
) -> Result<DeliveryReport, StoreError> {
    let names: Vec<String> = match service {
        Some(s) => vec![s.to_string()],
        None => d.store.services()?.into_iter().map(|s| s.name).collect(),
    };
    let facts = facts(d, &names)?;
    Ok(delivery::compute(&facts, since, until))
}
