//! The rollout machine, simulated: no processes, no clock.

use super::*;
use crate::analysis::{Measurement, Verdict};
use crate::canary::{CanaryStep, OnFailure, Pause};
use crate::duration::Dur;
use crate::spec::ServiceSpec;

fn seen(instances: &[InstanceObs]) -> Observed {
    Observed {
        instances: instances.to_vec(),
        ..Default::default()
    }
}

fn params(n: u32, surge: u32, unavail: u32) -> Params {
    Params {
        instances: n,
        max_surge: surge,
        max_unavailable: unavail,
        min_ready_ms: 1000,
        deploy_timeout_ms: 60_000,
        scale_down_delay_ms: 30_000,
        auto_promote: false,
        has_pre_deploy: false,
        steps: vec![],
        on_failure: OnFailure::Rollback,
        failure_limit: 0,
        inconclusive_limit: 2,
        monitor_ms: 0,
        pre_promotion_passes: 0,
        min_step_ms: 0,
        validate: Default::default(),
    }
}

/// A fake world: instances follow `scale` and become ready `ready_after`
/// ms after they start, unless their revision is in `broken`.
struct World {
    instances: Vec<InstanceObs>,
    next: u32,
    ready_after: u64,
    broken: Vec<u64>,
    crash: Vec<u64>,
}

impl World {
    fn new() -> World {
        World {
            instances: vec![],
            next: 0,
            ready_after: 500,
            broken: vec![],
            crash: vec![],
        }
    }
    fn converge(&mut self, state: &ServiceState, now: Millis) {
        let revs: Vec<u64> = state
            .scale
            .keys()
            .copied()
            .chain(self.instances.iter().map(|i| i.revision))
            .collect();
        for rev in revs {
            let want = state.scale.get(&rev).copied().unwrap_or(0) as usize;
            let have: Vec<usize> = (0..self.instances.len())
                .filter(|&i| self.instances[i].revision == rev)
                .collect();
            if have.len() > want {
                // stop newest first
                let mut drop: Vec<usize> = have[want..].to_vec();
                drop.sort_unstable_by(|a, b| b.cmp(a));
                for i in drop {
                    self.instances.remove(i);
                }
            }
            for _ in have.len()..want {
                self.next += 1;
                self.instances.push(InstanceObs {
                    id: format!("i{}", self.next),
                    revision: rev,
                    created_at: now,
                    ready_since: None,
                    crash_loop: None,
                    last_probe: None,
                });
            }
        }
        for i in &mut self.instances {
            if self.crash.contains(&i.revision) && now >= i.created_at + 300 {
                i.crash_loop = Some("exited with status 3, 3 times".into());
            } else if !self.broken.contains(&i.revision)
                && i.ready_since.is_none()
                && now >= i.created_at + self.ready_after
            {
                i.ready_since = Some(now);
            }
            if self.broken.contains(&i.revision) {
                i.last_probe = Some("HTTP 503".into());
            }
        }
    }
    fn available(&self, rev: u64, now: Millis) -> usize {
        self.instances
            .iter()
            .filter(|i| i.revision == rev && is_available(i.ready_since, 1000, now))
            .count()
    }
}

fn steady(n: u32) -> (ServiceState, World) {
    let mut w = World::new();
    let s = ServiceState {
        name: "web".into(),
        stable: Some(1),
        scale: [(1, n)].into(),
        traffic: vec![1],
        ..Default::default()
    };
    w.converge(&s, 0);
    for i in &mut w.instances {
        i.ready_since = Some(0);
    }
    (s, w)
}

/// Run until done; check invariants at every tick. Returns final state,
/// rollout and the minimum number of available instances in traffic seen.
fn run(
    mut s: ServiceState,
    mut r: Rollout,
    w: &mut World,
    start: Millis,
    approve_at: Option<Millis>,
) -> (ServiceState, Rollout, usize, Vec<Event>) {
    let mut now = start;
    let mut min_serving = usize::MAX;
    let mut all = vec![];
    while !r.is_done() {
        assert!(now < start + 600_000, "rollout never finished: {r:?}");
        if approve_at.is_some_and(|t| now >= t)
            && r.approved_by.is_none()
            && !r.gates.iter().any(|g| g.gate == Gate::Approve)
        {
            let _ = r.request(Gate::Approve, "tester");
        }
        let step = advance(&s, &r, &seen(&w.instances), now);
        s = step.state;
        r = step.rollout;
        all.extend(step.events);
        let n = r.params.instances + r.params.max_surge;
        let total: u32 = s.scale.values().sum();
        assert!(
            total <= n.max(r.from_instances) + r.params.instances,
            "too many instances: {s:?}"
        );
        w.converge(&s, now);
        let serving: usize = s.traffic.iter().map(|rev| w.available(*rev, now)).sum();
        if s.stable.is_some() {
            min_serving = min_serving.min(serving);
        }
        now += 100;
    }
    (s, r, min_serving, all)
}

fn deploy(id: u64, from: Option<u64>, to: u64, strategy: Strategy, p: Params) -> Rollout {
    Rollout::begin(
        id,
        "web",
        RolloutKind::Deploy,
        from,
        3,
        to,
        strategy,
        p,
        false,
        5_000,
    )
}

#[test]
fn rolling_never_drops_below_capacity_and_ends_on_the_new_revision() {
    for (surge, unavail) in [(1, 0), (2, 0), (0, 1), (1, 1), (3, 0)] {
        let (s, mut w) = steady(3);
        let r = deploy(1, Some(1), 2, Strategy::Rolling, params(3, surge, unavail));
        let (s, r, min_serving, _) = run(s, r, &mut w, 5_000, None);
        assert_eq!(
            r.outcome,
            Some(Outcome::Succeeded),
            "surge {surge} unavail {unavail}"
        );
        assert_eq!(s.stable, Some(2));
        assert_eq!(s.traffic, vec![2]);
        assert_eq!(s.scale, [(2, 3)].into());
        assert!(
            min_serving >= (3 - unavail) as usize,
            "surge {surge} unavail {unavail}: min {min_serving}"
        );
        assert!(s.active_rollout.is_none());
    }
}

#[test]
fn first_deploy_starts_all_and_opens_traffic() {
    let mut w = World::new();
    let s = ServiceState {
        name: "web".into(),
        ..Default::default()
    };
    let r = deploy(1, None, 1, Strategy::Rolling, params(3, 1, 0));
    let (s, r, _, _) = run(s, r, &mut w, 5_000, None);
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert_eq!(s.scale, [(1, 3)].into());
    assert_eq!(s.traffic, vec![1]);
}

