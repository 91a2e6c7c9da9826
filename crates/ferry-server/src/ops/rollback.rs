//! Rollback: back to the revision before the serving one (or a given one),
//! through the same zero-downtime path as a deploy; during a rollout, back
//! to where that rollout started.

use super::{Accepted, Actor, Audit, OpError, OpResult};
use crate::daemon::Daemon;
use ferry_api::RollbackRequest;
use ferry_core::event::{Event, EventKind};
use ferry_core::rollout::{Gate, Outcome, Params, Rollout, RolloutKind};
use ferry_store::{NewIds, NewRollout};
use std::sync::Arc;

pub async fn rollback(
    d: &Arc<Daemon>,
    name: &str,
    req: RollbackRequest,
    actor: &Actor,
) -> OpResult<Accepted> {
    let detail = serde_json::json!({ "to_revision": req.to_revision });
    let audit = Audit::new(d, actor, "rollback", name, detail.clone());
    if let Err(e) = super::deploy::check_name(name) {
        return audit.reject(e);
    }
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let Some(state) = core.states.get(name).cloned() else {
        return audit.reject(OpError::NotFound(format!(
            "no service `{name}` has been deployed"
        )));
    };
    // During a rollout, rolling back means returning to where it started.
    if let Some(id) = state.active_rollout
        && let Some(r) = core.rollouts.get(&id)
    {
        if req.to_revision.is_some() && req.to_revision != r.from {
            return audit.reject(OpError::Conflict(format!(
                "rollout {id} is in progress; `ferry rollback {name}` now returns to revision {}; to go elsewhere, wait for it to end first",
                r.from.map_or("(none)".to_string(), |f| f.to_string())
            )));
        }
        let accepted = super::gates::request_in(d, &mut core, name, Gate::Rollback, actor, &audit)?;
        drop(core);
        d.notify.notify_one();
        return Ok(accepted);
    }
    let Some(current) = state.stable else {
        return audit.reject(OpError::Conflict(format!(
            "`{name}` has no serving revision to roll back from"
        )));
    };
    let target = match req.to_revision {
        Some(n) => n,
        None => {
            let previous = d
                .store
                .rollouts(name)?
                .iter()
                .rev()
                .find(|r| r.to == current && r.outcome == Some(Outcome::Succeeded))
                .and_then(|r| r.from);
            match previous {
                Some(p) => p,
                None => {
                    return audit.reject(OpError::Conflict(format!(
                        "`{name}` has no earlier revision to roll back to; see `ferry history {name}`"
                    )));
                }
            }
        }
    };
    if target == current {
        return audit.reject(OpError::Conflict(format!(
            "revision {target} of `{name}` is already serving"
        )));
    }
    let Some(rev) = core.revisions.get(name, target) else {
        return audit.reject(OpError::NotFound(format!(
            "service `{name}` has no revision {target}; see `ferry history {name}`"
        )));
    };
    let from_instances = state.scale.get(&current).copied().unwrap_or(0);
    let accepted = super::start_rollout(
        d,
        &mut core,
        name,
        false,
        &rev.spec.webhooks,
        &rev.version,
        now,
        &mut |ids: NewIds| {
            let id = ids.rollout;
            let mut r = Rollout::begin(
                id,
                name,
                RolloutKind::Rollback,
                Some(current),
                from_instances,
                target,
                rev.spec.deploy.strategy,
                Params::from_spec(&rev.spec),
                true,
                now,
            );
            r.started_by = Some(actor.name.clone());
            let mut next = state.clone();
            next.active_rollout = Some(id);
            next.retiring.remove(&target);
            NewRollout {
                revision: None,
                rollout: r,
                ended: None,
                state: next,
                started: Event::new(
                    EventKind::Started,
                    format!(
                        "rollout {id}: rolling `{name}` back from revision {current} to revision {target} ({})",
                        rev.version
                    ),
                ),
                audit: audit.entry(
                    "accepted",
                    Some(serde_json::json!({"to_revision": target, "from_revision": current, "rollout": id})),
                ),
            }
        },
    )?;
    drop(core);
    d.notify.notify_one();
    Ok(Accepted::Started(accepted))
}
