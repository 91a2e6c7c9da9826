//! Validation gates: when a rollout waits on one (`Rollout::validating`),
//! run its suites in a task (the checks go to the service's proxy; a
//! candidate's with `X-Ferry-Revision`), then commit the `GateRun` to the
//! rollout, kept and retried if the commit fails. A daemon that restarts
//! while a gate runs simply runs it again: checks only read.

use super::{Core, Daemon, DaemonResult};
use ferry_core::Millis;
use ferry_core::rollout::Rollout;
use ferry_core::validation::{CheckKind, CheckResult, GateRun, Stage, Status};
use ferry_store::Change;
use ferry_validate::{Context, SuiteRun};
use std::sync::Arc;

impl Daemon {
    /// Start the gate `r` waits on, unless it runs already.
    pub(super) fn start_gate(self: &Arc<Self>, core: &mut Core, r: &Rollout) {
        let Some(stage) = r.validating else { return };
        if r.gate_run(stage).is_some()
            || core.gate_results.contains_key(&r.id)
            || !core.validations_running.insert((r.id, stage))
        {
            return;
        }
        let Some(rev) = core.revisions.get(&r.service, r.to) else {
            return;
        };
        let names = r.params.validate.suites(stage).to_vec();
        let mut missing = Vec::new();
        let mut runs = Vec::new();
        for n in &names {
            match rev.validation.suites.get(n) {
                Some(spec) => runs.push(SuiteRun {
                    name: n.clone(),
                    spec: spec.clone(),
                }),
                None => missing.push(n.clone()),
            }
        }
        let mut services: std::collections::BTreeMap<String, std::net::SocketAddr> = core
            .states
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|name| Some((name.clone(), core.service_listen(&name)?)))
            .collect();
        // A first deploy: the proxy will listen where the new revision says.
        if let Some(addr) = rev.spec.listen_addr() {
            services.entry(r.service.clone()).or_insert(addr);
        }
        let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        env.extend(rev.spec.env.clone());
        env.extend(rev.overrides.clone());
        // Before: the new revision does not exist yet; the checks see
        // what serves now.
        let revision = (stage != Stage::Before).then_some(r.to);
        let ctx = Context {
            services,
            service: Some(r.service.clone()),
            revision,
            base_dir: rev.base_dir.clone().into(),
            env,
            metrics_api: self
                .api_url
                .get()
                .map(|u| (u.clone(), self.read_token.clone())),
            http: Context::client(),
        };
        let concurrency = rev.validation.concurrency;
        let (id, service) = (r.id, r.service.clone());
        let this = self.clone();
        tracing::info!(service = %service, rollout = id, "{stage} validation: running suites {}", names.join(", "));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut results = ferry_validate::run_suites(&runs, concurrency, Arc::new(ctx)).await;
            // A suite the revision does not carry cannot pass.
            results.extend(missing.into_iter().map(|n| CheckResult {
                suite: n.clone(),
                name: "(suite)".into(),
                kind: CheckKind::Command,
                status: Status::Failed,
                duration_ms: 0,
                value: None,
                reason: format!("suite \"{n}\" was not stored with revision; deploy again from a ferry.toml that declares it"),
                output: None,
            }));
            let finished_at = this.clock.now();
            let run = GateRun {
                stage,
                suites: names,
                revision,
                started_at: finished_at.saturating_sub(started.elapsed().as_millis() as u64),
                finished_at,
                results,
            };
            let mut core = this.core.lock().await;
            core.validations_running.remove(&(id, stage));
            if !core.rollouts.contains_key(&id) {
                return; // aborted or superseded meanwhile
            }
            core.gate_results.insert(id, run);
            if let Err(e) = this.record_gates(&mut core, finished_at) {
                tracing::error!("cannot record the validation results yet: {e}; retrying");
            }
            drop(core);
            this.notify.notify_one();
        });
    }

    /// Commit finished gate runs to their rollouts; one whose commit fails
    /// stays for a later tick.
    pub(super) fn record_gates(&self, core: &mut Core, now: Millis) -> DaemonResult<()> {
        for (id, run) in std::mem::take(&mut core.gate_results) {
            let Some(mut next) = core.rollouts.get(&id).cloned() else {
                continue;
            };
            if next.gate_run(run.stage).is_some() {
                continue;
            }
            next.validations.push(run.clone());
            let written = self.store.commit(&Change {
                rollout: Some(&next),
                now,
                ..Default::default()
            });
            core.note_store(&written);
            if let Err(e) = written {
                core.gate_results.insert(id, run);
                return Err(e.into());
            }
            core.rollouts.insert(id, next);
        }
        Ok(())
    }
}
