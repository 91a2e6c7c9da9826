//! The operations layer: what the API does, as functions over the daemon's
//! state and store. Each mutation validates everything first, decides
//! (asking `ferry-core` where it can), commits the decision together with
//! its audit entry in one transaction, then publishes and wakes the loop.
//! HTTP is not known here: the handlers in `crate::http` parse, call one of
//! these, and map an [`OpError`] to a status.
//!
//! Modules: `deploy`, `rollback`, `gates` (approve, abort, promote, pause,
//! resume), `lifecycle` (upgrade, shutdown), `read` (status, rollouts, history, revisions, events,
//! measurements, audit, health). They depend on this module only.

pub mod deploy;
pub mod gates;
pub mod lifecycle;
pub mod read;
pub mod rollback;

use crate::daemon::{Core, Daemon};
use ferry_api::{AuditEntry, RolloutAccepted};
use ferry_core::redact;
use ferry_core::spec::Problem;
use ferry_store::{NewIds, NewRollout, StoreError};

/// Who asks: the credential and what the client says of itself.
#[derive(Debug, Clone)]
pub struct Actor {
    /// As recorded in the audit log, e.g. `admin-token (alice@build1)`.
    pub audit: String,
    /// What the client says of itself (`alice@build1`), recorded on
    /// rollouts and gate requests.
    pub name: String,
}

impl Actor {
    /// The admin token, used by a client that calls itself `name`.
    pub fn admin(name: &str) -> Actor {
        let name = bounded(name, 100);
        Actor {
            audit: format!("admin-token ({name})"),
            name,
        }
    }
}

/// Why an operation was refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request cannot be read (a bad name, a body that does not parse).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state.
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but not acceptable; every problem listed.
    #[error("{message}")]
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Accepted, tried, and it did not work; nothing was changed.
    #[error("{0}")]
    Failed(String),
}

pub type OpResult<T> = Result<T, OpError>;

/// How an accepted mutation ended.
#[derive(Debug)]
pub enum Accepted {
    /// A rollout started.
    Started(RolloutAccepted),
    /// A dry run: the plan; nothing changed.
    Planned(RolloutAccepted),
    /// The rollout in progress is being stopped (a rollback during it).
    Stopping(RolloutAccepted),
    /// A request was stored on the rollout in progress.
    Queued(RolloutAccepted),
}

/// `text`, cut to at most `max` bytes on a character boundary, marked with
/// `…` when cut: audit fields come from requests and must stay small.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Longest service name, path or action kept in an audit entry.
pub const AUDIT_FIELD_MAX: usize = 128;

/// The audit record of one mutation: accepted ones are committed with
/// their change, rejected ones are written on their own. Every mutation
/// is audited, whatever its outcome; secrets in `detail` are redacted.
pub struct Audit<'a> {
    d: &'a Daemon,
    actor: &'a Actor,
    action: String,
    target: String,
    detail: serde_json::Value,
}

impl<'a> Audit<'a> {
    pub fn new(
        d: &'a Daemon,
        actor: &'a Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Audit<'a> {
        let mut detail = detail;
        redact::redact_json(&mut detail);
        Audit {
            d,
            actor,
            action: action.to_string(),
            target: bounded(target, AUDIT_FIELD_MAX),
            detail,
        }
    }

    /// The entry to commit with an accepted change.
    pub fn entry(&self, outcome: &str, detail: Option<serde_json::Value>) -> AuditEntry {
        let detail = detail
            .map(|mut v| {
                redact::redact_json(&mut v);
                v
            })
            .unwrap_or_else(|| self.detail.clone());
        AuditEntry {
            id: 0,
            at: self.d.clock.now(),
            actor: self.actor.audit.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            detail,
            outcome: bounded(outcome, 4 * AUDIT_FIELD_MAX),
        }
    }

    /// Write an entry on its own (a dry run, a refusal). A failed write is
    /// logged; it does not change what the caller is told.
    pub fn record(&self, outcome: &str) {
        if let Err(e) = self.d.store.append_audit(&self.entry(outcome, None)) {
            tracing::error!("cannot write audit entry: {e}");
        }
    }

    /// Record the refusal and pass it on.
    pub fn reject<T>(&self, e: OpError) -> OpResult<T> {
        self.record(&format!("rejected: {e}"));
        Err(e)
    }
}

/// Start a rollout: the store allocates its id (and, with
/// `new_revision`, the service's next revision number) and writes what
/// `build` makes with them in one transaction; then it is announced, taken
/// into memory and published, so that a client reading right after sees it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_rollout(
    d: &Daemon,
    core: &mut Core,
    service: &str,
    new_revision: bool,
    webhooks: &[ferry_core::webhook::WebhookSpec],
    version: &str,
    now: u64,
    build: &mut dyn FnMut(NewIds) -> NewRollout,
) -> OpResult<RolloutAccepted> {
    let written = d.store.start_rollout(service, new_revision, now, build);
    core.note_store(&written);
    if written.is_err() {
        d.publish(core, now);
    }
    let (new, committed) = written?;
    if let Some((ended, _)) = &new.ended {
        core.rollouts.remove(&ended.id);
    }
    d.webhooks.announce(
        webhooks,
        &new.rollout,
        version,
        std::slice::from_ref(&new.started),
        committed
            .events
            .last()
            .map_or(&[][..], std::slice::from_ref),
        now,
    );
    let accepted = RolloutAccepted {
        rollout: Some(new.rollout.id),
        revision: new.rollout.to,
        message: new.started.message,
        plan: vec![],
    };
    core.states.insert(new.state.name.clone(), new.state);
    core.rollouts.insert(new.rollout.id, new.rollout);
    d.publish(core, now);
    Ok(accepted)
}
