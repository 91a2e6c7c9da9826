//! Plans into proxies: one `ferry_proxy::ProxyHandle` per service, one
//! `Upstream` per instance (kept across plans, so its connection pools and
//! in-flight count survive routing swaps), one `RevisionStats` per
//! revision. Runs in the data-plane process, or inside the daemon.

use super::{HttpReport, Plan, ProxyState, Report, RoutesPlan, SplitPlan};
use crate::proxy_config;
use ferry_proxy::{
    HttpStats, ProxyHandle, RevisionStats, RoutingTable, Split, Stickiness, Upstream,
};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Where a proxy's listening sockets come from: bound here (inline), or
/// received from the control plane (a data-plane process).
pub trait Sockets: Send {
    fn take(&mut self, service: &str, addr: SocketAddr) -> io::Result<Vec<std::net::TcpListener>>;
}

/// Bind the sockets here, one per worker.
pub struct BindHere;

impl Sockets for BindHere {
    fn take(&mut self, _: &str, addr: SocketAddr) -> io::Result<Vec<std::net::TcpListener>> {
        ferry_proxy::bind_listeners(addr, ferry_proxy::default_workers())
    }
}

struct Served {
    handle: ProxyHandle,
    listen: SocketAddr,
    settings_of: u64,
    routes: Option<RoutesPlan>,
}

#[derive(Default)]
struct State {
    proxies: BTreeMap<String, Served>,
    /// The upstream of each instance, while it is in a plan or has
    /// requests in flight.
    upstreams: BTreeMap<String, Arc<Upstream>>,
    stats: BTreeMap<(String, u64), Arc<RevisionStats>>,
    /// Each instance's own counters, with its service and revision: kept
    /// while its upstream is (the same `Arc` across plans, and across a
    /// new `Upstream` for the same instance), so they never reset while
    /// the instance stays, and forgotten with it.
    http: BTreeMap<String, InstanceHttp>,
    /// Why a service's proxy is not serving.
    errors: BTreeMap<String, String>,
    generation: u64,
}

/// An instance's counters and the labels they are reported with.
struct InstanceHttp {
    service: String,
    revision: u64,
    stats: Arc<HttpStats>,
}

pub struct Engine {
    data_dir: PathBuf,
    state: Mutex<State>,
}