#[test]
fn never_ready_release_fails_and_traffic_stays_on_the_old_revision() {
    for strategy in [Strategy::Rolling, Strategy::BlueGreen] {
        let (s, mut w) = steady(3);
        w.broken = vec![2];
        let r = deploy(1, Some(1), 2, strategy, params(3, 1, 0));
        let (s, r, min_serving, _) = run(s, r, &mut w, 5_000, None);
        assert_eq!(r.outcome, Some(Outcome::Failed));
        let reason = r.reason.unwrap();
        assert!(
            reason.contains("not ready within deploy_timeout") && reason.contains("HTTP 503"),
            "{reason}"
        );
        assert_eq!(s.stable, Some(1));
        assert_eq!(s.traffic, vec![1]);
        assert_eq!(s.scale, [(1, 3)].into());
        assert!(min_serving >= 3);
        assert!(r.failed_instance.is_some());
    }
}

#[test]
fn crash_loop_fails_fast() {
    let (s, mut w) = steady(3);
    w.crash = vec![2];
    let r = deploy(1, Some(1), 2, Strategy::Rolling, params(3, 1, 0));
    let (s, r, _, _) = run(s, r, &mut w, 5_000, None);
    assert_eq!(r.outcome, Some(Outcome::Failed));
    assert!(r.reason.unwrap().contains("crash-looping"));
    assert!(r.finished_at.unwrap() < 10_000);
    assert_eq!(s.scale, [(1, 3)].into());
}

#[test]
fn blue_green_waits_for_approval_then_switches_at_once() {
    let (s, mut w) = steady(3);
    let r = deploy(1, Some(1), 2, Strategy::BlueGreen, params(3, 1, 0));
    let (s, r, min_serving, events) = run(s, r, &mut w, 5_000, Some(20_000));
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert!(r.finished_at.unwrap() >= 20_000);
    assert!(events.iter().any(|e| e.kind == EventKind::AwaitingApproval));
    assert_eq!(s.traffic, vec![2]);
    assert_eq!(
        s.scale,
        [(1, 3), (2, 3)].into(),
        "old set kept for the scale-down delay"
    );
    assert!(min_serving >= 3);
    let (s2, ev) = settle(&s, r.finished_at.unwrap() + 29_000);
    assert_eq!(s2.scale.len(), 2);
    assert!(ev.is_empty());
    let (s3, _) = settle(&s, r.finished_at.unwrap() + 30_000);
    assert_eq!(s3.scale, [(2, 3)].into());
    assert!(s3.retiring.is_empty());
}

#[test]
fn rollback_to_a_warm_revision_is_instant() {
    let (s, mut w) = steady(3);
    let r = deploy(1, Some(1), 2, Strategy::BlueGreen, params(3, 1, 0));
    let (mut s, r, _, _) = run(s, r, &mut w, 5_000, Some(0));
    let t = r.finished_at.unwrap();
    s.retiring.remove(&1);
    let back = Rollout::begin(
        2,
        "web",
        RolloutKind::Rollback,
        Some(2),
        3,
        1,
        Strategy::BlueGreen,
        params(3, 1, 0),
        false,
        t,
    );
    let step = advance(&s, &back, &seen(&w.instances), t);
    assert_eq!(step.rollout.outcome, Some(Outcome::Succeeded));
    assert_eq!(step.state.traffic, vec![1]);
}

#[test]
fn abort_returns_traffic() {
    let (s, mut w) = steady(3);
    let mut r = deploy(1, Some(1), 2, Strategy::BlueGreen, params(3, 1, 0));
    r.request(Gate::Abort, "ops").unwrap();
    let (s, r, _, _) = run(s, r, &mut w, 5_000, None);
    assert_eq!(r.outcome, Some(Outcome::Aborted));
    assert_eq!(s.traffic, vec![1]);
    assert_eq!(s.scale, [(1, 3)].into());
}

#[test]
fn pre_deploy_hook_gates_everything() {
    let (s, w) = steady(3);
    let mut p = params(3, 1, 0);
    p.has_pre_deploy = true;
    let r = deploy(1, Some(1), 2, Strategy::Rolling, p);
    assert_eq!(r.phase, Phase::PreDeploy);
    let step = advance(&s, &r, &seen(&w.instances), 10);
    assert_eq!(step.state, s, "nothing moves while the hook runs");
    let mut failed = r.clone();
    failed.hook = Some(HookResult {
        ok: false,
        summary: "exit status 1".into(),
        output: "boom".into(),
    });
    let step = advance(&s, &failed, &seen(&w.instances), 20);
    assert_eq!(step.rollout.outcome, Some(Outcome::Failed));
    assert_eq!(step.state.scale, s.scale);
    assert_eq!(step.state.traffic, s.traffic);
}

#[test]
fn advance_is_idempotent_once_done() {
    let (s, mut w) = steady(2);
    let r = deploy(1, Some(1), 2, Strategy::Rolling, params(2, 1, 0));
    let (s, r, _, _) = run(s, r, &mut w, 5_000, None);
    let step = advance(&s, &r, &seen(&w.instances), 999_999);
    assert_eq!(step.state, s);
    assert_eq!(step.rollout, r);
    assert!(step.events.is_empty());
}

fn canary_params(steps: Vec<CanaryStep>) -> Params {
    let mut p = params(4, 1, 0);
    p.steps = steps;
    p.failure_limit = 1;
    p
}

fn w(weight: u32) -> CanaryStep {
    CanaryStep {
        weight: Some(weight),
        pause: None,
    }
}

fn pause(p: Pause) -> CanaryStep {
    CanaryStep {
        weight: None,
        pause: Some(p),
    }
}

fn measurement(verdict: Verdict) -> Measurement {
    Measurement {
        check: "error_rate ≤ 0.01".into(),
        verdict,
        value: Some(0.3),
        baseline: None,
        detail: "error_rate = 30.00%".into(),
    }
}

/// Drive a canary tick by tick; `feed(now)` gives the measurements of a tick
/// and `poke(now, rollout)` may set API requests. Returns every state seen.
fn drive(
    r: Rollout,
    until: Millis,
    mut feed: impl FnMut(Millis) -> Vec<Measurement>,
    mut poke: impl FnMut(Millis, &mut Rollout),
) -> (
    ServiceState,
    Rollout,
    Vec<(Millis, ServiceState)>,
    Vec<Event>,
) {
    let (mut s, mut world) = steady(4);
    let mut r = r;
    let mut seen_states = vec![];
    let mut events = vec![];
    let mut now = 5_000;
    while !r.is_done() && now < until {
        poke(now, &mut r);
        let observed = Observed {
            instances: world.instances.clone(),
            measurements: feed(now),
            ..Default::default()
        };
        let step = advance(&s, &r, &observed, now);
        s = step.state;
        r = step.rollout;
        events.extend(step.events);
        world.converge(&s, now);
        seen_states.push((now, s.clone()));
        now += 100;
    }
    (s, r, seen_states, events)
}

