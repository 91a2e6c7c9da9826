//! Routing: each service's proxy listens where the revision that defines it
//! says, and gets the available instances of its traffic revisions (with
//! the canary's weights) in one atomic swap per change.

use super::{BASIS_POINTS, Core, Daemon};
use ferry_core::Millis;
use ferry_proxy::{ProxyHandle, ProxyOptions, RoutingTable};
use std::net::SocketAddr;
use std::sync::Arc;

impl Daemon {
    /// Give each proxy the available instances of its traffic revisions;
    /// one atomic swap per change. A service's proxy listens where the
    /// revision that defines it says, and only while the service has
    /// something to serve; a failed bind is retried every tick.
    pub(super) async fn route(&self, core: &mut Core, now: Millis) {
        let names: Vec<String> = core.states.keys().cloned().collect();
        for name in names {
            let wanted = if core.states[&name].has_work() {
                self.listen_of(core, &name)
            } else {
                None
            };
            let bound = core.proxies.get(&name).map(|p| p.local_addr());
            if bound.is_some() && bound != wanted.as_ref().map(|(l, _)| *l) {
                let p = core.proxies.remove(&name).expect("bound");
                p.shutdown();
                core.routed.remove(&name);
                core.proxy_options_of.remove(&name);
                match &wanted {
                    Some((listen, _)) => tracing::info!(
                        service = %name,
                        "proxy moves from {} to {listen}",
                        p.local_addr()
                    ),
                    None => tracing::info!(
                        service = %name,
                        "proxy on {} closed: the service has no revision to serve",
                        p.local_addr()
                    ),
                }
            }
            let Some((listen, options)) = wanted else {
                core.bind_errors.remove(&name);
                continue;
            };
            let state = &core.states[&name];
            let ups = core.reachable(state, now);
            let ids: Vec<String> = ups.iter().map(|u| u.instance_id().to_string()).collect();
            let key = (
                ids,
                state.weights.clone(),
                state.traffic.clone(),
                state.stable,
                state.active_rollout,
            );
            let stable = state.stable;
            if core.routed.get(&name) == Some(&key) && core.proxies.contains_key(&name) {
                continue;
            }
            let split = self.split_of(core, &name, &ups);
            if !core.proxies.contains_key(&name) {
                match ProxyHandle::bind(name.clone(), listen, options).await {
                    Ok(p) => {
                        tracing::info!(service = %name, "proxy listening on {listen}");
                        core.bind_errors.remove(&name);
                        core.proxies.insert(name.clone(), p);
                    }
                    Err(e) => {
                        // Say it once per distinct error, not every tick.
                        let text = format!("cannot listen on {listen}: {e}");
                        if core.bind_errors.get(&name) != Some(&text) {
                            tracing::error!(service = %name, "{text}; retrying every tick");
                            core.bind_errors.insert(name.clone(), text);
                        }
                        continue;
                    }
                }
            }
            // A new stable revision brings its own proxy settings.
            let defined_by = core.states.get(&name).and_then(|s| s.stable);
            if defined_by.is_some()
                && core.proxy_options_of.get(&name) != defined_by.as_ref()
                && let Some((number, _, options)) = self.proxy_settings(core, &name)
                && let Some(p) = core.proxies.get(&name)
            {
                if let Err(e) = p.set_options(options) {
                    tracing::error!(service = %name, "cannot apply the proxy settings of revision {number}: {e}");
                }
                core.proxy_options_of.insert(name.clone(), number);
            }
            if let Some(p) = core.proxies.get(&name) {
                p.set_routes(RoutingTable {
                    upstreams: ups,
                    split,
                    stable,
                });
                tracing::debug!(service = %name, "routing to {:?} (weights {:?})", key.0, key.1);
                core.routed.insert(name, key);
            }
        }
    }

    /// How the proxy splits traffic between revisions: a canary's weights;
    /// or, when instances outside `traffic` are up (a blue-green set before
    /// its switch), shares by instance count with 0 for those, so only
    /// `X-Ferry-Revision` reaches them; or none (plain round-robin).
    fn split_of(
        &self,
        core: &mut Core,
        name: &str,
        ups: &[Arc<ferry_proxy::Upstream>],
    ) -> Option<ferry_proxy::Split> {
        let state = core.states.get(name)?;
        let canary = state
            .active_rollout
            .and_then(|id| core.rollouts.get(&id))
            .map(|r| r.to);
        let outside = ups.iter().any(|u| !state.traffic.contains(&u.revision()));
        if state.weights.is_empty() {
            if !outside {
                return None;
            }
            let serving: Vec<u64> = ups
                .iter()
                .map(|u| u.revision())
                .filter(|r| state.traffic.contains(r))
                .collect();
            let mut weights: Vec<(u64, u32)> = Vec::new();
            let mut revisions: Vec<u64> = ups.iter().map(|u| u.revision()).collect();
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
            return Some(ferry_proxy::Split {
                weights,
                stickiness: ferry_proxy::Stickiness::None,
                canary,
            });
        }
        let mut weights: Vec<(u64, u32)> = state
            .weights
            .iter()
            .map(|(rev, w)| (*rev, w * 100))
            .collect();
        for u in ups {
            if !weights.iter().any(|(r, _)| *r == u.revision()) {
                weights.push((u.revision(), 0));
            }
        }
        // The canary's bucket range comes first (sticky users never flip back).
        weights.sort_by_key(|(rev, _)| Some(*rev) != canary);
        let stickiness = canary
            .and_then(|c| core.revisions.get(name, c))
            .and_then(|rev| rev.spec.deploy.stickiness.clone())
            .and_then(|s| ferry_core::canary::Stickiness::parse(&s).ok())
            .map_or(ferry_proxy::Stickiness::None, |s| match s {
                ferry_core::canary::Stickiness::Header(h) => {
                    http::HeaderName::from_bytes(h.as_bytes()).map_or(
                        ferry_proxy::Stickiness::None,
                        ferry_proxy::Stickiness::Header,
                    )
                }
                ferry_core::canary::Stickiness::Cookie(c) => ferry_proxy::Stickiness::Cookie(c),
            });
        Some(ferry_proxy::Split {
            weights,
            stickiness,
            canary,
        })
    }

    /// The listen address and proxy options of the revision that defines
    /// the service now.
    fn listen_of(&self, core: &mut Core, name: &str) -> Option<(SocketAddr, ProxyOptions)> {
        let (_, listen, options) = self.proxy_settings(core, name)?;
        Some((listen, options))
    }

    /// The revision that defines a service's proxy now (the stable one, else
    /// the newest), its listen address and its proxy options.
    fn proxy_settings(
        &self,
        core: &mut Core,
        name: &str,
    ) -> Option<(u64, SocketAddr, ProxyOptions)> {
        let state = core.states.get(name)?;
        let number = state
            .stable
            .or_else(|| state.scale.keys().next_back().copied())?;
        let rev = core.revisions.get(name, number)?;
        let options = crate::proxy_config::options_in(&rev.spec.proxy, Some(&self.data_dir));
        Some((number, rev.spec.listen_addr()?, options))
    }
}
