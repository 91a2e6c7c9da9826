//! Deploy: a new revision of a service, and the rollout that releases it
//! (or, with `dry_run`, the plan of that rollout).

use super::{Accepted, Actor, Audit, OpError, OpResult};
use crate::daemon::Daemon;
use ferry_api::{DeployRequest, RolloutAccepted};
use ferry_core::event::{Event, EventKind};
use ferry_core::revision::{Revision, check_version};
use ferry_core::rollout::{self, Params, Phase, Rollout, RolloutKind, ServiceState};
use ferry_core::spec::{Problem, valid_env_name, valid_service_name};
use ferry_store::{NewIds, NewRollout};
use std::sync::Arc;

/// What the audit log keeps of a deploy request (secrets redacted later).
pub fn audit_detail(req: &DeployRequest) -> serde_json::Value {
    serde_json::json!({
        "version": req.version,
        "overrides": req.overrides,
        "message": req.message,
        "strategy": req.strategy,
        "auto_approve": req.auto_approve,
        "dry_run": req.dry_run,
        "monitor": req.monitor.map(|m| m.to_string()),
        "config_file": req.config_file,
        "override_budget": req.override_budget,
        "override_reason": req.override_reason,
        "commit_time": req.commit_time,
    })
}

/// A service name in a path, or why it is not one.
pub fn check_name(name: &str) -> OpResult<()> {
    if valid_service_name(name) {
        Ok(())
    } else {
        Err(OpError::BadRequest(format!(
            "`{name}` is not a valid service name"
        )))
    }
}

/// Every problem with a deploy request, found before anything is stored.
pub fn validate(name: &str, req: &DeployRequest) -> OpResult<()> {
    check_name(name)?;
    let mut problems = req.spec.validate(name);
    if let Err(e) = check_version(&req.version) {
        problems.push(Problem {
            path: vec!["version".into()],
            message: e,
        });
    }
    if req.overrides.len() > 256 {
        problems.push(Problem {
            path: vec!["overrides".into()],
            message: format!("{} --set overrides; at most 256", req.overrides.len()),
        });
    }
    for (k, v) in &req.overrides {
        if !valid_env_name(k) {
            problems.push(Problem {
                path: vec!["overrides".into(), k.clone()],
                message: format!(
                    "--set {k}=…: `{k}` is not a valid variable name; use ASCII letters, digits and `_`, not starting with a digit"
                ),
            });
        }
        if let Some(why) = ferry_core::spec::unpassable(v) {
            problems.push(Problem {
                path: vec!["overrides".into(), k.clone()],
                message: format!("--set {k}=…: the value {why}"),
            });
        }
    }
    if !std::path::Path::new(&req.base_dir).is_absolute() {
        problems.push(Problem {
            path: vec!["base_dir".into()],
            message: "base_dir must be an absolute path".into(),
        });
    }
    match (&req.override_reason, req.override_budget) {
        (None, true) => problems.push(Problem {
            path: vec!["override_reason".into()],
            message: "--override-budget needs --reason \"why\" (it is audited)".into(),
        }),
        (Some(r), true) if r.trim().is_empty() || r.len() > 1024 => problems.push(Problem {
            path: vec!["override_reason".into()],
            message: "--reason must say why, in at most 1024 bytes".into(),
        }),
        (Some(_), false) => problems.push(Problem {
            path: vec!["override_reason".into()],
            message: "--reason goes with --override-budget".into(),
        }),
        _ => {}
    }
    if let Some(t) = req.commit_time
        && t > 32_503_680_000_000
    {
        problems.push(Problem {
            path: vec!["commit_time".into()],
            message: format!("commit_time = {t} is not a time in milliseconds since 1970"),
        });
    }
    if let Some(m) = &req.message
        && m.len() > 4096
    {
        problems.push(Problem {
            path: vec!["message".into()],
            message: "--message is longer than 4096 bytes".into(),
        });
    }
    problems.extend(validation_problems(name, req));
    if problems.is_empty() {
        return Ok(());
    }
    let summary = problems
        .iter()
        .map(|p| format!("{}: {}", p.key(), p.message))
        .collect::<Vec<_>>()
        .join("; ");
    Err(OpError::Invalid {
        message: format!("the deploy request is invalid: {summary}"),
        problems,
    })
}