fn canary(steps: Vec<CanaryStep>) -> Rollout {
    Rollout::begin(
        1,
        "web",
        RolloutKind::Deploy,
        Some(1),
        4,
        2,
        Strategy::Canary,
        canary_params(steps),
        false,
        5_000,
    )
}

#[test]
fn a_healthy_canary_walks_its_steps_and_waits_at_manual_pauses() {
    let steps = vec![
        w(5),
        pause(Pause::For(Dur::secs(30))),
        w(25),
        pause(Pause::Manual),
        CanaryStep {
            weight: Some(50),
            pause: Some(Pause::For(Dur::secs(60))),
        },
    ];
    let mut promoted_at = None;
    let (s, r, states, events) = drive(
        canary(steps),
        1_000_000,
        |_| vec![measurement(Verdict::Pass)],
        |now, r| {
            if r.phase == Phase::AwaitingApproval && promoted_at.is_none() && now > 100_000 {
                r.request(Gate::Promote { full: false }, "ops").unwrap();
                promoted_at = Some(now);
            }
        },
    );
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{events:#?}");
    assert_eq!(s.traffic, vec![2]);
    assert!(s.weights.is_empty());
    assert_eq!(s.scale, [(2, 4)].into());
    let weights: Vec<u32> = states
        .iter()
        .filter_map(|(_, st)| st.weights.get(&2).copied())
        .fold(vec![], |mut acc, w| {
            if acc.last() != Some(&w) {
                acc.push(w)
            }
            acc
        });
    assert_eq!(weights, vec![5, 25, 50]);
    let first = |w: u32| {
        states
            .iter()
            .find(|(_, st)| st.weights.get(&2) == Some(&w))
            .unwrap()
            .0
    };
    assert!(
        first(25) - first(5) >= 30_000,
        "the timed pause is honoured"
    );
    let promoted_at = promoted_at.unwrap();
    assert!(
        first(50) >= promoted_at,
        "the manual pause waited for promote"
    );
    assert!(r.finished_at.unwrap() - first(50) >= 60_000);
    // The canary runs just enough instances for its weight.
    let canary_scale_at = |w: u32| {
        states
            .iter()
            .find(|(_, st)| st.weights.get(&2) == Some(&w))
            .unwrap()
            .1
            .scale[&2]
    };
    assert_eq!(
        (canary_scale_at(5), canary_scale_at(25), canary_scale_at(50)),
        (1, 1, 2)
    );
    assert!(events.iter().any(|e| e.kind == EventKind::Promoting));
}

#[test]
fn failed_analysis_takes_the_canary_to_zero_in_the_same_tick() {
    let steps = vec![w(10), pause(Pause::For(Dur::secs(600)))];
    let bad_from = 20_000;
    let (s, r, states, events) = drive(
        canary(steps),
        1_000_000,
        |now| {
            if now >= bad_from {
                vec![measurement(Verdict::Fail)]
            } else {
                vec![measurement(Verdict::Pass)]
            }
        },
        |_, _| {},
    );
    assert_eq!(r.outcome, Some(Outcome::Failed));
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("analysis failed") && reason.contains("30.00%"),
        "{reason}"
    );
    // failure_limit 1: the second failure (one tick later) pulls it.
    let pulled = r.finished_at.unwrap();
    assert_eq!(pulled, bad_from + 100);
    let (_, at_pull) = states.iter().find(|(t, _)| *t == pulled).unwrap();
    assert!(at_pull.weights.is_empty());
    assert_eq!(at_pull.traffic, vec![1]);
    assert_eq!(s.scale, [(1, 4)].into());
    assert_eq!(r.analysis.failures, 2);
    assert!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::AnalysisFailed)
            .count()
            == 2
    );
}

#[test]
fn on_failure_pause_holds_traffic_and_waits_for_a_human() {
    let steps = vec![w(20), pause(Pause::For(Dur::secs(5)))];
    let mut params = canary_params(steps);
    params.on_failure = OnFailure::Pause;
    params.failure_limit = 0;
    let r = Rollout::begin(
        1,
        "web",
        RolloutKind::Deploy,
        Some(1),
        4,
        2,
        Strategy::Canary,
        params,
        false,
        5_000,
    );
    let (s, r, _, events) = drive(
        r,
        200_000,
        |now| {
            if now >= 8_000 {
                vec![measurement(Verdict::Fail)]
            } else {
                vec![]
            }
        },
        |_, _| {},
    );
    assert!(
        !r.is_done(),
        "it holds instead of rolling back: {:?} {:?}",
        r.outcome,
        r.reason
    );
    assert!(r.paused.as_deref().unwrap().contains("analysis failed"));
    assert_eq!(s.weights.get(&2), Some(&20), "traffic stays where it was");
    assert!(events.iter().any(|e| e.message.contains("PAUSED")));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.message.contains("PAUSED"))
            .count(),
        1,
        "it says so once, loudly"
    );
}

#[test]
fn inconclusive_analysis_pauses_instead_of_promoting() {
    let steps = vec![w(10), pause(Pause::For(Dur::secs(2)))];
    let inconclusive = Measurement {
        verdict: Verdict::Inconclusive,
        detail: "only 3 canary requests".into(),
        ..measurement(Verdict::Inconclusive)
    };
    let (_, r, _, _) = drive(
        canary(steps),
        100_000,
        |now| {
            if now % 1000 == 0 {
                vec![inconclusive.clone()]
            } else {
                vec![]
            }
        },
        |_, _| {},
    );
    assert!(
        !r.is_done(),
        "too little evidence never promotes: {:?} {:?}",
        r.outcome,
        r.reason
    );
    assert!(
        r.paused.as_deref().unwrap().contains("inconclusive"),
        "{:?}",
        r.paused
    );
}

#[test]
fn pause_resume_and_full_promotion_by_hand() {
    let steps = vec![w(10), pause(Pause::Manual), w(50), pause(Pause::Manual)];
    let (s, r, _, events) = drive(
        canary(steps),
        100_000,
        |_| vec![],
        |now, r| {
            if now == 8_000 {
                r.request(Gate::Pause, "alice").unwrap();
            }
            if now == 20_000 {
                r.request(Gate::Resume, "alice").unwrap();
            }
            if now == 30_000 {
                r.request(Gate::Promote { full: true }, "bob").unwrap();
            }
        },
    );
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert!(r.finished_at.unwrap() >= 30_000);
    assert_eq!(s.traffic, vec![2]);
    for kind in ["paused", "resumed", "promoted"] {
        assert!(
            events.iter().any(|e| e.kind.as_str() == kind),
            "{kind}: {events:#?}"
        );
    }
}

