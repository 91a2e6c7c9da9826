//! Requests from people (through the API) that act on a rollout in
//! progress: approve, abort, rollback, promote, pause and resume. Which
//! request is legal in which phase is decided here, beside the machine that
//! applies them, so the API only asks and stores.

use super::step::{begin_revert, event, release};
use super::{Event, EventKind, InstanceObs, Outcome, Phase, Rollout, ServiceState};
use crate::Millis;
use crate::spec::Strategy;
use serde::{Deserialize, Serialize};

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "gate")]
pub enum Gate {
    /// Blue-green: switch traffic once the new set is ready.
    Approve,
    /// Stop the rollout; traffic returns to the revision it started from.
    Abort,
    /// `ferry rollback` while the rollout runs: the same as abort, recorded
    /// as a rollback.
    Rollback,
    /// Canary: past the current step (`full`: every remaining step);
    /// blue-green: the same as approve.
    Promote { full: bool },
    /// Hold where it is.
    Pause,
    /// Go on after a hold.
    Resume,
}

/// A request waiting for the next `advance`, and who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRequest {
    #[serde(flatten)]
    pub gate: Gate,
    pub by: String,
}

impl Gate {
    /// The name people type (`ferry promote --full`), as audited.
    pub fn action(self) -> &'static str {
        match self {
            Gate::Approve => "approve",
            Gate::Abort => "abort",
            Gate::Rollback => "rollback",
            Gate::Promote { full: false } => "promote",
            Gate::Promote { full: true } => "promote --full",
            Gate::Pause => "pause",
            Gate::Resume => "resume",
        }
    }
}

impl Rollout {
    fn pending(&self, gate: Gate) -> bool {
        self.gates.iter().any(|g| g.gate == gate)
    }

    /// Queue `gate` from `by` if it applies to this rollout now: the message
    /// for the caller, or why it does not apply. Pure; the caller stores the
    /// rollout before anything acts on it.
    pub fn request(&mut self, gate: Gate, by: &str) -> Result<String, String> {
        let (id, name) = (self.id, self.service.clone());
        let phase = self.effective_phase();
        if self.is_done() {
            return Err(format!("rollout {id} of `{name}` has ended"));
        }
        if self.phase == Phase::Reverting {
            return Err(format!(
                "rollout {id} is reverting; traffic is already returning to revision {}",
                self.from.map_or("(none)".into(), |f| f.to_string())
            ));
        }
        let message = match gate {
            Gate::Promote { full } => {
                let promotable = self.strategy == Strategy::Canary
                    || (self.strategy == Strategy::BlueGreen
                        && matches!(phase, Phase::AwaitingApproval | Phase::Progressing));
                if !promotable {
                    return Err(format!(
                        "rollout {id} of `{name}` is a {} rollout{}; there is nothing to promote",
                        self.strategy.as_str(),
                        if phase == Phase::Monitoring {
                            " in its monitoring window"
                        } else {
                            ""
                        }
                    ));
                }
                if full {
                    format!(
                        "rollout {id}: promoting revision {} to 100 %, skipping the remaining steps",
                        self.to
                    )
                } else {
                    format!("rollout {id}: promoted past the current step")
                }
            }
            Gate::Pause => {
                if let Some(why) = &self.paused {
                    return Err(format!("rollout {id} is already paused: {why}"));
                }
                if self.pending(Gate::Pause) {
                    return Err(format!("rollout {id} is being paused already"));
                }
                if !matches!(phase, Phase::Progressing | Phase::AwaitingApproval) {
                    return Err(format!(
                        "rollout {id} is {}; only a rollout that is progressing or waiting at a gate can be paused",
                        phase.as_str()
                    ));
                }
                format!(
                    "rollout {id} paused: traffic and instances stay as they are until `ferry resume {name}`"
                )
            }
            Gate::Resume => {
                if self.phase != Phase::Paused && !self.pending(Gate::Pause) {
                    return Err(format!("rollout {id} is not paused"));
                }
                format!("rollout {id} resumed")
            }
            Gate::Approve => {
                let waiting = phase == Phase::AwaitingApproval
                    || (self.strategy == Strategy::BlueGreen && phase == Phase::Progressing);
                if !waiting {
                    return Err(format!(
                        "rollout {id} of `{name}` is not waiting for approval (it is {}, {} strategy)",
                        phase.as_str(),
                        self.strategy.as_str()
                    ));
                }
                format!(
                    "rollout {id} approved: traffic switches to revision {} once its set is ready",
                    self.to
                )
            }
            Gate::Abort => format!(
                "rollout {id} is being aborted; traffic returns to revision {}",
                self.from.map_or("(none)".into(), |f| f.to_string())
            ),
            Gate::Rollback => format!(
                "rollout {id} is being rolled back to revision {}",
                self.from.map_or("(none)".into(), |f| f.to_string())
            ),
        };
        self.gates.push(GateRequest {
            gate,
            by: by.to_string(),
        });
        Ok(message)
    }
}

