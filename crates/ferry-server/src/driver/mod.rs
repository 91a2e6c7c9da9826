//! Where a revision's instances run. The daemon asks an [`InstanceDriver`]
//! to make revisions run so many instances, to say what it sees of them
//! (for the rollout machine, the proxies and status), to run a one-off job
//! (the `pre_deploy` hook) and to stop everything; it never starts or
//! signals a process itself. `local` (processes on this host, with their
//! probes) is the one implementation; a Kubernetes driver would be another
//! (see ARCHITECTURE.md, "A Kubernetes driver").

pub mod local;
pub mod probe;

use ferry_api::InstanceView;
use ferry_core::Millis;
use ferry_core::revision::Revision;
use ferry_core::rollout::InstanceObs;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an instance takes requests, and since when it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub instance: String,
    pub revision: u64,
    /// Host and port; not necessarily on this host.
    pub addr: SocketAddr,
    /// Since when its readiness check has passed, if it passes now.
    pub ready_since: Option<Millis>,
}

/// A one-off job of a revision (the `pre_deploy` hook).
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique among the daemon's jobs, e.g. `hook-12` for rollout 12.
    pub name: String,
    pub revision: Arc<Revision>,
    pub timeout: Duration,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub ok: bool,
    /// `exit status 0`, `timed out after 10s`, ...
    pub summary: String,
    /// The end of its output.
    pub output: String,
}

/// What a driver asks of the traffic layer while it stops an instance: it
/// waits until nothing is in flight to the instance (it has already left
/// every routing table), then closes the idle connections to it.
pub trait Traffic: Send + Sync {
    fn in_flight(&self, instance: &str) -> usize;
    fn close(&self, instance: &str);
}

/// Revisions by service and number, for a driver adopting instances.
pub type RevisionLookup<'a> = &'a (dyn Fn(&str, u64) -> Option<Arc<Revision>> + Sync);

pub trait InstanceDriver: Send {
    /// After a restart: find the instances a previous daemon left (adopt
    /// them, or stop what is not ours to keep). Those in `serving` (the
    /// data plane routes to them now) count as ready until their probe
    /// says otherwise. Returns notes for the log.
    fn restore<'a>(
        &'a mut self,
        revisions: RevisionLookup<'a>,
        serving: &'a std::collections::BTreeSet<String>,
    ) -> BoxFuture<'a, Vec<String>>;

    /// Make each revision run as many instances as `wanted` says (0 for
    /// revisions not listed that still run some): start missing ones,
    /// restart exited ones, drain and stop surplus ones (not-available
    /// ones first). Called every tick. Returns notes for the log.
    fn scale(&mut self, wanted: &[(Arc<Revision>, u32)]) -> Vec<String>;

    /// What the rollout machine sees of a service's live (not stopping)
    /// instances.
    fn observe(&self, service: &str) -> Vec<InstanceObs>;

    /// Where a service's live, running (not stopping) instances take
    /// requests. The daemon decides which of them get traffic.
    fn endpoints(&self, service: &str) -> Vec<Endpoint>;

    /// Every instance of a service as `ferry status` shows it; `traffic`
    /// tells serving instances from standby ones.
    fn views(&self, service: &str, traffic: &[u64]) -> Vec<InstanceView>;

    /// The last `lines` lines an instance printed, if it keeps output.
    fn log_tail(&self, instance: &str, lines: usize) -> Option<String>;

    /// Run a job to completion (or its timeout). It keeps running if the
    /// daemon dies, and a restarted daemon's `restore` stops it.
    fn run_job(&self, job: Job) -> BoxFuture<'static, JobRun>;

    /// Stop a job that is still running.
    fn stop_job(&self, name: &str) -> BoxFuture<'static, ()>;

    /// Drain and stop every instance (the daemon is shutting down).
    fn stop_all(&mut self) -> BoxFuture<'_, ()>;

    /// The control plane is stopping and leaves every instance running for
    /// the next one to adopt: record what is not recorded yet.
    fn detach(&mut self) -> BoxFuture<'_, ()>;

    /// Why the driver could not record something it did, until it can.
    fn store_problem(&self) -> Option<&str>;
}
