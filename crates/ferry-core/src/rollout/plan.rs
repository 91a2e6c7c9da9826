//! The `--dry-run` plan: the rollout run by [`advance`] itself, against a
//! simulated world where instances become ready at once, people approve at
//! every gate and every analysis round passes. Each line is an event the
//! real run would emit (or the gate, check or window it would meet), so the
//! plan and the run cannot disagree; what the simulation cannot know
//! (timeouts, what failure does) is stated from the same parameters.

use super::step::fmt_ms;
use super::{
    EventKind, Gate, HookResult, InstanceObs, Judging, Observed, Phase, Rollout, RolloutKind,
    ServiceState, advance,
};
use crate::Millis;
use crate::analysis::{AnalysisSpec, Check, Measurement, Verdict};
use crate::canary::{OnFailure, Pause};
use crate::spec::{ServiceSpec, Strategy};

/// Who acts at the gates of the simulated run.
const PLANNER: &str = "(the plan)";

/// The plan `--dry-run` prints for rollout `r` of a service in `state`,
/// whose new revision has `spec` (the source of `r.params`).
pub fn plan(state: &ServiceState, r: &Rollout, spec: &ServiceSpec) -> Vec<String> {
    let mut lines = Vec::new();
    if r.params.has_pre_deploy && r.kind == RolloutKind::Deploy {
        lines.push(format!(
            "pre_deploy hook: runs once, to completion, within pre_deploy_timeout {}; if it fails or times out the rollout fails and nothing else is touched",
            spec.pre_deploy_timeout
        ));
    }
    let sim = simulate(state, r, spec.analysis.as_ref());
    lines.extend(sim.lines);
    lines.extend(unused_analysis(r, spec.analysis.as_ref(), &sim.judged));
    lines.extend(rules(r, spec));
    let mut total = if sim.elapsed == 0 {
        "takes as long as the new instances take to start and pass their readiness probe"
            .to_string()
    } else {
        format!(
            "takes at least {} (holds, min_ready, analysis rounds and windows), plus the time the new instances take to start and pass their readiness probe",
            fmt_ms(sim.elapsed)
        )
    };
    if sim.gates > 0 {
        total.push_str(&format!(
            ", plus the wait at {} gate{}",
            sim.gates,
            if sim.gates == 1 { "" } else { "s" }
        ));
    }
    lines.push(total);
    lines
}

/// What the simulated run showed.
struct Simulated {
    lines: Vec<String>,
    /// Time from the start to the end, not counting gates or start-up.
    elapsed: Millis,
    /// Gates a person must pass.
    gates: usize,
    /// The kinds of judging the run met.
    judged: Vec<Judging>,
}

fn simulate(state: &ServiceState, r: &Rollout, analysis: Option<&AnalysisSpec>) -> Simulated {
    let mut out = Simulated {
        lines: Vec::new(),
        elapsed: 0,
        gates: 0,
        judged: Vec::new(),
    };
    let mut s = state.clone();
    let mut r = r.clone();
    let start = r.started_at;
    let mut now = start;
    // What runs now: ready (and available) long ago.
    let mut world: Vec<InstanceObs> = Vec::new();
    for (rev, n) in &s.scale {
        for i in 0..*n {
            world.push(instance(*rev, i as u64, 0));
        }
    }
    let mut next_id = 1_000_000u64;
    let mut judging = Judging::Not;
    let mut last_round: Option<Millis> = None;
    let mut batch = 0;
    // Rolling deploys (and first deploys) go in batches.
    let rolls = r.strategy == Strategy::Rolling || r.from.is_none();
    for _ in 0..100_000 {
        // People: the hook succeeds, every gate is passed.
        // Validation gates pass (the plan lists them; it cannot run them).
        if let Some(stage) = r.validating
            && r.gate_run(stage).is_none()
        {
            r.validations.push(crate::validation::GateRun {
                stage,
                suites: r.params.validate.suites(stage).to_vec(),
                revision: None,
                started_at: now,
                finished_at: now,
                results: Vec::new(),
            });
        }
        if r.wants_hook() {
            r.hook = Some(HookResult {
                ok: true,
                summary: "exit status 0".into(),
                output: String::new(),
            });
        }
        if r.phase == Phase::AwaitingApproval && r.gates.is_empty() {
            let gate = match r.strategy {
                Strategy::Canary => Gate::Promote { full: false },
                _ => Gate::Approve,
            };
            let _ = r.request(gate, PLANNER);
        }
        // Analysis: one passing round per interval, the first one interval
        // after judging starts, as the daemon does.
        let checks = checks_for(r.judging(), analysis);
        let interval = analysis.map_or(1000, |a| a.interval.as_millis().max(1));
        let mut measurements = Vec::new();
        if checks.is_empty() {
            last_round = None;
        } else {
            match last_round {
                None => last_round = Some(now),
                Some(t) if now >= t + interval => {
                    measurements = checks.iter().map(|(label, _)| passing(label)).collect();
                    last_round = Some(now);
                }
                Some(_) => {}
            }
        }
        let observed = Observed {
            instances: world.clone(),
            measurements,
            alerts: Vec::new(),
        };
        let step = advance(&s, &r, &observed, now);
        let mut changed = step.state != s || step.rollout != r || !step.events.is_empty();
        for e in &step.events {
            match e.kind {
                EventKind::Scale if rolls => {
                    batch += 1;
                    out.lines.push(format!("batch {batch}: {}", e.message));
                }
                EventKind::AwaitingApproval => {
                    out.gates += 1;
                    out.lines.push(format!(
                        "gate: {} (or deploy with --auto-approve)",
                        e.message
                    ));
                }
                // Said once, up front; or the planner's own doing; or too
                // fine-grained for a plan.
                EventKind::Hook
                | EventKind::Validated
                | EventKind::Approved
                | EventKind::Promoted
                | EventKind::Available
                | EventKind::Started => {}
                EventKind::Done => {}
                _ => out.lines.push(e.message.clone()),
            }
        }
        s = step.state;
        r = step.rollout;
        let now_judging = r.judging();
        if now_judging != judging {
            judging = now_judging;
            if let Some(a) = analysis {
                let lines = judging_lines(&r, a, judging);
                if !lines.is_empty() {
                    out.judged.push(judging);
                }
                out.lines.extend(lines);
            }
        }
        if r.is_done() {
            let outcome = r.outcome.map_or("ended", |o| o.as_str());
            let reason = r.reason.clone().unwrap_or_default();
            out.lines.push(format!("{outcome}: {reason}"));
            break;
        }
        changed |= converge(&mut world, &s, now, &mut next_id);
        if changed {
            continue;
        }
        // Nothing moves at `now`: go to the next moment something can.
        match next_moment(&r, &world, last_round, interval, analysis.is_some(), now) {
            Some(t) => now = t,
            None => {
                out.lines.push(format!(
                    "(the plan cannot follow the rollout past this point: phase {})",
                    r.phase.as_str()
                ));
                break;
            }
        }
    }
    out.elapsed = now - start;
    out
}

