//! Ferry's durable state: revisions, rollouts, each service's desired
//! state, instances, the event log, analysis measurements and the audit
//! log, behind the [`Store`] trait. [`SqliteStore`] (one file, WAL,
//! `synchronous = FULL`) is the implementation; a PostgreSQL one would sit
//! beside it, with no change outside this crate.
//!
//! Every decision is written with [`Store::commit`] in one transaction before
//! the daemon acts on it, so a crash at any point leaves either the old or the
//! new state, never half of one. A new rollout's id, and its new revision's
//! number, are allocated inside the transaction that writes them
//! ([`Store::start_rollout`]), so two writers can never take the same.
#![forbid(unsafe_code)]

pub mod seal;
mod sqlite;

pub use sqlite::SqliteStore;

use ferry_core::Millis;
use ferry_core::analysis::Measurement;
pub use ferry_core::records::{AuditEntry, StoredEvent, StoredMeasurement};
use ferry_core::revision::Revision;
use ferry_core::rollout::{Event, Rollout, ServiceState};
pub use seal::{SealError, SecretKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state store holds a record Ferry cannot read ({what}): {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "state store was written by a newer Ferry (schema {found}, this Ferry knows {known}); upgrade ferry"
    )]
    TooNew { found: i64, known: i64 },
    #[error("state store: {0}")]
    Seal(#[from] SealError),
    #[error(
        "state store: its secrets were sealed with another key than the one given; restore the data dir's secret.key (or the FERRY_SECRET_KEY it was started with)"
    )]
    WrongKey,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A process Ferry runs for a revision. Written before the process starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub revision: u64,
    pub port: u16,
    /// Set right after spawning; the process group id equals the pid.
    pub pid: Option<i32>,
    /// When that process started (clock ticks since boot, from
    /// `/proc/<pid>/stat`): with the pid, it names the process even when
    /// the program rewrites its environment (nginx, PostgreSQL and others
    /// overwrite it with their process title, marker included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
    pub state: InstanceState,
    pub created_at: Millis,
    pub restarts: u32,
    pub log_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Should be running (it may be between restarts).
    Running,
    /// Being drained and stopped; never routed to again.
    Stopping,
}

/// Everything one decision changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub revision: Option<&'a Revision>,
    pub rollout: Option<&'a Rollout>,
    /// Another rollout this decision ends (a monitoring window a new
    /// deploy supersedes).
    pub ended: Option<&'a Rollout>,
    pub state: Option<&'a ServiceState>,
    pub events: Vec<(Option<u64>, &'a Event)>,
    pub service: Option<&'a str>,
    pub audit: Option<&'a AuditEntry>,
    /// Analysis measurements of a rollout: (rollout id, measurement).
    pub measurements: Vec<(u64, &'a Measurement)>,
    pub now: Millis,
}

/// What a commit wrote that the caller needs: the sequence numbers of its
/// events, in order (the `seq` of `GET /v1/rollouts/{id}/events`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub events: Vec<u64>,
}

/// The ids a new rollout gets, allocated in the transaction that writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewIds {
    pub rollout: u64,
    /// The service's next revision number, when the rollout brings one.
    pub revision: Option<u64>,
}

/// A rollout about to start, with everything its first commit writes.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// The new revision (a deploy); a rollback reuses a stored one.
    pub revision: Option<Revision>,
    pub rollout: Rollout,
    /// A rollout it ends (a monitoring window a new deploy supersedes),
    /// with the events that close it.
    pub ended: Option<(Rollout, Vec<Event>)>,
    /// The service's state with `active_rollout` set.
    pub state: ServiceState,
    pub started: Event,
    pub audit: AuditEntry,
}

/// Where Ferry keeps its state. Writes are durable when they return.
/// Reads see the last commit and never wait for one in progress.
pub trait Store: Send + Sync {
    /// A value in the meta table, created with `init` the first time.
    fn meta_or_init(&self, key: &str, init: &mut dyn FnMut() -> String) -> Result<String>;
    /// Write one decision atomically.
    fn commit(&self, change: &Change<'_>) -> Result<Committed>;
    /// Start a rollout of `service`: allocate its id (and, with
    /// `new_revision`, the service's next revision number), and write what
    /// `build` makes with them, all in one transaction. Returns it.
    fn start_rollout(
        &self,
        service: &str,
        new_revision: bool,
        now: Millis,
        build: &mut dyn FnMut(NewIds) -> NewRollout,
    ) -> Result<(NewRollout, Committed)>;
    fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// The newest `limit` audit entries, oldest first.
    fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>>;
    fn services(&self) -> Result<Vec<ServiceState>>;
    fn service(&self, name: &str) -> Result<Option<ServiceState>>;
    /// A service's revisions, secrets opened.
    fn revisions(&self, service: &str) -> Result<Vec<Revision>>;
    /// One revision, secrets opened.
    fn revision(&self, service: &str, number: u64) -> Result<Option<Revision>>;
    fn rollout(&self, id: u64) -> Result<Option<Rollout>>;
    /// Rollouts of a service, oldest first.
    fn rollouts(&self, service: &str) -> Result<Vec<Rollout>>;
    fn instances(&self) -> Result<Vec<InstanceRecord>>;
    fn put_instance(&self, rec: &InstanceRecord) -> Result<()>;
    fn delete_instance(&self, id: &str) -> Result<()>;
    /// Every measurement of a rollout's analysis, oldest first.
    fn measurements(&self, rollout: u64) -> Result<Vec<StoredMeasurement>>;
    /// Events of one rollout after sequence number `after`.
    fn rollout_events(&self, rollout: u64, after: u64) -> Result<Vec<StoredEvent>>;
}
