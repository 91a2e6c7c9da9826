//! The data plane: the proxies in front of every service. The reconcile
//! loop computes a [`Plan`] (plain data: one proxy per service, its listen
//! address, `[proxy]` settings and routing table) and hands it to a
//! [`DataPlane`]; the data plane reports back what it serves and counts
//! ([`Report`]). Two implementations:
//!
//! - [`remote::Remote`] (the default): the proxies run in a separate
//!   process (`ferry dataplane`, [`process`]) that keeps serving with the
//!   last plan while the control plane restarts, crashes or upgrades. The
//!   control plane binds the listening sockets and passes them over a Unix
//!   socket ([`wire`]), keeping its own copies, so that a crash of the data
//!   plane only makes new connections queue while a new one starts.
//! - [`inline::Inline`]: the proxies run inside the daemon, as Ferry did
//!   before (`ferry serve --data-plane inline`); traffic stops while the
//!   daemon is down.
//!
//! Both drive the same [`engine::Engine`], which turns plans into
//! `ferry_proxy` handles.

pub mod engine;
pub mod inline;
pub mod process;
pub mod remote;
pub mod wire;

use crate::driver::{BoxFuture, Traffic};
use ferry_core::Millis;
use ferry_core::proxy_spec::ProxySpec;
use ferry_proxy::{HttpSnapshot, ProxyCounters, StatsSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a data-plane process records itself, in the data dir: its pid,
/// socket and version, for the next control plane to find.
pub const STATE_FILE: &str = "dataplane.json";

/// The environment variable that marks a data-plane process as belonging
/// to a daemon (its id), so that a pid read from [`STATE_FILE`] is only
/// ever signalled when it is still that process.
pub const MARKER_ENV: &str = "FERRY_DATAPLANE_OF";

/// What the data plane should serve: one proxy per service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub proxies: Vec<ProxyPlan>,
}

impl Plan {
    /// How long a retiring data plane lets its connections finish: the
    /// longest `drain_timeout` of the services it serves (30 s, the
    /// default, when it serves none).
    pub fn retire_grace(&self) -> std::time::Duration {
        let ms = self
            .proxies
            .iter()
            .map(|p| p.drain_timeout_ms)
            .max()
            .filter(|ms| *ms > 0)
            .unwrap_or(30_000);
        std::time::Duration::from_millis(ms)
    }
}

/// One service's proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyPlan {
    pub service: String,
    pub listen: SocketAddr,
    /// The `[proxy]` settings in force, from revision `settings_of`.
    pub settings: ProxySpec,
    pub settings_of: u64,
    pub routes: RoutesPlan,
    /// The service's `drain_timeout` (ms): how long a retiring data plane
    /// lets its connections finish.
    #[serde(default)]
    pub drain_timeout_ms: u64,
}

/// A routing table as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesPlan {
    /// Every available instance; `split` says which take regular traffic.
    pub upstreams: Vec<UpstreamPlan>,
    pub split: Option<SplitPlan>,
    /// The revision `X-Ferry-Revision: stable` selects.
    pub stable: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UpstreamPlan {
    pub instance: String,
    pub revision: u64,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// Basis points per revision, the canary's first.
    pub weights: Vec<(u64, u32)>,
    /// `header:NAME` or `cookie:NAME`, as in the spec; `None` per request.
    pub stickiness: Option<String>,
    pub canary: Option<u64>,
}

/// One proxy as the data plane sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    /// Where it listens, when it does.
    pub addr: Option<SocketAddr>,
    /// Why it does not, when it should.
    pub error: Option<String>,
    pub counters: ProxyCounters,
}

/// What the data plane says about itself and what it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The last plan applied (0: none yet).
    pub generation: u64,
    pub proxies: BTreeMap<String, ProxyState>,
    /// Request counters per service and revision.
    pub stats: Vec<(String, u64, StatsSnapshot)>,
    /// Requests in flight per instance, for every instance that has any
    /// (also ones already out of the routing table).
    pub in_flight: BTreeMap<String, u64>,
    /// Instances the proxy stopped sending to after failed connects.
    pub down: Vec<String>,
    /// Request counters by exact status code and latency, per instance
    /// the data plane routes to (or still has requests in flight to), and
    /// per service for what its proxy answered without an upstream. Absent
    /// from the reports of a data plane older than this field.
    #[serde(default)]
    pub http: Vec<HttpReport>,
}