#[test]
fn a_release_is_watched_after_100_percent_and_rolled_back_when_it_goes_bad() {
    for strategy in [Strategy::Rolling, Strategy::BlueGreen, Strategy::Canary] {
        let mut p = params(3, 1, 0);
        p.monitor_ms = 60_000;
        p.steps = vec![w(50)];
        let (mut s, mut world) = steady(3);
        let mut r = Rollout::begin(
            1,
            "web",
            RolloutKind::Deploy,
            Some(1),
            3,
            2,
            strategy,
            p,
            true,
            5_000,
        );
        let mut now = 5_000;
        let mut monitoring_since = None;
        let mut events = vec![];
        while !r.is_done() {
            assert!(now < 500_000, "{strategy:?} never finished");
            let bad = monitoring_since.is_some_and(|t| now >= t + 10_000);
            let measurements = if bad {
                vec![measurement(Verdict::Fail)]
            } else {
                vec![measurement(Verdict::Pass)]
            };
            let step = advance(
                &s,
                &r,
                &Observed {
                    instances: world.instances.clone(),
                    measurements,
                    ..Default::default()
                },
                now,
            );
            s = step.state;
            r = step.rollout;
            events.extend(step.events);
            if r.phase == Phase::Monitoring && monitoring_since.is_none() {
                monitoring_since = Some(now);
                assert_eq!(
                    s.traffic,
                    vec![2],
                    "{strategy:?}: all traffic on the new revision while watched"
                );
                assert_eq!(s.stable, Some(2));
            }
            world.converge(&s, now);
            now += 100;
        }
        assert_eq!(r.outcome, Some(Outcome::Failed), "{strategy:?}");
        assert!(
            r.reason.as_deref().unwrap().contains("monitoring window"),
            "{strategy:?}: {:?}",
            r.reason
        );
        assert_eq!(s.traffic, vec![1], "{strategy:?}");
        assert_eq!(s.stable, Some(1), "{strategy:?}");
        assert_eq!(s.scale, [(1, 3)].into(), "{strategy:?}");
        assert!(events.iter().any(|e| e.kind == EventKind::Monitoring));
    }
}

#[test]
fn a_quiet_monitoring_window_ends_in_success() {
    let mut p = params(2, 1, 0);
    p.monitor_ms = 30_000;
    let (s, mut world) = steady(2);
    let r = Rollout::begin(
        1,
        "web",
        RolloutKind::Deploy,
        Some(1),
        2,
        2,
        Strategy::Rolling,
        p,
        true,
        5_000,
    );
    let (s, r, _, _) = run(s, r, &mut world, 5_000, None);
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert!(r.reason.unwrap().contains("monitoring window"));
    assert_eq!(s.traffic, vec![2]);
}

#[test]
fn blue_green_pre_promotion_analysis_gates_the_switch() {
    for (verdict, outcome) in [
        (Verdict::Pass, Outcome::Succeeded),
        (Verdict::Fail, Outcome::Failed),
    ] {
        let mut p = params(3, 1, 0);
        p.pre_promotion_passes = 3;
        let (mut s, mut world) = steady(3);
        let mut r = Rollout::begin(
            1,
            "web",
            RolloutKind::Deploy,
            Some(1),
            3,
            2,
            Strategy::BlueGreen,
            p,
            true,
            5_000,
        );
        let mut now = 5_000;
        let mut rounds = 0;
        let mut ready_at = None;
        while !r.is_done() {
            assert!(now < 200_000);
            // One analysis round per second, once the new set is up.
            let measurements = if ready_at.is_some() && now % 1000 == 0 {
                rounds += 1;
                vec![measurement(verdict)]
            } else {
                vec![]
            };
            let step = advance(
                &s,
                &r,
                &Observed {
                    instances: world.instances.clone(),
                    measurements,
                    ..Default::default()
                },
                now,
            );
            s = step.state;
            r = step.rollout;
            if ready_at.is_none() && world.available(2, now) == 3 {
                ready_at = Some(now);
            }
            if !r.is_done() {
                assert_eq!(
                    s.traffic,
                    vec![1],
                    "no traffic moves before the analysis passed"
                );
            }
            world.converge(&s, now);
            now += 100;
        }
        assert_eq!(r.outcome, Some(outcome));
        if outcome == Outcome::Succeeded {
            assert_eq!(rounds, 3, "switched after exactly 3 passing rounds");
            assert_eq!(s.traffic, vec![2]);
        } else {
            assert_eq!(s.traffic, vec![1]);
            assert_eq!(s.scale, [(1, 3)].into());
        }
    }
}

/// A canary rollout at the given phase, for gate rules.
fn in_phase(phase: Phase, strategy: Strategy) -> Rollout {
    let mut r = canary(vec![w(10), pause(Pause::Manual)]);
    r.strategy = strategy;
    r.phase = phase;
    if phase == Phase::Paused {
        r.paused_in = Some(Phase::Progressing);
        r.paused = Some("paused by ops".into());
    }
    if phase == Phase::Done {
        r.outcome = Some(Outcome::Succeeded);
    }
    r
}

#[test]
fn which_request_is_legal_in_which_phase() {
    use Phase::*;
    use Strategy::*;
    let promote = Gate::Promote { full: false };
    // (gate, strategy, phase, accepted)
    let table = [
        (Gate::Approve, BlueGreen, Progressing, true),
        (Gate::Approve, BlueGreen, AwaitingApproval, true),
        (Gate::Approve, Canary, AwaitingApproval, true),
        (Gate::Approve, Canary, Progressing, false),
        (Gate::Approve, Rolling, Progressing, false),
        (Gate::Approve, BlueGreen, Monitoring, false),
        (promote, Canary, Progressing, true),
        (promote, Canary, Paused, true),
        (promote, BlueGreen, AwaitingApproval, true),
        (promote, Rolling, Progressing, false),
        (promote, BlueGreen, Monitoring, false),
        (promote, Canary, Reverting, false),
        (Gate::Pause, Canary, Progressing, true),
        (Gate::Pause, Canary, AwaitingApproval, true),
        (Gate::Pause, Canary, Paused, false),
        (Gate::Pause, Rolling, Monitoring, false),
        (Gate::Pause, Rolling, PreDeploy, false),
        (Gate::Resume, Canary, Paused, true),
        (Gate::Resume, Canary, Progressing, false),
        (Gate::Abort, Rolling, PreDeploy, true),
        (Gate::Abort, Canary, Paused, true),
        (Gate::Abort, Rolling, Monitoring, true),
        (Gate::Abort, Rolling, Reverting, false),
        (Gate::Rollback, BlueGreen, AwaitingApproval, true),
        (Gate::Abort, Rolling, Done, false),
    ];
    for (gate, strategy, phase, legal) in table {
        let mut r = in_phase(phase, strategy);
        let got = r.request(gate, "ops");
        assert_eq!(
            got.is_ok(),
            legal,
            "{gate:?} on a {strategy:?} rollout in {phase:?}: {got:?}"
        );
        assert_eq!(r.gates.len(), usize::from(legal), "stored only when legal");
    }
    // A pause already asked for: a second is refused, a resume accepted.
    let mut r = in_phase(Progressing, Canary);
    r.request(Gate::Pause, "a").unwrap();
    assert!(r.request(Gate::Pause, "b").is_err());
    assert!(r.request(Gate::Resume, "b").is_ok());
}

