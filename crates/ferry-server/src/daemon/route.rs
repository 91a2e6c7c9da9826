//! Routing: the plan the data plane serves. Each service's proxy listens
//! where the revision that defines it says, while the service has
//! something to serve, and gets the available instances of its traffic
//! revisions (with the canary's weights). The data plane swaps a table
//! atomically when its part of the plan changes.

use super::{BASIS_POINTS, Core, Daemon};
use crate::dataplane::{Plan, ProxyPlan, RoutesPlan, SplitPlan, UpstreamPlan};
use ferry_core::Millis;
use ferry_core::proxy_spec::ProxySpec;
use std::net::SocketAddr;

impl Daemon {
    /// Compute the plan from the stored state and the instances, and hand
    /// it to the data plane (level-triggered: every tick).
    pub(super) async fn route(&self, core: &mut Core, now: Millis) {
        let mut plan = Plan::default();
        let names: Vec<String> = core.states.keys().cloned().collect();
        for name in names {
            if !core.states[&name].has_work() {
                continue;
            }
            let Some((number, listen, settings, drain)) = proxy_settings(core, &name) else {
                continue;
            };
            let state = &core.states[&name];
            let upstreams = core.reachable(state, now);
            let stable = state.stable;
            let split = split_of(core, &name, &upstreams);
            plan.proxies.push(ProxyPlan {
                service: name,
                listen,
                settings,
                settings_of: number,
                routes: RoutesPlan {
                    upstreams,
                    split,
                    stable,
                },
                drain_timeout_ms: drain,
            });
        }
        core.dataplane.apply(plan).await;
    }
}

/// How the proxy splits traffic between revisions: a canary's weights;
/// or, when instances outside `traffic` are up (a blue-green set before
/// its switch), shares by instance count with 0 for those, so only
/// `X-Ferry-Revision` reaches them; or none (plain round-robin).
fn split_of(core: &Core, name: &str, ups: &[UpstreamPlan]) -> Option<SplitPlan> {
    let state = core.states.get(name)?;
    let canary = state
        .active_rollout
        .and_then(|id| core.rollouts.get(&id))
        .map(|r| r.to);
    let outside = ups.iter().any(|u| !state.traffic.contains(&u.revision));
    if state.weights.is_empty() {
        if !outside {
            return None;
        }
        let serving: Vec<u64> = ups
            .iter()
            .map(|u| u.revision)
            .filter(|r| state.traffic.contains(r))
            .collect();
        let mut weights: Vec<(u64, u32)> = Vec::new();
        let mut revisions: Vec<u64> = ups.iter().map(|u| u.revision).collect();
        revisions.sort_unstable();
        revisions.dedup();
        let total = serving.len().max(1) as u32;
        let mut given = 0;
        for rev in &revisions {
            let n = serving.iter().filter(|r| *r == rev).count() as u32;
            let w = n * BASIS_POINTS / total;
            given += w;
            weights.push((*rev, w));
        }
        // Rounding leftovers go to the first serving revision.
        if let Some(first) = weights.iter_mut().find(|(_, w)| *w > 0) {
            first.1 += BASIS_POINTS.saturating_sub(given);
        } else {
            return None;
        }
        return Some(SplitPlan {
            weights,
            stickiness: None,
            canary,
        });
    }
    let mut weights: Vec<(u64, u32)> = state
        .weights
        .iter()
        .map(|(rev, w)| (*rev, w * 100))
        .collect();
    for u in ups {
        if !weights.iter().any(|(r, _)| *r == u.revision) {
            weights.push((u.revision, 0));
        }
    }
    // The canary's bucket range comes first (sticky users never flip back).
    weights.sort_by_key(|(rev, _)| Some(*rev) != canary);
    let stickiness = canary
        .and_then(|c| core.revisions.get(name, c))
        .and_then(|rev| rev.spec.deploy.stickiness.clone());
    Some(SplitPlan {
        weights,
        stickiness,
        canary,
    })
}

/// The revision that defines a service's proxy now (the stable one, else
/// the newest), its listen address and its `[proxy]` settings.
/// The revision that defines a service's proxy, and its listen address,
/// `[proxy]` settings and `drain_timeout` (ms).
pub(super) fn proxy_settings(core: &Core, name: &str) -> Option<(u64, SocketAddr, ProxySpec, u64)> {
    let state = core.states.get(name)?;
    let number = state
        .stable
        .or_else(|| state.scale.keys().next_back().copied())?;
    let rev = core.revisions.get(name, number)?;
    Some((
        number,
        rev.spec.listen_addr()?,
        rev.spec.proxy.clone(),
        rev.spec.deploy.drain_timeout.as_millis(),
    ))
}
