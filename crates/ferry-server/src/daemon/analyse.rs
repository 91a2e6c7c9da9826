//! Analysis rounds: sample the compared revisions' counters each tick,
//! start a measurement round when one is due (finished in a task, so a slow
//! Prometheus never holds a tick), and hand finished measurements to the
//! next `advance`.

use super::{Core, Daemon};
use crate::analysis::{self as runner, Round};
use ferry_core::Millis;
use ferry_core::rollout::{Judging, Rollout};
use std::sync::Arc;

impl Daemon {
    /// Sample the revisions a canary compares, start a measurement round
    /// when one is due, and take the measurements finished since the last
    /// tick.
    pub(super) fn analyse(
        self: &Arc<Self>,
        core: &mut Core,
        r: &Rollout,
        now: Millis,
    ) -> Vec<ferry_core::analysis::Measurement> {
        let mut done: Vec<ferry_core::analysis::Measurement> = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|(id, m)| {
                if *id == r.id {
                    done.push(m.clone());
                    false
                } else {
                    true
                }
            });
        }
        let Some(rev) = core.revisions.get(&r.service, r.to) else {
            return done;
        };
        let Some(spec) = rev.spec.analysis.clone() else {
            return done;
        };
        let checks = match r.judging() {
            Judging::Checks => spec.checks(),
            Judging::PrePromotion => spec.pre_promotion_checks(),
            Judging::Not => Vec::new(),
        };
        if checks.is_empty() {
            return done;
        }
        let window = spec.window.as_millis();
        let report = core.dataplane.report();
        for revision in [Some(r.to), r.from].into_iter().flatten() {
            if let Some(stats) = report.stats_of(&r.service, revision) {
                core.sampler
                    .sample(&r.service, revision, stats.clone(), now, window);
            }
        }
        // The first round waits one interval, so the window holds data.
        let Some(last) = core.last_round.get(&r.id).copied() else {
            core.last_round.insert(r.id, now);
            return done;
        };
        if now.saturating_sub(last) < spec.interval.as_millis() {
            return done;
        }
        core.last_round.insert(r.id, now);
        let Some(canary) = core.sampler.window(&r.service, r.to, window, now) else {
            return done;
        };
        let baseline = r
            .from
            .and_then(|f| core.sampler.window(&r.service, f, window, now));
        let round = Round {
            rollout: r.id,
            checks,
            spec,
            canary,
            baseline,
            revision: rev,
        };
        let this = self.clone();
        tokio::spawn(async move {
            let id = round.rollout;
            let ms = runner::measure(round, &this.http, &this.tsdb).await;
            this.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(ms.into_iter().map(|m| (id, m)));
            this.notify.notify_one();
        });
        done
    }
}
