//! Reads: services and active rollouts from the published snapshot (no
//! lock, no store); history, revisions, finished rollouts, events,
//! measurements and the audit log from the store's read connection, which
//! never waits for a commit.

use super::{OpError, OpResult};
use crate::daemon::Daemon;
use ferry_api::{
    AUDIT_LIMIT_MAX, AuditEntry, Health, HistoryEntry, RolloutView, StoredEvent, StoredMeasurement,
    rfc3339,
};
use ferry_core::redact;
use ferry_core::revision::Revision;
use ferry_core::rollout::RolloutKind;
use std::collections::BTreeMap;

/// Every service's status, as JSON (serialized when it was published).
pub fn services_json(d: &Daemon) -> bytes::Bytes {
    d.snapshot().list_json.clone()
}

/// One service's status, as JSON (serialized when it was published).
pub fn service_json(d: &Daemon, name: &str) -> OpResult<bytes::Bytes> {
    d.snapshot()
        .services_json
        .get(name)
        .cloned()
        .ok_or_else(|| OpError::NotFound(format!("no service `{name}` has been deployed")))
}

/// One rollout: an active one as of the snapshot, a finished one from the
/// store.
pub fn rollout(d: &Daemon, id: u64) -> OpResult<RolloutView> {
    let snap = d.snapshot();
    if let Some(v) = snap.rollout(id) {
        return Ok(v.clone());
    }
    let r = d
        .store
        .rollout(id)?
        .ok_or_else(|| OpError::NotFound(format!("no rollout {id}")))?;
    let version = |n: u64| -> OpResult<Option<String>> {
        Ok(d.store.revision(&r.service, n)?.map(|rev| rev.version))
    };
    Ok(RolloutView {
        from_version: match r.from {
            Some(f) => version(f)?,
            None => None,
        },
        to_version: version(r.to)?.unwrap_or_default(),
        available: snap.available(&r.service, r.to),
        active: false,
        rollout: r,
    })
}

pub fn history(d: &Daemon, name: &str) -> OpResult<Vec<HistoryEntry>> {
    let rollouts = d.store.rollouts(name)?;
    if rollouts.is_empty() && d.store.service(name)?.is_none() {
        return Err(OpError::NotFound(format!(
            "no service `{name}` has been deployed"
        )));
    }
    let revisions: BTreeMap<u64, Revision> = d
        .store
        .revisions(name)?
        .into_iter()
        .map(|r| (r.number, r))
        .collect();
    Ok(rollouts
        .into_iter()
        .map(|r| {
            let rev = revisions.get(&r.to);
            HistoryEntry {
                rollout: r.id,
                kind: r.kind,
                revision: r.to,
                version: rev.map(|v| v.version.clone()).unwrap_or_default(),
                from: r.from,
                strategy: r.strategy,
                ran_as: r.ran_as(),
                phase: r.phase,
                outcome: r.outcome.map(|o| o.as_str().to_string()),
                reason: r.reason.clone(),
                message: if r.kind == RolloutKind::Rollback {
                    Some(format!("rollback to revision {}", r.to))
                } else {
                    rev.and_then(|v| v.message.clone())
                },
                author: r
                    .started_by
                    .clone()
                    .or_else(|| rev.map(|v| v.author.clone()))
                    .unwrap_or_default(),
                started_at: rfc3339(r.started_at),
                finished_at: r.finished_at.map(rfc3339),
                hook_output: r
                    .hook
                    .as_ref()
                    .map(|h| h.output.clone())
                    .filter(|o| !o.is_empty()),
            }
        })
        .collect())
}

/// A stored revision as JSON, secrets redacted.
pub fn revision(d: &Daemon, name: &str, number: u64) -> OpResult<serde_json::Value> {
    let rev = d
        .store
        .revision(name, number)?
        .ok_or_else(|| OpError::NotFound(format!("service `{name}` has no revision {number}")))?;
    let mut v = serde_json::to_value(&rev).expect("a revision serializes");
    redact::redact_json(&mut v);
    Ok(v)
}

pub fn events(d: &Daemon, id: u64, after: u64) -> OpResult<Vec<StoredEvent>> {
    if d.store.rollout(id)?.is_none() {
        return Err(OpError::NotFound(format!("no rollout {id}")));
    }
    // Sequence numbers are SQLite integers.
    if after > i64::MAX as u64 {
        return Err(OpError::BadRequest(format!(
            "after must be at most {}",
            i64::MAX
        )));
    }
    Ok(d.store.rollout_events(id, after)?)
}

pub fn measurements(d: &Daemon, id: u64) -> OpResult<Vec<StoredMeasurement>> {
    if d.store.rollout(id)?.is_none() {
        return Err(OpError::NotFound(format!("no rollout {id}")));
    }
    Ok(d.store.measurements(id)?)
}

pub fn audit(d: &Daemon, limit: u32) -> OpResult<Vec<AuditEntry>> {
    if !(1..=AUDIT_LIMIT_MAX).contains(&limit) {
        return Err(OpError::BadRequest(format!(
            "limit must be 1 to {AUDIT_LIMIT_MAX}, not {limit}"
        )));
    }
    Ok(d.store.audit(limit)?)
}

/// `/health`, from the snapshot; the clock fields are read now.
pub fn health(d: &Daemon) -> Health {
    let snap = d.snapshot();
    let now = d.clock.now();
    let status = if snap.checks.values().all(|v| v == "healthy") {
        "healthy"
    } else if snap.checks.values().any(|v| v == "unhealthy") {
        "unhealthy"
    } else {
        "degraded"
    };
    Health {
        status: status.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        timestamp: rfc3339(now),
        uptime_seconds: now.saturating_sub(d.started_at) / 1000,
        checks: snap.checks.clone(),
        problems: snap.problems.clone(),
        control_plane: ferry_api::ControlPlaneView {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: rfc3339(d.started_at),
        },
        data_plane: {
            let dp = &snap.data_plane;
            ferry_api::DataPlaneView {
                mode: dp.mode.clone(),
                pid: dp.pid,
                version: dp.version.clone(),
                started_at: dp.started_at.map(rfc3339),
                uptime_seconds: dp.started_at.map(|t| now.saturating_sub(t) / 1000),
                attached: dp.attached,
                restarts: dp.restarts,
                problem: dp.problem.clone(),
            }
        },
    }
}
