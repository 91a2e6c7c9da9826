//! The rollout machine, simulated: no processes, no clock.

use super::*;

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
        if approve_at.is_some_and(|t| now >= t) && r.approved_by.is_none() {
            r.approved_by = Some("tester".into());
        }
        let step = advance(&s, &r, &w.instances, now);
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
    assert!(events.iter().any(|e| e.kind == "awaiting-approval"));
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
    let step = advance(&s, &back, &w.instances, t);
    assert_eq!(step.rollout.outcome, Some(Outcome::Succeeded));
    assert_eq!(step.state.traffic, vec![1]);
}

#[test]
fn abort_returns_traffic() {
    let (s, mut w) = steady(3);
    let mut r = deploy(1, Some(1), 2, Strategy::BlueGreen, params(3, 1, 0));
    r.abort_requested_by = Some("ops".into());
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
    let step = advance(&s, &r, &w.instances, 10);
    assert_eq!(step.state, s, "nothing moves while the hook runs");
    let mut failed = r.clone();
    failed.hook = Some(HookResult {
        ok: false,
        summary: "exit status 1".into(),
        output: "boom".into(),
    });
    let step = advance(&s, &failed, &w.instances, 20);
    assert_eq!(step.rollout.outcome, Some(Outcome::Failed));
    assert_eq!(step.state.scale, s.scale);
    assert_eq!(step.state.traffic, s.traffic);
}

#[test]
fn advance_is_idempotent_once_done() {
    let (s, mut w) = steady(2);
    let r = deploy(1, Some(1), 2, Strategy::Rolling, params(2, 1, 0));
    let (s, r, _, _) = run(s, r, &mut w, 5_000, None);
    let step = advance(&s, &r, &w.instances, 999_999);
    assert_eq!(step.state, s);
    assert_eq!(step.rollout, r);
    assert!(step.events.is_empty());
}

#[test]
fn plan_lists_batches_and_gates() {
    let (s, _) = steady(3);
    let mut p = params(3, 1, 0);
    p.has_pre_deploy = true;
    let lines = plan(&s, &deploy(1, Some(1), 2, Strategy::Rolling, p.clone()));
    assert!(lines[0].contains("pre_deploy"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("batch")).count(),
        6,
        "{lines:#?}"
    );
    let lines = plan(&s, &deploy(1, Some(1), 2, Strategy::BlueGreen, p));
    assert!(
        lines.iter().any(|l| l.contains("ferry approve web")),
        "{lines:#?}"
    );
}