/// The suites a deploy carries must be valid, and hold every suite its
/// gates name. A suite may name only this service (the daemon reaches
/// other services through their own proxies, which it knows too).
fn validation_problems(name: &str, req: &DeployRequest) -> Vec<Problem> {
    let gates = &req.spec.deploy.validate;
    let mut problems = Vec::new();
    let mut services: Vec<String> = req
        .validation
        .suites
        .values()
        .flat_map(|s| {
            s.service
                .iter()
                .chain(s.checks.iter().filter_map(|c| c.service.as_ref()))
        })
        .cloned()
        .collect();
    services.push(name.to_string());
    services.sort();
    services.dedup();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    problems.extend(req.validation.validate(&names));
    problems.extend(ferry_core::validation::validate_gates(
        name,
        gates,
        &req.validation,
    ));
    problems
}

/// Where the service may listen: its serving revision's address if it has
/// one; no overlap with another service; free, unless its own proxy holds
/// it.
fn check_listen(
    d: &Daemon,
    core: &mut crate::daemon::Core,
    name: &str,
    req: &DeployRequest,
    state: &ServiceState,
) -> OpResult<()> {
    let _ = d;
    let listen = req.spec.listen_addr().expect("validated");
    let current = state
        .stable
        .and_then(|n| core.revisions.get(name, n))
        .map(|r| r.spec.listen.clone());
    if let Some(cur) = &current
        && cur.parse::<std::net::SocketAddr>().ok() != Some(listen)
    {
        return Err(OpError::Invalid {
            message: format!(
                "services.{name}.listen: `{name}` serves on {cur}; changing listen of a deployed service is not supported yet. Keep listen = \"{cur}\""
            ),
            problems: vec![Problem {
                path: vec!["services".into(), name.into(), "listen".into()],
                message: format!("changed from {cur}"),
            }],
        });
    }
    let others: Vec<String> = core
        .states
        .iter()
        .filter(|(other, s)| *other != name && s.has_work())
        .map(|(other, _)| other.clone())
        .collect();
    for other in others {
        if let Some(theirs) = core.service_listen(&other)
            && ferry_core::spec::listens_overlap(listen, theirs)
        {
            return Err(OpError::Invalid {
                message: format!(
                    "services.{name}.listen: {listen} overlaps {theirs}, used by service `{other}`; give each service its own port"
                ),
                problems: vec![],
            });
        }
    }
    let ours = core
        .dataplane
        .report()
        .proxies
        .get(name)
        .and_then(|p| p.addr);
    if ours != Some(listen)
        && let Err(err) = std::net::TcpListener::bind(listen)
    {
        return Err(OpError::Invalid {
            message: format!(
                "services.{name}.listen: {listen} is already in use ({err}); stop what listens there or choose another address"
            ),
            problems: vec![],
        });
    }
    Ok(())
}

