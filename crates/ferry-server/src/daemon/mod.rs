//! The daemon's state and its reconcile loop.
//!
//! Each tick: for every service, feed stored state plus observations to the
//! pure rollout machine; persist what it decides (one transaction); then make
//! the world match: the instance driver starts/stops instances to the stored scale
//! and the proxies get a fresh routing table. Level-triggered: after a crash
//! the same loop simply runs again from the stored state.

use crate::analysis::{Pending, Sampler};
use crate::clock::Clock;
use crate::dataplane::{DataPlane, Stop, UpstreamPlan};
use crate::driver::InstanceDriver;
use crate::registry::Revisions;
use crate::snapshot::Snapshot;
use ferry_core::Millis;
use ferry_core::revision::Revision;
use ferry_core::rollout::{
    self, BlastRadius, Event, EventKind, HookResult, Observed, Rollout, ServiceState,
};
use ferry_core::spec::Strategy;
use ferry_store::{Change, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

pub const TICK: Duration = Duration::from_millis(100);
/// A whole (100 %) in the proxy's split weights.
const BASIS_POINTS: u32 = 10_000;

mod analyse;
mod hooks;
mod publish;
mod route;
mod validate;

pub struct Daemon {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The admin token (can do everything).
    pub token: String,
    /// The read-only token (queries and reads).
    pub read_token: String,
    pub daemon_id: String,
    pub data_dir: PathBuf,
    pub started_at: Millis,
    pub core: Mutex<Core>,
    pub notify: Notify,
    /// Analysis measurements finished in the background.
    pending: Pending,
    http: reqwest::Client,
    pub webhooks: crate::webhooks::Notifier,
    /// Requests turned away for a missing or wrong token, per client.
    pub denials: crate::denials::Denials,
    /// What API reads see; replaced after every tick and mutation.
    snapshot: arc_swap::ArcSwap<Snapshot>,
    /// The daemon's own metrics over time, for PromQL queries.
    pub tsdb: crate::tsdb::MetricsDb,
    /// The remote-write senders' counters (`[metrics] remote_write`).
    pub remote_write: crate::remote_write::Senders,
    /// The alerts firing now, which roll releases back.
    pub alerts: crate::alerting::board::Board,
    /// Rules, notifications, silences (set once `serve` has its address).
    pub alerting: std::sync::OnceLock<Arc<crate::alerting::Alerting>>,
    /// The binary data planes (and an upgraded control plane) start from.
    binary: std::sync::Mutex<Option<PathBuf>>,
    /// The SLOs' last computed statuses, for `/metrics`.
    pub slo_cache: arc_swap::ArcSwap<Vec<ferry_core::slo::SloStatus>>,
    /// The delivery metrics over 30 days, as `/metrics` text.
    pub delivery_cache: arc_swap::ArcSwap<String>,
    /// The API's own URL (`http://127.0.0.1:7070`), for validation
    /// `query` checks; set once `serve` has bound it.
    pub api_url: std::sync::OnceLock<String>,
    /// Set by `ferry shutdown` and `ferry upgrade`: how `serve` ends.
    exit: tokio::sync::watch::Sender<Option<crate::Exit>>,
}

/// Everything the loop and the API share, behind one lock held briefly.
pub struct Core {
    pub states: BTreeMap<String, ServiceState>,
    /// Active rollouts by id.
    pub rollouts: BTreeMap<u64, Rollout>,
    /// Where instances run (local processes).
    pub driver: Box<dyn InstanceDriver>,
    pub revisions: Revisions,
    /// The proxies: a data-plane process, or inside the daemon.
    pub dataplane: Arc<dyn DataPlane>,
    /// Hook results whose commit failed, committed by a later tick (the
    /// hook is never run twice).
    hook_results: BTreeMap<u64, HookResult>,
    hooks_running: BTreeSet<u64>,
    /// Validation gates whose suites run now, by rollout.
    validations_running: BTreeSet<(u64, ferry_core::validation::Stage)>,
    /// Gate runs whose commit failed, committed by a later tick.
    gate_results: BTreeMap<u64, ferry_core::validation::GateRun>,
    /// The revisions whose SLOs the alerting engine has rules for (see
    /// `slo::serving`), to notice a change.
    slo_key: Vec<(String, u64)>,
    sampler: Sampler,
    /// When each rollout's analysis last started a round.
    last_round: BTreeMap<u64, Millis>,
    /// Why the last store write failed, until one succeeds again.
    pub store_problem: Option<String>,
}

impl Core {
    /// Keep what the last store write did: a failure shows as `degraded`
    /// in `/health` until a write succeeds again.
    pub fn note_store<T>(&mut self, result: &Result<T, ferry_store::StoreError>) {
        self.store_problem = result
            .as_ref()
            .err()
            .map(|e| format!("the last write failed ({e}); the reconcile loop retries it"));
    }

    /// Why the store is not healthy, if it is not: the loop's or the
    /// driver's last write failed.
    pub fn store_health(&self) -> Option<&str> {
        self.store_problem
            .as_deref()
            .or(self.driver.store_problem())
    }

    /// Every available instance of the service, in traffic or not, as
    /// proxy upstreams: the proxy may reach the others only by
    /// `X-Ferry-Revision` (testers on a blue-green set before the switch).
    pub fn reachable(&self, state: &ServiceState, now: Millis) -> Vec<UpstreamPlan> {
        self.driver
            .endpoints(&state.name)
            .into_iter()
            .filter(|ep| {
                let min_ready = self
                    .revisions
                    .get(&state.name, ep.revision)
                    .map_or(0, |r| r.spec.deploy.min_ready.as_millis());
                rollout::is_available(ep.ready_since, min_ready, now)
            })
            .map(|ep| UpstreamPlan {
                instance: ep.instance,
                revision: ep.revision,
                addr: ep.addr,
            })
            .collect()
    }

    /// Upstreams that should receive traffic for `state` now.
    pub fn routable(&self, state: &ServiceState, now: Millis) -> Vec<UpstreamPlan> {
        self.reachable(state, now)
            .into_iter()
            .filter(|u| state.traffic.contains(&u.revision))
            .collect()
    }

    /// Instances each revision should run, from the stored scale.
    fn wanted(&self) -> Vec<(Arc<Revision>, u32)> {
        self.states
            .values()
            .flat_map(|s| {
                s.scale
                    .iter()
                    .filter_map(|(rev, n)| Some((self.revisions.get(&s.name, *rev)?, *n)))
            })
            .collect()
    }

    /// Why a service that should be served has no listening proxy, if so:
    /// the bind error, or that it is not bound yet.
    pub fn proxy_problem(&self, name: &str) -> Option<String> {
        let state = self.states.get(name)?;
        if !state.has_work() {
            return None;
        }
        let report = self.dataplane.report();
        match report.proxies.get(name) {
            Some(p) if p.addr.is_some() => None,
            Some(p) => Some(
                p.error
                    .clone()
                    .unwrap_or_else(|| "the proxy is not listening yet".to_string()),
            ),
            None => Some("the proxy is not listening yet".to_string()),
        }
    }

    /// Rollouts whose `pre_deploy` hook is running now.
    pub fn hooks_running(&self) -> impl Iterator<Item = u64> + '_ {
        self.hooks_running.iter().copied()
    }

    /// Where a service's proxy listens (or is to listen): the address of
    /// its stable revision, else of its newest revision.
    pub fn service_listen(&mut self, name: &str) -> Option<SocketAddr> {
        let state = self.states.get(name)?;
        let number = state
            .stable
            .or_else(|| state.scale.keys().next_back().copied())?;
        self.revisions.get(name, number)?.spec.listen_addr()
    }
}