/// One instance's (or one proxy's own) request counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpReport {
    pub service: String,
    /// `None`: the answers the service's proxy gave without choosing an
    /// upstream (400, 405, 408, 429, 503).
    pub revision: Option<u64>,
    /// The instance id, as `ferry status` shows it (empty with `revision`
    /// `None`).
    pub instance: String,
    pub stats: HttpSnapshot,
}

impl Report {
    pub fn stats_of(&self, service: &str, revision: u64) -> Option<&StatsSnapshot> {
        self.stats
            .iter()
            .find(|(s, r, _)| s == service && *r == revision)
            .map(|(_, _, snap)| snap)
    }
}

/// The data plane's process, for `ferry status` and `/health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPlaneInfo {
    /// `process` or `inline`.
    pub mode: String,
    pub pid: Option<u32>,
    pub version: Option<String>,
    /// When the data-plane process started (ms since the epoch).
    pub started_at: Option<Millis>,
    /// The control plane talks to it now.
    pub attached: bool,
    /// Data-plane processes started since this control plane started
    /// (after a crash, a hang or an upgrade).
    pub restarts: u32,
    /// What went wrong last, if anything did.
    pub problem: Option<String>,
}

/// How the data plane ends when the control plane does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Leave it serving with its last plan (a control-plane restart or
    /// upgrade): the next control plane re-attaches.
    Detach,
    /// Stop proxying: in-flight requests finish, then it exits.
    Shutdown,
}

/// The data plane, as the reconcile loop and the instance driver see it.
pub trait DataPlane: Traffic {
    /// Make the proxies match `plan`. Level-triggered: the same plan may
    /// come every tick. The remote data plane returns at once (the plan is
    /// sent by its link); the inline one binds and swaps before returning.
    fn apply<'a>(&'a self, plan: Plan) -> BoxFuture<'a, ()>;

    /// What the data plane reported last. Counters never go backwards
    /// across data-plane restarts.
    fn report(&self) -> Arc<Report>;

    /// A report taken after this call: the remote data plane is asked for
    /// one and answered within a second (else the last one is returned).
    /// For readers that must see every request already answered, such as
    /// `/metrics`.
    fn fresh_report<'a>(&'a self) -> BoxFuture<'a, Arc<Report>> {
        Box::pin(async move { self.report() })
    }

    fn info(&self) -> DataPlaneInfo;

    /// The instances the data plane routes to now, as found at start-up
    /// (a data plane that outlived the previous control plane).
    fn serving(&self) -> std::collections::BTreeSet<String>;

    /// Replace the running data plane with one started from `binary`
    /// (an upgrade): the new one takes over the listening sockets and is
    /// serving before the old one is retired. On error the old one keeps
    /// serving. Returns what happened, for people.
    fn replace<'a>(&'a self, binary: PathBuf) -> BoxFuture<'a, Result<String, String>>;

    /// The control plane is ending.
    fn stop<'a>(&'a self, how: Stop) -> BoxFuture<'a, ()>;
}

/// Counters that survive data-plane restarts: what earlier data planes
/// counted is added to what the current one reports.
#[derive(Debug, Default)]
pub(crate) struct Carry {
    base: BTreeMap<(String, u64), StatsSnapshot>,
    base_counters: BTreeMap<String, ProxyCounters>,
    /// Per instance (service, revision, instance): only for instances the
    /// last data plane still reported, so that instances that left are
    /// forgotten.
    base_http: BTreeMap<(String, Option<u64>, String), HttpSnapshot>,
}

impl Carry {
    /// Fold the last report of a data plane that is gone (or retired)
    /// into the base.
    pub(crate) fn retire(&mut self, last: &Report) {
        for (service, revision, snap) in &last.stats {
            let key = (service.clone(), *revision);
            let sum = match self.base.get(&key) {
                Some(b) => b.saturating_add(snap),
                None => snap.clone(),
            };
            self.base.insert(key, sum);
        }
        for (service, p) in &last.proxies {
            let sum = match self.base_counters.get(service) {
                Some(b) => add_counters(b, &p.counters),
                None => p.counters,
            };
            self.base_counters.insert(service.clone(), sum);
        }
        let mut base_http = BTreeMap::new();
        for h in &last.http {
            let key = (h.service.clone(), h.revision, h.instance.clone());
            let sum = match self.base_http.get(&key) {
                Some(b) => b.saturating_add(&h.stats),
                None => h.stats.clone(),
            };
            base_http.insert(key, sum);
        }
        // A data plane that never applied a plan reported no instances:
        // what came before it still stands. A proxy's own answers stand in
        // any case (one entry per service, as `base_counters`).
        for (key, b) in std::mem::take(&mut self.base_http) {
            if last.generation == 0 || key.1.is_none() {
                base_http.entry(key).or_insert(b);
            }
        }
        self.base_http = base_http;
    }