fn instance(revision: u64, n: u64, at: Millis) -> InstanceObs {
    InstanceObs {
        id: format!("{revision}-{n}"),
        revision,
        created_at: at,
        ready_since: Some(at),
        crash_loop: None,
        last_probe: None,
    }
}

/// Start and stop simulated instances until each revision runs its scale.
/// Whether anything changed.
fn converge(
    world: &mut Vec<InstanceObs>,
    s: &ServiceState,
    now: Millis,
    next_id: &mut u64,
) -> bool {
    let before = world.len();
    world.retain(|i| s.scale.contains_key(&i.revision));
    let mut changed = world.len() != before;
    for (rev, want) in &s.scale {
        let have = world.iter().filter(|i| i.revision == *rev).count() as u32;
        for _ in have..*want {
            *next_id += 1;
            world.push(instance(*rev, *next_id, now));
            changed = true;
        }
        let mut extra = have.saturating_sub(*want);
        world.retain(|i| {
            let stop = i.revision == *rev && extra > 0;
            if stop {
                extra -= 1;
                changed = true;
            }
            !stop
        });
    }
    changed
}

/// The earliest moment after `now` at which the rollout can move: an
/// instance becomes available, a canary hold ends, a monitoring window
/// closes, an analysis round is due.
fn next_moment(
    r: &Rollout,
    world: &[InstanceObs],
    last_round: Option<Millis>,
    interval: Millis,
    has_analysis: bool,
    now: Millis,
) -> Option<Millis> {
    let p = &r.params;
    let mut candidates: Vec<Millis> = world
        .iter()
        .filter_map(|i| i.ready_since.map(|t| t + p.min_ready_ms))
        .collect();
    if r.strategy == Strategy::Canary
        && r.canary.applied == Some(r.canary.step)
        && let Some(step) = p.steps.get(r.canary.step)
    {
        let hold = match step.pause {
            Some(Pause::For(d)) => d.as_millis(),
            None if step.weight.is_some() => p.min_step_ms,
            _ => 0,
        };
        candidates.push(r.canary.step_since + hold);
    }
    if r.phase == Phase::Monitoring {
        candidates.push(r.phase_since + p.monitor_ms);
    }
    if has_analysis && let Some(t) = last_round {
        candidates.push(t + interval);
    }
    candidates.into_iter().filter(|t| *t > now).min()
}

fn checks_for(judging: Judging, analysis: Option<&AnalysisSpec>) -> Vec<(String, Check)> {
    let Some(a) = analysis else {
        return Vec::new();
    };
    match judging {
        Judging::Checks => a.checks(),
        Judging::PrePromotion => a.pre_promotion_checks(),
        Judging::Not => Vec::new(),
    }
}

fn passing(label: &str) -> Measurement {
    Measurement {
        check: label.to_string(),
        verdict: Verdict::Pass,
        value: None,
        baseline: None,
        detail: "passes (simulated)".into(),
    }
}

