//! The SQLite store: one file, WAL, `synchronous = FULL`, a write
//! connection and a read-only one (in WAL mode a read never waits for a
//! commit's fsync), secrets sealed (`crate::seal`).

use super::*;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

const SCHEMA_VERSION: i64 = 3;

/// Sealed in `meta` under the store's key, so that a wrong key is found at
/// open rather than at the first secret.
const KEY_CHECK: (&str, &str) = ("ferry-store/key-check", "ok");

pub struct SqliteStore {
    /// Every write, and reads that allocate (next ids), go through this one.
    conn: Mutex<Connection>,
    /// Reads for the API: in WAL mode they see the last commit and never
    /// wait for one in progress (its fsync included).
    reader: Mutex<Connection>,
    /// Seals the secret values of revisions (see [`seal`]).
    key: SecretKey,
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`; `key` seals and opens
    /// secret values, and must be the key they were sealed with.
    pub fn open(path: &Path, key: SecretKey) -> Result<SqliteStore> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted and overwritten content is zeroed, not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            key,
        };
        store.migrate()?;
        store.check_key()?;
        Ok(store)
    }

    /// Was the store at `path` ever given a key? A store that does not
    /// exist yet, or was written by a Ferry from before secrets were
    /// sealed, was not.
    pub fn has_key(path: &Path) -> Result<bool> {
        if !path.exists() {
            return Ok(false);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let has_meta: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(false);
        }
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'key_check')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Refuse a key that is not the one the store's secrets are sealed
    /// with; a store that has no check yet takes this key's.
    fn check_key(&self) -> Result<()> {
        let conn = self.lock();
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            Some(v) => match self.key.open(KEY_CHECK.0, &v) {
                Ok(text) if text == KEY_CHECK.1 => Ok(()),
                _ => Err(StoreError::WrongKey),
            },
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                    [self.key.seal(KEY_CHECK.0, KEY_CHECK.1)?],
                )?;
                Ok(())
            }
        }
    }

    /// Seal every secret again under `new`, in one transaction (the key
    /// check too), and use `new` from now on. A crash leaves every secret
    /// under the old key or every one under the new.
    pub fn rekey(&mut self, new: SecretKey) -> Result<usize> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let sealed = rewrite_revisions(&tx, |mut rev| {
            seal::open_revision(&self.key, &mut rev)?;
            Ok(seal::seal_revision(&new, &rev)?)
        })?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [new.seal(KEY_CHECK.0, KEY_CHECK.1)?],
        )?;
        tx.commit()?;
        drop(conn);
        self.key = new;
        self.scrub()?;
        Ok(sealed)
    }

    /// Leave no old page images behind: empty the WAL into the database
    /// and rebuild it (with `secure_delete`, freed space is zeroed).
    fn scrub(&self) -> Result<()> {
        let conn = self.lock();
        conn.execute_batch(
            "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
        )?;
        Ok(())
    }

    /// The read connection (see [`Store::reader`]).
    fn read(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
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
        if version < 3 {
            // Secrets written in clear by an older Ferry are sealed now,
            // and the clear copies scrubbed from the file.
            drop(conn);
            let mut conn = self.lock();
            let tx = conn.transaction()?;
            let changed = rewrite_revisions(&tx, |rev| Ok(seal::seal_revision(&self.key, &rev)?))?;
            tx.execute_batch("PRAGMA user_version = 3;")?;
            tx.commit()?;
            drop(conn);
            if changed > 0 {
                self.scrub()?;
            }
        }
        Ok(())
    }

    /// Write a change inside `tx`.
    fn write(&self, tx: &rusqlite::Transaction<'_>, change: &Change<'_>) -> Result<Committed> {
        if let Some(rev) = change.revision {
            let sealed = seal::seal_revision(&self.key, rev)?;
            tx.execute(
                "INSERT INTO revisions (service, number, body) VALUES (?1, ?2, ?3)",
                params![rev.service, rev.number as i64, to_json(&sealed)],
            )?;
        }
        for r in change.ended.iter().chain(change.rollout.iter()) {
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
        let mut events = Vec::with_capacity(change.events.len());
        for (rollout, e) in &change.events {
            tx.execute(
                "INSERT INTO events (at, service, rollout, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![change.now as i64, service, rollout.map(|r| r as i64), e.kind.as_str(), e.message],
            )?;
            events.push(tx.last_insert_rowid() as u64);
        }
        if let Some(a) = change.audit {
            insert_audit(tx, a)?;
        }
        for (rollout, m) in &change.measurements {
            tx.execute(
                "INSERT INTO measurements (rollout, at, body) VALUES (?1, ?2, ?3)",
                params![*rollout as i64, change.now as i64, to_json(m)],
            )?;
        }
        Ok(Committed { events })
    }

    fn events(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<StoredEvent>> {
        let conn = self.read();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(p, |r| {
            let kind: String = r.get(4)?;
            let kind = ferry_core::event::EventKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Text,
                    format!("unknown event kind `{kind}`").into(),
                )
            })?;
            Ok(StoredEvent {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get::<_, i64>(1)? as u64,
                service: r.get(2)?,
                rollout: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                kind,
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
        let conn = self.read();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(p, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for body in rows {
            out.push(decode(&body?, what)?);
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    /// A value in the meta table, created with `init` the first time.
    fn meta_or_init(&self, key: &str, init: &mut dyn FnMut() -> String) -> Result<String> {
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

    fn commit(&self, change: &Change<'_>) -> Result<Committed> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let committed = self.write(&tx, change)?;
        tx.commit()?;
        Ok(committed)
    }

    fn start_rollout(
        &self,
        service: &str,
        new_revision: bool,
        now: Millis,
        build: &mut dyn FnMut(NewIds) -> NewRollout,
    ) -> Result<(NewRollout, Committed)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let rollout: Option<i64> =
            tx.query_row("SELECT MAX(id) FROM rollouts", [], |r| r.get(0))?;
        let revision = if new_revision {
            let max: Option<i64> = tx.query_row(
                "SELECT MAX(number) FROM revisions WHERE service = ?1",
                [service],
                |r| r.get(0),
            )?;
            Some(max.unwrap_or(0) as u64 + 1)
        } else {
            None
        };
        let new = build(NewIds {
            rollout: rollout.unwrap_or(0) as u64 + 1,
            revision,
        });
        let mut events: Vec<(Option<u64>, &Event)> = Vec::new();
        if let Some((ended, closing)) = &new.ended {
            events.extend(closing.iter().map(|e| (Some(ended.id), e)));
        }
        events.push((Some(new.rollout.id), &new.started));
        let committed = self.write(
            &tx,
            &Change {
                revision: new.revision.as_ref(),
                rollout: Some(&new.rollout),
                ended: new.ended.as_ref().map(|(r, _)| r),
                state: Some(&new.state),
                events,
                audit: Some(&new.audit),
                now,
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok((new, committed))
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let conn = self.lock();
        insert_audit(&conn, entry)
    }

    /// The newest `limit` audit entries, oldest first.
    fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.read();
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

    fn services(&self) -> Result<Vec<ServiceState>> {
        self.bodies(
            "SELECT body FROM services ORDER BY name",
            [],
            "service state",
        )
    }

    fn service(&self, name: &str) -> Result<Option<ServiceState>> {
        Ok(self
            .bodies(
                "SELECT body FROM services WHERE name = ?1",
                [name],
                "service state",
            )?
            .pop())
    }

    /// A service's revisions, secrets opened.
    fn revisions(&self, service: &str) -> Result<Vec<Revision>> {
        let mut revs: Vec<Revision> = self.bodies(
            "SELECT body FROM revisions WHERE service = ?1 ORDER BY number",
            [service],
            "revision",
        )?;
        for rev in &mut revs {
            seal::open_revision(&self.key, rev)?;
        }
        Ok(revs)
    }

    /// One revision, secrets opened.
    fn revision(&self, service: &str, number: u64) -> Result<Option<Revision>> {
        let mut rev: Option<Revision> = self
            .bodies(
                "SELECT body FROM revisions WHERE service = ?1 AND number = ?2",
                params![service, number as i64],
                "revision",
            )?
            .pop();
        if let Some(rev) = &mut rev {
            seal::open_revision(&self.key, rev)?;
        }
        Ok(rev)
    }

    fn rollout(&self, id: u64) -> Result<Option<Rollout>> {
        Ok(self
            .bodies(
                "SELECT body FROM rollouts WHERE id = ?1",
                [id as i64],
                "rollout",
            )?
            .pop())
    }

    /// Rollouts of a service, oldest first.
    fn rollouts(&self, service: &str) -> Result<Vec<Rollout>> {
        self.bodies(
            "SELECT body FROM rollouts WHERE service = ?1 ORDER BY id",
            [service],
            "rollout",
        )
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.bodies("SELECT body FROM instances ORDER BY id", [], "instance")
    }

    fn put_instance(&self, rec: &InstanceRecord) -> Result<()> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO instances (id, service, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![rec.id, rec.service, to_json(rec)],
        )?;
        Ok(())
    }

    fn delete_instance(&self, id: &str) -> Result<()> {
        let conn = self.lock();
        conn.execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Every measurement of a rollout's analysis, oldest first.
    fn measurements(&self, rollout: u64) -> Result<Vec<StoredMeasurement>> {
        let conn = self.read();
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
    fn rollout_events(&self, rollout: u64, after: u64) -> Result<Vec<StoredEvent>> {
        self.events(
            "SELECT seq, at, service, rollout, kind, message FROM events
             WHERE rollout = ?1 AND seq > ?2 ORDER BY seq",
            params![rollout as i64, after as i64],
        )
    }
}

/// Pass every stored revision through `f` and store what it returns when
/// the stored text changes; returns how many changed.
fn rewrite_revisions(
    tx: &rusqlite::Transaction<'_>,
    mut f: impl FnMut(Revision) -> Result<Revision>,
) -> Result<usize> {
    let mut rows = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT service, number, body FROM revisions")?;
        let found = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in found {
            rows.push(row?);
        }
    }
    let mut changed = 0;
    for (service, number, body) in rows {
        let next = to_json(&f(decode(&body, "revision")?)?);
        if next != body {
            changed += 1;
            tx.execute(
                "UPDATE revisions SET body = ?1 WHERE service = ?2 AND number = ?3",
                params![next, service, number],
            )?;
        }
    }
    Ok(changed)
}

fn decode<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|source| StoreError::Decode {
        what: what.to_string(),
        source,
    })
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
        let key = SecretKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        {
            let store = SqliteStore::open(&path, key.clone()).unwrap();
            let state = ServiceState {
                name: "web".into(),
                stable: Some(1),
                ..Default::default()
            };
            let e = Event::new(ferry_core::event::EventKind::Scale, "hi");
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
        let store = SqliteStore::open(&path, key.clone()).unwrap();
        let s = store.service("web").unwrap().unwrap();
        assert_eq!(s.stable, Some(1), "the failed change left nothing behind");
        assert!(store.audit(10).unwrap().is_empty());
        assert_eq!(store.rollout_events(7, 0).unwrap()[0].message, "hi");
        assert_eq!(store.revisions("web").unwrap().len(), 1);
        let id = store.meta_or_init("id", &mut || "abc".into()).unwrap();
        assert_eq!(
            store.meta_or_init("id", &mut || "other".into()).unwrap(),
            id
        );
    }

    fn secret_revision(number: u64) -> Revision {
        let json = format!(
            r#"{{"service":"web","number":{number},"version":"v1","spec":{{"command":["x"],"listen":"127.0.0.1:1","env":{{"DB_PASSWORD":"hunter2-env","GREETING":"hello-plain"}}}},"overrides":{{"API_TOKEN":"tok-override-77"}},"base_dir":"/","config_file":"f","message":null,"author":"a","created_at":1}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    /// Every byte Ferry keeps on disk for this store.
    fn on_disk(path: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            all.extend(std::fs::read(p).unwrap_or_default());
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn secrets_are_sealed_on_disk_and_open_only_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        let key = SecretKey::generate().unwrap();
        let rev = secret_revision(1);
        {
            let store = SqliteStore::open(&path, key.clone()).unwrap();
            store
                .commit(&Change {
                    revision: Some(&rev),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(store.revision("web", 1).unwrap().unwrap(), rev);
            let disk = on_disk(&path);
            assert!(contains(&disk, "hello-plain"), "plain values stay readable");
            for secret in ["hunter2-env", "tok-override-77"] {
                assert!(!contains(&disk, secret), "{secret} is on disk in clear");
            }
        }
        // The wrong key is refused at open, before any secret is needed.
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            SqliteStore::open(&path, other.clone()),
            Err(StoreError::WrongKey)
        ));
        // Rotation: every secret under the new key, the old one refused.
        let mut store = SqliteStore::open(&path, key.clone()).unwrap();
        assert_eq!(store.rekey(other.clone()).unwrap(), 1);
        drop(store);
        assert!(matches!(
            SqliteStore::open(&path, key),
            Err(StoreError::WrongKey)
        ));
        let store = SqliteStore::open(&path, other).unwrap();
        assert_eq!(store.revisions("web").unwrap(), vec![rev]);
    }

    #[test]
    fn a_store_with_clear_secrets_is_sealed_and_scrubbed_on_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        let key = SecretKey::generate().unwrap();
        let rev = secret_revision(1);
        {
            // What Ferry before sealing wrote: schema 2, secrets in clear.
            let store = SqliteStore::open(&path, key.clone()).unwrap();
            drop(store);
            let conn = Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO revisions (service, number, body) VALUES ('web', 1, ?1)",
                [to_json(&rev)],
            )
            .unwrap();
            conn.execute_batch("DELETE FROM meta; PRAGMA user_version = 2;")
                .unwrap();
        }
        assert!(contains(&on_disk(&path), "hunter2-env"));
        let store = SqliteStore::open(&path, key).unwrap();
        assert_eq!(store.revision("web", 1).unwrap().unwrap(), rev);
        let disk = on_disk(&path);
        assert!(!contains(&disk, "hunter2-env") && !contains(&disk, "tok-override-77"));
    }

    #[test]
    fn a_new_rollout_and_its_revision_get_their_ids_in_the_transaction_that_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ferry.db"), SecretKey::generate().unwrap())
            .unwrap();
        let build = |ids: NewIds| {
            let number = ids.revision.expect("a deploy brings a revision");
            let mut rev = secret_revision(number);
            rev.number = number;
            let rollout: Rollout = serde_json::from_value(serde_json::json!({
                "id": ids.rollout, "service": "web", "kind": "deploy", "from": null,
                "from_instances": 0, "to": number, "strategy": "rolling", "phase": "progressing",
                "outcome": null, "reason": null, "params": {"instances": 1, "max_surge": 1,
                "max_unavailable": 0, "min_ready_ms": 0, "deploy_timeout_ms": 1000,
                "scale_down_delay_ms": 0, "auto_promote": false, "has_pre_deploy": false},
                "auto_approve": false, "approved_by": null, "abort_requested_by": null,
                "hook": null, "started_at": 1, "phase_since": 1, "last_progress_at": 1,
                "finished_at": null, "failed_instance": null
            }))
            .unwrap();
            NewRollout {
                revision: Some(rev),
                state: ServiceState {
                    name: "web".into(),
                    active_rollout: Some(ids.rollout),
                    ..Default::default()
                },
                started: Event::new(
                    ferry_core::event::EventKind::Started,
                    format!("rollout {} of revision {number}", ids.rollout),
                ),
                audit: AuditEntry {
                    id: 0,
                    at: 1,
                    actor: "t".into(),
                    action: "deploy".into(),
                    target: "web".into(),
                    detail: serde_json::Value::Null,
                    outcome: "accepted".into(),
                },
                ended: None,
                rollout,
            }
        };
        let (first, _) = store
            .start_rollout("web", true, 1, &mut |ids| build(ids))
            .unwrap();
        let (second, committed) = store
            .start_rollout("web", true, 2, &mut |ids| build(ids))
            .unwrap();
        assert_eq!(
            committed.events,
            vec![2],
            "the started event's sequence number"
        );
        assert_eq!((first.rollout.id, first.rollout.to), (1, 1));
        assert_eq!((second.rollout.id, second.rollout.to), (2, 2));
        assert_eq!(store.revisions("web").unwrap().len(), 2);
        assert_eq!(
            store.rollout_events(2, 0).unwrap()[0].message,
            "rollout 2 of revision 2"
        );
        assert_eq!(
            store.service("web").unwrap().unwrap().active_rollout,
            Some(2)
        );
        assert_eq!(store.audit(10).unwrap().len(), 2);
    }
}
