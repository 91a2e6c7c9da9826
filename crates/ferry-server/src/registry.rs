//! What the daemon keeps beside its stored state: the revisions it has
//! read (immutable, so cached), each revision's request counters (shared by
//! the proxy, analysis and `/metrics`), and the proxy upstream of each
//! instance, which the instance driver asks about while it drains one.

use crate::driver::{Endpoint, Traffic};
use ferry_core::revision::Revision;
use ferry_proxy::{RevisionStats, Upstream};
use ferry_store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Revisions by (service, number), read from the store once.
pub struct Revisions {
    store: Arc<dyn Store>,
    cache: Mutex<BTreeMap<(String, u64), Arc<Revision>>>,
}

impl Revisions {
    pub fn new(store: Arc<dyn Store>) -> Revisions {
        Revisions {
            store,
            cache: Mutex::default(),
        }
    }

    pub fn get(&self, service: &str, number: u64) -> Option<Arc<Revision>> {
        let key = (service.to_string(), number);
        if let Some(r) = locked(&self.cache).get(&key) {
            return Some(r.clone());
        }
        let rev = Arc::new(self.store.revision(service, number).ok()??);
        locked(&self.cache).insert(key, rev.clone());
        Some(rev)
    }
}

/// Each revision's request counters.
#[derive(Default)]
pub struct Stats {
    map: Mutex<BTreeMap<(String, u64), Arc<RevisionStats>>>,
}

impl Stats {
    pub fn of(&self, service: &str, revision: u64) -> Arc<RevisionStats> {
        locked(&self.map)
            .entry((service.to_string(), revision))
            .or_default()
            .clone()
    }

    pub fn all(&self) -> Vec<((String, u64), Arc<RevisionStats>)> {
        locked(&self.map)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The proxy upstream of each instance, by instance id: created once per
/// endpoint and kept while the instance lives, so its connection pools and
/// in-flight count survive routing swaps.
#[derive(Default)]
pub struct Upstreams {
    map: Mutex<BTreeMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    /// The upstream of `ep` (a new one if the instance is new or moved).
    pub fn of(&self, ep: &Endpoint, stats: impl FnOnce() -> Arc<RevisionStats>) -> Arc<Upstream> {
        let mut map = locked(&self.map);
        if let Some(u) = map.get(&ep.instance)
            && u.addr() == ep.addr
        {
            return u.clone();
        }
        let u = Upstream::new(ep.instance.clone(), ep.revision, ep.addr, stats());
        map.insert(ep.instance.clone(), u.clone());
        u
    }
}

impl Traffic for Upstreams {
    fn in_flight(&self, instance: &str) -> usize {
        locked(&self.map).get(instance).map_or(0, |u| u.in_flight())
    }

    fn close(&self, instance: &str) {
        if let Some(u) = locked(&self.map).remove(instance) {
            u.close_all();
        }
    }
}
