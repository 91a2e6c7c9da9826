use super::*;
use crate::rulefmt;
use std::cell::RefCell;
use std::collections::HashMap;

const MIN: i64 = 60_000;

/// A store: fixed query answers by expression text, and the rules' own
/// output, queryable by metric name.
#[derive(Default)]
struct Fake {
    answers: RefCell<HashMap<String, Result<Samples, String>>>,
    written: RefCell<BTreeMap<String, (i64, Samples)>>,
    queries: RefCell<Vec<(String, i64)>>,
}

impl Fake {
    fn set(&self, expr: &str, v: Vec<(LabelSet, f64)>) {
        self.answers.borrow_mut().insert(expr.into(), Ok(v));
    }
    fn fail(&self, expr: &str, e: &str) {
        self.answers.borrow_mut().insert(expr.into(), Err(e.into()));
    }
    fn series(&self, name: &str) -> Vec<(LabelSet, f64)> {
        self.written
            .borrow()
            .values()
            .flat_map(|(_, s)| s.iter())
            .filter(|(l, _)| l.get("__name__").map(String::as_str) == Some(name))
            .cloned()
            .collect()
    }
}

impl RuleContext for Fake {
    fn query(&self, expr: &str, ts_ms: i64) -> Result<Vec<(LabelSet, f64)>, String> {
        self.queries.borrow_mut().push((expr.into(), ts_ms));
        if let Some(a) = self.answers.borrow().get(expr) {
            return a.clone();
        }
        Ok(self.series(expr))
    }
    fn write(&self, key: &str, ts_ms: i64, samples: Vec<(LabelSet, f64)>) {
        self.written
            .borrow_mut()
            .insert(key.into(), (ts_ms, samples));
    }
}