#[test]
fn a_paused_canary_reports_its_pause_once_and_measures_quietly() {
    let steps = vec![w(20), pause(Pause::For(Dur::secs(60)))];
    let mut params = canary_params(steps);
    params.on_failure = OnFailure::Pause;
    params.failure_limit = 0;
    let mut r = canary(vec![]);
    r.params = params;
    let (_, r, _, events) = drive(
        r,
        30_000,
        |now| {
            if now >= 8_000 {
                vec![measurement(Verdict::Fail)]
            } else {
                vec![]
            }
        },
        |_, _| {},
    );
    assert_eq!(r.phase, Phase::Paused, "the phase says it is paused");
    assert_eq!(r.effective_phase(), Phase::Progressing);
    let failed: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::AnalysisFailed)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one failure is announced, not every tick: {failed:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Paused)
            .count(),
        1
    );
    // It kept measuring: every tick from 8 s to 30 s.
    assert!(r.analysis.measurements > 200, "{:?}", r.analysis);
    assert!(r.analysis.last_problem.is_some());
}

#[test]
fn every_step_and_pause_is_announced_with_the_numbers_status_shows() {
    let steps = vec![
        w(10),
        pause(Pause::For(Dur::secs(5))),
        w(30),
        pause(Pause::Manual),
        w(60),
    ];
    let mut r = canary(steps);
    r.auto_approve = true;
    let (_, r, _, events) = drive(r, 200_000, |_| vec![], |_, _| {});
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{events:#?}");
    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::Step)
        .map(|e| e.message.as_str())
        .collect();
    for (n, what) in [
        (1, "takes 10 %"),
        (2, "holding 5s at 10 %"),
        (2, "the 5s hold at 10 % ended"),
        (3, "takes 30 %"),
        (4, "manual pause at 30 % skipped (--auto-approve)"),
        (5, "takes 60 %"),
    ] {
        assert!(
            steps
                .iter()
                .any(|m| m.starts_with(&format!("step {n}/5: ")) && m.contains(what)),
            "no `step {n}/5: … {what}` in {steps:#?}"
        );
    }
}