impl Engine {
    pub fn new(data_dir: PathBuf) -> Engine {
        Engine {
            data_dir,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the proxies match `plan`. A proxy that cannot listen (or open
    /// its access log) is reported with the reason, and tried again by the
    /// next `apply`.
    pub async fn apply(&self, generation: u64, plan: &Plan, sockets: &mut dyn Sockets) {
        // Proxies that are gone, or move, stop first: their address may be
        // the one a new proxy wants.
        let stopped: Vec<ProxyHandle> = {
            let mut st = self.state();
            let keep: BTreeMap<&str, SocketAddr> = plan
                .proxies
                .iter()
                .map(|p| (p.service.as_str(), p.listen))
                .collect();
            let gone: Vec<String> = st
                .proxies
                .iter()
                .filter(|(name, s)| keep.get(name.as_str()) != Some(&s.listen))
                .map(|(name, _)| name.clone())
                .collect();
            st.errors.retain(|name, _| keep.contains_key(name.as_str()));
            gone.iter()
                .filter_map(|name| st.proxies.remove(name))
                .map(|s| {
                    tracing::info!(service = %s.handle.service(), "proxy on {} closed", s.listen);
                    s.handle
                })
                .collect()
        };
        for handle in stopped {
            handle.shutdown();
        }
        for p in &plan.proxies {
            let options = || proxy_config::options_in(&p.settings, Some(&self.data_dir));
            let existing = self.state().proxies.contains_key(&p.service);
            if !existing {
                // The table is in force before the first connection is
                // accepted: connections that queued on the sockets while
                // no process served them are routed, not refused.
                let table = {
                    let mut st = self.state();
                    let st = &mut *st;
                    routing_table(
                        &p.service,
                        &p.routes,
                        &mut st.upstreams,
                        &mut st.stats,
                        &mut st.http,
                    )
                };
                let bound = match sockets.take(&p.service, p.listen) {
                    Ok(listeners) => {
                        ProxyHandle::from_listeners_with_routes(
                            p.service.clone(),
                            listeners,
                            options(),
                            table,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                let mut st = self.state();
                match bound {
                    Ok(handle) => {
                        tracing::info!(service = %p.service, "proxy listening on {}", p.listen);
                        st.errors.remove(&p.service);
                        st.proxies.insert(
                            p.service.clone(),
                            Served {
                                handle,
                                listen: p.listen,
                                settings_of: p.settings_of,
                                routes: Some(p.routes.clone()),
                            },
                        );
                    }
                    Err(e) => {
                        let text = format!("cannot listen on {}: {e}", p.listen);
                        if st.errors.get(&p.service) != Some(&text) {
                            tracing::error!(service = %p.service, "{text}; retrying");
                        }
                        st.errors.insert(p.service.clone(), text);
                        continue;
                    }
                }
            }
            let mut st = self.state();
            let st = &mut *st;
            let Some(served) = st.proxies.get_mut(&p.service) else {
                continue;
            };
            if served.settings_of != p.settings_of {
                match served.handle.set_options(options()) {
                    Ok(()) => served.settings_of = p.settings_of,
                    Err(e) => tracing::error!(
                        service = %p.service,
                        "cannot apply the proxy settings of revision {}: {e}",
                        p.settings_of
                    ),
                }
            }
            if served.routes.as_ref() != Some(&p.routes) {
                let table = routing_table(
                    &p.service,
                    &p.routes,
                    &mut st.upstreams,
                    &mut st.stats,
                    &mut st.http,
                );
                served.handle.set_routes(table);
                tracing::debug!(service = %p.service, "routing to {:?}", p.routes);
                served.routes = Some(p.routes.clone());
            }
        }
        let mut st = self.state();
        // Upstreams out of every plan leave once nothing is in flight.
        let wanted: std::collections::BTreeSet<&str> = plan
            .proxies
            .iter()
            .flat_map(|p| p.routes.upstreams.iter().map(|u| u.instance.as_str()))
            .collect();
        let idle_gone: Vec<String> = st
            .upstreams
            .iter()
            .filter(|(id, u)| !wanted.contains(id.as_str()) && u.in_flight() == 0)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle_gone {
            st.http.remove(&id);
            if let Some(u) = st.upstreams.remove(&id) {
                u.close_all();
            }
        }
        st.generation = generation;
    }

    /// What is served and counted now.
    pub fn report(&self) -> Report {
        let st = self.state();
        let mut proxies: BTreeMap<String, ProxyState> = st
            .proxies
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    ProxyState {
                        addr: Some(s.handle.local_addr()),
                        error: None,
                        counters: s.handle.counters(),
                    },
                )
            })
            .collect();
        for (name, e) in &st.errors {
            proxies.entry(name.clone()).or_default().error = Some(e.clone());
        }
        Report {
            generation: st.generation,
            proxies,
            stats: st
                .stats
                .iter()
                .map(|((s, r), stats)| (s.clone(), *r, stats.snapshot()))
                .collect(),
            in_flight: st
                .upstreams
                .iter()
                .map(|(id, u)| (id.clone(), u.in_flight() as u64))
                .filter(|(_, n)| *n > 0)
                .collect(),
            down: st
                .upstreams
                .iter()
                .filter(|(_, u)| u.is_down())
                .map(|(id, _)| id.clone())
                .collect(),
            http: st
                .http
                .iter()
                .map(|(id, h)| HttpReport {
                    service: h.service.clone(),
                    revision: Some(h.revision),
                    instance: id.clone(),
                    stats: h.stats.snapshot(),
                })
                .chain(st.proxies.iter().filter_map(|(name, s)| {
                    let stats = s.handle.unrouted_stats();
                    (stats.count() > 0).then(|| HttpReport {
                        service: name.clone(),
                        revision: None,
                        instance: String::new(),
                        stats,
                    })
                }))
                .collect(),
        }
    }

    pub fn in_flight(&self, instance: &str) -> usize {
        self.state()
            .upstreams
            .get(instance)
            .map_or(0, |u| u.in_flight())
    }

    /// Close the connections to an instance that is being stopped.
    pub fn close(&self, instance: &str) {
        let mut st = self.state();
        st.http.remove(instance);
        if let Some(u) = st.upstreams.remove(instance) {
            u.close_all();
        }
    }

    /// Stop accepting; let open connections finish within `grace`.
    pub fn retire(&self, grace: Duration) {
        for s in self.state().proxies.values() {
            s.handle.retire(grace);
        }
    }

    /// Stop accepting and close idle connections; requests in flight finish.
    pub fn shutdown(&self) {
        for s in self.state().proxies.values() {
            s.handle.shutdown();
        }
    }

    /// Client connections open over all proxies.
    pub fn open_connections(&self) -> usize {
        self.state()
            .proxies
            .values()
            .map(|s| s.handle.open_connections())
            .sum()
    }

    /// Where each proxy listens.
    pub fn listening(&self) -> BTreeMap<String, SocketAddr> {
        self.state()
            .proxies
            .iter()
            .map(|(name, s)| (name.clone(), s.listen))
            .collect()
    }
}

/// A routing table from its plan, reusing the upstreams the engine keeps.
fn routing_table(
    service: &str,
    plan: &RoutesPlan,
    upstreams: &mut BTreeMap<String, Arc<Upstream>>,
    stats: &mut BTreeMap<(String, u64), Arc<RevisionStats>>,
    http: &mut BTreeMap<String, InstanceHttp>,
) -> RoutingTable {
    let ups = plan
        .upstreams
        .iter()
        .map(|u| {
            if let Some(existing) = upstreams.get(&u.instance)
                && existing.addr() == u.addr
                && existing.revision() == u.revision
            {
                return existing.clone();
            }
            let counters = stats
                .entry((service.to_string(), u.revision))
                .or_default()
                .clone();
            let own = match http.get(&u.instance) {
                Some(h) if h.service == service && h.revision == u.revision => h.stats.clone(),
                _ => {
                    let stats = HttpStats::new();
                    http.insert(
                        u.instance.clone(),
                        InstanceHttp {
                            service: service.to_string(),
                            revision: u.revision,
                            stats: stats.clone(),
                        },
                    );
                    stats
                }
            };
            let new =
                Upstream::with_http_stats(u.instance.clone(), u.revision, u.addr, counters, own);
            if let Some(old) = upstreams.insert(u.instance.clone(), new.clone()) {
                old.close_all();
            }
            new
        })
        .collect();
    RoutingTable {
        upstreams: ups,
        split: plan.split.as_ref().map(split),
        stable: plan.stable,
    }
}

fn split(plan: &SplitPlan) -> Split {
    let stickiness = plan
        .stickiness
        .as_deref()
        .and_then(|s| ferry_core::canary::Stickiness::parse(s).ok())
        .map_or(Stickiness::None, |s| match s {
            ferry_core::canary::Stickiness::Header(h) => http::HeaderName::from_bytes(h.as_bytes())
                .map_or(Stickiness::None, Stickiness::Header),
            ferry_core::canary::Stickiness::Cookie(c) => Stickiness::Cookie(c),
        });
    Split {
        weights: plan.weights.clone(),
        stickiness,
        canary: plan.canary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ProxyPlan, UpstreamPlan};
    use http::StatusCode;

    fn plan(listen: SocketAddr, upstreams: &[(&str, u64, u16)]) -> Plan {
        Plan {
            proxies: vec![ProxyPlan {
                service: "web".into(),
                listen,
                settings: Default::default(),
                settings_of: 1,
                routes: RoutesPlan {
                    upstreams: upstreams
                        .iter()
                        .map(|&(id, revision, port)| UpstreamPlan {
                            instance: id.into(),
                            revision,
                            addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        })
                        .collect(),
                    split: None,
                    stable: Some(1),
                },
                drain_timeout_ms: 1000,
            }],
        }
    }

    fn counted(report: &Report, instance: &str) -> Option<u64> {
        report
            .http
            .iter()
            .find(|h| h.instance == instance)
            .map(|h| h.stats.count())
    }

    /// An instance's counters are one `Arc` for as long as it stays in the
    /// plans (even when its upstream is replaced after an address change),
    /// and are no longer reported once it left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instance_counters_survive_plans_and_leave_with_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(dir.path().to_path_buf());
        let listen = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        engine
            .apply(1, &plan(listen, &[("a", 1, 1), ("b", 1, 2)]), &mut BindHere)
            .await;
        let stats_of = |id: &str| Arc::clone(&engine.state().http[id].stats);
        let a = stats_of("a");
        a.record(StatusCode::OK, Duration::from_millis(1));
        a.record(StatusCode::NOT_FOUND, Duration::from_millis(1));
        stats_of("b").record(StatusCode::OK, Duration::from_millis(1));
        let report = engine.report();
        assert_eq!(
            (counted(&report, "a"), counted(&report, "b")),
            (Some(2), Some(1))
        );
        let a_report = report.http.iter().find(|h| h.instance == "a").unwrap();
        assert_eq!(
            (a_report.service.as_str(), a_report.revision),
            ("web", Some(1))
        );
        assert_eq!(a_report.stats.codes, [(200, 1), (404, 1)]);

        // "a" moved to another port, "b" left, "c" came.
        engine
            .apply(2, &plan(listen, &[("a", 1, 3), ("c", 2, 4)]), &mut BindHere)
            .await;
        assert!(Arc::ptr_eq(&a, &stats_of("a")));
        let report = engine.report();
        assert_eq!(counted(&report, "a"), Some(2));
        assert_eq!(counted(&report, "b"), None);
        assert_eq!(counted(&report, "c"), Some(0));
        // No answers of the proxy's own yet: no series for them.
        assert!(report.http.iter().all(|h| h.revision.is_some()));
        engine.shutdown();
    }
}