fn ls(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn group(yaml: &str) -> Group {
    let f = rulefmt::parse("t.yml", yaml).unwrap_or_else(|e| panic!("{}", e[0]));
    Group::new(&f.groups[0], "t.yml", PromDuration::from_secs(60))
}

fn env() -> (LabelSet, String) {
    (ls(&[("cluster", "eu1")]), "http://prom.example:9090".into())
}

fn eval(g: &mut Group, ts: i64, ctx: &Fake) -> GroupEval {
    let (el, url) = env();
    g.eval(
        ts,
        ctx,
        &EvalEnv {
            external_labels: &el,
            external_url: &url,
        },
    )
}

fn states(g: &Group) -> Vec<(String, State)> {
    g.rules
        .iter()
        .flat_map(|r| r.alerts())
        .map(|a| (a.labels["instance"].clone(), a.state))
        .collect()
}

const UP: &str = "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    labels:\n      severity: page\n    annotations:\n      summary: instance is down\n";

fn down(instances: &[&str]) -> Vec<(LabelSet, f64)> {
    instances
        .iter()
        .map(|i| {
            (
                ls(&[("__name__", "up"), ("instance", i), ("job", "api")]),
                0.0,
            )
        })
        .collect()
}

#[test]
fn pending_then_firing_after_for_then_resolved_and_kept_15m() {
    let mut g = group(UP);
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    let t0 = 1_700_000_000_000;
    let ev = eval(&mut g, t0, &ctx);
    assert_eq!(states(&g), vec![("a".into(), State::Pending)]);
    assert_eq!(ev.transitions.len(), 1);
    let tr = &ev.transitions[0];
    assert_eq!(
        (tr.from, tr.to, tr.at),
        (State::Inactive, State::Pending, t0)
    );
    assert_eq!(
        tr.labels,
        ls(&[
            ("alertname", "Down"),
            ("instance", "a"),
            ("job", "api"),
            ("severity", "page")
        ])
    );
    // Templates without `{{` expand to themselves, with or without the engine.
    let a = g.rules[0].alerts().next().unwrap();
    assert_eq!(a.annotations["summary"], "instance is down");
    assert_eq!(a.active_at, t0);

    // ALERTS and ALERTS_FOR_STATE.
    let w = ctx.written.borrow()[&g.rules[0].key].clone();
    assert_eq!(w.0, t0);
    let mut alerts_l = tr.labels.clone();
    alerts_l.insert("__name__".into(), "ALERTS".into());
    alerts_l.insert("alertstate".into(), "pending".into());
    let mut for_l = tr.labels.clone();
    for_l.insert("__name__".into(), "ALERTS_FOR_STATE".into());
    assert_eq!(w.1, vec![(alerts_l, 1.0), (for_l, (t0 / 1000) as f64)]);

    // Not yet.
    assert!(eval(&mut g, t0 + 4 * MIN, &ctx).transitions.is_empty());
    assert_eq!(states(&g), vec![("a".into(), State::Pending)]);
    // `for` reached (>=).
    let ev = eval(&mut g, t0 + 5 * MIN, &ctx);
    assert_eq!(
        (ev.transitions[0].from, ev.transitions[0].to),
        (State::Pending, State::Firing)
    );
    let a = g.rules[0].alerts().next().unwrap();
    assert_eq!(a.fired_at, Some(t0 + 5 * MIN));
    assert_eq!(g.rules[0].state(), State::Firing);

    // Gone: resolved.
    ctx.set("up == 0", vec![]);
    let ev = eval(&mut g, t0 + 6 * MIN, &ctx);
    assert_eq!(
        (ev.transitions[0].from, ev.transitions[0].to),
        (State::Firing, State::Inactive)
    );
    assert_eq!(states(&g), vec![("a".into(), State::Inactive)]);
    assert!(ctx.written.borrow()[&g.rules[0].key].1.is_empty());
    assert_eq!(g.rules[0].active_alerts().count(), 0);
    // Kept 15 minutes (strictly more deletes it).
    eval(&mut g, t0 + 21 * MIN, &ctx);
    assert_eq!(states(&g).len(), 1);
    eval(&mut g, t0 + 21 * MIN + 1, &ctx);
    assert!(states(&g).is_empty());
}

#[test]
fn pending_alert_that_goes_away_is_deleted_and_comes_back_anew() {
    let mut g = group(UP);
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a", "b"]));
    eval(&mut g, 0, &ctx);
    ctx.set("up == 0", down(&["b"]));
    let ev = eval(&mut g, MIN, &ctx);
    assert_eq!(states(&g), vec![("b".into(), State::Pending)]);
    assert_eq!(ev.transitions.len(), 1);
    assert_eq!(ev.transitions[0].labels["instance"], "a");
    assert_eq!(ev.transitions[0].to, State::Inactive);
    ctx.set("up == 0", down(&["a", "b"]));
    eval(&mut g, 2 * MIN, &ctx);
    let a = g.rules[0].alerts().next().unwrap();
    assert_eq!((a.labels["instance"].as_str(), a.active_at), ("a", 2 * MIN));
    // b keeps its start; its value follows the result.
    ctx.set(
        "up == 0",
        vec![(ls(&[("instance", "b"), ("job", "api")]), 7.0)],
    );
    eval(&mut g, 5 * MIN, &ctx);
    let b = g.rules[0]
        .alerts()
        .find(|a| a.labels["instance"] == "b")
        .unwrap();
    assert_eq!((b.state, b.active_at, b.value), (State::Firing, 0, 7.0));
}

#[test]
fn keep_firing_for_holds_a_firing_alert() {
    let mut g = group(
        "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    keep_firing_for: 3m\n",
    );
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    let ev = eval(&mut g, 0, &ctx);
    // for: 0 fires on the first evaluation.
    assert_eq!(ev.transitions.len(), 2);
    assert_eq!(states(&g), vec![("a".into(), State::Firing)]);
    ctx.set("up == 0", vec![]);
    eval(&mut g, MIN, &ctx);
    let a = g.rules[0].alerts().next().unwrap();
    assert_eq!((a.state, a.keep_firing_since), (State::Firing, Some(MIN)));
    // Still written as firing.
    assert_eq!(ctx.written.borrow()[&g.rules[0].key].1.len(), 2);
    eval(&mut g, 3 * MIN, &ctx);
    assert_eq!(states(&g), vec![("a".into(), State::Firing)]);
    // Back within the window: the window starts over.
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, 3 * MIN + 30_000, &ctx);
    assert_eq!(g.rules[0].alerts().next().unwrap().keep_firing_since, None);
    ctx.set("up == 0", vec![]);
    eval(&mut g, 5 * MIN, &ctx);
    eval(&mut g, 7 * MIN, &ctx);
    assert_eq!(states(&g), vec![("a".into(), State::Firing)]);
    let ev = eval(&mut g, 8 * MIN, &ctx);
    assert_eq!(states(&g), vec![("a".into(), State::Inactive)]);
    assert_eq!(ev.transitions[0].to, State::Inactive);
    assert_eq!(
        g.rules[0].alerts().next().unwrap().resolved_at,
        Some(8 * MIN)
    );
}