#[test]
fn a_weight_step_without_a_pause_is_judged_for_one_analysis_interval() {
    let mut r = canary(vec![w(10), w(40), w(70)]);
    r.params.min_step_ms = 2_000;
    let (_, r, states, events) = drive(r, 200_000, |_| vec![], |_, _| {});
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{events:#?}");
    for weight in [10, 40, 70] {
        let at: Vec<Millis> = states
            .iter()
            .filter(|(_, s)| s.weights.get(&2) == Some(&weight))
            .map(|(t, _)| *t)
            .collect();
        let held = at.last().unwrap() - at.first().unwrap();
        assert!(held >= 1_900, "{weight} % held {held} ms");
    }
}

#[test]
fn rollouts_stored_before_pauses_were_a_phase_still_hold_and_stop() {
    // Held the old way: phase progressing, with a reason.
    let mut held = canary(vec![w(10), pause(Pause::Manual)]);
    held.paused = Some("paused by ops".into());
    let (s, _) = steady(4);
    let step = advance(&s, &held, &Observed::default(), 6_000);
    assert_eq!(step.rollout.phase, Phase::Paused);
    assert_eq!(step.rollout.paused_in, Some(Phase::Progressing));
    // Asked to stop the old way: the stop still happens.
    let mut stopping = canary(vec![w(10)]);
    stopping.abort_requested_by = Some("rollback by ops".into());
    let step = advance(&s, &stopping, &Observed::default(), 6_000);
    assert_eq!(step.rollout.outcome, Some(Outcome::Aborted));
    assert!(step.rollout.rolled_back);
    assert_eq!(step.state.traffic, vec![1]);
}

#[test]
fn analysis_judges_a_canary_once_it_takes_traffic_and_a_blue_green_set_once_it_is_ready() {
    let mut r = canary(vec![w(25), pause(Pause::For(Dur::secs(10)))]);
    assert_eq!(
        r.judging(),
        Judging::Not,
        "no traffic yet: nothing to judge"
    );
    r.canary.weight = 25;
    assert_eq!(r.judging(), Judging::Checks);
    r.phase = Phase::Paused;
    r.paused_in = Some(Phase::Progressing);
    assert_eq!(r.judging(), Judging::Checks, "paused, still measured");
    let mut bg = deploy(1, Some(1), 2, Strategy::BlueGreen, params(3, 1, 0));
    assert_eq!(bg.judging(), Judging::Not);
    bg.analysis.pre_promotion_started = true;
    assert_eq!(bg.judging(), Judging::PrePromotion);
    let mut rolling = deploy(1, Some(1), 2, Strategy::Rolling, params(3, 1, 0));
    assert_eq!(rolling.judging(), Judging::Not);
    rolling.phase = Phase::Monitoring;
    assert_eq!(rolling.judging(), Judging::Checks);
    let first = deploy(1, None, 1, Strategy::Canary, params(3, 1, 0));
    assert_eq!(
        first.judging(),
        Judging::Not,
        "a first deploy has nothing to compare"
    );
}

/// A service spec from JSON (the keys of `ferry.toml`).
fn spec(extra: serde_json::Value) -> ServiceSpec {
    let mut v = serde_json::json!({"command": ["app"], "listen": "127.0.0.1:9000", "instances": 3});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// The dry-run plan of a deploy of revision 2 over revision 1 (3 instances).
fn plan_of(strategy: Strategy, spec: &ServiceSpec, auto_approve: bool, monitor_ms: u64) -> String {
    let (s, _) = steady(3);
    let mut p = Params::from_spec(spec);
    p.monitor_ms = monitor_ms;
    let r = Rollout::begin(
        0,
        "web",
        RolloutKind::Deploy,
        Some(1),
        3,
        2,
        strategy,
        p,
        auto_approve,
        5_000,
    );
    plan(&s, &r, spec).join("\n")
}

fn with_checks() -> serde_json::Value {
    serde_json::json!({
        "interval": "2s", "window": "30s", "failure_limit": 1, "inconclusive_limit": 4,
        "checks": [
            {"metric": "error_rate", "max": 0.01},
            {"metric": "latency_p99", "max": "500ms", "name": "fast enough"},
        ],
    })
}

#[test]
fn plan_lists_hook_batches_gates_and_timeouts() {
    let sp = spec(serde_json::json!({
        "pre_deploy": ["migrate"], "pre_deploy_timeout": "2m",
        "deploy": {"max_surge": 1, "min_ready": "1s", "deploy_timeout": "90s",
                   "drain_timeout": "7s", "stop_timeout": "4s"},
    }));
    let text = plan_of(Strategy::Rolling, &sp, false, 0);
    assert!(text.starts_with("pre_deploy hook: runs once"), "{text}");
    assert!(text.contains("pre_deploy_timeout 2m"), "{text}");
    assert_eq!(text.matches("\nbatch ").count(), 6, "{text}");
    assert!(text.contains("deploy_timeout 1m 30s"), "{text}");
    assert!(
        text.contains("drain_timeout 7s") && text.contains("stop_timeout 4s"),
        "{text}"
    );
    assert!(
        text.contains("succeeded: revision 2 serves all traffic"),
        "{text}"
    );
    // Three batches wait out min_ready (1s) for their new instance.
    assert!(text.contains("takes at least 3s"), "{text}");

    let text = plan_of(Strategy::BlueGreen, &sp, false, 0);
    assert!(
        text.contains("\nstarting the new set: revision 2 → 3 instances"),
        "{text}"
    );
    assert!(
        text.contains("gate: the new set (revision 2) is ready; traffic stays on revision 1 until `ferry approve web`"),
        "{text}"
    );
    assert!(text.contains("plus the wait at 1 gate"), "{text}");
    let text = plan_of(Strategy::BlueGreen, &sp, true, 0);
    assert!(
        !text.contains("gate:"),
        "--auto-approve passes the gate: {text}"
    );
}

#[test]
fn plan_of_a_watched_release_shows_the_window_and_the_checks_with_their_limits() {
    let sp = spec(serde_json::json!({"analysis": with_checks()}));
    for strategy in [Strategy::Rolling, Strategy::BlueGreen, Strategy::Canary] {
        let text = plan_of(strategy, &sp, true, 600_000);
        assert!(!text.contains("canary rollouts only"), "{text}");
        assert!(
            text.contains(
                "serves all traffic; watching it for 10m (a failure rolls back to revision 1)"
            ),
            "{strategy:?}: {text}"
        );
        assert!(
            text.contains("analysis watches the release every 2s over the last 30s"),
            "{strategy:?}: {text}"
        );
        assert!(
            text.contains("more than 1 failed measurements → it rolls back"),
            "{text}"
        );
        assert!(text.contains("  check: error_rate ≤ 0.01"), "{text}");
        assert!(
            text.contains("  check: fast enough: latency_p99 ≤ 0.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "succeeded: revision 2 served all traffic through its 10m monitoring window"
            ),
            "{text}"
        );
        assert!(text.contains("takes at least 10m"), "{text}");
    }
    // Without a window, a rolling deploy is not judged, and the plan says so.
    let text = plan_of(Strategy::Rolling, &sp, true, 0);
    assert!(
        text.contains("analysis: the checks do not judge this rollout")
            && text.contains("--monitor"),
        "{text}"
    );
    assert!(!text.contains("check: error_rate"), "{text}");
}

#[test]
fn canary_plan_lists_every_step_hold_gate_and_skipped_pause() {
    let mut sp = spec(serde_json::json!({"analysis": with_checks()}));
    sp.deploy.steps = vec![
        w(10),
        pause(Pause::For(Dur::secs(30))),
        w(25),
        pause(Pause::Manual),
        w(60),
    ];
    let text = plan_of(Strategy::Canary, &sp, false, 0);
    for want in [
        "step 1/5: canary (revision 2) takes 10 % of traffic on 1 instance, held 2s (one analysis interval)",
        "analysis judges the canary every 2s over the last 30s",
        "more than 1 failed measurements → the canary's weight goes to 0 at once, traffic stays on revision 1",
        "more than 4 inconclusive in a row → the rollout pauses",
        "  check: error_rate ≤ 0.01",
        "step 2/5: holding 30s at 10 % while analysis judges",
        "step 3/5: canary (revision 2) takes 25 % of traffic on 1 instance",
        "gate: step 4/5: paused at 25 %; `ferry promote web` goes on (or deploy with --auto-approve)",
        "step 5/5: canary (revision 2) takes 60 % of traffic on 2 instances, held 2s",
        "all steps passed: promoting revision 2 to 100 %",
        "succeeded: revision 2 serves all traffic",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        text.contains("takes at least 36s"),
        "2s + 30s + 2s + 2s holds: {text}"
    );
    let text = plan_of(Strategy::Canary, &sp, true, 0);
    assert!(
        text.contains("step 4/5: manual pause at 25 % skipped (--auto-approve)")
            && !text.contains("gate:"),
        "{text}"
    );
    // The first deploy of a canary service runs rolling, unjudged.
    let (empty, _) = (
        ServiceState {
            name: "web".into(),
            ..Default::default()
        },
        (),
    );
    let r = Rollout::begin(
        0,
        "web",
        RolloutKind::Deploy,
        None,
        0,
        1,
        Strategy::Canary,
        Params::from_spec(&sp),
        false,
        0,
    );
    let text = plan(&empty, &r, &sp).join("\n");
    assert!(
        text.contains("batch 1: revision 1 → 3/3 instances"),
        "{text}"
    );
    assert!(
        text.contains("a first deploy has no previous revision"),
        "{text}"
    );
    assert!(!text.contains("step 1/5"), "{text}");
}

/// The plan is the run: every step, hold and promotion line of a canary's
/// plan is an event of the same rollout driven tick by tick.
#[test]
fn canary_plan_lines_are_the_events_of_the_run() {
    let mut sp = spec(serde_json::json!({"instances": 4, "analysis": with_checks()}));
    sp.deploy.steps = vec![
        w(10),
        pause(Pause::For(Dur::secs(3))),
        w(50),
        pause(Pause::Manual),
    ];
    let mut p = Params::from_spec(&sp);
    p.min_ready_ms = 1000;
    let mut r = canary(vec![]);
    r.params = p;
    r.auto_approve = true;
    let planned = plan(&steady(4).0, &r, &sp);
    let (_, end, _, events) = drive(
        r,
        120_000,
        |now| {
            if now % 2000 == 0 {
                vec![measurement(Verdict::Pass)]
            } else {
                vec![]
            }
        },
        |_, _| {},
    );
    assert_eq!(end.outcome, Some(Outcome::Succeeded));
    let ran: Vec<&str> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Step | EventKind::Promoting))
        .map(|e| e.message.as_str())
        .collect();
    let from_plan: Vec<&str> = planned
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("step ") || l.starts_with("all steps passed"))
        .collect();
    assert_eq!(from_plan, ran);
}

