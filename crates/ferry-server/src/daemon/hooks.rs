//! The `pre_deploy` hook: run once through the instance driver, its result
//! committed to the rollout (kept and retried if the commit fails, so the
//! hook never runs twice); and a failed rollout's evidence.

use super::{Core, Daemon, DaemonResult};
use crate::driver::{InstanceDriver, Job};
use ferry_core::Millis;
use ferry_core::rollout::{Event, EventKind, HookResult, Rollout};
use ferry_store::Change;
use std::sync::Arc;

impl Daemon {
    pub(super) fn spawn_hook(self: Arc<Self>, r: Rollout) {
        tokio::spawn(async move {
            let run = {
                let core = self.core.lock().await;
                let Some(rev) = core.revisions.get(&r.service, r.to) else {
                    return;
                };
                let timeout = rev.spec.pre_deploy_timeout.0;
                core.driver.run_job(Job {
                    name: format!("hook-{}", r.id),
                    revision: rev,
                    timeout,
                })
            };
            tracing::info!(service = %r.service, rollout = r.id, "running the pre_deploy hook");
            let run = run.await;
            let mut core = self.core.lock().await;
            core.hook_results.insert(
                r.id,
                HookResult {
                    ok: run.ok,
                    summary: run.summary,
                    output: run.output,
                },
            );
            let now = self.clock.now();
            if let Err(e) = self.record_hooks(&mut core, now) {
                tracing::error!("cannot record the hook's result yet: {e}; retrying");
            }
            drop(core);
            self.notify.notify_one();
        });
    }

    /// Commit the results of hooks that ended; a result whose commit fails
    /// stays and is committed by a later tick (the hook counts as running
    /// meanwhile, so it is never run twice).
    pub(super) fn record_hooks(&self, core: &mut Core, now: Millis) -> DaemonResult<()> {
        for (id, result) in std::mem::take(&mut core.hook_results) {
            let Some(mut next) = core.rollouts.get(&id).cloned() else {
                core.hooks_running.remove(&id);
                continue;
            };
            let event = Event {
                kind: EventKind::Hook,
                message: format!("pre_deploy hook finished: {}", result.summary),
            };
            next.hook = Some(result.clone());
            let written = self.store.commit(&Change {
                rollout: Some(&next),
                events: vec![(Some(next.id), &event)],
                now,
                ..Default::default()
            });
            core.note_store(&written);
            if let Err(e) = written {
                core.hook_results.insert(id, result);
                return Err(e.into());
            }
            core.hooks_running.remove(&id);
            core.rollouts.insert(next.id, next);
        }
        Ok(())
    }
}

/// A failed rollout's record keeps what the failing instance printed.
pub(super) fn add_evidence(r: &mut Rollout, driver: &dyn InstanceDriver) {
    if let Some(id) = &r.failed_instance
        && let Some(tail) = driver.log_tail(id, 10)
        && !tail.trim().is_empty()
    {
        let reason = r.reason.take().unwrap_or_default();
        r.reason = Some(format!("{reason}\nlast lines of {id}'s log:\n{tail}"));
    }
}
