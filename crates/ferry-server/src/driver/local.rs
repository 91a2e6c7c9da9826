//! The local process driver: makes the running processes match the wanted
//! scale of each revision, probes them, restarts crashed ones with backoff,
//! drains and stops surplus ones, adopts the processes of a previous
//! daemon, and runs hooks, all through `ferry-runtime`.
//!
//! Architecture invariant: an instance's record is written to the store
//! before its process starts, and marked `stopping` before it is drained, so
//! a daemon killed at any point finds every process it started (by the marker
//! in its environment) and knows what to do with it.

use super::{BoxFuture, Endpoint, InstanceDriver, Job, JobRun, RevisionLookup, Traffic, probe};
use crate::clock::Clock;
use ferry_core::Millis;
use ferry_core::revision::Revision;
use ferry_core::rollout::{InstanceObs, is_available};
use ferry_runtime as runtime;
use ferry_store::{InstanceRecord, InstanceState, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// An instance that stayed ready this long is healthy again: its crash
/// counter resets.
const HEALTHY_AFTER_MS: u64 = 10_000;
/// Exits in a row without becoming healthy that make a crash loop.
const CRASH_LOOP_AFTER: u32 = 3;
const BACKOFF_START_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 30_000;

/// Probe results, written by the probe tasks, read by the supervisor.
#[derive(Debug, Default)]
struct Health {
    ready_since: Option<Millis>,
    successes: u32,
    failures: u32,
    last_probe: Option<String>,
    liveness_failed: Option<String>,
}

pub struct Instance {
    pub rec: InstanceRecord,
    child: Option<Child>,
    running: bool,
    adopted: bool,
    health: Arc<Mutex<Health>>,
    probes: Vec<JoinHandle<()>>,
    /// The revision it runs.
    rev: Arc<Revision>,
    addr: SocketAddr,
    next_start_at: Millis,
    consecutive_crashes: u32,
    pub crash_loop: Option<String>,
    pub last_exit: Option<String>,
    stopping: bool,
    /// When its process last started (the deploy timeout counts from here,
    /// so one restart is not judged by the instance's first start).
    started_at: Millis,
    /// Its record changed (pid, restarts) but could not be written yet.
    dirty: bool,
}

impl Instance {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn ready_since(&self) -> Option<Millis> {
        if self.running && !self.stopping {
            self.health().ready_since
        } else {
            None
        }
    }
    pub fn last_probe(&self) -> Option<String> {
        self.health().last_probe.clone()
    }
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }
    pub fn is_running(&self) -> bool {
        self.running
    }
}

/// Instances as local processes, in their own process groups.
pub struct LocalProcesses {
    store: Arc<dyn Store>,
    /// Why the last instance-record write failed, until one succeeds.
    pub store_problem: Option<String>,
    /// Records whose process is gone but whose deletion failed; retried
    /// every tick.
    undeleted: BTreeSet<String>,
    clock: Arc<dyn Clock>,
    daemon_id: String,
    data_dir: PathBuf,
    pub instances: BTreeMap<String, Instance>,
    /// Asked how many requests are in flight to an instance being drained.
    traffic: Arc<dyn Traffic>,
    stopped_tx: mpsc::UnboundedSender<String>,
    stopped_rx: mpsc::UnboundedReceiver<String>,
    last_rotation: Millis,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn backoff(crashes: u32) -> u64 {
    let shift = crashes.saturating_sub(1).min(16);
    (BACKOFF_START_MS << shift).min(BACKOFF_MAX_MS)
}

impl LocalProcesses {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        daemon_id: String,
        data_dir: PathBuf,
        traffic: Arc<dyn Traffic>,
    ) -> LocalProcesses {
        let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
        LocalProcesses {
            store,
            traffic,
            store_problem: None,
            undeleted: BTreeSet::new(),
            clock,
            daemon_id,
            data_dir,
            instances: BTreeMap::new(),
            stopped_tx,
            stopped_rx,
            last_rotation: 0,
        }
    }