    /// `report` with earlier data planes' counts added.
    pub(crate) fn apply(&self, mut report: Report) -> Report {
        if self.base.is_empty() && self.base_counters.is_empty() && self.base_http.is_empty() {
            return report;
        }
        for (key, base) in &self.base {
            match report
                .stats
                .iter_mut()
                .find(|(s, r, _)| *s == key.0 && *r == key.1)
            {
                Some((_, _, snap)) => *snap = base.saturating_add(snap),
                None => report.stats.push((key.0.clone(), key.1, base.clone())),
            }
        }
        for (service, base) in &self.base_counters {
            if let Some(p) = report.proxies.get_mut(service) {
                p.counters = add_counters(base, &p.counters);
            }
        }
        for ((service, revision, instance), base) in &self.base_http {
            let current = report.http.iter_mut().find(|h| {
                h.service == *service && h.revision == *revision && h.instance == *instance
            });
            match current {
                Some(h) => h.stats = base.saturating_add(&h.stats),
                // An instance is reported while the current data plane
                // routes to it; a proxy's own answers while it serves.
                None if revision.is_none() && report.proxies.contains_key(service) => {
                    report.http.push(HttpReport {
                        service: service.clone(),
                        revision: None,
                        instance: instance.clone(),
                        stats: base.clone(),
                    });
                }
                None => {}
            }
        }
        report
    }
}

/// Counters add up; gauges (what is open now) are the current one's.
fn add_counters(base: &ProxyCounters, now: &ProxyCounters) -> ProxyCounters {
    ProxyCounters {
        connections_open: now.connections_open,
        connections_rejected: base
            .connections_rejected
            .saturating_add(now.connections_rejected),
        rate_limited: base.rate_limited.saturating_add(now.rate_limited),
        upgraded_open: now.upgraded_open,
        access_log_dropped: base
            .access_log_dropped
            .saturating_add(now.access_log_dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::HttpStats;
    use std::time::Duration;

    fn http(instance: &str, revision: Option<u64>, oks: u64) -> HttpReport {
        let stats = HttpStats::new();
        for _ in 0..oks {
            stats.record(http::StatusCode::OK, Duration::from_millis(1));
        }
        HttpReport {
            service: "web".into(),
            revision,
            instance: instance.into(),
            stats: stats.snapshot(),
        }
    }

    fn count(report: &Report, instance: &str) -> Option<u64> {
        report
            .http
            .iter()
            .find(|h| h.instance == instance)
            .map(|h| h.stats.of_code(200))
    }

    /// Per-instance counters never go backwards across a data-plane
    /// restart, and an instance the new data plane no longer routes to is
    /// no longer reported (nor carried further).
    #[test]
    fn carry_adds_instances_that_stay_and_forgets_those_that_left() {
        let mut carry = Carry::default();
        let proxies: BTreeMap<String, ProxyState> =
            [("web".to_string(), ProxyState::default())].into();
        let old = Report {
            generation: 4,
            proxies: proxies.clone(),
            http: vec![
                http("a", Some(1), 5),
                http("b", Some(1), 2),
                http("", None, 1),
            ],
            ..Report::default()
        };
        carry.retire(&old);
        // A fresh data plane that has not applied a plan yet: nothing of
        // the old instances is reported, and retiring it keeps the base.
        carry.retire(&Report::default());
        let new = Report {
            generation: 5,
            proxies,
            http: vec![http("a", Some(1), 1), http("c", Some(2), 1)],
            ..Report::default()
        };
        let seen = carry.apply(new.clone());
        assert_eq!(count(&seen, "a"), Some(6));
        assert_eq!(count(&seen, "b"), None);
        assert_eq!(count(&seen, "c"), Some(1));
        assert_eq!(count(&seen, ""), Some(1), "the proxy's own answers stay");
        carry.retire(&new);
        assert!(!carry.base_http.keys().any(|(_, _, i)| i == "b"));
        assert_eq!(carry.base_http.len(), 3, "a, c and the proxy's own");
    }
}
