//! Ferry's durable state, in SQLite (WAL, `synchronous = FULL`): revisions,
//! rollouts, each service's desired state, instances, the rollout event log
//! and the audit log.
//!
//! Every decision is written with [`Store::commit`] in one transaction before
//! the daemon acts on it, so a crash at any point leaves either the old or the
//! new state, never half of one.
#![forbid(unsafe_code)]

use ferry_core::Millis;
use ferry_core::analysis::Measurement;
use ferry_core::revision::Revision;
use ferry_core::rollout::{Event, Rollout, ServiceState};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A process Ferry runs for a revision. Written before the process starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub revision: u64,
    pub port: u16,
    /// Set right after spawning; the process group id equals the pid.
    pub pid: Option<i32>,
    pub state: InstanceState,
    pub created_at: Millis,
    pub restarts: u32,
    pub log_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Should be running (it may be between restarts).
    Running,
    /// Being drained and stopped; never routed to again.
    Stopping,
}

/// One entry of the audit log: who did what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: u64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Parameters, with secrets already redacted by the caller.
    pub detail: serde_json::Value,
    pub outcome: String,
}

/// A rollout event as stored, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub at: Millis,
    pub service: String,
    pub rollout: Option<u64>,
    pub kind: String,
    pub message: String,
}

/// Everything one decision changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub revision: Option<&'a Revision>,
    pub rollout: Option<&'a Rollout>,
    pub state: Option<&'a ServiceState>,
    pub events: Vec<(Option<u64>, &'a Event)>,
    pub service: Option<&'a str>,
    pub audit: Option<&'a AuditEntry>,
    /// Analysis measurements of a rollout: (rollout id, measurement).
    pub measurements: Vec<(u64, &'a Measurement)>,
    pub now: Millis,
}

/// A measurement as stored, with when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMeasurement {
    pub at: Millis,
    #[serde(flatten)]
    pub measurement: Measurement,
}