#[test]
fn send_schedule_resend_delay_resolution_and_ends_at() {
    let mut g =
        group("groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 1m\n");
    let ctx = Fake::default();
    let resend = MIN;
    let interval = 15_000;
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, 0, &ctx);
    assert!(
        g.alerts_to_send(0, resend, interval).is_empty(),
        "pending is never sent"
    );
    eval(&mut g, MIN, &ctx);
    let sent = g.alerts_to_send(MIN, resend, interval);
    assert_eq!(sent.len(), 1);
    let a = &sent[0];
    assert_eq!(a.starts_at, MIN);
    assert_eq!(a.ends_at, MIN + 4 * MIN);
    assert_eq!(a.labels["cluster"], "eu1", "external labels added");
    assert_eq!(
        a.generator_url,
        "http://prom.example:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1"
    );
    // Not again until the resend delay has passed (strictly).
    for t in [MIN + 15_000, 2 * MIN] {
        eval(&mut g, t, &ctx);
        assert!(g.alerts_to_send(t, resend, interval).is_empty(), "{t}");
    }
    eval(&mut g, 2 * MIN + 15_000, &ctx);
    assert_eq!(
        g.alerts_to_send(2 * MIN + 15_000, resend, interval).len(),
        1
    );
    // Resolution: sent at once, endsAt = resolvedAt.
    ctx.set("up == 0", vec![]);
    let t = 2 * MIN + 30_000;
    eval(&mut g, t, &ctx);
    let sent = g.alerts_to_send(t, resend, interval);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].starts_at, sent[0].ends_at), (MIN, t));
    // And again every resend delay while kept.
    eval(&mut g, t + 15_000, &ctx);
    assert!(g.alerts_to_send(t + 15_000, resend, interval).is_empty());
    eval(&mut g, t + MIN + 1, &ctx);
    assert_eq!(g.alerts_to_send(t + MIN + 1, resend, interval).len(), 1);
    // A long eval interval stretches endsAt: 4 × max(interval, resend).
    let mut g2 = group("groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n");
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g2, 0, &ctx);
    assert_eq!(g2.alerts_to_send(0, resend, 5 * MIN)[0].ends_at, 20 * MIN);
}

#[test]
fn recording_rule_feeds_a_later_alert_in_the_same_group() {
    let mut g = group(
        "groups:\n- name: g\n  query_offset: 10s\n  labels: {team: web}\n  rules:\n  - record: job:errors:rate5m\n    expr: sum by (job) (rate(errors_total[5m]))\n    labels: {source: rule}\n  - alert: Errors\n    expr: job:errors:rate5m\n",
    );
    let ctx = Fake::default();
    ctx.set(
        "sum by (job) (rate(errors_total[5m]))",
        vec![(ls(&[("job", "api")]), 0.5), (ls(&[("job", "web")]), 0.1)],
    );
    let ev = eval(&mut g, 100_000, &ctx);
    assert_eq!(
        ctx.series("job:errors:rate5m"),
        vec![
            (
                ls(&[
                    ("__name__", "job:errors:rate5m"),
                    ("job", "api"),
                    ("source", "rule"),
                    ("team", "web")
                ]),
                0.5
            ),
            (
                ls(&[
                    ("__name__", "job:errors:rate5m"),
                    ("job", "web"),
                    ("source", "rule"),
                    ("team", "web")
                ]),
                0.1
            ),
        ]
    );
    // Both queries at ts - query_offset; the alert saw the recorded series.
    assert!(ctx.queries.borrow().iter().all(|(_, t)| *t == 90_000));
    assert_eq!(ev.transitions.len(), 4);
    let firing: Vec<_> = g.rules[1]
        .active_alerts()
        .map(|a| a.labels.clone())
        .collect();
    assert_eq!(
        firing[0],
        ls(&[
            ("alertname", "Errors"),
            ("job", "api"),
            ("source", "rule"),
            ("team", "web")
        ])
    );
    assert_eq!(ctx.written.borrow()[&g.rules[1].key].0, 90_000);
    assert!(g.rules.iter().all(|r| r.health == Health::Ok));
    assert_eq!(g.last_evaluation, Some(100_000));
}