impl Daemon {
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        tokens: crate::Tokens,
        daemon_id: String,
        data_dir: PathBuf,
        dataplane: Arc<dyn DataPlane>,
        tsdb: crate::tsdb::MetricsDb,
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
        let revisions = Revisions::new(store.clone());
        let mut driver: Box<dyn InstanceDriver> =
            Box::new(crate::driver::local::LocalProcesses::new(
                store.clone(),
                clock.clone(),
                daemon_id.clone(),
                data_dir.clone(),
                dataplane.clone(),
            ));
        let lookup = |service: &str, number: u64| revisions.get(service, number);
        let serving = dataplane.serving();
        for note in driver.restore(&lookup, &serving).await {
            tracing::info!("{note}");
        }
        let now = clock.now();
        let daemon = Arc::new(Daemon {
            store,
            clock,
            token: tokens.admin,
            read_token: tokens.read,
            daemon_id,
            data_dir,
            started_at: now,
            core: Mutex::new(Core {
                states,
                rollouts,
                driver,
                revisions,
                dataplane,
                hook_results: BTreeMap::new(),
                hooks_running: BTreeSet::new(),
                validations_running: BTreeSet::new(),
                gate_results: BTreeMap::new(),
                slo_key: Vec::new(),
                sampler: Sampler::default(),
                last_round: BTreeMap::new(),
                store_problem: None,
            }),
            notify: Notify::new(),
            pending: Pending::default(),
            http: reqwest::Client::new(),
            webhooks: crate::webhooks::Notifier::start(reqwest::Client::new()),
            denials: crate::denials::Denials::default(),
            snapshot: arc_swap::ArcSwap::from_pointee(Snapshot::default()),
            tsdb,
            remote_write: Default::default(),
            alerts: Default::default(),
            alerting: Default::default(),
            binary: std::sync::Mutex::new(None),
            api_url: std::sync::OnceLock::new(),
            slo_cache: Default::default(),
            delivery_cache: Default::default(),
            exit: tokio::sync::watch::Sender::new(None),
        });
        {
            let mut core = daemon.core.lock().await;
            daemon.publish(&mut core, now);
        }
        daemon.fail_interrupted_hooks().await?;
        Ok(daemon)
    }

    /// The binary data-plane processes start from (`None`: inline).
    pub fn set_binary(&self, binary: Option<PathBuf>) {
        *self.binary.lock().unwrap_or_else(|p| p.into_inner()) = binary;
    }

    pub fn binary(&self) -> Option<PathBuf> {
        self.binary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// End `serve` this way (the first request wins).
    pub fn request_exit(&self, exit: crate::Exit) {
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(exit);
            true
        });
    }

    /// Resolves when an API request asked `serve` to end.
    pub async fn exit_requested(&self) -> crate::Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Publish what API reads see, from `core` as it is now.
    pub fn publish(&self, core: &mut Core, now: Millis) {
        self.snapshot.store(Arc::new(publish::snapshot(core, now)));
    }

    /// The last published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A hook that was running when the previous daemon died has an unknown
    /// outcome; it is not run twice (migrations are rarely idempotent).
    async fn fail_interrupted_hooks(&self) -> DaemonResult<()> {
        let mut core = self.core.lock().await;
        let ids: Vec<u64> = core
            .rollouts
            .values()
            .filter(|r| r.wants_hook())
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

    /// Run the reconcile loop until `shutdown` resolves with how to end:
    /// leave the data plane and the instances running for the next control
    /// plane ([`Stop::Detach`]), or drain and stop everything
    /// ([`Stop::Shutdown`]).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = Stop>) {
        tokio::pin!(shutdown);
        let how = loop {
            if let Err(e) = self.tick().await {
                tracing::error!("reconcile: {e}");
            }
            tokio::select! {
                how = &mut shutdown => break how,
                _ = tokio::time::sleep(TICK) => {}
                _ = self.notify.notified() => {}
            }
        };
        let mut core = self.core.lock().await;
        match how {
            Stop::Detach => {
                tracing::info!(
                    "control plane stopping; the data plane and the instances keep serving (`ferry serve` re-attaches, `ferry shutdown` stops them)"
                );
                core.dataplane.stop(Stop::Detach).await;
                core.driver.detach().await;
            }
            Stop::Shutdown => {
                tracing::info!("shutting down: the proxies stop, instances drain and stop");
                core.dataplane.stop(Stop::Shutdown).await;
                core.driver.stop_all().await;
            }
        }
    }

    /// The firing alerts that fail rollout `r`, as its revision's
    /// `rollback_on_alerts` selects them.
    fn alerts_against(&self, core: &Core, r: &Rollout) -> Vec<ferry_core::rollout::AlertObs> {
        if r.kind != ferry_core::rollout::RolloutKind::Deploy || r.is_done() {
            return Vec::new();
        }
        let Some(rev) = core.revisions.get(&r.service, r.to) else {
            return Vec::new();
        };
        let matchers: Vec<ferry_alert::matcher::Matcher> = rev
            .spec
            .deploy
            .alert_matchers()
            .iter()
            .filter_map(|m| ferry_alert::matcher::Matcher::parse(m).ok())
            .collect();
        self.alerts
            .against(&r.service, &matchers, r.started_at as i64)
    }

    /// A critical or emergency alert about `r`'s service that fired since
    /// it began, whatever `rollback_on_alerts` says, for its record.
    fn critical_alert(&self, r: &Rollout) -> Option<String> {
        if r.kind != ferry_core::rollout::RolloutKind::Deploy
            || r.is_done()
            || r.critical_alert.is_some()
        {
            return None;
        }
        static CRITICAL: std::sync::LazyLock<Vec<ferry_alert::matcher::Matcher>> =
            std::sync::LazyLock::new(|| {
                ferry_alert::matcher::Matcher::parse(r#"severity=~"critical|emergency""#)
                    .into_iter()
                    .collect()
            });
        self.alerts
            .against(&r.service, &CRITICAL, r.started_at as i64)
            .first()
            .map(|a| a.describe())
    }

    /// One reconcile pass, then a snapshot for API reads (also when the
    /// pass stopped on a store error, so `/health` says so).
    pub async fn tick(self: &Arc<Self>) -> DaemonResult<()> {
        let now = self.clock.now();
        let mut core = self.core.lock().await;
        let result = self.reconcile(&mut core, now).await;
        self.publish(&mut core, now);
        result
    }

    async fn reconcile(self: &Arc<Self>, core: &mut Core, now: Millis) -> DaemonResult<()> {
        if !core.hook_results.is_empty() {
            self.record_hooks(core, now)?;
        }
        if !core.gate_results.is_empty() {
            self.record_gates(core, now)?;
        }
        let names: Vec<String> = core.states.keys().cloned().collect();
        for name in names {
            let state = core.states[&name].clone();
            match state
                .active_rollout
                .and_then(|id| core.rollouts.get(&id).cloned())
            {
                Some(r) => {
                    if r.wants_hook() && !core.hooks_running.contains(&r.id) {
                        core.hooks_running.insert(r.id);
                        self.clone().spawn_hook(r.clone());
                    }
                    let measurements = self.analyse(core, &r, now);
                    let observed = Observed {
                        instances: core.driver.observe(&name),
                        measurements,
                        alerts: self.alerts_against(core, &r),
                    };
                    let mut step = rollout::advance(&state, &r, &observed, now);
                    if let Some(alert) = self.critical_alert(&r) {
                        step.rollout.critical_alert = Some(alert);
                    }
                    if step.rollout == r && step.state == state && observed.measurements.is_empty()
                    {
                        continue;
                    }
                    if step.rollout.start_counters.is_none() {
                        let report = core.dataplane.report();
                        step.rollout.start_counters = Some(crate::slo::counters(&report, &name));
                    }
                    if step.rollout.is_done() && !r.is_done() {
                        hooks::add_evidence(&mut step.rollout, core.driver.as_ref());
                        let report = core.dataplane.report();
                        let counters = crate::slo::counters(&report, &name);
                        step.rollout.impact =
                            Some(crate::slo::impact(&self.tsdb, &step.rollout, counters, now));
                    }
                    let pulled = step
                        .rollout
                        .outcome
                        .is_some_and(|o| o != rollout::Outcome::Succeeded);
                    let promoting = step.events.iter().any(|e| e.kind == EventKind::Promoting);
                    if step.rollout.strategy == Strategy::Canary
                        && step.rollout.blast_radius.is_none()
                        && step.rollout.from.is_some()
                        && (pulled || promoting)
                    {
                        let report = core.dataplane.report();
                        let snap = report.stats_of(&name, step.rollout.to);
                        let blast = BlastRadius {
                            requests: snap.map_or(0, |s| s.total),
                            failed: snap.map_or(0, |s| s.by_class[4]),
                        };
                        step.rollout.blast_radius = Some(blast);
                        // Before the rollout's closing event, if it has one.
                        let at = step
                            .events
                            .iter()
                            .position(|e| e.kind == EventKind::Done)
                            .unwrap_or(step.events.len());
                        step.events.insert(at, Event {
                            kind: EventKind::BlastRadius,
                            message: format!(
                                "blast radius: the canary served {} requests, {} of them failed, before it was {}",
                                blast.requests,
                                blast.failed,
                                if pulled { "pulled" } else { "promoted" }
                            ),
                        });
                    }
                    let written = self.store.commit(&Change {
                        rollout: Some(&step.rollout),
                        state: Some(&step.state),
                        events: step
                            .events
                            .iter()
                            .map(|e| (Some(step.rollout.id), e))
                            .collect(),
                        measurements: observed.measurements.iter().map(|m| (r.id, m)).collect(),
                        now,
                        ..Default::default()
                    });
                    core.note_store(&written);
                    let committed = match written {
                        Ok(c) => c,
                        Err(e) => {
                            // Nothing changed; the measurements wait for the
                            // next tick, which decides again.
                            self.pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(observed.measurements.into_iter().map(|m| (r.id, m)));
                            return Err(e.into());
                        }
                    };
                    for e in &step.events {
                        tracing::info!(service = %name, rollout = step.rollout.id, "{}", e.message);
                    }
                    if let Some(rev) = core.revisions.get(&name, step.rollout.to) {
                        self.webhooks.announce(
                            &rev.spec.webhooks,
                            &step.rollout,
                            &rev.version,
                            &step.events,
                            &committed.events,
                            now,
                        );
                    }
                    if step.rollout.is_done() {
                        core.rollouts.remove(&r.id);
                        core.last_round.remove(&r.id);
                        core.hook_results.remove(&r.id);
                        core.gate_results.remove(&r.id);
                        core.validations_running.retain(|(id, _)| *id != r.id);
                        if core.hooks_running.contains(&r.id) {
                            // Aborted while its hook runs: stop the hook too.
                            tokio::spawn(core.driver.stop_job(&format!("hook-{}", r.id)));
                        }
                    } else {
                        core.rollouts.insert(r.id, step.rollout);
                    }
                    core.states.insert(name.clone(), step.state);
                }
                None => {
                    let (next, events) = rollout::settle(&state, now);
                    if next != state {
                        let written = self.store.commit(&Change {
                            state: Some(&next),
                            events: events.iter().map(|e| (None, e)).collect(),
                            now,
                            ..Default::default()
                        });
                        core.note_store(&written);
                        written?;
                        for e in &events {
                            tracing::info!(service = %name, "{}", e.message);
                        }
                        core.states.insert(name.clone(), next);
                    }
                }
            }
        }
        // Keep sampled counters only for revisions a rollout still compares.
        let compared: BTreeSet<(String, u64)> = core
            .rollouts
            .values()
            .flat_map(|r| {
                [Some(r.to), r.from]
                    .into_iter()
                    .flatten()
                    .map(|rev| (r.service.clone(), rev))
            })
            .collect();
        core.sampler.retain(|k| compared.contains(k));
        let wanted = core.wanted();
        for note in core.driver.scale(&wanted) {
            tracing::info!("{note}");
        }
        self.route(core, now).await;
        // Gates start once the proxies serve this tick's plan (a
        // candidate must be reachable by X-Ferry-Revision first).
        let waiting: Vec<Rollout> = core
            .rollouts
            .values()
            .filter(|r| r.validating.is_some())
            .cloned()
            .collect();
        for r in &waiting {
            self.start_gate(core, r);
        }
        self.sync_slo_rules(core);
        Ok(())
    }
}

impl Daemon {
    /// When the serving revisions' SLOs changed, give the alerting engine
    /// their burn-rate rules.
    fn sync_slo_rules(self: &Arc<Self>, core: &mut Core) {
        let Some(alerting) = self.alerting.get() else {
            return;
        };
        let key = crate::slo::serving(core);
        if key == core.slo_key {
            return;
        }
        core.slo_key = key;
        let specs = crate::slo::specs(core);
        let groups = crate::slo::rule_groups(&specs);
        tracing::info!(
            "SLO rules: {} groups for {} services with SLOs",
            groups.len(),
            specs.len()
        );
        alerting.set_slo_groups(self, groups);
    }
}

pub type DaemonResult<T> = std::result::Result<T, DaemonError>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
}
