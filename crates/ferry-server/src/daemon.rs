//! The daemon's state and its reconcile loop.
//!
//! Each tick: for every service, feed stored state plus observations to the
//! pure rollout machine; persist what it decides (one transaction); then make
//! the world match: the supervisor starts/stops processes to the stored scale
//! and the proxies get a fresh routing table. Level-triggered: after a crash
//! the same loop simply runs again from the stored state.

use crate::clock::Clock;
use crate::supervisor::Supervisor;
use ferry_core::Millis;
use ferry_core::rollout::{self, Event, HookResult, Phase, Rollout, ServiceState};
use ferry_proxy::{ProxyHandle, ProxyOptions, RoutingTable};
use ferry_store::{Change, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

pub const TICK: Duration = Duration::from_millis(100);

pub struct Daemon {
    pub store: Arc<Store>,
    pub clock: Arc<dyn Clock>,
    pub token: String,
    pub daemon_id: String,
    pub data_dir: PathBuf,
    pub started_at: Millis,
    pub core: Mutex<Core>,
    pub notify: Notify,
}

/// Everything the loop and the API share, behind one lock held briefly.
pub struct Core {
    pub states: BTreeMap<String, ServiceState>,
    /// Active rollouts by id.
    pub rollouts: BTreeMap<u64, Rollout>,
    pub supervisor: Supervisor,
    pub proxies: BTreeMap<String, ProxyHandle>,
    hooks_running: BTreeSet<u64>,
    routed: BTreeMap<String, Vec<String>>,
}

impl Daemon {
    pub async fn open(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        token: String,
        daemon_id: String,
        data_dir: PathBuf,
    ) -> DaemonResult<Arc<Daemon>> {
        let states: BTreeMap<String, ServiceState> = store
            .services()?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut rollouts = BTreeMap::new();
        for s in states.values() {
            if let Some(id) = s.active_rollout
                && let Some(r) = store.rollout(id)?
            {
                rollouts.insert(id, r);
            }
        }
        let mut supervisor = Supervisor::new(
            store.clone(),
            clock.clone(),
            daemon_id.clone(),
            data_dir.clone(),
        );
        for note in supervisor.restore().await {
            tracing::info!("{note}");
        }
        let now = clock.now();
        let daemon = Arc::new(Daemon {
            store,
            clock,
            token,
            daemon_id,
            data_dir,
            started_at: now,
            core: Mutex::new(Core {
                states,
                rollouts,
                supervisor,
                proxies: BTreeMap::new(),
                hooks_running: BTreeSet::new(),
                routed: BTreeMap::new(),
            }),
            notify: Notify::new(),
        });
        daemon.fail_interrupted_hooks().await?;
        Ok(daemon)
    }

    /// A hook that was running when the previous daemon died has an unknown
    /// outcome; it is not run twice (migrations are rarely idempotent).
    async fn fail_interrupted_hooks(&self) -> DaemonResult<()> {
        let mut core = self.core.lock().await;
        let ids: Vec<u64> = core
            .rollouts
            .values()
            .filter(|r| r.phase == Phase::PreDeploy && r.hook.is_none())
            .map(|r| r.id)
            .collect();
        for id in ids {
            let mut r = core.rollouts[&id].clone();
            r.hook = Some(HookResult {
                ok: false,
                summary: "the daemon restarted while the pre_deploy hook was running; its outcome is unknown, so it was not run again. Check it, then deploy again".into(),
                output: String::new(),
            });
            self.store.commit(&Change {
                rollout: Some(&r),
                now: self.clock.now(),
                ..Default::default()
            })?;
            core.rollouts.insert(id, r);
        }
        Ok(())
    }

    /// Run the reconcile loop until `shutdown` resolves, then drain and stop
    /// every instance.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!("reconcile: {e}");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(TICK) => {}
                _ = self.notify.notified() => {}
            }
        }
        tracing::info!("shutting down: draining and stopping instances");
        let mut core = self.core.lock().await;
        for p in core.proxies.values() {
            p.shutdown();
        }
        core.supervisor.stop_all().await;
    }

    /// One reconcile pass.
    pub async fn tick(self: &Arc<Self>) -> DaemonResult<()> {
        let now = self.clock.now();
        let mut core = self.core.lock().await;
        let core = &mut *core;
        let names: Vec<String> = core.states.keys().cloned().collect();
        for name in names {
            let state = core.states[&name].clone();
            match state
                .active_rollout
                .and_then(|id| core.rollouts.get(&id).cloned())
            {
                Some(r) => {
                    if r.phase == Phase::PreDeploy
                        && r.hook.is_none()
                        && !core.hooks_running.contains(&r.id)
                    {
                        core.hooks_running.insert(r.id);
                        self.clone().spawn_hook(r.clone());
                    }
                    let obs = core.supervisor.observe(&name);
                    let mut step = rollout::advance(&state, &r, &obs, now);
                    if step.rollout == r && step.state == state {
                        continue;
                    }
                    if step.rollout.is_done() && !r.is_done() {
                        self.add_evidence(&mut step.rollout, &core.supervisor);
                    }
                    self.commit_step(&step.state, &step.rollout, &step.events, now)?;
                    for e in &step.events {
                        tracing::info!(service = %name, rollout = step.rollout.id, "{}", e.message);
                    }
                    if step.rollout.is_done() {
                        core.rollouts.remove(&r.id);
                    } else {
                        core.rollouts.insert(r.id, step.rollout);
                    }
                    core.states.insert(name.clone(), step.state);
                }
                None => {
                    let (next, events) = rollout::settle(&state, now);
                    if next != state {
                        self.store.commit(&Change {
                            state: Some(&next),
                            events: events.iter().map(|e| (None, e)).collect(),
                            now,
                            ..Default::default()
                        })?;
                        for e in &events {
                            tracing::info!(service = %name, "{}", e.message);
                        }
                        core.states.insert(name.clone(), next);
                    }
                }
            }
        }
        for note in core.supervisor.tick(&core.states) {
            tracing::info!("{note}");
        }
        self.route(core, now).await;
        Ok(())
    }

    fn commit_step(
        &self,
        state: &ServiceState,
        r: &Rollout,
        events: &[Event],
        now: Millis,
    ) -> DaemonResult<()> {
        self.store.commit(&Change {
            rollout: Some(r),
            state: Some(state),
            events: events.iter().map(|e| (Some(r.id), e)).collect(),
            now,
            ..Default::default()
        })?;
        Ok(())
    }

    /// A failed rollout's record keeps what the failing instance printed.
    fn add_evidence(&self, r: &mut Rollout, sup: &Supervisor) {
        if let Some(id) = &r.failed_instance
            && let Some(path) = sup.log_path(id)
        {
            let tail = ferry_runtime::log_tail(&path, 10);
            if !tail.trim().is_empty() {
                let reason = r.reason.take().unwrap_or_default();
                r.reason = Some(format!("{reason}\nlast lines of {id}'s log:\n{tail}"));
            }
        }
    }

    /// Give each proxy the available instances of its traffic revisions;
    /// one atomic swap per change.
    async fn route(&self, core: &mut Core, now: Millis) {
        let names: Vec<String> = core.states.keys().cloned().collect();
        for name in names {
            let state = &core.states[&name];
            let ups = core.supervisor.routable(state, now);
            let ids: Vec<String> = ups.iter().map(|u| u.instance_id().to_string()).collect();
            if core.routed.get(&name) == Some(&ids) && core.proxies.contains_key(&name) {
                continue;
            }
            if !core.proxies.contains_key(&name) {
                let Some(listen) = self.listen_of(core, &name) else {
                    continue;
                };
                match ProxyHandle::bind(name.clone(), listen, ProxyOptions::default()).await {
                    Ok(p) => {
                        tracing::info!(service = %name, "proxy listening on {listen}");
                        core.proxies.insert(name.clone(), p);
                    }
                    Err(e) => {
                        tracing::error!(service = %name, "cannot listen on {listen}: {e}");
                        continue;
                    }
                }
            }
            if let Some(p) = core.proxies.get(&name) {
                p.set_routes(RoutingTable { upstreams: ups });
                if core.routed.get(&name) != Some(&ids) {
                    tracing::debug!(service = %name, "routing to {ids:?}");
                }
                core.routed.insert(name, ids);
            }
        }
    }

    fn listen_of(&self, core: &mut Core, name: &str) -> Option<SocketAddr> {
        let state = core.states.get(name)?;
        let rev = state
            .stable
            .or_else(|| state.scale.keys().next_back().copied())?;
        core.supervisor.revision(name, rev)?.spec.listen_addr()
    }

    fn spawn_hook(self: Arc<Self>, r: Rollout) {
        tokio::spawn(async move {
            let rev = {
                let mut core = self.core.lock().await;
                core.supervisor.revision(&r.service, r.to)
            };
            let Some(rev) = rev else { return };
            let Some(hook) = rev.spec.pre_deploy.clone() else {
                return;
            };
            let spec = ferry_runtime::SpawnSpec {
                argv: hook.argv(|a| ferry_core::spec::fill_placeholders(a, 0, &rev.version)),
                env: rev.env(0),
                workdir: rev.workdir(),
                log_path: self
                    .data_dir
                    .join("logs")
                    .join(format!("{}-hook-{}.log", r.service, r.id)),
                marker: format!("{}/hook-{}", self.daemon_id, r.id),
            };
            tracing::info!(service = %r.service, rollout = r.id, "running the pre_deploy hook");
            let run = ferry_runtime::run_to_completion(&spec, rev.spec.pre_deploy_timeout.0).await;
            let mut core = self.core.lock().await;
            core.hooks_running.remove(&r.id);
            let Some(current) = core.rollouts.get(&r.id).cloned() else {
                return;
            };
            let mut next = current;
            next.hook = Some(HookResult {
                ok: run.ok,
                summary: run.summary,
                output: run.output,
            });
            let now = self.clock.now();
            let event = Event {
                kind: "hook".into(),
                message: format!(
                    "pre_deploy hook finished: {}",
                    next.hook.as_ref().map_or("", |h| h.summary.as_str())
                ),
            };
            if let Err(e) = self.store.commit(&Change {
                rollout: Some(&next),
                events: vec![(Some(next.id), &event)],
                now,
                ..Default::default()
            }) {
                tracing::error!("cannot record hook result: {e}");
                return;
            }
            core.rollouts.insert(next.id, next);
            drop(core);
            self.notify.notify_one();
        });
    }
}

pub type DaemonResult<T> = std::result::Result<T, DaemonError>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
}