#[test]
fn duplicate_label_sets_and_failing_queries_are_rule_errors() {
    let mut g = group(
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: dup\n  - alert: A\n    expr: dup\n  - alert: B\n    expr: broken\n  - record: ok\n    expr: fine\n",
    );
    let ctx = Fake::default();
    ctx.set(
        "dup",
        vec![
            (ls(&[("__name__", "x"), ("i", "1")]), 1.0),
            (ls(&[("__name__", "y"), ("i", "1")]), 1.0),
        ],
    );
    ctx.fail("broken", "query timed out");
    ctx.set("fine", vec![(ls(&[("i", "1")]), 1.0)]);
    let ev = eval(&mut g, 0, &ctx);
    assert!(ev.transitions.is_empty());
    let h: Vec<_> = g
        .rules
        .iter()
        .map(|r| (r.health, r.last_error.clone()))
        .collect();
    assert_eq!(
        h,
        vec![
            (Health::Err, Some(DUP_RECORD.to_string())),
            (Health::Err, Some(DUP_ALERT.to_string())),
            (Health::Err, Some("query timed out".to_string())),
            (Health::Ok, None),
        ]
    );
    // Failed rules write nothing (their last output is not made stale).
    assert_eq!(ctx.written.borrow().len(), 1);
    assert!(g.rules.iter().all(|r| r.last_evaluation == Some(0)));
    // Recovery clears the error.
    ctx.set("broken", vec![]);
    eval(&mut g, MIN, &ctx);
    assert_eq!(
        (g.rules[2].health, g.rules[2].last_error.clone()),
        (Health::Ok, None)
    );
}

#[test]
fn limit_applies_to_series_and_alerts() {
    let mut g = group(
        "groups:\n- name: g\n  limit: 1\n  rules:\n  - record: r\n    expr: up == 0\n  - alert: Down\n    expr: up == 0\n",
    );
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a", "b"]));
    let ev = eval(&mut g, 0, &ctx);
    assert_eq!(
        g.rules[0].last_error.as_deref(),
        Some("exceeded limit of 1 with 2 series")
    );
    assert_eq!(
        g.rules[1].last_error.as_deref(),
        Some("exceeded limit of 1 with 2 alerts")
    );
    assert_eq!(g.rules[1].alerts().count(), 0);
    // Two came and fired (`for: 0`), then were dropped.
    assert_eq!(ev.transitions.len(), 6);
    assert!(ev.transitions[4..].iter().all(|t| t.to == State::Inactive));
}

#[test]
fn a_longer_for_sends_a_firing_alert_back_to_pending() {
    let mut g = group(UP);
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, 0, &ctx);
    eval(&mut g, 5 * MIN, &ctx);
    let snap = g.snapshot();
    let mut longer = group(&UP.replace("for: 5m", "for: 10m"));
    assert_eq!(longer.restore(snap, 5 * MIN), 1);
    let ev = eval(&mut longer, 6 * MIN, &ctx);
    assert_eq!(ev.transitions[0].to, State::Pending);
    assert_eq!(states(&longer), vec![("a".into(), State::Pending)]);
    eval(&mut longer, 10 * MIN, &ctx);
    assert_eq!(states(&longer), vec![("a".into(), State::Firing)]);
}

#[test]
fn snapshot_and_restore_across_a_restart() {
    let mut g = group(UP);
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, 0, &ctx);
    eval(&mut g, 5 * MIN, &ctx);
    assert_eq!(g.alerts_to_send(5 * MIN, MIN, MIN).len(), 1);
    ctx.set("up == 0", down(&["a", "b"]));
    eval(&mut g, 6 * MIN, &ctx);
    assert!(g.alerts_to_send(6 * MIN, MIN, MIN).is_empty());

    // Through JSON, as the daemon saves it.
    let json = serde_json::to_string(&g.snapshot()).unwrap();
    let saved: Vec<AlertState> = serde_json::from_str(&json).unwrap();
    assert_eq!(saved, g.snapshot());
    assert!(json.contains("\"rule\":\"Down\""), "{json}");

    let mut again = group(UP);
    assert_eq!(again.restore(saved, 6 * MIN + 30_000), 2);
    let ev = eval(&mut again, 7 * MIN, &ctx);
    assert!(ev.transitions.is_empty(), "{ev:?}");
    assert_eq!(
        states(&again),
        vec![("a".into(), State::Firing), ("b".into(), State::Pending)]
    );
    // a was sent at 5m: not again before 6m + resend (no duplicate fire).
    assert!(again.alerts_to_send(7 * MIN, 2 * MIN, MIN).is_empty());
    // b keeps its `for` progress: it fires 5m after 6m.
    let ev = eval(&mut again, 11 * MIN, &ctx);
    assert_eq!(ev.transitions.len(), 1);
    assert_eq!(ev.transitions[0].labels["instance"], "b");
    assert_eq!(ev.transitions[0].to, State::Firing);

    // Alerts of rules no longer there, or resolved long ago, are dropped.
    let mut other = group(&UP.replace("Down", "Other"));
    assert_eq!(other.restore(again.snapshot(), 12 * MIN), 0);
    let mut stale = g.snapshot();
    stale[0].alert.state = State::Inactive;
    stale[0].alert.resolved_at = Some(0);
    assert_eq!(group(UP).restore(stale, 16 * MIN), 1);
}

