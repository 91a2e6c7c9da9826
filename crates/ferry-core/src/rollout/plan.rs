//! The `--dry-run` plan: the rollout simulated with `advance` against a
//! world whose instances become ready at once.

use super::Phase;
use super::step::fmt_ms;
use super::{EventKind, InstanceObs, Observed, Rollout, RolloutKind, ServiceState, advance};
use crate::canary::{self, OnFailure, Pause};
use crate::spec::Strategy;

/// The plan `--dry-run` prints: the rollout simulated against instances that
/// become ready at once, one line per batch, gate and timeout.
pub fn plan(state: &ServiceState, r: &Rollout) -> Vec<String> {
    let mut lines = Vec::new();
    let p = &r.params;
    if p.has_pre_deploy {
        lines.push("run the pre_deploy hook once, to completion; if it fails, stop here (nothing else is touched)".to_string());
    }
    if r.strategy == Strategy::Canary
        && let Some(from) = r.from
    {
        canary_plan(r, from, &mut lines);
        lines.push(format!(
            "each new instance must be ready (and ready for min_ready {}) within deploy_timeout {}, or the deploy fails and traffic stays on the previous revision",
            fmt_ms(p.min_ready_ms),
            fmt_ms(p.deploy_timeout_ms)
        ));
        return lines;
    }
    let mut sim = r.clone();
    sim.phase = Phase::Progressing;
    sim.auto_approve = true;
    let mut s = state.clone();
    let mut world: Vec<InstanceObs> = Vec::new();
    for (rev, n) in &s.scale {
        for i in 0..*n {
            world.push(InstanceObs {
                id: format!("{rev}-{i}"),
                revision: *rev,
                created_at: 0,
                ready_since: Some(0),
                crash_loop: None,
                last_probe: None,
            });
        }
    }
    let mut now = r.started_at.max(1);
    let mut batch = 0;
    for _ in 0..10_000 {
        let observed = Observed {
            instances: world.clone(),
            measurements: Vec::new(),
        };
        let step = advance(&s, &sim, &observed, now);
        for e in &step.events {
            if e.kind == EventKind::Scale {
                batch += 1;
                lines.push(format!("batch {batch}: {}", e.message));
            }

            if e.kind == EventKind::Switched
                && !(r.auto_approve || p.auto_promote || r.kind == RolloutKind::Rollback)
            {
                lines.push(format!(
                    "gate: wait for `ferry approve {}` once the new set is ready (or deploy with --auto-approve)",
                    r.service
                ));
            }
            if e.kind == EventKind::Switched {
                lines.push(e.message.clone());
            }
        }
        s = step.state;
        sim = step.rollout;
        if sim.is_done() {
            break;
        }
        // Converge the simulated world to the new scale.
        world.retain(|i| s.scale.contains_key(&i.revision));
        for (rev, n) in &s.scale {
            let have = world.iter().filter(|i| i.revision == *rev).count() as u32;
            for _ in have..*n {
                world.push(InstanceObs {
                    id: format!("{rev}-{now}"),
                    revision: *rev,
                    created_at: now,
                    ready_since: Some(now),
                    crash_loop: None,
                    last_probe: None,
                });
            }
            let mut extra = have.saturating_sub(*n);
            world.retain(|i| {
                if i.revision == *rev && extra > 0 {
                    extra -= 1;
                    false
                } else {
                    true
                }
            });
        }
        now += p.min_ready_ms.max(1).max(
            p.steps
                .iter()
                .filter_map(|st| match st.pause {
                    Some(Pause::For(d)) => Some(d.as_millis()),
                    _ => None,
                })
                .max()
                .unwrap_or(1),
        );
    }
    lines.push(format!(
        "each new instance must be ready (and ready for min_ready {}) within deploy_timeout {}, or the deploy fails and traffic stays on the previous revision",
        fmt_ms(p.min_ready_ms),
        fmt_ms(p.deploy_timeout_ms)
    ));
    lines
}

/// A canary's plan, read straight off its steps.
fn canary_plan(r: &Rollout, from: u64, lines: &mut Vec<String>) {
    let p = &r.params;
    let total = p.steps.len();
    for (i, step) in p.steps.iter().enumerate() {
        if let Some(w) = step.weight {
            let n = canary::instances_for(w, p.instances);
            lines.push(format!(
                "step {}/{total}: canary (revision {}) takes {w} % of traffic on {n} instance{}",
                i + 1,
                r.to,
                if n == 1 { "" } else { "s" }
            ));
        }
        match step.pause {
            Some(Pause::For(d)) => lines.push(format!("step {}/{total}: hold for {d} while analysis judges", i + 1)),
            Some(Pause::Manual) if r.auto_approve => {
                lines.push(format!("step {}/{total}: manual pause skipped (--auto-approve)", i + 1))
            }
            Some(Pause::Manual) => lines.push(format!(
                "step {}/{total}: gate: wait for `ferry promote {}` (or deploy with --auto-approve)",
                i + 1,
                r.service
            )),
            None => {}
        }
    }
    lines.push(format!(
        "all steps passed: promoting revision {} to 100 % ({} instances), then revision {from} stops",
        r.to, p.instances
    ));
    let on_failure = match p.on_failure {
        OnFailure::Rollback => {
            format!("the canary's weight goes to 0 at once and traffic stays on revision {from}")
        }
        OnFailure::Pause => {
            "traffic holds where it is and the rollout waits for a human".to_string()
        }
    };
    lines.push(format!(
        "analysis: more than {} failed measurements → {on_failure}; more than {} inconclusive in a row → pause",
        p.failure_limit, p.inconclusive_limit
    ));
}
