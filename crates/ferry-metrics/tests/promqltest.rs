//! The PromQL test-script runner: its parser, and its runner driven by
//! stand-in engines (so these tests do not depend on the evaluator).

use std::collections::{BTreeMap, BTreeSet};

use ferry_metrics::promqltest::{
    Command, DEFAULT_EPSILON, EvalTime, ExpectKind, MessageMatch, Point, QueryEngine, almost_equal,
    histogram_skip_reason, parse_duration, parse_number, parse_points, parse_script,
    parse_series_line, run_file, run_script,
};
use ferry_metrics::storage::{Labels, is_stale, stale_nan};
use ferry_metrics::{Engine, EvalError, Sample, Series, Storage, Value};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn floats(points: &[Point]) -> Vec<f64> {
    points
        .iter()
        .map(|p| match p {
            Point::Float(v) => *v,
            other => panic!("expected a float, got {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Points and series lines.

#[test]
fn expanding_notation() {
    assert_eq!(
        floats(&parse_points("1+2x3").unwrap()),
        [1.0, 3.0, 5.0, 7.0]
    );
    assert_eq!(floats(&parse_points("-1-1x2").unwrap()), [-1.0, -2.0, -3.0]);
    assert_eq!(floats(&parse_points("5x2").unwrap()), [5.0, 5.0, 5.0]);
    assert_eq!(floats(&parse_points("0+10x0").unwrap()), [0.0]);
    assert_eq!(floats(&parse_points("1.5e1-.5x1").unwrap()), [15.0, 14.5]);
    assert_eq!(
        parse_points("0+10x1000 100+30x1000").unwrap().len(),
        2002,
        "items concatenate"
    );
}

#[test]
fn blanks_stale_and_specials() {
    assert_eq!(
        parse_points("_x2").unwrap(),
        [Point::Omitted, Point::Omitted]
    );
    assert_eq!(
        parse_points("1 _ stale 2").unwrap(),
        [
            Point::Float(1.0),
            Point::Omitted,
            Point::Stale,
            Point::Float(2.0)
        ]
    );
    let p = floats(&parse_points("Inf -Inf +Inf inf NaN -2 .5").unwrap());
    assert_eq!(
        p[..4],
        [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::INFINITY
        ]
    );
    assert!(p[4].is_nan());
    assert_eq!(p[5..], [-2.0, 0.5]);
}

#[test]
fn native_histogram_points() {
    let p = parse_points("5 {{schema:1 sum:3 count:22 buckets:[5 10 7]}} _ {{sum:1}}x2").unwrap();
    assert_eq!(
        p,
        [
            Point::Float(5.0),
            Point::Histogram,
            Point::Omitted,
            Point::Histogram,
            Point::Histogram,
            Point::Histogram
        ]
    );
    let p = parse_points("{{schema:0 sum:1 count:1}}+{{schema:0 sum:1 count:1}}x3").unwrap();
    assert_eq!(p, [Point::Histogram; 4]);
}

#[test]
fn bad_points_are_errors() {
    for bad in [
        "1m", "stalex2", "1+2", "x3", "1x", "foo", "1+2x", "-stale", "{{sum:1",
    ] {
        assert!(parse_points(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn series_lines() {
    let (l, p) = parse_series_line(r#"metric{label="v", other='w'} 1 2"#).unwrap();
    assert_eq!(
        l,
        labels(&[("__name__", "metric"), ("label", "v"), ("other", "w")])
    );
    assert_eq!(floats(&p), [1.0, 2.0]);

    let (l, _) = parse_series_line(r#"{a="b"} 1"#).unwrap();
    assert_eq!(l, labels(&[("a", "b")]));

    let (l, _) = parse_series_line("job:rate:sum5m 1").unwrap();
    assert_eq!(l, labels(&[("__name__", "job:rate:sum5m")]));

    let (l, _) = parse_series_line(r#"{__name__="m", a="x\"y\\z\n", b=""} 3"#).unwrap();
    assert_eq!(
        l,
        labels(&[("__name__", "m"), ("a", "x\"y\\z\n")]),
        "empty value dropped"
    );

    let (l, p) = parse_series_line("{} 3").unwrap();
    assert!(l.is_empty());
    assert_eq!(floats(&p), [3.0]);

    let (l, _) = parse_series_line(r#"{"utf8.metric", "a.b"="c",} 1"#).unwrap();
    assert_eq!(l, labels(&[("__name__", "utf8.metric"), ("a.b", "c")]));

    let (l, _) = parse_series_line("scalar_metric{} 3").unwrap();
    assert_eq!(l, labels(&[("__name__", "scalar_metric")]));

    for bad in [
        r#"m{a=~"b"} 1"#,
        r#"m{a="b" 1"#,
        "1 2",
        r#"m {a="b"} 1"#,
        r#"m{a} 1"#,
    ] {
        assert!(parse_series_line(bad).is_err(), "{bad:?} should not parse");
    }
}

// ---------------------------------------------------------------------------
// Durations, numbers, comparison.

#[test]
fn durations() {
    assert_eq!(parse_duration("0"), Ok(0));
    assert_eq!(parse_duration("0s"), Ok(0));
    assert_eq!(parse_duration("1ms"), Ok(1));
    assert_eq!(parse_duration("30s"), Ok(30_000));
    assert_eq!(parse_duration("1m"), Ok(60_000));
    assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
    assert_eq!(parse_duration("10s53ms"), Ok(10_053));
    assert_eq!(parse_duration("2d"), Ok(172_800_000));
    assert_eq!(parse_duration("1w"), Ok(604_800_000));
    assert_eq!(parse_duration("1y"), Ok(31_536_000_000));
    // As Prometheus: a unit is required (but for 0), units go from largest
    // to smallest, each once.
    for bad in ["", "10", "1.5s", "30m1h", "1m1m", "1x", "-1m", "m"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn numbers() {
    assert_eq!(parse_number("12340000"), Some(12_340_000.0));
    assert_eq!(parse_number("12.34e-6"), Some(0.000_012_34));
    assert_eq!(parse_number("-0.2e-6"), Some(-0.000_000_2));
    assert_eq!(parse_number("+Inf"), Some(f64::INFINITY));
    assert_eq!(parse_number("-inf"), Some(f64::NEG_INFINITY));
    assert!(parse_number("NaN").unwrap().is_nan());
    assert_eq!(parse_number("0x10"), Some(16.0));
    assert_eq!(parse_number("2."), Some(2.0));
    assert_eq!(parse_number("{} 1"), None);
    assert_eq!(parse_number("metric"), None);
}

#[test]
fn almost_equal_is_prometheus_almost_equal() {
    assert!(almost_equal(f64::NAN, f64::NAN, DEFAULT_EPSILON));
    assert!(almost_equal(stale_nan(), f64::NAN, DEFAULT_EPSILON));
    assert!(almost_equal(f64::INFINITY, f64::INFINITY, DEFAULT_EPSILON));
    assert!(!almost_equal(
        f64::INFINITY,
        f64::NEG_INFINITY,
        DEFAULT_EPSILON
    ));
    assert!(!almost_equal(f64::INFINITY, f64::NAN, DEFAULT_EPSILON));
    assert!(!almost_equal(1.0, f64::NAN, DEFAULT_EPSILON));
    assert!(almost_equal(249.999_999_999_999_97, 250.0, DEFAULT_EPSILON));
    assert!(almost_equal(1.0, 1.000_000_1, DEFAULT_EPSILON));
    assert!(!almost_equal(1.0, 1.000_01, DEFAULT_EPSILON));
    assert!(almost_equal(0.0, -0.0, DEFAULT_EPSILON));
    // Against zero the tolerance is absolute, and tiny.
    assert!(!almost_equal(0.0, 1e-300, DEFAULT_EPSILON));
    assert!(almost_equal(0.0, 1e-320, DEFAULT_EPSILON));
}

// ---------------------------------------------------------------------------
// Scripts.

const SCRIPT: &str = r#"
# A comment.
load 1m
    metric{env="prod"} 5 2+3x2 _ stale
    other 1

eval instant at 1m30s sum(metric)
    expect no_warn
    {} 2

eval range from 0 to 3m step 1m metric
    metric{env="prod"} 5 2 5 8

clear

eval_fail instant at 0 foo(
    expected_fail_regexp unexpected .*

eval instant at 50m 1 + 1
	2

eval instant at 50m "Foo"
	expect string "Foo"

eval_ordered instant at 0 sort(metric)
    expect fail msg: something went wrong
    metric 1
"#;

#[test]
fn parses_commands() {
    let script = parse_script(SCRIPT);
    assert!(script.errors.is_empty(), "{:?}", script.errors);
    let cmds = &script.commands;
    assert_eq!(cmds.len(), 8);

    let Command::Load(load) = &cmds[0] else {
        panic!("not a load: {:?}", cmds[0]);
    };
    assert_eq!(
        (load.line, load.interval_ms, load.with_nhcb),
        (3, 60_000, false)
    );
    assert_eq!(load.series.len(), 2);
    assert_eq!(
        load.series[0].labels,
        labels(&[("__name__", "metric"), ("env", "prod")])
    );
    assert_eq!(
        load.series[0].points,
        [
            Point::Float(5.0),
            Point::Float(2.0),
            Point::Float(5.0),
            Point::Float(8.0),
            Point::Omitted,
            Point::Stale
        ]
    );

    let Command::Eval(ev) = &cmds[1] else {
        panic!("not an eval: {:?}", cmds[1]);
    };
    assert_eq!(ev.line, 7);
    assert_eq!(ev.query, "sum(metric)");
    assert_eq!(ev.time, EvalTime::Instant { at_ms: 90_000 });
    assert_eq!(ev.expects.len(), 1);
    assert_eq!(ev.expects[0].kind, ExpectKind::NoWarn);
    assert_eq!(ev.expected_series.len(), 1);
    assert!(ev.expected_series[0].labels.is_empty());
    assert_eq!(ev.expected_series[0].points, [Point::Float(2.0)]);
    assert!(ev.expected_failure().is_none());

    let Command::Eval(ev) = &cmds[2] else {
        panic!("not an eval: {:?}", cmds[2]);
    };
    assert_eq!(
        ev.time,
        EvalTime::Range {
            start_ms: 0,
            end_ms: 180_000,
            step_ms: 60_000
        }
    );
    assert_eq!(ev.query, "metric");
    assert_eq!(ev.expected_series[0].points.len(), 4);

    assert_eq!(cmds[3], Command::Clear { line: 14 });

    let Command::Eval(ev) = &cmds[4] else {
        panic!("not an eval: {:?}", cmds[4]);
    };
    assert_eq!(ev.query, "foo(");
    match ev.expected_failure() {
        Some(MessageMatch::Regex(r)) => assert_eq!(r.as_str(), "unexpected .*"),
        other => panic!("eval_fail with a regexp: {other:?}"),
    }

    let Command::Eval(ev) = &cmds[5] else {
        panic!("not an eval: {:?}", cmds[5]);
    };
    assert_eq!(ev.expected_scalar, Some(2.0));
    assert!(ev.expected_series.is_empty());

    let Command::Eval(ev) = &cmds[6] else {
        panic!("not an eval: {:?}", cmds[6]);
    };
    assert_eq!(ev.expected_string.as_deref(), Some("Foo"));

    // eval_ordered followed by an expect fail: both kept.
    let script = parse_script(SCRIPT);
    let Some(Command::Eval(ev)) = script.commands.last() else {
        panic!("no eval")
    };
    assert_eq!(ev.query, "sort(metric)");
    assert!(ev.is_ordered());
    assert_eq!(
        ev.expected_failure(),
        Some(&MessageMatch::Exact("something went wrong".into()))
    );
}

#[test]
fn a_comment_or_blank_line_ends_a_block() {
    let script =
        parse_script("load 1m\n  a 1\n# comment\n  b 2\n\neval instant at 0 a\n  #empty\n  a 1\n");
    // `b 2` and the indented `a 1` after the comments are not commands.
    assert_eq!(script.errors.len(), 2, "{:?}", script.errors);
    assert_eq!(script.errors[0].line, 4);
    let Command::Load(load) = &script.commands[0] else {
        panic!("not a load")
    };
    assert_eq!(load.series.len(), 1);
    let Command::Eval(ev) = &script.commands[1] else {
        panic!("not an eval")
    };
    assert!(ev.expected_series.is_empty());
}

#[test]
fn malformed_evals_are_failures_not_panics() {
    let report = run_script(
        "eval instant at 10 up\n  up 1\n\neval instant at 1m up\n  up 1 2\n\nbogus\n\nload x\n  a 1\n",
        &Stub,
    );
    assert_eq!((report.passed, report.failed, report.skipped), (0, 2, 0));
    assert_eq!(report.errors.len(), 4);
    assert!(
        report.failures[0].why.contains("invalid timestamp"),
        "{:?}",
        report.failures
    );
    assert!(
        report.failures[1].why.contains("expect range vector"),
        "{:?}",
        report.failures
    );
}

// ---------------------------------------------------------------------------
// Running, with stand-in engines.

/// Every query fails, as the evaluator did before it was written.
struct Stub;

impl QueryEngine for Stub {
    fn instant(&self, _: &Storage, _: &str, _: i64) -> Result<Value, EvalError> {
        Err(EvalError::Eval("not implemented".into()))
    }

    fn range(&self, _: &Storage, _: &str, _: i64, _: i64, _: i64) -> Result<Value, EvalError> {
        Err(EvalError::Eval("not implemented".into()))
    }
}

#[test]
fn with_a_failing_engine_evals_fail_and_expected_failures_pass() {
    let report = run_script(SCRIPT, &Stub);
    // sum(metric), metric (range), 1 + 1 and "Foo" fail; foo( expects a
    // failure matching "unexpected .*" and gets "not implemented";
    // sort(metric) expects "something went wrong".
    assert_eq!((report.passed, report.failed, report.skipped), (0, 6, 0));
    assert_eq!(report.failures.len(), 6);
    assert_eq!(report.failures[0].line, 7);
    assert_eq!(report.failures[0].query, "sum(metric)");
    assert!(report.failures[0].why.contains("not implemented"));

    let report = run_script(
        "eval instant at 0 x\n  expect fail\n\neval instant at 0 x\n  expect fail regex: ^not impl\n",
        &Stub,
    );
    assert_eq!((report.passed, report.failed), (2, 0));
}

#[test]
fn deprecated_forms_combine_with_expect_lines() {
    // As Prometheus: eval_fail and eval_warn are not checked against the
    // expect lines; an error must match every expected failure.
    let report = run_script(
        "eval_fail instant at 0 x\n  expect fail msg: not implemented\n\n\
         eval_fail instant at 0 x\n  expect fail msg: other\n\n\
         eval_warn instant at 0 x\n  expect no_warn\n  expect fail\n",
        &Stub,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.passed, report.failed), (2, 1));
    assert_eq!(report.failures[0].line, 4);
}

#[test]
fn the_real_engine_never_panics_the_runner() {
    let report = run_script(SCRIPT, &Engine::default());
    assert_eq!(report.total(), 6);
    assert_eq!(report.failures.len(), report.failed);
}

/// Answers from a table, and records what it was asked and the storage it
/// saw.
#[derive(Default)]
struct Table {
    instant: BTreeMap<(String, i64), Value>,
    range: BTreeMap<String, Value>,
    seen: std::cell::RefCell<Vec<(String, usize)>>,
}

impl QueryEngine for Table {
    fn instant(&self, storage: &Storage, query: &str, t: i64) -> Result<Value, EvalError> {
        self.seen
            .borrow_mut()
            .push((query.to_string(), storage.series_count()));
        self.instant
            .get(&(query.to_string(), t))
            .cloned()
            .ok_or_else(|| EvalError::Eval(format!("no answer for {query} at {t}")))
    }

    fn range(
        &self,
        storage: &Storage,
        query: &str,
        _: i64,
        _: i64,
        _: i64,
    ) -> Result<Value, EvalError> {
        self.seen
            .borrow_mut()
            .push((query.to_string(), storage.series_count()));
        self.range
            .get(query)
            .cloned()
            .ok_or_else(|| EvalError::Eval(format!("no answer for {query}")))
    }
}

fn sample(l: &[(&str, &str)], v: f64) -> Sample {
    Sample {
        labels: labels(l),
        t: 0,
        v,
    }
}

#[test]
fn compares_results_like_prometheus() {
    let mut e = Table::default();
    let a = [("__name__", "m"), ("a", "1")];
    let b = [("__name__", "m"), ("a", "2")];
    // Vectors compare as sets, values almost equal.
    e.instant.insert(
        ("m".into(), 0),
        Value::Vector(vec![sample(&b, 2.000_000_01), sample(&a, f64::NAN)]),
    );
    // ... in order when ordered.
    e.instant.insert(
        ("sort(m)".into(), 0),
        Value::Vector(vec![sample(&b, 2.0), sample(&a, 1.0)]),
    );
    e.instant.insert(("1".into(), 0), Value::Scalar(1.0));
    e.instant
        .insert(("\"s\"".into(), 0), Value::String("s".into()));
    e.range.insert(
        "m".into(),
        Value::Matrix(vec![Series {
            labels: labels(&a),
            points: vec![(0, 1.0), (120_000, 3.0)],
        }]),
    );
    e.instant.insert(
        ("m[2m]".into(), 120_000),
        Value::Matrix(vec![Series {
            labels: labels(&a),
            points: vec![(60_000, 2.0), (120_000, 3.0)],
        }]),
    );
    let script = r#"
eval instant at 0 m
  m{a="1"} NaN
  m{a="2"} 2

eval instant at 0 m
  m{a="1"} NaN

eval instant at 0 m
  m{a="1"} 1
  m{a="2"} 2

eval instant at 0 sort(m)
  expect ordered
  m{a="2"} 2
  m{a="1"} 1

eval instant at 0 sort(m)
  expect ordered
  m{a="1"} 1
  m{a="2"} 2

eval instant at 0 1
  1

eval instant at 0 1
  {} 1

eval instant at 0 "s"
  expect string "s"

eval range from 0 to 2m step 1m m
  m{a="1"} 1 _ 3

eval range from 0 to 2m step 1m m
  m{a="1"} 1 2 3

eval instant at 5m m[2m]
  expect range vector from 1m to 2m step 1m
  m{a="1"} 2 3

eval instant at 0 m
  expect fail
"#;
    let report = run_script(script, &e);
    let failed: Vec<usize> = report.failures.iter().map(|f| f.line).collect();
    assert_eq!(failed, [6, 9, 18, 26, 35, 42], "{:#?}", report.failures);
    assert_eq!((report.passed, report.failed), (6, 6));
}

#[test]
fn loads_points_at_their_step() {
    struct Probe;
    impl QueryEngine for Probe {
        fn instant(&self, storage: &Storage, _: &str, _: i64) -> Result<Value, EvalError> {
            let all: Vec<(Labels, Vec<(i64, f64)>)> = storage
                .select(|_| true, i64::MIN, i64::MAX)
                .map(|(l, p)| (l.clone(), p.to_vec()))
                .collect();
            let m = &all[0];
            assert_eq!(m.0, labels(&[("__name__", "m")]));
            let t: Vec<i64> = m.1.iter().map(|p| p.0).collect();
            assert_eq!(t, [0, 30_000, 60_000, 150_000, 180_000]);
            assert!(is_stale(m.1[4].1));
            assert_eq!(m.1[3].1, 4.0);
            // The float points of a series with histogram points are loaded.
            assert_eq!(all[1].1, [(0, 1.0)]);
            Ok(Value::Scalar(all.len() as f64))
        }
        fn range(&self, _: &Storage, _: &str, _: i64, _: i64, _: i64) -> Result<Value, EvalError> {
            unreachable!()
        }
    }
    let report = run_script(
        "load 30s\n  m 1 2 3 _x2 4 stale\n  n 1 {{sum:1}}\n\neval instant at 0 vector(1)\n  2\n",
        &Probe,
    );
    assert_eq!(
        (report.passed, report.failed),
        (1, 0),
        "{:?}",
        report.failures
    );
}

#[test]
fn clear_empties_the_storage() {
    let e = Table::default();
    run_script(
        "load 1m\n  a 1\n  b 1\n\neval instant at 0 a\n\nclear\n\nload 1m\n  c 1\n\neval instant at 0 c\n",
        &e,
    );
    assert_eq!(*e.seen.borrow(), [("a".into(), 2), ("c".into(), 1)]);
}

// ---------------------------------------------------------------------------
// Native histograms.

const HISTOGRAMS: &str = r#"
load 5m
  hist{job="a"} 1 {{schema:0 sum:1 count:1}}
  float{job="a"} 1 2

load_with_nhcb 5m
  classic_bucket{le="1"} 1
  classic_bucket{le="+Inf"} 2

eval instant at 0 float
  float{job="a"} 1

eval instant at 0 hist
  hist{job="a"} 1

eval instant at 0 rate(hist[5m])

eval instant at 0 {job="a"}

eval instant at 0 {__name__=~"f.*"}

eval instant at 0 {__name__=~"h.*"}

eval instant at 0 float
  float{job="a"} {{schema:0 sum:1 count:1}}

eval instant at 0 histogram_count(float)

eval instant at 0 histogram_quantile(0.5, classic_bucket)

eval instant at 0 histogram_fraction(0, 1, classic_bucket)

eval instant at 0 histogram_quantile(0.5, classic)

eval instant at 0 float unparsable )( hist

clear

eval instant at 0 hist
"#;

#[test]
fn evals_touching_native_histograms_are_skipped() {
    let report = run_script(HISTOGRAMS, &Stub);
    let skipped: Vec<usize> = report.skips.iter().map(|s| s.line).collect();
    // hist (plain, in a range, by a label, by a name regex), a histogram
    // result, histogram_count, the NHCB series `classic`, and `hist`
    // named in a query that does not parse.
    assert_eq!(
        skipped,
        [13, 16, 18, 22, 24, 27, 33, 35],
        "{:#?}",
        report.skips
    );
    assert_eq!(report.skipped_histogram, 8);
    assert_eq!(report.skipped, 8);
    // float, {__name__=~"f.*"}, histogram_quantile and histogram_fraction on
    // classic buckets, and hist after the clear, are run.
    let failed: Vec<usize> = report.failures.iter().map(|f| f.line).collect();
    assert_eq!(failed, [10, 20, 29, 31, 39]);
}

#[test]
fn histogram_skip_reason_rules() {
    let script = parse_script(
        "eval instant at 0 sum(histogram_avg(x))\n\neval instant at 0 x\n\neval instant at 0 y offset 5m\n",
    );
    let evals: Vec<_> = script
        .commands
        .iter()
        .map(|c| match c {
            Command::Eval(e) => e,
            other => panic!("not an eval: {other:?}"),
        })
        .collect();
    let none = BTreeSet::new();
    let some: BTreeSet<Labels> = [labels(&[("__name__", "y"), ("a", "b")])].into();
    assert!(
        histogram_skip_reason(evals[0], &none)
            .unwrap()
            .contains("histogram_avg")
    );
    assert_eq!(histogram_skip_reason(evals[1], &some), None);
    assert!(histogram_skip_reason(evals[2], &some).is_some());
    assert_eq!(histogram_skip_reason(evals[2], &none), None);
}

/// Prometheus's own test scripts (testdata/prometheus, copied from
/// Prometheus 3.14): how many float evals pass, per file. A change that
/// makes fewer pass fails here; one that makes more pass should raise the
/// numbers. Native-histogram evals are skipped (not supported).
#[test]
fn prometheus_conformance_does_not_regress() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/prometheus");
    let floor = [
        ("aggregators.test", 124),
        ("functions.test", 322),
        ("histograms.test", 83),
        ("limit.test", 0),
        ("literals.test", 25),
        ("name_label_dropping.test", 30),
        ("operators.test", 142),
        ("selectors.test", 31),
        ("staleness.test", 17),
        ("trig_functions.test", 19),
    ];
    let engine = Engine::default();
    let (mut passed, mut failed) = (0, 0);
    for (file, at_least) in floor {
        let report = run_file(dir.join(file), &engine).unwrap();
        assert!(
            report.passed >= at_least,
            "{file}: {} passed, at least {at_least} did before: {:#?}",
            report.passed,
            report.failures
        );
        passed += report.passed;
        failed += report.failed;
    }
    // 793 of 796 float evals (99.6 %); the issue asks for at least 95 %.
    assert!(
        passed * 100 >= (passed + failed) * 95,
        "{passed} passed, {failed} failed"
    );
    assert!(failed <= 3, "{failed} failed");
}