    /// Note how a record write went: a failure is logged and shown in
    /// `/health` until a write succeeds again. Returns whether it did.
    fn wrote(&mut self, what: &str, result: ferry_store::Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.store_problem = None;
                true
            }
            Err(e) => {
                let text = format!("cannot {what}: {e}");
                if self.store_problem.as_deref() != Some(text.as_str()) {
                    tracing::error!("{text}; retrying");
                }
                self.store_problem = Some(text);
                false
            }
        }
    }

    /// Delete a record whose process is gone, or remember to retry.
    fn forget(&mut self, id: &str) {
        let result = self.store.delete_instance(id);
        if !self.wrote(&format!("delete the record of instance {id}"), result) {
            self.undeleted.insert(id.to_string());
        }
    }

    /// Write again every record an earlier write failed to store.
    fn save_dirty(&mut self) {
        let dirty: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| i.dirty)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dirty {
            self.save(&id);
        }
    }

    /// Write an instance's record, or mark it to be written again.
    fn save(&mut self, id: &str) {
        let Some(rec) = self.instances.get(id).map(|i| i.rec.clone()) else {
            return;
        };
        let result = self.store.put_instance(&rec);
        let ok = self.wrote(&format!("write the record of instance {id}"), result);
        if let Some(inst) = self.instances.get_mut(id) {
            inst.dirty = !ok;
        }
    }

    fn marker(&self, id: &str) -> String {
        format!("{}/{id}", self.daemon_id)
    }

    pub fn marker_prefix(&self) -> String {
        format!("{}/", self.daemon_id)
    }

    /// After a restart: adopt the processes of recorded instances, forget
    /// records whose process is gone (they restart), and stop every marked
    /// process the store does not know (orphans, hooks of a dead daemon).
    async fn restore_now(
        &mut self,
        revisions: RevisionLookup<'_>,
        serving: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        // Per marker: the process Ferry spawned (the group leader), if it
        // lives, and every group its processes are in. A `sh -c` command's
        // children carry the marker too; only the leader is the instance.
        let mut leaders: BTreeMap<String, i32> = BTreeMap::new();
        let mut groups: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for m in runtime::find_marked(&self.marker_prefix()) {
            if m.is_leader() {
                leaders.insert(m.marker.clone(), m.pid);
            }
            groups.entry(m.marker).or_default().insert(m.pgid);
        }
        let records = self.store.instances().unwrap_or_default();
        // A recorded process whose marker is gone from its environment
        // (rewritten as a process title) is still found by pid and start.
        for rec in &records {
            let marker = self.marker(&rec.id);
            if let (false, Some(pid), Some(started)) =
                (leaders.contains_key(&marker), rec.pid, rec.pid_started)
                && runtime::is_same_process(pid, started)
            {
                leaders.insert(marker, pid);
            }
        }
        let known: BTreeSet<String> = records.iter().map(|r| self.marker(&r.id)).collect();
        for (marker, pgids) in &groups {
            // Orphans (hooks of the dead daemon among them), and what is
            // left of an instance whose own process is gone.
            if !known.contains(marker) || !leaders.contains_key(marker) {
                for pgid in pgids {
                    notes.push(format!("stopping orphan process group {pgid} ({marker})"));
                    runtime::stop_group(*pgid, None, Duration::from_secs(5)).await;
                }
            }
        }
        let now = self.clock.now();
        for rec in records {
            let pid = leaders.get(&self.marker(&rec.id)).copied();
            let Some(rev) = revisions(&rec.service, rec.revision) else {
                self.forget(&rec.id);
                continue;
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], rec.port));
            let mut inst = Instance {
                rec: rec.clone(),
                child: None,
                running: false,
                adopted: false,
                health: Arc::default(),
                probes: Vec::new(),
                rev: rev.clone(),
                addr,
                next_start_at: now,
                consecutive_crashes: 0,
                crash_loop: None,
                last_exit: None,
                stopping: rec.state == InstanceState::Stopping,
                started_at: rec.created_at,
                dirty: false,
            };
            match pid {
                Some(pid) => {
                    inst.rec.pid = Some(pid);
                    inst.running = true;
                    inst.adopted = true;
                    notes.push(format!("adopted instance {} (pid {pid})", rec.id));
                    if inst.stopping {
                        // Already marked stopping in the store.
                        self.instances.insert(rec.id.clone(), inst);
                        self.drain_and_stop(&rec.id, &rev);
                        continue;
                    }
                    // The data plane still sends it requests: it stays
                    // available unless its probe fails `failure_threshold`
                    // times, so a restarted control plane does not take it
                    // out of routing while its first probe is under way.
                    if serving.contains(&rec.id) {
                        inst.health
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .ready_since = Some(0);
                    }
                    start_probes(&mut inst, &rev, self.clock.clone());
                }
                None if inst.stopping => {
                    self.forget(&rec.id);
                    continue;
                }
                None => notes.push(format!(
                    "instance {} is gone; it will be started again",
                    rec.id
                )),
            }
            self.instances.insert(rec.id.clone(), inst);
        }
        notes
    }

    /// One supervision pass: reap exits, restart, scale to `wanted`.
    /// Returns human-readable notes for the log.
    fn tick(&mut self, wanted: &[(Arc<Revision>, u32)]) -> Vec<String> {
        let now = self.clock.now();
        let mut notes = Vec::new();
        while let Ok(id) = self.stopped_rx.try_recv() {
            self.instances.remove(&id);
            self.forget(&id);
            notes.push(format!("instance {id} stopped"));
        }
        for id in std::mem::take(&mut self.undeleted) {
            self.forget(&id);
        }
        self.save_dirty();
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in &ids {
            self.check_process(id, now, &mut notes);
        }
        self.scale_to(wanted, now, &mut notes);
        if now.saturating_sub(self.last_rotation) >= 1000 {
            self.last_rotation = now;
            for inst in self.instances.values() {
                let max = inst.rev.spec.log_max_bytes;
                let _ = runtime::rotate_if_needed(std::path::Path::new(&inst.rec.log_path), max);
            }
        }
        notes
    }

    fn check_process(&mut self, id: &str, now: Millis, notes: &mut Vec<String>) {
        let traffic = self.traffic.clone();
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.stopping {
            return;
        }
        if inst.running {
            let exited = match (&mut inst.child, inst.rec.pid) {
                (Some(child), _) => match child.try_wait() {
                    Ok(Some(status)) => Some(runtime::describe_exit(status)),
                    Ok(None) => None,
                    Err(e) => Some(format!("lost track of the process: {e}")),
                },
                (None, Some(pid)) => {
                    let ours = runtime::marker_of(pid)
                        .is_some_and(|m| m == format!("{}/{id}", self.daemon_id))
                        || inst
                            .rec
                            .pid_started
                            .is_some_and(|t| runtime::is_same_process(pid, t));
                    let gone = !ours || !runtime::is_alive(pid);
                    if gone {
                        // A child of this process from before a re-exec.
                        runtime::reap(pid);
                    }
                    gone.then(|| "exited".to_string())
                }
                (None, None) => Some("no process".to_string()),
            };
            let liveness = inst.health().liveness_failed.clone();
            if let Some(how) = exited {
                let ready_since = inst.health().ready_since;
                let was_healthy =
                    ready_since.is_some_and(|t| now.saturating_sub(t) >= HEALTHY_AFTER_MS);
                stop_probes(inst);
                // What the process left behind in its group (a shell's
                // children) must not keep its port or keep running.
                if let Some(pgid) = inst.rec.pid {
                    runtime::signal_group(pgid, runtime::Signal::SIGKILL);
                }
                inst.running = false;
                inst.child = None;
                traffic.close(id);
                inst.consecutive_crashes = if was_healthy {
                    1
                } else {
                    inst.consecutive_crashes + 1
                };
                let pending_reason = inst.last_exit.take().filter(|r| r.starts_with("liveness"));
                let detail = match pending_reason {
                    Some(r) => format!("{r}; {how}"),
                    None => how,
                };
                inst.last_exit = Some(detail.clone());
                inst.next_start_at = now + backoff(inst.consecutive_crashes);
                inst.rec.restarts += 1;
                if inst.consecutive_crashes >= CRASH_LOOP_AFTER {
                    inst.crash_loop = Some(format!(
                        "{detail}, {} times in a row",
                        inst.consecutive_crashes
                    ));
                }
                notes.push(format!(
                    "instance {id} {detail}; restarting in {}ms",
                    backoff(inst.consecutive_crashes)
                ));
                inst.dirty = true;
            } else if let Some(why) = liveness {
                notes.push(format!(
                    "instance {id} failed its liveness probe ({why}); restarting it"
                ));
                inst.last_exit = Some(format!("liveness probe failed: {why}"));
                inst.health().liveness_failed = None;
                inst.health().ready_since = None;
                if let Some(pid) = inst.rec.pid {
                    runtime::signal_group(pid, runtime::Signal::SIGKILL);
                }
            } else if inst.crash_loop.is_some()
                && inst
                    .health()
                    .ready_since
                    .is_some_and(|t| now.saturating_sub(t) >= HEALTHY_AFTER_MS)
            {
                inst.crash_loop = None;
                inst.consecutive_crashes = 0;
            }
        } else if now >= inst.next_start_at {
            let marker = format!("{}/{id}", self.daemon_id);
            let rev = inst.rev.clone();
            spawn_process(inst, &rev, marker, self.clock.clone(), notes);
        }
        if self.instances.get(id).is_some_and(|i| i.dirty) {
            self.save(id);
        }
    }

    fn scale_to(&mut self, wanted: &[(Arc<Revision>, u32)], now: Millis, notes: &mut Vec<String>) {
        // Surplus first: instances of revisions no longer wanted.
        let mut live: BTreeMap<(String, u64), (Arc<Revision>, Vec<String>)> = BTreeMap::new();
        for (id, inst) in &self.instances {
            if !inst.stopping {
                live.entry((inst.rec.service.clone(), inst.rec.revision))
                    .or_insert_with(|| (inst.rev.clone(), Vec::new()))
                    .1
                    .push(id.clone());
            }
        }
        let mut plan: BTreeMap<(String, u64), (Arc<Revision>, u32)> = BTreeMap::new();
        for (rev, n) in wanted {
            plan.insert((rev.service.clone(), rev.number), (rev.clone(), *n));
        }
        for (key, (rev, _)) in &live {
            plan.entry(key.clone()).or_insert_with(|| (rev.clone(), 0));
        }
        for (key, (rev, want)) in plan {
            let want = want as usize;
            let mut have = live.remove(&key).map(|(_, ids)| ids).unwrap_or_default();
            if have.len() > want {
                // Stop the ones not serving first, then the newest.
                let min_ready = rev.spec.deploy.min_ready.as_millis();
                have.sort_by_key(|id| {
                    let i = &self.instances[id];
                    (
                        is_available(i.ready_since(), min_ready, now),
                        std::cmp::Reverse(i.rec.created_at),
                    )
                });
                for id in have.iter().take(have.len() - want) {
                    if self.begin_stop(id, &rev) {
                        notes.push(format!("draining instance {id}"));
                    }
                }
            }
            for _ in have.len()..want {
                match self.start_new(&rev, now) {
                    Ok(id) => {
                        notes.push(format!("started instance {id} (revision {})", rev.number))
                    }
                    Err(e) => {
                        notes.push(format!(
                            "cannot start an instance of {} revision {}: {e}",
                            key.0, key.1
                        ));
                        break;
                    }
                }
            }
        }
    }

    fn start_new(&mut self, rev: &Arc<Revision>, now: Millis) -> Result<String, String> {
        let suffix = crate::random_hex(3).map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let id = format!("{}-{}-{suffix}", rev.service, rev.number);
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let log_path = self.data_dir.join("logs").join(format!("{id}.log"));
        let rec = InstanceRecord {
            id: id.clone(),
            service: rev.service.clone(),
            revision: rev.number,
            port,
            pid: None,
            pid_started: None,
            state: InstanceState::Running,
            created_at: now,
            restarts: 0,
            log_path: log_path.display().to_string(),
        };
        // Durable before the process exists: no record, no process.
        let written = self.store.put_instance(&rec);
        if !self.wrote(&format!("write the record of new instance {id}"), written) {
            return Err(self
                .store_problem
                .clone()
                .unwrap_or_else(|| "the state store failed".to_string()));
        }
        let mut inst = Instance {
            rec,
            child: None,
            running: false,
            adopted: false,
            health: Arc::default(),
            probes: Vec::new(),
            rev: rev.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            next_start_at: now,
            consecutive_crashes: 0,
            crash_loop: None,
            last_exit: None,
            stopping: false,
            started_at: now,
            dirty: false,
        };
        let mut notes = Vec::new();
        spawn_process(
            &mut inst,
            rev,
            self.marker(&id),
            self.clock.clone(),
            &mut notes,
        );
        self.instances.insert(id.clone(), inst);
        self.save(&id);
        Ok(id)
    }

    /// Mark stopping, durably, then drain and stop in the background. When
    /// the mark cannot be written the instance keeps serving and stays
    /// unmarked (the next tick tries again): it is never drained unmarked.
    fn begin_stop(&mut self, id: &str, rev: &Revision) -> bool {
        let Some(inst) = self.instances.get(id) else {
            return false;
        };
        let mut rec = inst.rec.clone();
        rec.state = InstanceState::Stopping;
        let written = self.store.put_instance(&rec);
        if !self.wrote(&format!("mark instance {id} stopping"), written) {
            return false;
        }
        if let Some(inst) = self.instances.get_mut(id) {
            inst.rec = rec;
            inst.dirty = false;
        }
        self.drain_and_stop(id, rev);
        true
    }

    /// Drain an instance marked stopping and stop its process group.
    fn drain_and_stop(&mut self, id: &str, rev: &Revision) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        inst.stopping = true;
        stop_probes(inst);
        let pid = inst.running.then_some(inst.rec.pid).flatten();
        let child = inst.child.take();
        let traffic = self.traffic.clone();
        let drain = rev.spec.deploy.drain_timeout.0;
        let grace = rev.spec.deploy.stop_timeout.0;
        let done = self.stopped_tx.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // Let the routing swap that removed it land, then drain.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let deadline = tokio::time::Instant::now() + drain;
            while traffic.in_flight(&id) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            traffic.close(&id);
            if let Some(pid) = pid {
                let mut child = child;
                runtime::stop_group(pid, child.as_mut(), grace).await;
            }
            let _ = done.send(id);
        });
    }

    /// Stop everything (daemon shutdown): drain and stop all instances.
    async fn stop_all_now(&mut self) {
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in &ids {
            let rev = self.instances[id].rev.clone();
            if !self.instances[id].stopping && !self.begin_stop(id, &rev) {
                // Not marked, so not stopped: the next daemon adopts it.
                tracing::warn!("instance {id} keeps running: it could not be marked stopping");
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.instances.values().any(|i| i.stopping) && tokio::time::Instant::now() < deadline
        {
            match tokio::time::timeout(Duration::from_millis(200), self.stopped_rx.recv()).await {
                Ok(Some(id)) => {
                    self.instances.remove(&id);
                    self.forget(&id);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
    }

    /// The marker of a job's processes.
    fn job_marker(&self, name: &str) -> String {
        format!("{}/{name}", self.daemon_id)
    }
}

impl InstanceDriver for LocalProcesses {
    fn restore<'a>(
        &'a mut self,
        revisions: RevisionLookup<'a>,
        serving: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.restore_now(revisions, serving))
    }

    fn scale(&mut self, wanted: &[(Arc<Revision>, u32)]) -> Vec<String> {
        self.tick(wanted)
    }

    fn observe(&self, service: &str) -> Vec<InstanceObs> {
        self.instances
            .values()
            .filter(|i| i.rec.service == service && !i.stopping)
            .map(|i| InstanceObs {
                id: i.rec.id.clone(),
                revision: i.rec.revision,
                created_at: i.started_at,
                ready_since: i.ready_since(),
                crash_loop: i.crash_loop.clone(),
                last_probe: if i.running {
                    i.last_probe()
                } else {
                    i.last_exit.clone().or_else(|| i.last_probe())
                },
            })
            .collect()
    }

    fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        self.instances
            .values()
            .filter(|i| i.rec.service == service && !i.stopping && i.running)
            .map(|i| Endpoint {
                instance: i.rec.id.clone(),
                revision: i.rec.revision,
                addr: i.addr,
                ready_since: i.ready_since(),
            })
            .collect()
    }

    fn views(&self, service: &str, traffic: &[u64]) -> Vec<ferry_api::InstanceView> {
        use ferry_api::InstanceState;
        let now = self.clock.now();
        self.instances
            .values()
            .filter(|i| i.rec.service == service)
            .map(|i| {
                let min_ready = i.rev.spec.deploy.min_ready.as_millis();
                let ready = i.ready_since();
                let state = if i.stopping {
                    InstanceState::Stopping
                } else if i.crash_loop.is_some() {
                    InstanceState::CrashLoop
                } else if !i.running {
                    InstanceState::Restarting
                } else if is_available(ready, min_ready, now) && traffic.contains(&i.rec.revision) {
                    InstanceState::Serving
                } else if is_available(ready, min_ready, now) {
                    InstanceState::Standby
                } else if ready.is_some() {
                    InstanceState::Warming
                } else {
                    InstanceState::Starting
                };
                ferry_api::InstanceView {
                    id: i.rec.id.clone(),
                    revision: i.rec.revision,
                    address: i.addr.to_string(),
                    port: i.rec.port,
                    pid: i.rec.pid,
                    state,
                    ready: ready.is_some(),
                    restarts: i.rec.restarts,
                    last_probe: i.last_probe(),
                    last_exit: i.last_exit.clone(),
                    log: i.rec.log_path.clone(),
                }
            })
            .collect()
    }

    fn log_tail(&self, instance: &str, lines: usize) -> Option<String> {
        let path = self
            .instances
            .get(instance)
            .map(|i| PathBuf::from(&i.rec.log_path))?;
        Some(runtime::log_tail(&path, lines))
    }

    fn run_job(&self, job: Job) -> BoxFuture<'static, JobRun> {
        let rev = job.revision;
        let hook = rev.spec.pre_deploy.clone();
        let spec = runtime::SpawnSpec {
            argv: hook
                .map(|h| h.argv(|a| ferry_core::spec::fill_placeholders(a, 0, &rev.version)))
                .unwrap_or_default(),
            env: rev.env(0),
            workdir: rev.workdir(),
            log_path: self
                .data_dir
                .join("logs")
                .join(format!("{}-{}.log", rev.service, job.name)),
            marker: self.job_marker(&job.name),
        };
        let timeout = job.timeout;
        Box::pin(async move {
            let run = runtime::run_to_completion(&spec, timeout).await;
            JobRun {
                ok: run.ok,
                summary: run.summary,
                output: run.output,
            }
        })
    }

    fn stop_job(&self, name: &str) -> BoxFuture<'static, ()> {
        let marker = self.job_marker(name);
        Box::pin(async move {
            let groups: BTreeSet<i32> = runtime::find_marked(&marker)
                .into_iter()
                .filter(|m| m.marker == marker)
                .map(|m| m.pgid)
                .collect();
            for pgid in groups {
                runtime::stop_group(pgid, None, Duration::from_secs(5)).await;
            }
        })
    }

    fn stop_all(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all_now())
    }

    fn detach(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.save_dirty();
            for inst in self.instances.values_mut() {
                stop_probes(inst);
            }
        })
    }

    fn store_problem(&self) -> Option<&str> {
        self.store_problem.as_deref()
    }
}

