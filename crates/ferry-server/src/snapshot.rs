//! What API reads see: the daemon's state as of the last publish, taken
//! under the lock by the reconcile loop after every tick and by every
//! mutation (`daemon/publish.rs`), and read by status, `/health` and
//! `/metrics` without any lock, so no read waits for a tick or a store
//! commit. Plain data.

use crate::metrics::MetricsView;
use ferry_api::{InstanceState, RolloutView, ServiceStatus};
use ferry_core::Millis;
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
    pub data_plane: crate::dataplane::DataPlaneInfo,
}

impl Snapshot {
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

/// `value` as JSON. Serializing a status cannot fail (plain data, string
/// keys).
pub fn json<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).expect("a status serializes"))
}