const SCHEMA_VERSION: i64 = 2;

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let conn = self.lock();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE revisions (
                    service TEXT NOT NULL, number INTEGER NOT NULL, body TEXT NOT NULL,
                    PRIMARY KEY (service, number));
                 CREATE TABLE rollouts (
                    id INTEGER PRIMARY KEY, service TEXT NOT NULL, body TEXT NOT NULL);
                 CREATE INDEX rollouts_service ON rollouts(service, id);
                 CREATE TABLE services (name TEXT PRIMARY KEY, body TEXT NOT NULL);
                 CREATE TABLE instances (id TEXT PRIMARY KEY, service TEXT NOT NULL, body TEXT NOT NULL);
                 CREATE TABLE events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, service TEXT NOT NULL,
                    rollout INTEGER, kind TEXT NOT NULL, message TEXT NOT NULL);
                 CREATE INDEX events_rollout ON events(rollout, seq);
                 CREATE TABLE audit (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
                    action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, outcome TEXT NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE measurements (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout INTEGER NOT NULL,
                    at INTEGER NOT NULL, body TEXT NOT NULL);
                 CREATE INDEX measurements_rollout ON measurements(rollout, seq);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        Ok(())
    }

    /// A value in the meta table, created with `init` the first time.
    pub fn meta_or_init(&self, key: &str, init: impl FnOnce() -> String) -> Result<String> {
        let conn = self.lock();
        if let Some(v) = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?
        {
            return Ok(v);
        }
        let v = init();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![key, v],
        )?;
        Ok(v)
    }

    /// Write one decision atomically.
    pub fn commit(&self, change: &Change<'_>) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(rev) = change.revision {
            tx.execute(
                "INSERT INTO revisions (service, number, body) VALUES (?1, ?2, ?3)",
                params![rev.service, rev.number as i64, to_json(rev)],
            )?;
        }
        if let Some(r) = change.rollout {
            tx.execute(
                "INSERT INTO rollouts (id, service, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![r.id as i64, r.service, to_json(r)],
            )?;
        }
        if let Some(s) = change.state {
            tx.execute(
                "INSERT INTO services (name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![s.name, to_json(s)],
            )?;
        }
        let service = change
            .service
            .or(change.state.map(|s| s.name.as_str()))
            .or(change.rollout.map(|r| r.service.as_str()))
            .unwrap_or("");
        for (rollout, e) in &change.events {
            tx.execute(
                "INSERT INTO events (at, service, rollout, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![change.now as i64, service, rollout.map(|r| r as i64), e.kind, e.message],
            )?;
        }
        if let Some(a) = change.audit {
            insert_audit(&tx, a)?;
        }
        for (rollout, m) in &change.measurements {
            tx.execute(
                "INSERT INTO measurements (rollout, at, body) VALUES (?1, ?2, ?3)",
                params![*rollout as i64, change.now as i64, to_json(m)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let conn = self.lock();
        insert_audit(&conn, entry)
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at, actor, action, target, detail, outcome FROM
             (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, actor, action, target, detail, outcome) = row?;
            out.push(AuditEntry {
                id: id as u64,
                at: at as u64,
                actor,
                action,
                target,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                outcome,
            });
        }
        Ok(out)
    }

    pub fn services(&self) -> Result<Vec<ServiceState>> {
        self.bodies(
            "SELECT body FROM services ORDER BY name",
            [],
            "service state",
        )
    }

    pub fn service(&self, name: &str) -> Result<Option<ServiceState>> {
        Ok(self
            .bodies(
                "SELECT body FROM services WHERE name = ?1",
                [name],
                "service state",
            )?
            .pop())
    }

    pub fn revisions(&self, service: &str) -> Result<Vec<Revision>> {
        self.bodies(
            "SELECT body FROM revisions WHERE service = ?1 ORDER BY number",
            [service],
            "revision",
        )
    }

    pub fn revision(&self, service: &str, number: u64) -> Result<Option<Revision>> {
        Ok(self
            .bodies(
                "SELECT body FROM revisions WHERE service = ?1 AND number = ?2",
                params![service, number as i64],
                "revision",
            )?
            .pop())
    }

    /// The number the next revision of `service` gets.
    pub fn next_revision_number(&self, service: &str) -> Result<u64> {
        let conn = self.lock();
        let max: Option<i64> = conn.query_row(
            "SELECT MAX(number) FROM revisions WHERE service = ?1",
            [service],
            |r| r.get(0),
        )?;
        Ok(max.unwrap_or(0) as u64 + 1)
    }

    pub fn next_rollout_id(&self) -> Result<u64> {
        let conn = self.lock();
        let max: Option<i64> = conn.query_row("SELECT MAX(id) FROM rollouts", [], |r| r.get(0))?;
        Ok(max.unwrap_or(0) as u64 + 1)
    }

    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>> {
        Ok(self
            .bodies(
                "SELECT body FROM rollouts WHERE id = ?1",
                [id as i64],
                "rollout",
            )?
            .pop())
    }

    /// Rollouts of a service, oldest first.
    pub fn rollouts(&self, service: &str) -> Result<Vec<Rollout>> {
        self.bodies(
            "SELECT body FROM rollouts WHERE service = ?1 ORDER BY id",
            [service],
            "rollout",
        )
    }

    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.bodies("SELECT body FROM instances ORDER BY id", [], "instance")
    }

    pub fn put_instance(&self, rec: &InstanceRecord) -> Result<()> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO instances (id, service, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![rec.id, rec.service, to_json(rec)],
        )?;
        Ok(())
    }

    pub fn delete_instance(&self, id: &str) -> Result<()> {
        let conn = self.lock();
        conn.execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Every measurement of a rollout's analysis, oldest first.
    pub fn measurements(&self, rollout: u64) -> Result<Vec<StoredMeasurement>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT at, body FROM measurements WHERE rollout = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([rollout as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, body) = row?;
            let measurement = serde_json::from_str(&body).map_err(|source| StoreError::Decode {
                what: "measurement".into(),
                source,
            })?;
            out.push(StoredMeasurement {
                at: at as u64,
                measurement,
            });
        }
        Ok(out)
    }

    /// Events of one rollout after sequence number `after`.
    pub fn rollout_events(&self, rollout: u64, after: u64) -> Result<Vec<StoredEvent>> {
        self.events(
            "SELECT seq, at, service, rollout, kind, message FROM events
             WHERE rollout = ?1 AND seq > ?2 ORDER BY seq",
            params![rollout as i64, after as i64],
        )
    }

    /// The newest `limit` events of a service, oldest first.
    pub fn service_events(&self, service: &str, limit: u32) -> Result<Vec<StoredEvent>> {
        self.events(
            "SELECT * FROM (SELECT seq, at, service, rollout, kind, message FROM events
             WHERE service = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
            params![service, limit],
        )
    }

    fn events(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<StoredEvent>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(p, |r| {
            Ok(StoredEvent {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get::<_, i64>(1)? as u64,
                service: r.get(2)?,
                rollout: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                kind: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        what: &str,
    ) -> Result<Vec<T>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(p, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            let body = body?;
            out.push(
                serde_json::from_str(&body).map_err(|source| StoreError::Decode {
                    what: what.to_string(),
                    source,
                })?,
            );
        }
        Ok(out)
    }
}

fn insert_audit(conn: &Connection, a: &AuditEntry) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (at, actor, action, target, detail, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![a.at as i64, a.actor, a.action, a.target, a.detail.to_string(), a.outcome],
    )?;
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing plain data structs to JSON cannot fail.
    serde_json::to_string(value).expect("plain data serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::rollout::Event;

    #[test]
    fn commit_is_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        {
            let store = Store::open(&path).unwrap();
            let state = ServiceState {
                name: "web".into(),
                stable: Some(1),
                ..Default::default()
            };
            let e = Event {
                kind: "scale".into(),
                message: "hi".into(),
            };
            store
                .commit(&Change {
                    state: Some(&state),
                    events: vec![(Some(7), &e)],
                    now: 5,
                    ..Default::default()
                })
                .unwrap();
            // A failing statement rolls back the whole change.
            let audit = AuditEntry {
                id: 0,
                at: 1,
                actor: "a".into(),
                action: "deploy".into(),
                target: "web".into(),
                detail: serde_json::json!({}),
                outcome: "ok".into(),
            };
            let dup = ServiceState {
                stable: Some(2),
                ..state.clone()
            };
            let rev_json = r#"{"service":"web","number":1,"version":"v1","spec":{"command":["x"],"listen":"127.0.0.1:1"},"overrides":{},"base_dir":"/","config_file":"f","message":null,"author":"a","created_at":1}"#;
            let rev: Revision = serde_json::from_str(rev_json).unwrap();
            store
                .commit(&Change {
                    revision: Some(&rev),
                    ..Default::default()
                })
                .unwrap();
            let err = store.commit(&Change {
                revision: Some(&rev),
                state: Some(&dup),
                audit: Some(&audit),
                ..Default::default()
            });
            assert!(err.is_err(), "duplicate revision must fail");
        }
        let store = Store::open(&path).unwrap();
        let s = store.service("web").unwrap().unwrap();
        assert_eq!(s.stable, Some(1), "the failed change left nothing behind");
        assert!(store.audit(10).unwrap().is_empty());
        assert_eq!(store.rollout_events(7, 0).unwrap()[0].message, "hi");
        assert_eq!(store.next_revision_number("web").unwrap(), 2);
        let id = store.meta_or_init("id", || "abc".into()).unwrap();
        assert_eq!(store.meta_or_init("id", || "other".into()).unwrap(), id);
    }
}