/// What a failed analysis does while the rollout is under way.
fn on_failure(r: &Rollout) -> String {
    match (r.params.on_failure, r.from) {
        (OnFailure::Rollback, Some(from)) if r.strategy == Strategy::Canary => {
            format!("the canary's weight goes to 0 at once, traffic stays on revision {from} and the rollout fails")
        }
        (OnFailure::Rollback, Some(from)) => {
            format!("the rollout fails and traffic stays on revision {from}")
        }
        (OnFailure::Rollback, None) => "the rollout fails".to_string(),
        (OnFailure::Pause, _) => {
            "the rollout pauses where it is (on_failure = \"pause\") until a human resumes, promotes or aborts it".to_string()
        }
    }
}

/// The lines that say how analysis judges the rollout from here on.
fn judging_lines(r: &Rollout, a: &AnalysisSpec, judging: Judging) -> Vec<String> {
    let checks = checks_for(judging, Some(a));
    if checks.is_empty() {
        return Vec::new();
    }
    let p = &r.params;
    let cadence = format!(
        "every {} over the last {} (a built-in check with fewer than {} requests in the window is inconclusive)",
        a.interval, a.window, a.min_requests
    );
    let failures = format!("more than {} failed measurements", p.failure_limit);
    let mut lines = vec![match judging {
        Judging::Checks if r.effective_phase() == Phase::Monitoring => {
            let relative = checks
                .iter()
                .any(|(_, c)| matches!(c, Check::Relative { .. } | Check::MannWhitney { .. }));
            format!(
                "analysis watches the release {cadence}; {failures} → it rolls back at once (revision {} takes all traffic as soon as it is available, no steps); inconclusive results are ignored{}:",
                r.from.unwrap_or_default(),
                if relative {
                    ", and checks against the baseline are inconclusive here (no stable revision serves)"
                } else {
                    ""
                }
            )
        }
        Judging::Checks => format!(
            "analysis judges the canary {cadence}; {failures} → {}; more than {} inconclusive in a row → the rollout pauses (it is not promoted on too little evidence):",
            on_failure(r),
            p.inconclusive_limit
        ),
        Judging::PrePromotion => format!(
            "pre-promotion analysis judges the new set {cadence}; the switch waits for {} passing rounds in a row; {failures} → {}:",
            p.pre_promotion_passes,
            on_failure(r)
        ),
        Judging::Not => return Vec::new(),
    }];
    lines.extend(checks.into_iter().map(|(label, check)| {
        let plain = check.label();
        if label == plain {
            format!("  check: {label}")
        } else {
            format!("  check: {label}: {plain}")
        }
    }));
    lines
}

/// Why declared analysis checks will not judge this rollout, if they will
/// not: said out loud rather than left out.
fn unused_analysis(
    r: &Rollout,
    analysis: Option<&AnalysisSpec>,
    judged: &[Judging],
) -> Vec<String> {
    let Some(a) = analysis else {
        return Vec::new();
    };
    let mut unused = Vec::new();
    if !a.checks.is_empty() && !judged.contains(&Judging::Checks) {
        let why = if r.from.is_none() {
            "a first deploy has no previous revision to compare with or return to".to_string()
        } else {
            format!(
                "they judge a canary's steps and a monitoring window, and this {} rollout has no monitoring window (set deploy.monitor or --monitor to watch it after 100 %)",
                r.ran_as()
            )
        };
        unused.push(format!(
            "analysis: the checks do not judge this rollout: {why}"
        ));
    }
    if !a.pre_promotion.is_empty() && !judged.contains(&Judging::PrePromotion) {
        let why = if r.from.is_none() {
            "a first deploy switches no traffic"
        } else {
            "they gate a blue-green switch"
        };
        unused.push(format!(
            "analysis: the pre_promotion checks do not judge this rollout: {why}"
        ));
    }
    unused
}

/// The rules of the run that a simulation where all goes well does not
/// show: readiness, timeouts, and what failure does.
fn rules(r: &Rollout, spec: &ServiceSpec) -> Vec<String> {
    let p = &r.params;
    let probe = spec.readiness_probe();
    let mut lines = vec![format!(
        "a new instance takes traffic once its readiness probe ({}) passes and has kept passing for min_ready {}",
        probe.describe(),
        fmt_ms(p.min_ready_ms)
    )];
    let after = match r.from {
        Some(from) => format!("traffic stays on (or returns to) revision {from}"),
        None => "the new instances stop (a first deploy has nothing to return to)".to_string(),
    };
    lines.push(format!(
        "the rollout fails, and {after}, if a new instance crash-loops, is not ready within deploy_timeout {t}, or the rollout makes no progress for deploy_timeout {t}",
        t = fmt_ms(p.deploy_timeout_ms)
    ));
    lines.push(format!(
        "an instance that stops leaves the proxy first, gets up to drain_timeout {} to finish requests in flight, then SIGTERM, and SIGKILL after stop_timeout {} (instances of the old revision follow its own settings)",
        spec.deploy.drain_timeout, spec.deploy.stop_timeout
    ));
    if r.strategy == Strategy::BlueGreen && r.from.is_some() && p.scale_down_delay_ms > 0 {
        lines.push(format!(
            "after the switch, `ferry rollback {}` within scale_down_delay {} is instant: the old set still runs",
            r.service,
            fmt_ms(p.scale_down_delay_ms)
        ));
    }
    lines
}