fn firing(name: &str, since: Millis) -> AlertObs {
    AlertObs {
        name: name.into(),
        value: Some(0.12),
        labels: r#"{service="web", severity="critical"}"#.into(),
        since,
    }
}

#[test]
fn a_firing_alert_rolls_a_release_back_while_it_rolls_out_or_is_watched() {
    // (strategy, fire while rolling out?) — false: fire in the monitoring window.
    for strategy in [Strategy::Rolling, Strategy::BlueGreen, Strategy::Canary] {
        for during_rollout in [true, false] {
            let mut p = params(3, 1, 0);
            p.monitor_ms = 60_000;
            p.auto_promote = true;
            p.steps = vec![w(50)];
            let (mut s, mut world) = steady(3);
            let mut r = Rollout::begin(
                1,
                "web",
                RolloutKind::Deploy,
                Some(1),
                3,
                2,
                strategy,
                p,
                true,
                5_000,
            );
            let mut now = 5_000;
            let mut events = vec![];
            let mut fired = false;
            while !r.is_done() {
                assert!(now < 500_000, "{strategy:?} never finished");
                let fire = if during_rollout {
                    s.scale.get(&2).is_some_and(|n| *n > 0) && r.phase == Phase::Progressing
                } else {
                    r.phase == Phase::Monitoring
                };
                fired |= fire;
                let alerts = if fire {
                    vec![firing("HighErrorRate", now)]
                } else {
                    vec![]
                };
                let step = advance(
                    &s,
                    &r,
                    &Observed {
                        instances: world.instances.clone(),
                        alerts,
                        ..Default::default()
                    },
                    now,
                );
                s = step.state;
                r = step.rollout;
                events.extend(step.events);
                world.converge(&s, now);
                now += 100;
            }
            let at = format!("{strategy:?}, during rollout {during_rollout}");
            assert!(fired, "{at}: the alert never fired");
            assert_eq!(r.outcome, Some(Outcome::Failed), "{at}");
            let reason = r.reason.clone().unwrap();
            assert!(
                reason.contains(r#"alert HighErrorRate is firing with value 0.12: {service="web", severity="critical"}"#),
                "{at}: {reason}"
            );
            assert_eq!(
                reason.contains("monitoring window"),
                !during_rollout,
                "{at}: {reason}"
            );
            assert!(events.iter().any(|e| e.kind == EventKind::Alert), "{at}");
            assert_eq!(s.traffic, vec![1], "{at}: traffic back on the old revision");
            assert_eq!(s.stable, Some(1), "{at}");
        }
    }
}

#[test]
fn an_alert_does_not_fail_a_rollback() {
    let (s, world) = steady(2);
    let r = Rollout::begin(
        1,
        "web",
        RolloutKind::Rollback,
        Some(2),
        2,
        1,
        Strategy::Rolling,
        params(2, 1, 0),
        true,
        5_000,
    );
    let step = advance(
        &s,
        &r,
        &Observed {
            instances: world.instances.clone(),
            alerts: vec![firing("HighErrorRate", 5_000)],
            ..Default::default()
        },
        5_000,
    );
    assert_ne!(step.rollout.outcome, Some(Outcome::Failed));
    assert!(step.events.iter().all(|e| e.kind != EventKind::Alert));
}

// ---- validation gates ----

use crate::validation::{CheckKind, CheckResult, GateRun, GatesSpec, Stage, Status};

fn gated(p: Params, before: &[&str], candidate: &[&str], after: &[&str]) -> Params {
    Params {
        validate: GatesSpec {
            before: before.iter().map(|s| s.to_string()).collect(),
            candidate: candidate.iter().map(|s| s.to_string()).collect(),
            after: after.iter().map(|s| s.to_string()).collect(),
        },
        ..p
    }
}

fn gate_run(stage: Stage, status: Status, at: Millis) -> GateRun {
    GateRun {
        stage,
        suites: vec!["smoke".into()],
        revision: Some(2),
        started_at: at,
        finished_at: at,
        results: vec![CheckResult {
            suite: "smoke".into(),
            name: "home".into(),
            kind: CheckKind::Http,
            status,
            duration_ms: 3,
            value: Some("500 in 3 ms".into()),
            reason: "expected status 2xx, got 500".into(),
            output: None,
        }],
    }
}

/// Drive a rollout as the shell would: when it asks for a gate, the
/// suites "run" for 300 ms and end with `verdict(stage)`. Returns what
/// `run` does, plus the stages asked for, in order, and whether revision
/// 2 was ever in regular traffic before its candidate gate ended.
fn run_gated(
    mut s: ServiceState,
    mut r: Rollout,
    w: &mut World,
    verdict: impl Fn(Stage) -> Status,
) -> (ServiceState, Rollout, Vec<Stage>, bool, Vec<Event>) {
    let mut now = r.started_at;
    let mut asked: Vec<Stage> = Vec::new();
    let mut running: Option<(Stage, Millis)> = None;
    let mut leaked = false;
    let mut all = Vec::new();
    while !r.is_done() {
        assert!(now < 600_000, "rollout never finished: {r:?}");
        if let Some((stage, since)) = running
            && now >= since + 300
        {
            r.validations.push(gate_run(stage, verdict(stage), now));
            running = None;
        }
        let step = advance(&s, &r, &seen(&w.instances), now);
        s = step.state;
        r = step.rollout;
        all.extend(step.events);
        if let Some(stage) = r.validating
            && running.is_none()
            && r.gate_run(stage).is_none()
        {
            asked.push(stage);
            running = Some((stage, now));
        }
        let candidate_done = r.gate_run(Stage::Candidate).is_some();
        if !candidate_done && s.traffic.contains(&2) {
            leaked = true;
        }
        w.converge(&s, now);
        now += 100;
    }
    (s, r, asked, leaked, all)
}

fn strategies() -> Vec<(Strategy, Params)> {
    let canary = Params {
        steps: vec![crate::canary::CanaryStep {
            weight: Some(20),
            pause: None,
        }],
        ..params(3, 1, 0)
    };
    let blue_green = Params {
        auto_promote: true,
        scale_down_delay_ms: 0,
        ..params(3, 1, 0)
    };
    vec![
        (Strategy::Rolling, params(3, 1, 0)),
        (Strategy::Rolling, params(3, 0, 1)),
        (Strategy::BlueGreen, blue_green),
        (Strategy::Canary, canary),
    ]
}

#[test]
fn a_candidate_is_validated_out_of_traffic_then_released() {
    for (strategy, p) in strategies() {
        let (s, mut w) = steady(3);
        let r = deploy(1, Some(1), 2, strategy, gated(p, &[], &["smoke"], &[]));
        let (s, r, asked, leaked, events) = run_gated(s, r, &mut w, |_| Status::Passed);
        assert_eq!(r.outcome, Some(Outcome::Succeeded), "{strategy:?}: {r:?}");
        assert_eq!(asked, vec![Stage::Candidate], "{strategy:?}");
        assert!(
            !leaked,
            "{strategy:?}: revision 2 took traffic before its candidate gate ended"
        );
        assert_eq!(s.traffic, vec![2]);
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&EventKind::Validating) && kinds.contains(&EventKind::Validated));
        assert_eq!(r.validations.len(), 1);
        assert!(r.validating.is_none());
    }
}