#[test]
fn restore_from_alerts_for_state() {
    let hold = 30 * MIN;
    let grace = 10 * MIN;
    let now = 100 * MIN;
    // Had already waited its `for`: unchanged.
    assert_eq!(
        restored_active_at(hold, 90 * MIN, (50 * 60) as f64, now, grace),
        None
    );
    // Little left: fires one grace period from now.
    assert_eq!(
        restored_active_at(hold, 90 * MIN, (65 * 60) as f64, now, grace),
        Some(now + grace - hold)
    );
    // Much left: the downtime does not count.
    assert_eq!(
        restored_active_at(hold, 90 * MIN, (80 * 60) as f64, now, grace),
        Some(80 * MIN + 10 * MIN)
    );

    let mut g = group(&UP.replace("for: 5m", "for: 30m"));
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, now, &ctx);
    g.restore_for_state(now, PromDuration(grace), &|rule, labels| {
        assert_eq!(rule, "Down");
        (labels["instance"] == "a").then_some((90 * MIN, (80 * 60) as f64))
    });
    assert_eq!(g.rules[0].alerts().next().unwrap().active_at, 90 * MIN);
}

#[test]
fn api_views_in_prometheus_shapes() {
    let mut g = group(UP);
    let ctx = Fake::default();
    ctx.set("up == 0", down(&["a"]));
    eval(&mut g, 1_700_000_000_500, &ctx);
    g.rules[0].evaluation_time = Some(Duration::from_millis(3));
    let v = serde_json::to_value(rules_view([&g])).unwrap();
    let grp = &v["groups"][0];
    assert_eq!(grp["name"], "g");
    assert_eq!(grp["file"], "t.yml");
    assert_eq!(grp["interval"], 60.0);
    assert_eq!(grp["lastEvaluation"], "2023-11-14T22:13:20.5Z");
    let r = &grp["rules"][0];
    assert_eq!(r["type"], "alerting");
    assert_eq!(r["state"], "pending");
    assert_eq!(r["name"], "Down");
    assert_eq!(r["query"], "up == 0");
    assert_eq!(r["duration"], 300.0);
    assert_eq!(r["keepFiringFor"], 0.0);
    assert_eq!(r["health"], "ok");
    assert_eq!(r["evaluationTime"], 0.003);
    assert_eq!(r["labels"]["severity"], "page");
    assert_eq!(r["annotations"]["summary"], "instance is down");
    assert!(r.get("lastError").is_none());
    let a = &r["alerts"][0];
    assert_eq!(a["state"], "pending");
    assert_eq!(a["value"], "0e+00");
    assert_eq!(a["activeAt"], "2023-11-14T22:13:20.5Z");
    assert!(a.get("keepFiringSince").is_none());

    let av = serde_json::to_value(alerts_view([&g])).unwrap();
    assert_eq!(av["alerts"].as_array().unwrap().len(), 1);

    let rec = group("groups:\n- name: r\n  rules:\n  - record: x\n    expr: up\n");
    let v = serde_json::to_value(rules_view([&rec])).unwrap();
    let r = &v["groups"][0]["rules"][0];
    assert_eq!(r["type"], "recording");
    assert_eq!(r["health"], "unknown");
    assert_eq!(r["lastEvaluation"], "0001-01-01T00:00:00Z");

    for (f, s) in [
        (1.0, "1e+00"),
        (0.25, "2.5e-01"),
        (123.45, "1.2345e+02"),
        (-1e-300, "-1e-300"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+Inf"),
    ] {
        assert_eq!(go_float_e(f), s);
    }
    assert_eq!(rfc3339(Some(0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(Some(1_010)), "1970-01-01T00:00:01.01Z");
}

#[test]
fn query_escape_is_gos() {
    assert_eq!(
        query_escape("sum(rate(x{a=\"b c\"}[5m])) > 0.5 ~_-"),
        "sum%28rate%28x%7Ba%3D%22b+c%22%7D%5B5m%5D%29%29+%3E+0.5+~_-"
    );
}
