//! `<data-dir>/alerts.db`: what alerting must not forget across a restart
//! or a `kill -9` — the rule groups' alert states, the notifier's state
//! (alerts, silences, acknowledgements, the notification log) — and the
//! history of every alert's state changes and every notification attempt.
//!
//! SQLite in WAL mode with `synchronous = NORMAL`: a committed write
//! survives the daemon being killed (it is in the WAL before `commit`
//! returns); only a power loss may take the last few.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

pub const FILE: &str = "alerts.db";

#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    #[error("alert store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("alert store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("alert store: {0}")]
    Json(#[from] serde_json::Error),
}

type Result<T> = std::result::Result<T, AlertStoreError>;

/// One line of alert history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Increasing with every entry.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// `pending`, `firing`, `resolved`, `inactive` (an alert's state),
    /// `silenced`, `inhibited`, `acknowledged`, `unacknowledged`,
    /// `notified`, `notify-failed` (a notification attempt).
    pub kind: String,
    pub alertname: String,
    /// The alert's fingerprint (16 hex digits), when it concerns one.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub fingerprint: String,
    /// The receiver (`name/kind[i]`), for notification attempts.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub receiver: String,
    /// What happened, in words.
    pub message: String,
    /// The alert's labels, the attempt number, the error, …
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A history line to append (the store gives `seq`).
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub at: i64,
    pub kind: String,
    pub alertname: String,
    pub fingerprint: String,
    pub receiver: String,
    pub message: String,
    pub detail: serde_json::Value,
}

pub struct AlertStore {
    conn: Mutex<Connection>,
}

impl AlertStore {
    pub fn open(path: &Path) -> Result<AlertStore> {
        let open = |source| AlertStoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            // Created private: it holds alert labels and annotations.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS history (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 alertname TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 receiver TEXT NOT NULL,
                 message TEXT NOT NULL,
                 detail TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS history_at ON history (at);
             CREATE INDEX IF NOT EXISTS history_alert ON history (alertname, at);",
        )?;
        Ok(AlertStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the stored value of `key`, with history lines, in one
    /// transaction: the state and what it says happened land together.
    pub fn save<T: Serialize>(&self, key: &str, value: &T, history: &[NewEntry]) -> Result<()> {
        let text = serde_json::to_string(value)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, text],
        )?;
        insert_history(&tx, history)?;
        tx.commit()?;
        Ok(())
    }

    pub fn load<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(match text {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        })
    }

    /// Every stored key starting with `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key FROM state WHERE substr(key, 1, ?2) = ?1")?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn append(&self, history: &[NewEntry]) -> Result<()> {
        if history.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_history(&tx, history)?;
        tx.commit()?;
        Ok(())
    }

    /// History at or after `since` (Unix ms), oldest first, optionally of
    /// one alert name, at most `limit` lines (the newest ones).
    pub fn history(
        &self,
        since: i64,
        alertname: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, kind, alertname, fingerprint, receiver, message, detail FROM history
             WHERE at >= ?1 AND (?2 IS NULL OR alertname = ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![since, alertname, limit as i64], |r| {
            let detail: String = r.get(7)?;
            Ok(HistoryEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                alertname: r.get(3)?,
                fingerprint: r.get(4)?,
                receiver: r.get(5)?,
                message: r.get(6)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })?;
        let mut out: Vec<HistoryEntry> = rows.collect::<std::result::Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Forget history older than `before` (Unix ms).
    pub fn prune(&self, before: i64) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM history WHERE at < ?1", [before])?)
    }
}

fn insert_history(tx: &rusqlite::Transaction<'_>, history: &[NewEntry]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO history (at, kind, alertname, fingerprint, receiver, message, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in history {
        stmt.execute(params![
            e.at,
            e.kind,
            e.alertname,
            e.fingerprint,
            e.receiver,
            e.message,
            e.detail.to_string()
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_history_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        {
            let s = AlertStore::open(&path).unwrap();
            let entry = NewEntry {
                at: 1_000,
                kind: "firing".into(),
                alertname: "HighErrorRate".into(),
                fingerprint: "00000000000000aa".into(),
                message: "HighErrorRate is firing".into(),
                ..Default::default()
            };
            s.save("rules/a.yml/g", &vec![1, 2, 3], &[entry]).unwrap();
            s.save("rules/a.yml/g", &vec![4], &[]).unwrap();
            s.append(&[NewEntry {
                at: 2_000,
                kind: "notified".into(),
                alertname: "Other".into(),
                receiver: "team/webhook[0]".into(),
                message: "sent".into(),
                ..Default::default()
            }])
            .unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let s = AlertStore::open(&path).unwrap();
        assert_eq!(s.load::<Vec<i32>>("rules/a.yml/g").unwrap(), Some(vec![4]));
        assert_eq!(s.load::<Vec<i32>>("nope").unwrap(), None);
        assert_eq!(s.keys("rules/").unwrap(), vec!["rules/a.yml/g".to_string()]);
        let all = s.history(0, None, 100).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].alertname, "HighErrorRate");
        assert!(all[0].seq < all[1].seq);
        assert_eq!(s.history(1_500, None, 100).unwrap().len(), 1);
        assert_eq!(
            s.history(0, Some("Other"), 100).unwrap()[0].receiver,
            "team/webhook[0]"
        );
        assert_eq!(
            s.history(0, None, 1).unwrap()[0].alertname,
            "Other",
            "the newest when limited"
        );
        assert_eq!(s.prune(1_500).unwrap(), 1);
    }
}
