//! Requests on the rollout in progress: approve, abort, promote, pause,
//! resume (and a rollback while it runs). Whether one applies now is
//! `Rollout::request`'s decision (ferry-core); here it is stored, with its
//! audit entry, for the reconcile loop to act on.

use super::{Accepted, Actor, Audit, OpError, OpResult};
use crate::daemon::{Core, Daemon};
use ferry_api::RolloutAccepted;
use ferry_core::rollout::Gate;
use ferry_store::Change;
use std::sync::Arc;

/// Store `gate` from `actor` on `name`'s rollout in progress.
pub async fn request(
    d: &Arc<Daemon>,
    name: &str,
    gate: Gate,
    actor: &Actor,
    detail: serde_json::Value,
) -> OpResult<Accepted> {
    let audit = Audit::new(d, actor, gate.action(), name, detail);
    if let Err(e) = super::deploy::check_name(name) {
        return audit.reject(e);
    }
    let mut core = d.core.lock().await;
    let accepted = request_in(d, &mut core, name, gate, actor, &audit)?;
    drop(core);
    d.notify.notify_one();
    Ok(accepted)
}

/// The same, under the caller's lock.
pub(super) fn request_in(
    d: &Daemon,
    core: &mut Core,
    name: &str,
    gate: Gate,
    actor: &Actor,
    audit: &Audit<'_>,
) -> OpResult<Accepted> {
    let now = d.clock.now();
    let active = core
        .states
        .get(name)
        .and_then(|s| s.active_rollout)
        .and_then(|id| core.rollouts.get(&id).cloned());
    let Some(mut r) = active else {
        return audit.reject(OpError::Conflict(format!(
            "`{name}` has no rollout in progress; see `ferry status {name}`"
        )));
    };
    let message = match r.request(gate, &actor.name) {
        Ok(m) => m,
        Err(why) => return audit.reject(OpError::Conflict(why)),
    };
    let outcome = match gate {
        Gate::Rollback => format!("accepted: rollout {} is being rolled back", r.id),
        _ => "accepted".to_string(),
    };
    let entry = audit.entry(&outcome, Some(serde_json::json!({"rollout": r.id})));
    let written = d.store.commit(&Change {
        rollout: Some(&r),
        audit: Some(&entry),
        now,
        ..Default::default()
    });
    core.note_store(&written);
    if written.is_err() {
        d.publish(core, now);
    }
    written?;
    let (id, to) = (r.id, r.to);
    // Stopping a rollout goes back to where it started.
    let revision = match gate {
        Gate::Rollback | Gate::Abort => r.from.unwrap_or(to),
        _ => to,
    };
    core.rollouts.insert(id, r);
    d.publish(core, now);
    let accepted = RolloutAccepted {
        rollout: Some(id),
        revision,
        message,
        plan: vec![],
    };
    Ok(match gate {
        Gate::Rollback => Accepted::Stopping(accepted),
        _ => Accepted::Queued(accepted),
    })
}