fn stop_probes(inst: &mut Instance) {
    for p in inst.probes.drain(..) {
        p.abort();
    }
    *inst.health() = Health::default();
}

/// Start an instance's process; its record (now with a pid) is marked to
/// be written.
fn spawn_process(
    inst: &mut Instance,
    rev: &Revision,
    marker: String,
    clock: Arc<dyn Clock>,
    notes: &mut Vec<String>,
) {
    let spec = runtime::SpawnSpec {
        argv: rev.argv(inst.rec.port),
        env: rev.env(inst.rec.port),
        workdir: rev.workdir(),
        log_path: PathBuf::from(&inst.rec.log_path),
        marker,
    };
    let now = clock.now();
    match runtime::spawn(&spec) {
        Ok(child) => {
            inst.rec.pid = child.id().map(|p| p as i32);
            // Read at once: the start time is the fork's, whatever the
            // program does to its environment later.
            inst.rec.pid_started = inst.rec.pid.and_then(runtime::start_ticks);
            inst.child = Some(child);
            inst.running = true;
            inst.started_at = now;
            inst.adopted = false;
            inst.dirty = true;
            start_probes(inst, rev, clock);
        }
        Err(e) => {
            inst.consecutive_crashes += 1;
            inst.next_start_at = now + backoff(inst.consecutive_crashes);
            inst.last_exit = Some(e.to_string());
            if inst.consecutive_crashes >= CRASH_LOOP_AFTER {
                inst.crash_loop = Some(format!("{e}, {} times in a row", inst.consecutive_crashes));
            }
            notes.push(format!("instance {}: {e}", inst.rec.id));
        }
    }
}

