//! What the daemon keeps beside its stored state: the revisions it has
//! read (immutable, so cached).

use ferry_core::revision::Revision;
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