/// Apply the queued requests in order. Returns true when one of them
/// stopped the rollout (abort, rollback), which ends this `advance`.
pub(super) fn apply(
    s: &mut ServiceState,
    r: &mut Rollout,
    obs: &[InstanceObs],
    now: Millis,
    events: &mut Vec<Event>,
) -> bool {
    for GateRequest { gate, by } in std::mem::take(&mut r.gates) {
        match gate {
            Gate::Abort | Gate::Rollback => {
                if r.phase == Phase::Reverting || r.is_done() {
                    continue;
                }
                r.rolled_back = gate == Gate::Rollback;
                let reason = if r.rolled_back {
                    format!("rolled back by {by}")
                } else {
                    format!("aborted by {by}")
                };
                r.abort_requested_by = Some(by);
                begin_revert(s, r, Outcome::Aborted, reason, None, obs, now, events);
                return true;
            }
            Gate::Pause => {
                if r.phase == Phase::Paused {
                    continue;
                }
                super::step::hold(r, format!("paused by {by}"), now);
                events.push(event(
                    EventKind::Paused,
                    format!(
                        "rollout {} paused by {by}; `ferry resume {}` continues it",
                        r.id, r.service
                    ),
                ));
            }
            Gate::Resume => {
                let Some(why) = r.paused.clone() else {
                    continue;
                };
                release(r, now);
                events.push(event(
                    EventKind::Resumed,
                    format!("rollout {} resumed by {by} (it was held: {why})", r.id),
                ));
            }
            Gate::Approve => {
                r.approved_by = Some(by);
            }
            Gate::Promote { full } => {
                release(r, now);
                match r.strategy {
                    Strategy::Canary if full => {
                        r.canary.step = r.params.steps.len();
                        events.push(event(
                            EventKind::Promoted,
                            format!("promoted to 100 % by {by} (remaining steps skipped)"),
                        ));
                    }
                    Strategy::Canary => {
                        let i = r.canary.step;
                        let holding = r.params.steps.get(i).is_some_and(|st| {
                            st.pause.is_some() || st.weight.is_some() && r.params.min_step_ms > 0
                        });
                        if holding && r.canary.applied == Some(i) {
                            r.canary.step += 1;
                            r.canary.step_since = now;
                        }
                        events.push(event(
                            EventKind::Promoted,
                            format!(
                                "promoted by {by}: step {}/{} ends, on to the next",
                                i + 1,
                                r.params.steps.len()
                            ),
                        ));
                    }
                    _ => {
                        r.approved_by = Some(by.clone());
                        events.push(event(EventKind::Promoted, format!("promoted by {by}")));
                    }
                }
                if r.phase == Phase::AwaitingApproval && r.strategy == Strategy::Canary {
                    super::step::set_phase(r, Phase::Progressing, now);
                }
            }
        }
    }
    false
}