/// Release `req` as a new revision of `name`.
pub async fn deploy(
    d: &Arc<Daemon>,
    name: &str,
    req: DeployRequest,
    actor: &Actor,
) -> OpResult<Accepted> {
    let audit = Audit::new(
        d,
        actor,
        if req.dry_run {
            "deploy (dry run)"
        } else {
            "deploy"
        },
        name,
        audit_detail(&req),
    );
    if let Err(e) = validate(name, &req) {
        return audit.reject(e);
    }
    let mut core = d.core.lock().await;
    let now = d.clock.now();
    let mut state = core
        .states
        .get(name)
        .cloned()
        .unwrap_or_else(|| ServiceState {
            name: name.to_string(),
            ..Default::default()
        });
    // A release still in its monitoring window stands; the new deploy
    // supersedes the watching.
    let mut concluded = None;
    if let Some(id) = state.active_rollout
        && let Some(r) = core.rollouts.get(&id)
        && r.phase == Phase::Monitoring
    {
        let step = rollout::conclude_monitoring(&state, r, "a new deploy started", now);
        state = step.state.clone();
        concluded = Some((step.rollout, step.events));
    }
    if let Some(id) = state.active_rollout {
        return audit.reject(OpError::Conflict(format!(
            "rollout {id} of `{name}` is in progress; wait for it, or stop it with `ferry abort {name}`"
        )));
    }
    if let Err(e) = check_listen(d, &mut core, name, &req, &state) {
        return audit.reject(e);
    }
    // The error-budget gate, checked as the rollout starts.
    let budget_note = match crate::slo::gate(
        d,
        &mut core,
        name,
        req.spec.deploy.budget_policy,
        req.override_reason
            .as_deref()
            .filter(|_| req.override_budget),
        &actor.name,
    ) {
        Ok(note) => note,
        Err(refusal) if !req.dry_run => return audit.reject(OpError::Conflict(refusal)),
        Err(refusal) => Some(format!("this deploy would be refused: {refusal}")),
    };
    let strategy = req.strategy.unwrap_or(req.spec.deploy.strategy);
    let from_instances = state
        .stable
        .and_then(|n| state.scale.get(&n).copied())
        .unwrap_or(0);
    // The rollout as it would begin with the ids it is given.
    let begin = |id: u64, number: u64| {
        let mut r = Rollout::begin(
            id,
            name,
            RolloutKind::Deploy,
            state.stable,
            from_instances,
            number,
            strategy,
            Params::from_spec(&req.spec),
            req.auto_approve,
            now,
        );
        r.started_by = Some(actor.name.clone());
        if let Some(m) = req.monitor {
            r.params.monitor_ms = m.as_millis();
        }
        r
    };
    if req.dry_run {
        let number = d.store.revisions(name)?.last().map_or(1, |r| r.number + 1);
        let mut plan = Vec::new();
        if let Some((ended, _)) = &concluded {
            plan.push(format!(
                "rollout {}'s monitoring window ends now: revision {} stands",
                ended.id, ended.to
            ));
        }
        let planned = begin(0, number);
        plan.extend(budget_note.clone());
        plan.extend(rollout::plan(&state, &planned, &req.spec));
        audit.record("ok: nothing changed");
        return Ok(Accepted::Planned(RolloutAccepted {
            rollout: None,
            revision: number,
            message: format!(
                "dry run: would create revision {number} of `{name}` ({}) and roll it out: {}",
                req.version,
                planned.ran_as()
            ),
            plan,
        }));
    }
    let accepted = super::start_rollout(
        d,
        &mut core,
        name,
        true,
        &req.spec.webhooks,
        &req.version,
        now,
        &mut |ids: NewIds| {
            let number = ids.revision.expect("a deploy allocates a revision");
            let id = ids.rollout;
            let rollout = begin(id, number);
            let ran_as = rollout.ran_as();
            let mut next = state.clone();
            next.active_rollout = Some(id);
            next.retiring.remove(&number);
            NewRollout {
                revision: Some(Revision {
                    service: name.to_string(),
                    number,
                    version: req.version.clone(),
                    spec: req.spec.clone(),
                    overrides: req.overrides.clone(),
                    base_dir: req.base_dir.clone(),
                    config_file: req.config_file.clone(),
                    message: req.message.clone(),
                    author: actor.name.clone(),
                    created_at: now,
                    validation: req.validation.clone(),
                    commit_time: req.commit_time,
                }),
                rollout,
                ended: concluded.clone(),
                state: next,
                started: Event::new(
                    EventKind::Started,
                    format!(
                        "rollout {id}: {} revision {number} ({}) of `{name}`{}{}",
                        ran_as,
                        req.version,
                        state
                            .stable
                            .map(|s| format!(", replacing revision {s}"))
                            .unwrap_or_default(),
                        budget_note
                            .as_ref()
                            .map(|n| format!("; {n}"))
                            .unwrap_or_default()
                    ),
                ),
                audit: audit.entry(
                    "accepted",
                    Some(serde_json::json!({"request": audit_detail(&req), "revision": number, "rollout": id})),
                ),
            }
        },
    )?;
    drop(core);
    d.notify.notify_one();
    Ok(Accepted::Started(accepted))
}
