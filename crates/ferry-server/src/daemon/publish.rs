//! Publishing: the snapshot API reads see (services with their active
//! rollouts, `/health`'s checks, `/metrics`), taken from `Core` under the
//! lock after every tick and every mutation.

use super::Core;
use crate::metrics::MetricsView;
use crate::snapshot::{Snapshot, json};
use ferry_api::{RolloutView, ServiceStatus};
use ferry_core::Millis;
use ferry_core::rollout::{self, Rollout, ServiceState};
use std::collections::BTreeMap;

/// A snapshot of `core` as it is now.
pub(super) fn snapshot(core: &mut Core, now: Millis) -> Snapshot {
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
    let data_plane = core.dataplane.info();
    if data_plane.attached {
        checks.insert("data-plane".to_string(), "healthy".to_string());
    } else {
        checks.insert("data-plane".to_string(), "unhealthy".to_string());
        problems.insert(
            "data-plane".to_string(),
            data_plane
                .problem
                .clone()
                .unwrap_or_else(|| "the data plane is starting".to_string()),
        );
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
        metrics: metrics_view(core, now),
        data_plane,
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

/// What `/metrics` shows of `core` now.
fn metrics_view(core: &Core, now: Millis) -> MetricsView {
    let report = core.dataplane.report();
    let mut instances = BTreeMap::new();
    let mut gauges = Vec::new();
    for (name, state) in &core.states {
        for v in core.driver.views(name, &state.traffic) {
            *instances
                .entry((name.clone(), v.revision, v.state.as_str()))
                .or_default() += 1;
        }
        let canary = state
            .active_rollout
            .and_then(|id| core.rollouts.get(&id))
            .and_then(|r| state.weights.get(&r.to))
            .map(|w| u64::from(*w));
        gauges.push((
            name.clone(),
            [
                Some(core.routable(state, now).len() as u64),
                state.stable,
                Some(u64::from(state.active_rollout.is_some())),
                canary,
            ],
        ));
    }
    // The version of every revision a service runs or routes to (the
    // `version` label of its instances' series).
    let mut versions = BTreeMap::new();
    for (name, state) in &core.states {
        let numbers = state
            .scale
            .keys()
            .chain(&state.traffic)
            .chain(&state.stable)
            .chain(
                report
                    .http
                    .iter()
                    .filter(|h| h.service == *name)
                    .filter_map(|h| h.revision.as_ref()),
            );
        for &n in numbers {
            if let Some(r) = core.revisions.get(name, n) {
                versions.insert((name.clone(), n), r.version.clone());
            }
        }
    }
    MetricsView::new(&report, instances, gauges, versions)
}
