//! What API reads see: the daemon's state as of the last publish, taken
//! under the lock by the reconcile loop after every tick and by every
//! mutation, and read by status, `/health` and `/metrics` without any lock,
//! so no read waits for a tick or a store commit.

use crate::daemon::Core;
use crate::metrics::MetricsView;
use ferry_api::{InstanceState, RolloutView, ServiceStatus};
use ferry_core::Millis;
use ferry_core::rollout::{self, Rollout, ServiceState};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Millis,
    pub services: BTreeMap<String, ServiceStatus>,
    /// The same as JSON, serialized once per publish rather than once per
    /// read: one service each, and the whole list.
    pub services_json: BTreeMap<String, bytes::Bytes>,
    pub list_json: bytes::Bytes,
    /// Which service each active rollout belongs to.
    pub active: BTreeMap<u64, String>,
    /// `/health`'s checks (`store`, `service:<name>`): healthy, degraded or
    /// unhealthy, and why when not healthy.
    pub checks: BTreeMap<String, String>,
    pub problems: BTreeMap<String, String>,
    pub metrics: MetricsView,
}

impl Snapshot {
    pub fn take(core: &mut Core, now: Millis) -> Snapshot {
        let states: Vec<ServiceState> = core.states.values().cloned().collect();
        let mut services = BTreeMap::new();
        let mut active = BTreeMap::new();
        let mut checks = BTreeMap::new();
        let mut problems = BTreeMap::new();
        match core.store_health() {
            None => {
                checks.insert("store".to_string(), "healthy".to_string());
            }
            Some(why) => {
                checks.insert("store".to_string(), "degraded".to_string());
                problems.insert("store".to_string(), why.to_string());
            }
        }
        for state in &states {
            let status = status_of(core, state, now);
            if let Some(id) = state.active_rollout {
                active.insert(id, state.name.clone());
            }
            if state.stable.is_some() {
                let check = format!("service:{}", state.name);
                let serving = core.routable(state, now).len();
                let why = match &status.proxy_error {
                    Some(e) => Some(e.clone()),
                    None if serving == 0 => Some("no instance takes traffic".to_string()),
                    None => None,
                };
                let health = if why.is_some() {
                    "unhealthy"
                } else {
                    "healthy"
                };
                checks.insert(check.clone(), health.to_string());
                if let Some(why) = why {
                    problems.insert(check, why);
                }
            }
            services.insert(state.name.clone(), status);
        }
        let services_json = services
            .iter()
            .map(|(name, status)| (name.clone(), json(status)))
            .collect();
        let list: Vec<&ServiceStatus> = services.values().collect();
        let list_json = json(&list);
        Snapshot {
            at: now,
            services,
            services_json,
            list_json,
            active,
            checks,
            problems,
            metrics: MetricsView::of(core, now),
        }
    }

    /// An active rollout's view, if `id` is one.
    pub fn rollout(&self, id: u64) -> Option<&RolloutView> {
        let service = self.active.get(&id)?;
        self.services
            .get(service)?
            .rollout
            .as_ref()
            .filter(|r| r.rollout.id == id)
    }

    /// Instances of `service`'s revision `rev` that take or could take
    /// traffic (available) now.
    pub fn available(&self, service: &str, rev: u64) -> u32 {
        self.services.get(service).map_or(0, |s| {
            s.instances
                .iter()
                .filter(|i| {
                    i.revision == rev
                        && matches!(i.state, InstanceState::Serving | InstanceState::Standby)
                })
                .count() as u32
        })
    }
}

fn version_of(core: &mut Core, service: &str, rev: Option<u64>) -> Option<String> {
    rev.and_then(|n| core.revisions.get(service, n))
        .map(|r| r.version.clone())
}

fn status_of(core: &mut Core, state: &ServiceState, now: Millis) -> ServiceStatus {
    let rollout = state
        .active_rollout
        .and_then(|id| core.rollouts.get(&id).cloned())
        .map(|r| rollout_view(core, r, true, now));
    let listen = state
        .stable
        .or_else(|| state.scale.keys().next_back().copied())
        .and_then(|n| core.revisions.get(&state.name, n))
        .map(|r| r.spec.listen.clone());
    ServiceStatus {
        name: state.name.clone(),
        listen,
        stable: state.stable,
        version: version_of(core, &state.name, state.stable),
        traffic: state.traffic.clone(),
        scale: state.scale.clone(),
        instances: core.driver.views(&state.name, &state.traffic),
        rollout,
        proxy_error: core.proxy_problem(&state.name),
    }
}

fn rollout_view(core: &mut Core, r: Rollout, active: bool, now: Millis) -> RolloutView {
    let available = core
        .driver
        .observe(&r.service)
        .iter()
        .filter(|i| {
            i.revision == r.to && rollout::is_available(i.ready_since, r.params.min_ready_ms, now)
        })
        .count() as u32;
    RolloutView {
        from_version: version_of(core, &r.service, r.from),
        to_version: version_of(core, &r.service, Some(r.to)).unwrap_or_default(),
        available,
        active,
        rollout: r,
    }
}

/// `value` as JSON. Serializing a status cannot fail (plain data, string
/// keys).
fn json<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).expect("a status serializes"))
}