fn start_probes(inst: &mut Instance, rev: &Revision, clock: Arc<dyn Clock>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], inst.rec.port));
    let readiness = rev.spec.readiness_probe();
    let health = inst.health.clone();
    let adopted = inst.adopted;
    let c = clock.clone();
    inst.probes.push(tokio::spawn(async move {
        tokio::time::sleep(readiness.initial_delay.0).await;
        loop {
            let r = probe::check(&readiness, addr).await;
            {
                let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                h.last_probe = Some(r.detail);
                if r.ok {
                    h.successes += 1;
                    h.failures = 0;
                    if h.ready_since.is_none() && h.successes >= readiness.success_threshold {
                        // An adopted instance already served before the restart.
                        h.ready_since = Some(if adopted { 0 } else { c.now() });
                    }
                } else {
                    h.failures += 1;
                    h.successes = 0;
                    if h.failures >= readiness.failure_threshold {
                        h.ready_since = None;
                    }
                }
            }
            tokio::time::sleep(probe::interval(&readiness)).await;
        }
    }));
    if let Some(liveness) = rev.spec.liveness.clone() {
        let health = inst.health.clone();
        inst.probes.push(tokio::spawn(async move {
            // Liveness is judged once the instance has been ready: a slow
            // start is the readiness probe's and deploy_timeout's business.
            loop {
                let ready = health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ready_since
                    .is_some();
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(liveness.initial_delay.0).await;
            let mut failures = 0;
            loop {
                let r = probe::check(&liveness, addr).await;
                if r.ok {
                    failures = 0;
                } else {
                    failures += 1;
                    if failures >= liveness.failure_threshold {
                        health
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .liveness_failed = Some(r.detail);
                        return;
                    }
                }
                tokio::time::sleep(probe::interval(&liveness)).await;
            }
        }));
    }
}
