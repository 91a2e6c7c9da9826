//! A store that fails when told to, and what the daemon does then: it
//! starts no process without a record, drains no instance it could not mark
//! stopping, loses no decision, says `degraded` in `/health`, and carries on
//! by itself once the store works again.

use crate::clock::SystemClock;
use crate::daemon::Daemon;
use crate::ops::{self, Actor};
use ferry_api::DeployRequest;
use ferry_core::revision::Revision;
use ferry_core::rollout::{Rollout, ServiceState};
use ferry_store::{
    AuditEntry, Change, Committed, InstanceRecord, NewIds, NewRollout, Result, SecretKey,
    SqliteStore, Store, StoreError, StoredEvent, StoredMeasurement,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// SQLite, with every write failing while `failing` is set.
struct Faulty {
    inner: SqliteStore,
    failing: AtomicBool,
}

impl Faulty {
    fn check(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full (injected)".into()),
            )));
        }
        Ok(())
    }
}

impl Store for Faulty {
    fn meta_or_init(&self, key: &str, init: &mut dyn FnMut() -> String) -> Result<String> {
        self.inner.meta_or_init(key, init)
    }
    fn commit(&self, change: &Change<'_>) -> Result<Committed> {
        self.check()?;
        self.inner.commit(change)
    }
    fn start_rollout(
        &self,
        service: &str,
        new_revision: bool,
        now: u64,
        build: &mut dyn FnMut(NewIds) -> NewRollout,
    ) -> Result<(NewRollout, Committed)> {
        self.check()?;
        self.inner.start_rollout(service, new_revision, now, build)
    }
    fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.check()?;
        self.inner.append_audit(entry)
    }
    fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        self.inner.audit(limit)
    }
    fn services(&self) -> Result<Vec<ServiceState>> {
        self.inner.services()
    }
    fn service(&self, name: &str) -> Result<Option<ServiceState>> {
        self.inner.service(name)
    }
    fn revisions(&self, service: &str) -> Result<Vec<Revision>> {
        self.inner.revisions(service)
    }
    fn revision(&self, service: &str, number: u64) -> Result<Option<Revision>> {
        self.inner.revision(service, number)
    }
    fn rollout(&self, id: u64) -> Result<Option<Rollout>> {
        self.inner.rollout(id)
    }
    fn rollouts(&self, service: &str) -> Result<Vec<Rollout>> {
        self.inner.rollouts(service)
    }
    fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.inner.instances()
    }
    fn put_instance(&self, rec: &InstanceRecord) -> Result<()> {
        self.check()?;
        self.inner.put_instance(rec)
    }
    fn delete_instance(&self, id: &str) -> Result<()> {
        self.check()?;
        self.inner.delete_instance(id)
    }
    fn measurements(&self, rollout: u64) -> Result<Vec<StoredMeasurement>> {
        self.inner.measurements(rollout)
    }
    fn rollout_events(&self, rollout: u64, after: u64) -> Result<Vec<StoredEvent>> {
        self.inner.rollout_events(rollout, after)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Live processes carrying this daemon's marker.
fn marked(daemon_id: &str) -> usize {
    ferry_runtime::find_marked(&format!("{daemon_id}/"))
        .iter()
        .filter(|m| m.is_leader())
        .count()
}

async fn tick_until(d: &Arc<Daemon>, what: &str, mut done: impl FnMut(&Arc<Daemon>) -> bool) {
    for _ in 0..200 {
        let _ = d.tick().await;
        if done(d) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_nothing_loses_nothing_and_is_reported_until_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty {
        inner: SqliteStore::open(&dir.path().join("ferry.db"), SecretKey::generate().unwrap())
            .unwrap(),
        failing: AtomicBool::new(false),
    });
    let daemon_id = format!("faults-{}", std::process::id());
    let d = Daemon::open(
        store.clone(),
        Arc::new(SystemClock),
        crate::Tokens {
            admin: "token".into(),
            read: "read-only".into(),
        },
        daemon_id.clone(),
        dir.path().to_path_buf(),
        Arc::new(crate::dataplane::inline::Inline::new(
            dir.path().to_path_buf(),
            0,
        )),
        crate::tsdb::MetricsDb::open(&dir.path().join("metrics"), &Default::default()).unwrap(),
    )
    .await
    .unwrap();
    let req: DeployRequest = serde_json::from_value(serde_json::json!({
        "spec": {
            "command": ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
            "listen": format!("127.0.0.1:{}", free_port()),
            "instances": 2,
            "readiness": {"tcp": true, "interval": "100ms"},
        },
        "version": "v1",
        "base_dir": dir.path(),
    }))
    .unwrap();
    let actor = Actor::admin("test");

    // A deploy while writes fail: refused, nothing half-done.
    store.failing.store(true, Ordering::SeqCst);
    let refused = ops::deploy::deploy(&d, "web", req.clone(), &actor).await;
    assert!(
        matches!(refused, Err(ops::OpError::Store(_))),
        "{refused:?}"
    );
    assert!(store.inner.service("web").unwrap().is_none());
    let health = ops::read::health(&d);
    assert_eq!(health.status, "degraded", "{health:?}");
    assert!(
        health.problems["store"].contains("disk is full"),
        "{health:?}"
    );

    // Accepted once the store works; then it fails before any tick.
    store.failing.store(false, Ordering::SeqCst);
    ops::deploy::deploy(&d, "web", req, &actor).await.unwrap();
    store.failing.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        assert!(d.tick().await.is_err(), "a tick that cannot commit says so");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        marked(&daemon_id),
        0,
        "no process starts without its record"
    );
    assert_eq!(ops::read::health(&d).status, "degraded");

    // Healed: the loop carries on by itself and the rollout completes.
    store.failing.store(false, Ordering::SeqCst);
    tick_until(&d, "the rollout to succeed", |d| {
        ops::read::service_json(d, "web").is_ok_and(|j| {
            let s: serde_json::Value = serde_json::from_slice(&j).unwrap();
            s["stable"] == 1 && s["rollout"].is_null()
        })
    })
    .await;
    assert_eq!(marked(&daemon_id), 2);
    assert_eq!(
        store.inner.instances().unwrap().len(),
        2,
        "each has a record"
    );
    assert_eq!(ops::read::health(&d).status, "healthy");
    let history = ops::read::history(&d, "web").unwrap();
    assert_eq!(history[0].outcome.as_deref(), Some("succeeded"));

    // Stopping while writes fail: nothing is drained unmarked.
    store.failing.store(true, Ordering::SeqCst);
    d.core.lock().await.driver.stop_all().await;
    assert_eq!(marked(&daemon_id), 2, "unmarked instances keep running");
    assert!(
        store
            .inner
            .instances()
            .unwrap()
            .iter()
            .all(|r| r.state == ferry_store::InstanceState::Running)
    );
    store.failing.store(false, Ordering::SeqCst);
    d.core.lock().await.driver.stop_all().await;
    assert_eq!(marked(&daemon_id), 0);
    assert!(
        store.inner.instances().unwrap().is_empty(),
        "records deleted"
    );
}