#[test]
fn a_failed_candidate_never_takes_traffic_and_the_release_rolls_back() {
    for (strategy, p) in strategies() {
        let (s, mut w) = steady(3);
        let r = deploy(1, Some(1), 2, strategy, gated(p, &[], &["smoke"], &[]));
        let (s, r, _, leaked, _) = run_gated(s, r, &mut w, |_| Status::Failed);
        assert_eq!(r.outcome, Some(Outcome::Failed), "{strategy:?}");
        assert!(!leaked, "{strategy:?}");
        let reason = r.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("candidate validation failed (1 checks: 0 passed, 1 failed")
                && reason.contains("smoke/home: expected status 2xx, got 500"),
            "{strategy:?}: {reason}"
        );
        assert_eq!(s.stable, Some(1));
        assert_eq!(s.traffic, vec![1]);
        assert_eq!(s.scale, [(1, 3)].into(), "{strategy:?}");
    }
}

#[test]
fn a_failed_before_gate_changes_nothing() {
    let (s0, mut w) = steady(3);
    let r = deploy(
        1,
        Some(1),
        2,
        Strategy::Rolling,
        gated(params(3, 1, 0), &["pre"], &["smoke"], &[]),
    );
    assert_eq!(r.phase, Phase::PreDeploy);
    let mut s = s0.clone();
    let mut r2 = r.clone();
    // While the gate runs, nothing starts.
    for now in [5_000, 5_100, 5_200] {
        let step = advance(&s, &r2, &seen(&w.instances), now);
        assert_eq!(step.state.scale, s0.scale);
        s = step.state;
        r2 = step.rollout;
    }
    assert_eq!(r2.validating, Some(Stage::Before));
    let (s, r, asked, _, _) = run_gated(s0.clone(), r, &mut w, |_| Status::Failed);
    assert_eq!(asked, vec![Stage::Before]);
    assert_eq!(r.outcome, Some(Outcome::Failed));
    assert!(r.reason.unwrap().starts_with("before validation failed"));
    assert_eq!(s.scale, s0.scale);
    assert_eq!(s.traffic, vec![1]);
}

#[test]
fn warnings_do_not_stop_a_release_and_every_gate_runs_in_order() {
    let (s, mut w) = steady(3);
    let p = gated(params(3, 1, 0), &["pre"], &["smoke"], &["smoke"]);
    let r = deploy(
        1,
        Some(1),
        2,
        Strategy::Rolling,
        Params {
            has_pre_deploy: true,
            ..p
        },
    );
    let mut r = r;
    r.hook = None;
    // The hook is due only once the before gate passed.
    assert!(!r.wants_hook());
    let (s, r, asked, _, events) = run_gated_with_hook(s, r, &mut w);
    assert_eq!(asked, vec![Stage::Before, Stage::Candidate, Stage::After]);
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(s.stable, Some(2));
    let validated: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::Validated)
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(validated.len(), 3);
    assert!(validated[1].contains("WARNING smoke/home"), "{validated:?}");
    assert!(r.reason.unwrap().contains("passed its after validation"));
}

/// `run_gated` with the hook succeeding as soon as it is due, and every
/// gate ending in a WARNING.
fn run_gated_with_hook(
    mut s: ServiceState,
    mut r: Rollout,
    w: &mut World,
) -> (ServiceState, Rollout, Vec<Stage>, bool, Vec<Event>) {
    let mut now = r.started_at;
    let mut asked = Vec::new();
    let mut all = Vec::new();
    while !r.is_done() {
        assert!(now < 600_000, "rollout never finished: {r:?}");
        if r.wants_hook() {
            r.hook = Some(super::HookResult {
                ok: true,
                summary: "exit status 0".into(),
                output: String::new(),
            });
        }
        if let Some(stage) = r.validating
            && r.gate_run(stage).is_none()
        {
            asked.push(stage);
            r.validations.push(gate_run(stage, Status::Warning, now));
        }
        let step = advance(&s, &r, &seen(&w.instances), now);
        s = step.state;
        r = step.rollout;
        all.extend(step.events);
        w.converge(&s, now);
        now += 100;
    }
    (s, r, asked, false, all)
}

#[test]
fn a_failed_after_gate_rolls_back_and_rollbacks_run_no_gates() {
    let (s, mut w) = steady(3);
    let r = deploy(
        1,
        Some(1),
        2,
        Strategy::Rolling,
        gated(params(3, 1, 0), &[], &[], &["smoke"]),
    );
    let (s, r, asked, _, _) = run_gated(s, r, &mut w, |_| Status::Failed);
    assert_eq!(asked, vec![Stage::After]);
    assert_eq!(r.outcome, Some(Outcome::Failed));
    assert!(
        r.reason
            .clone()
            .unwrap()
            .starts_with("during the monitoring window: after validation failed"),
        "{:?}",
        r.reason
    );
    assert_eq!(s.stable, Some(1));
    assert_eq!(s.traffic, vec![1]);

    let (s, mut w) = steady(3);
    let back = Rollout::begin(
        2,
        "web",
        RolloutKind::Rollback,
        Some(1),
        3,
        2,
        Strategy::Rolling,
        gated(params(3, 1, 0), &["pre"], &["smoke"], &["smoke"]),
        false,
        5_000,
    );
    let (_, r, asked, _, _) = run_gated(s, back, &mut w, |_| Status::Failed);
    assert!(asked.is_empty());
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
}
