//! Prometheus's PromQL test scripts (`promqltest`): a parser for the script
//! format (`load`, `clear`, `eval instant|range`, `expect ...`, described in
//! Prometheus's `promql/promqltest/README.md`) and a runner that executes a
//! script, in order, against an [`Engine`] on one [`Storage`].
//!
//! The parser follows Prometheus's `promqltest/test.go`: lines are trimmed,
//! a line starting with `#` counts as a blank line, and a blank line ends a
//! `load` or `eval` block (so a comment inside a block ends it too).
//! Series lines follow `ParseSeriesDesc`: `name{label="value", ...}` then the
//! expanding point notation (`1+2x3`, `5x2`, `_`, `_x3`, `stale`, `Inf`,
//! `NaN`, `{{...}}` native histograms). A scalar expectation is a bare
//! number line. Durations are Prometheus durations (`model.ParseDuration`):
//! `1h30m`, `10s53ms`, `0`; a plain number other than `0` is rejected, as
//! Prometheus does.
//!
//! The runner differs from Prometheus's on purpose in three ways:
//!
//! - It reports every eval (passed, failed or skipped) instead of stopping
//!   at the first failure, and a malformed command is reported
//!   ([`FileReport::errors`], and as a failure when it was an `eval`)
//!   instead of rejecting the file.
//! - `warn`, `info`, `no_warn` and `no_info` expectations are parsed but not
//!   checked: the engine has no annotations yet. They neither pass nor fail
//!   an eval.
//! - Instant queries are run once: not again with `@` appended, and not
//!   again as a range query around the evaluation time.
//!
//! # Native histograms
//!
//! The store holds floats only, so an eval that touches native histograms is
//! skipped (counted in [`FileReport::skipped`] and
//! [`FileReport::skipped_histogram`]) when any of these holds:
//!
//! 1. its query or one of its expected lines contains `{{`;
//! 2. its query calls a function whose name starts with `histogram_`, other
//!    than `histogram_quantile` and `histogram_fraction` (which also work on
//!    classic histograms, the `_bucket` series: [`CLASSIC_HISTOGRAM_FUNCTIONS`]);
//! 3. a selector in its query matches a series that was loaded, since the
//!    last `clear`, with at least one `{{...}}` point, or a native histogram
//!    a `load_with_nhcb` block derives from classic `_bucket`/`_count`/`_sum`
//!    series (the base name, without `le`). Selectors are matched against
//!    those series' labels with the query's own matchers; when the query does
//!    not parse, any mention of such a series' name as a word counts.
//!
//! `load` stores the float points of every series (the float points of a
//! series that also has histogram points included) and never the histogram
//! points; `load_with_nhcb` loads its classic float series normally.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::LazyLock;

use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, unquote_string, walk_expr};
use regex::Regex;

use crate::eval::{Engine, EvalError};
use crate::storage::{Labels, Storage, format_labels, stale_nan};
use crate::value::{Sample, Series, Value};

/// Relative error allowed between an expected and an actual value
/// (Prometheus's `defaultEpsilon`).
pub const DEFAULT_EPSILON: f64 = 0.000_001;

/// The `histogram_*` functions that also take classic histograms (float
/// `_bucket` series), so calling them does not by itself skip an eval.
pub const CLASSIC_HISTOGRAM_FUNCTIONS: [&str; 2] = ["histogram_quantile", "histogram_fraction"];

/// The largest repeat count (`xN`) a point item may have; larger counts are
/// rejected rather than allocated.
pub const MAX_REPEAT: u64 = 10_000_000;

// ---------------------------------------------------------------------------
// The script, parsed.

/// One step of a series line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    /// A float sample.
    Float(f64),
    /// A stale marker (`stale`).
    Stale,
    /// No sample at this step (`_`).
    Omitted,
    /// A native histogram sample (`{{...}}`); its contents are not kept.
    Histogram,
}

impl Point {
    pub fn is_histogram(&self) -> bool {
        matches!(self, Point::Histogram)
    }
}

/// A series and its points: a line of a `load` block, or an expected result
/// line of an `eval` block.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesLine {
    /// 1-based line number in the script.
    pub line: usize,
    /// The series' labels, `__name__` included when the line names one.
    pub labels: Labels,
    pub points: Vec<Point>,
}

impl SeriesLine {
    pub fn has_histogram(&self) -> bool {
        self.points.iter().any(Point::is_histogram)
    }
}

/// `load <interval>` (or `load_with_nhcb <interval>`) and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub line: usize,
    pub interval_ms: i64,
    /// `load_with_nhcb`: classic histograms are also loaded as native
    /// histograms with custom buckets (which this runner does not store).
    pub with_nhcb: bool,
    pub series: Vec<SeriesLine>,
}

/// When an eval runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalTime {
    /// `eval instant at <time>`.
    Instant { at_ms: i64 },
    /// `eval range from <start> to <end> step <step>`.
    Range {
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    },
}

/// The kind of an `expect` line (or of a deprecated `eval_*` variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectKind {
    Fail,
    Warn,
    NoWarn,
    Info,
    NoInfo,
    Ordered,
}

impl ExpectKind {
    fn from_word(word: &str) -> Option<ExpectKind> {
        Some(match word {
            "fail" => ExpectKind::Fail,
            "warn" => ExpectKind::Warn,
            "no_warn" => ExpectKind::NoWarn,
            "info" => ExpectKind::Info,
            "no_info" => ExpectKind::NoInfo,
            "ordered" => ExpectKind::Ordered,
            _ => return None,
        })
    }
}

/// How an expected error or annotation message is matched.
#[derive(Debug, Clone)]
pub enum MessageMatch {
    /// No `msg:` or `regex:` given: any message.
    Any,
    /// `msg: <text>`: the whole message, exactly.
    Exact(String),
    /// `regex: <pattern>`: the pattern matches somewhere in the message.
    Regex(Regex),
}

impl MessageMatch {
    pub fn matches(&self, message: &str) -> bool {
        match self {
            MessageMatch::Any => true,
            MessageMatch::Exact(m) => m == message,
            MessageMatch::Regex(r) => r.is_match(message),
        }
    }
}

impl PartialEq for MessageMatch {
    fn eq(&self, other: &MessageMatch) -> bool {
        match (self, other) {
            (MessageMatch::Any, MessageMatch::Any) => true,
            (MessageMatch::Exact(a), MessageMatch::Exact(b)) => a == b,
            (MessageMatch::Regex(a), MessageMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl fmt::Display for MessageMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageMatch::Any => f.write_str("any message"),
            MessageMatch::Exact(m) => write!(f, "message {m:?}"),
            MessageMatch::Regex(r) => write!(f, "pattern {:?}", r.as_str()),
        }
    }
}

/// One expectation of an eval.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub kind: ExpectKind,
    pub matcher: MessageMatch,
}

/// `expect range vector from <start> to <end> step <step>`: the timestamps of
/// a range vector returned by an instant query (which is then evaluated at
/// `end_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeVector {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

/// An `eval` command and its expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    /// 1-based line number of the `eval` line.
    pub line: usize,
    pub query: String,
    pub time: EvalTime,
    /// `expect` lines, and what the deprecated `eval_fail`, `eval_warn`,
    /// `eval_info`, `eval_ordered`, `expected_fail_message` and
    /// `expected_fail_regexp` map to.
    pub expects: Vec<Expect>,
    pub range_vector: Option<RangeVector>,
    /// `expect string "..."`.
    pub expected_string: Option<String>,
    /// A bare number line: the query returns this scalar.
    pub expected_scalar: Option<f64>,
    /// The expected series, in file order.
    pub expected_series: Vec<SeriesLine>,
}

impl Eval {
    /// The expected failure, if the eval expects the query to fail. (With
    /// `eval_fail` and an `expect fail` line there are two; the error must
    /// match both, see [`Eval::expected_failures`].)
    pub fn expected_failure(&self) -> Option<&MessageMatch> {
        self.expects
            .iter()
            .find(|e| e.kind == ExpectKind::Fail)
            .map(|e| &e.matcher)
    }

    /// Every expected failure: the query must fail with a message that
    /// matches them all.
    pub fn expected_failures(&self) -> impl Iterator<Item = &MessageMatch> {
        self.expects
            .iter()
            .filter(|e| e.kind == ExpectKind::Fail)
            .map(|e| &e.matcher)
    }

    /// Whether the result must be in the expected order.
    pub fn is_ordered(&self) -> bool {
        self.expects.iter().any(|e| e.kind == ExpectKind::Ordered)
    }

    /// Whether an expected line has a native histogram point.
    pub fn expects_histogram(&self) -> bool {
        self.expected_series.iter().any(SeriesLine::has_histogram)
    }
}

/// One command of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Load(Load),
    Clear { line: usize },
    Eval(Eval),
}

/// A script line that could not be parsed. The command it belongs to is left
/// out of [`Script::commands`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
    /// The query, when the error is in an `eval` command whose header could
    /// be read (the runner then counts that eval as failed).
    pub query: Option<String>,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A parsed script: its commands, in order, and the lines that did not
/// parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub commands: Vec<Command>,
    pub errors: Vec<ScriptError>,
}

// ---------------------------------------------------------------------------
// Parsing.

static PAT_LOAD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^load(?:_(with_nhcb))?\s+(.+?)$").expect("valid regex"));
static PAT_EVAL_INSTANT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
        .expect("valid regex")
});
static PAT_EVAL_RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$",
    )
    .expect("valid regex")
});
static PAT_EXPECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$")
        .expect("valid regex")
});
static PAT_EXPECT_RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^expect range vector\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$")
        .expect("valid regex")
});

const RANGE_VECTOR_PREFIX: &str = "expect range vector";
const EXPECT_STRING_PREFIX: &str = "expect string";

/// Parses a whole script. Never fails: lines that do not parse are returned
/// in [`Script::errors`] and their command is left out.
pub fn parse_script(text: &str) -> Script {
    // As Prometheus's getLines: trimmed, comments blanked.
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') { "" } else { l }
        })
        .collect();
    let mut script = Script::default();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let word = l.split_whitespace().next().unwrap_or("").to_lowercase();
        if word == "clear" {
            script.commands.push(Command::Clear { line: i + 1 });
            i += 1;
        } else if word.starts_with("load") {
            i = parse_load(&lines, i, &mut script);
        } else if word.starts_with("eval") {
            i = parse_eval(&lines, i, &mut script);
        } else {
            script.errors.push(ScriptError {
                line: i + 1,
                message: format!("invalid command {l:?}"),
                query: None,
            });
            i = end_of_block(&lines, i);
        }
    }
    script
}

/// The index of the blank line that ends the block starting at `i` (or the
/// number of lines).
fn end_of_block(lines: &[&str], i: usize) -> usize {
    let mut j = i;
    while j < lines.len() && !lines[j].is_empty() {
        j += 1;
    }
    j
}

/// Parses the `load` block at `lines[i]`; returns the index to go on from.
fn parse_load(lines: &[&str], i: usize, script: &mut Script) -> usize {
    let header = lines[i];
    let end = end_of_block(lines, i);
    let Some(caps) = PAT_LOAD.captures(header) else {
        script.errors.push(ScriptError {
            line: i + 1,
            message: "invalid load command (load[_with_nhcb] <step:duration>)".into(),
            query: None,
        });
        return end;
    };
    let with_nhcb = caps.get(1).is_some();
    let step = &caps[2];
    let interval_ms = match parse_duration(step) {
        Ok(d) => d,
        Err(e) => {
            script.errors.push(ScriptError {
                line: i + 1,
                message: format!("invalid step definition {step:?}: {e}"),
                query: None,
            });
            return end;
        }
    };
    let mut load = Load {
        line: i + 1,
        interval_ms,
        with_nhcb,
        series: Vec::new(),
    };
    for (j, &def) in lines.iter().enumerate().take(end).skip(i + 1) {
        // Start-timestamp lines (`metric@st ...`, newer Prometheus) say
        // nothing this store keeps.
        if def
            .split_whitespace()
            .next()
            .is_some_and(|w| w.ends_with("@st"))
        {
            continue;
        }
        match parse_series_line(def) {
            Ok((labels, points)) => load.series.push(SeriesLine {
                line: j + 1,
                labels,
                points,
            }),
            Err(e) => script.errors.push(ScriptError {
                line: j + 1,
                message: format!("invalid series line: {e}"),
                query: None,
            }),
        }
    }
    script.commands.push(Command::Load(load));
    end
}

/// Parses the `eval` command at `lines[i]`; returns the index to go on from.
fn parse_eval(lines: &[&str], i: usize, script: &mut Script) -> usize {
    let header = lines[i];
    let end = end_of_block(lines, i);
    let fail = |script: &mut Script, line: usize, message: String, query: Option<String>| {
        script.errors.push(ScriptError {
            line: line + 1,
            message,
            query,
        });
        end
    };

    let (modifier, query, time) = if let Some(c) = PAT_EVAL_INSTANT.captures(header) {
        let query = c[3].to_string();
        let at = c.get(2).map_or("", |m| m.as_str());
        match parse_duration(at) {
            Ok(at_ms) => (
                c.get(1).map(|m| m.as_str()),
                query,
                EvalTime::Instant { at_ms },
            ),
            Err(e) => {
                let msg = format!("invalid timestamp definition {at:?}: {e}");
                return fail(script, i, msg, Some(query));
            }
        }
    } else if let Some(c) = PAT_EVAL_RANGE.captures(header) {
        let query = c[5].to_string();
        match parse_range(&c[2], &c[3], &c[4]) {
            Ok((start_ms, end_ms, step_ms)) => (
                c.get(1).map(|m| m.as_str()),
                query,
                EvalTime::Range {
                    start_ms,
                    end_ms,
                    step_ms,
                },
            ),
            Err(e) => return fail(script, i, e, Some(query)),
        }
    } else {
        let msg = "invalid evaluation command: must be either \
                   'eval[_fail|_warn|_info|_ordered] instant at <time> <query>' or \
                   'eval[_fail|_warn|_info] range from <start> to <end> step <step> <query>'"
            .to_string();
        return fail(script, i, msg, Some(header.to_string()));
    };

    let mut ev = Eval {
        line: i + 1,
        query,
        time,
        expects: Vec::new(),
        range_vector: None,
        expected_string: None,
        expected_scalar: None,
        expected_series: Vec::new(),
    };
    let deprecated_fail = modifier == Some("fail");
    match modifier {
        Some("fail") => ev.expects.push(Expect {
            kind: ExpectKind::Fail,
            matcher: MessageMatch::Any,
        }),
        Some("warn") => ev.expects.push(Expect {
            kind: ExpectKind::Warn,
            matcher: MessageMatch::Any,
        }),
        Some("info") => ev.expects.push(Expect {
            kind: ExpectKind::Info,
            matcher: MessageMatch::Any,
        }),
        Some("ordered") => ev.expects.push(Expect {
            kind: ExpectKind::Ordered,
            matcher: MessageMatch::Any,
        }),
        _ => {}
    }

    let is_instant = matches!(ev.time, EvalTime::Instant { .. });
    let mut j = i + 1;
    while j < end {
        let def = lines[j];
        // The deprecated failure messages of `eval_fail` end the block.
        if deprecated_fail && let Some(rest) = def.strip_prefix("expected_fail_message") {
            set_fail_matcher(&mut ev, MessageMatch::Exact(rest.trim().to_string()));
            j += 1;
            break;
        }
        if deprecated_fail && let Some(rest) = def.strip_prefix("expected_fail_regexp") {
            let pattern = rest.trim();
            match Regex::new(pattern) {
                Ok(r) => set_fail_matcher(&mut ev, MessageMatch::Regex(r)),
                Err(e) => {
                    let msg = format!("invalid regexp {pattern:?} for expected_fail_regexp: {e}");
                    return fail(script, j, msg, Some(ev.query));
                }
            }
            j += 1;
            break;
        }
        if def.starts_with(RANGE_VECTOR_PREFIX) {
            let Some(c) = PAT_EXPECT_RANGE.captures(def) else {
                let msg = format!("invalid range vector definition {def:?}");
                return fail(script, j, msg, Some(ev.query));
            };
            match parse_range(&c[1], &c[2], &c[3]) {
                Ok((start_ms, end_ms, step_ms)) => {
                    ev.range_vector = Some(RangeVector {
                        start_ms,
                        end_ms,
                        step_ms,
                    })
                }
                Err(e) => return fail(script, j, e, Some(ev.query)),
            }
            j += 1;
            continue;
        }
        if def.starts_with(EXPECT_STRING_PREFIX) {
            match parse_string_literal(def) {
                Ok(s) => ev.expected_string = Some(s),
                Err(e) => return fail(script, j, e, Some(ev.query)),
            }
            j += 1;
            continue;
        }
        if def.split_whitespace().next() == Some("expect") {
            match parse_expect(def) {
                Ok(e) => ev.expects.push(e),
                Err(e) => return fail(script, j, e, Some(ev.query)),
            }
            // As Prometheus, the deprecated `eval_*` forms are not checked
            // against the `expect` lines.
            let explicit = &ev.expects[usize::from(modifier.is_some())..];
            if let Err(e) = validate_expects(explicit) {
                return fail(script, j, e, Some(ev.query));
            }
            j += 1;
            continue;
        }
        // A bare number is the expected scalar, and ends the block.
        if let Some(v) = parse_number(def) {
            ev.expected_scalar = Some(v);
            ev.expected_series.clear();
            j += 1;
            break;
        }
        match parse_series_line(def) {
            Ok((labels, points)) => {
                if points.len() > 1 && is_instant && ev.range_vector.is_none() {
                    let msg = "expecting multiple values in an instant evaluation is not \
                               allowed; use 'expect range vector' for a range vector result"
                        .to_string();
                    return fail(script, j, msg, Some(ev.query));
                }
                ev.expected_scalar = None;
                ev.expected_series.push(SeriesLine {
                    line: j + 1,
                    labels,
                    points,
                });
            }
            Err(e) => {
                let msg = format!("invalid expected series: {e}");
                return fail(script, j, msg, Some(ev.query));
            }
        }
        j += 1;
    }
    script.commands.push(Command::Eval(ev));
    j
}

fn set_fail_matcher(ev: &mut Eval, matcher: MessageMatch) {
    match ev.expects.iter_mut().find(|e| e.kind == ExpectKind::Fail) {
        Some(e) => e.matcher = matcher,
        None => ev.expects.push(Expect {
            kind: ExpectKind::Fail,
            matcher,
        }),
    }
}

fn parse_range(from: &str, to: &str, step: &str) -> Result<(i64, i64, i64), String> {
    let start = parse_duration(from)
        .map_err(|e| format!("invalid start timestamp definition {from:?}: {e}"))?;
    let end =
        parse_duration(to).map_err(|e| format!("invalid end timestamp definition {to:?}: {e}"))?;
    if end < start {
        return Err(format!(
            "invalid test definition, end timestamp ({to}) is before start timestamp ({from})"
        ));
    }
    let step =
        parse_duration(step).map_err(|e| format!("invalid step definition {step:?}: {e}"))?;
    Ok((start, end, step))
}

fn parse_string_literal(line: &str) -> Result<String, String> {
    let quoted = line
        .strip_prefix(EXPECT_STRING_PREFIX)
        .map(str::trim)
        .unwrap_or("");
    if quoted.is_empty() {
        return Err(
            "expected string literal not valid - a quoted string literal is required".into(),
        );
    }
    unquote_string(quoted).map_err(|_| {
        "expected string literal not valid - check that the string is correctly quoted".into()
    })
}

/// Parses an `expect <type> [msg|regex: <text>]` line.
pub fn parse_expect(line: &str) -> Result<Expect, String> {
    let Some(c) = PAT_EXPECT.captures(line.trim()) else {
        return Err(
            "invalid expect statement, must match `expect <type> <match_type>: <string>`".into(),
        );
    };
    let kind = ExpectKind::from_word(&c[1])
        .ok_or_else(|| format!("invalid expected error/annotation type {}", &c[1]))?;
    let matcher = match c.get(2).map(|m| m.as_str()) {
        None => MessageMatch::Any,
        Some("msg") => MessageMatch::Exact(c[3].trim().to_string()),
        Some(_) => {
            let pattern = c[3].trim();
            let r = Regex::new(pattern)
                .map_err(|e| format!("invalid regex {pattern:?} for {}: {e}", &c[1]))?;
            MessageMatch::Regex(r)
        }
    };
    Ok(Expect { kind, matcher })
}

fn validate_expects(expects: &[Expect]) -> Result<(), String> {
    let has = |k: ExpectKind| expects.iter().any(|e| e.kind == k);
    if has(ExpectKind::Info) && has(ExpectKind::NoInfo) {
        return Err("invalid expect lines, info and no_info cannot be used together".into());
    }
    if has(ExpectKind::Warn) && has(ExpectKind::NoWarn) {
        return Err("invalid expect lines, warn and no_warn cannot be used together".into());
    }
    if expects
        .iter()
        .filter(|e| e.kind == ExpectKind::Fail)
        .count()
        > 1
    {
        return Err("invalid expect lines, multiple expect fail lines are not allowed".into());
    }
    Ok(())
}

/// Parses a Prometheus duration (`model.ParseDuration`) into milliseconds:
/// one or more `<integer><unit>` with units `y` (365 d), `w`, `d`, `h`, `m`,
/// `s`, `ms`, each at most once and from largest to smallest (`1h30m`,
/// `10s53ms`), or `0` alone.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    match s {
        "0" => return Ok(0),
        "" => return Err("empty duration string".into()),
        _ => {}
    }
    let invalid = || format!("not a valid duration string: {s:?}");
    // (unit, milliseconds, position: units must come in increasing position)
    const UNITS: [(&str, i64, u8); 7] = [
        ("y", 365 * 24 * 3_600_000, 1),
        ("w", 7 * 24 * 3_600_000, 2),
        ("d", 24 * 3_600_000, 3),
        ("h", 3_600_000, 4),
        ("m", 60_000, 5),
        ("s", 1_000, 6),
        ("ms", 1, 7),
    ];
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut last_pos = 0;
    let mut total: i64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(invalid());
        }
        let n: i64 = s[start..i].parse().map_err(|_| invalid())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let &(_, ms, pos) = UNITS
            .iter()
            .find(|(u, _, _)| *u == unit)
            .ok_or_else(invalid)?;
        if pos <= last_pos {
            return Err(invalid());
        }
        last_pos = pos;
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration out of range: {s:?}"))?;
    }
    Ok(total)
}

/// Parses a number the way Prometheus's `parseNumber` does (Go's
/// `strconv.ParseInt(s, 0, 64)`, then `strconv.ParseFloat`): decimal, `0x`
/// hex, `0o`/leading-`0` octal and `0b` binary integers, floats, `Inf`,
/// `NaN`.
pub fn parse_number(s: &str) -> Option<f64> {
    if let Some(n) = parse_go_int(s) {
        return Some(n as f64);
    }
    // Rust accepts a few spellings Go does not ("infinity" is shared, both
    // are case-insensitive); reject the ones that are not numbers to Go.
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let ok = !body.is_empty()
        && (body.eq_ignore_ascii_case("inf")
            || body.eq_ignore_ascii_case("infinity")
            || body.eq_ignore_ascii_case("nan")
            || body
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')));
    if !ok {
        return None;
    }
    s.parse::<f64>().ok()
}

fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower)
    };
    // Go allows underscores between digits only with a base prefix.
    let digits = if radix == 10 {
        digits
    } else {
        digits.replace('_', "")
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i64::from_str_radix(&digits, radix).ok()?;
    Some(if neg { v.checked_neg()? } else { v })
}

/// Parses a series line, `name{label="value", ...} <points>`, as
/// Prometheus's `ParseSeriesDesc` does. Labels with an empty value are
/// dropped (an empty label is an absent one).
pub fn parse_series_line(line: &str) -> Result<(Labels, Vec<Point>), String> {
    let (labels, rest) = parse_metric(line.trim())?;
    let points = parse_points(rest)?;
    Ok((labels, points))
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Splits `name{...}` off the start of `s`; returns the labels and the rest.
fn parse_metric(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let name_len = if s.starts_with(is_name_start) {
        s.find(|c: char| !is_name_char(c)).unwrap_or(s.len())
    } else {
        0
    };
    let mut name = (name_len > 0).then(|| s[..name_len].to_string());
    let mut rest = &s[name_len..];
    let mut braces = false;
    if rest.starts_with('{') && !rest.starts_with("{{") {
        braces = true;
        rest = &rest[1..];
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            // A label name, or a quoted metric name.
            let (first, quoted, r) = if rest.starts_with(['"', '\'', '`']) {
                let (v, r) = take_quoted(rest)?;
                (v, true, r)
            } else if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                let n = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (rest[..n].to_string(), false, &rest[n..])
            } else if rest.is_empty() {
                return Err("unclosed label set".into());
            } else {
                return Err(format!(
                    "unexpected {:?} in label set",
                    rest.chars().next().unwrap_or(' ')
                ));
            };
            rest = r.trim_start();
            if let Some(r) = rest.strip_prefix('=') {
                if r.starts_with('~') {
                    return Err("only '=' matchers are allowed in a series".into());
                }
                let (value, r) = take_quoted(r.trim_start())?;
                labels.insert(first, value);
                rest = r;
            } else if quoted {
                if name.is_some() {
                    return Err("metric name given twice".into());
                }
                name = Some(first);
            } else {
                return Err(format!("expected '=' after label name {first:?}"));
            }
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' in label set".into());
            }
        }
    }
    if name.is_none() && !braces {
        return Err("expected a metric name or a label set".into());
    }
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return Err(format!("unexpected {rest:?} after the series"));
    }
    if let Some(name) = name {
        labels.insert("__name__".into(), name);
    }
    labels.retain(|_, v| !v.is_empty());
    Ok((labels, rest))
}

/// Takes a quoted string (`"..."`, `'...'` or `` `...` ``, Go escapes) off the
/// start of `s`.
fn take_quoted(s: &str) -> Result<(String, &str), String> {
    let quote = s
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\'' | '`'))
        .ok_or_else(|| "expected a quoted string".to_string())?;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' && quote != '`' {
            escaped = true;
        } else if c == quote {
            let value = unquote_string(&s[..=i]).map_err(|e| format!("{}: {e}", &s[..=i]))?;
            return Ok((value, &s[i + 1..]));
        }
    }
    Err("unterminated quoted string".into())
}

/// Parses a sequence of point items separated by whitespace: `1`, `-2.5`,
/// `Inf`, `NaN`, `stale`, `_`, `_xN` (N missing steps), `axN` (N+1 copies),
/// `a+bxN` / `a-bxN` (N+1 values from `a`, adding `b` each step),
/// `{{...}}`, `{{...}}xN`, `{{...}}+{{...}}xN`.
pub fn parse_points(s: &str) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        if rest.starts_with("{{") {
            let (n, r) = take_histogram_item(rest)?;
            points.extend(std::iter::repeat_n(Point::Histogram, n));
            rest = r;
        } else {
            let n = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let item = &rest[..n];
            parse_item(item, &mut points).map_err(|e| format!("invalid point {item:?}: {e}"))?;
            rest = &rest[n..];
        }
        if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
            return Err(format!("unexpected {rest:?} after a point"));
        }
        rest = rest.trim_start();
    }
    Ok(points)
}

/// Takes `{{...}}`, optionally followed by `xN` or `+{{...}}xN`/`-{{...}}xN`;
/// returns how many steps it covers and the rest.
fn take_histogram_item(s: &str) -> Result<(usize, &str), String> {
    let close = |s: &str| -> Result<usize, String> {
        s.find("}}")
            .map(|i| i + 2)
            .ok_or_else(|| "unterminated native histogram '{{'".to_string())
    };
    let mut rest = &s[close(s)?..];
    if let Some(r) = rest.strip_prefix(['+', '-']) {
        if !r.starts_with("{{") {
            return Err("expected '{{' after '+'/'-' in a native histogram series".into());
        }
        rest = &r[close(r)?..];
        let Some(r) = rest.strip_prefix('x') else {
            return Err("expected 'x<count>' after a native histogram increment".into());
        };
        let (n, r) = take_count(r)?;
        return Ok((n + 1, r));
    }
    if let Some(r) = rest.strip_prefix('x') {
        let (n, r) = take_count(r)?;
        return Ok((n + 1, r));
    }
    Ok((1, rest))
}

fn take_count(s: &str) -> Result<(usize, &str), String> {
    let n = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let count = parse_count(&s[..n])?;
    Ok((count, &s[n..]))
}

fn parse_count(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("invalid repeat count {s:?}"))?;
    if n > MAX_REPEAT {
        return Err(format!("repeat count {n} is over {MAX_REPEAT}"));
    }
    usize::try_from(n).map_err(|_| format!("repeat count {n} is too large"))
}

/// A value at the start of an item: a number or `stale`.
enum ItemValue {
    Float(f64),
    Stale,
}

fn parse_item(item: &str, out: &mut Vec<Point>) -> Result<(), String> {
    if item == "_" {
        out.push(Point::Omitted);
        return Ok(());
    }
    if let Some(count) = item.strip_prefix("_x") {
        let n = parse_count(count)?;
        out.extend(std::iter::repeat_n(Point::Omitted, n));
        return Ok(());
    }
    let (value, rest) = take_value(item)?;
    if rest.is_empty() {
        out.push(match value {
            ItemValue::Float(v) => Point::Float(v),
            ItemValue::Stale => Point::Stale,
        });
        return Ok(());
    }
    if let Some(count) = rest.strip_prefix('x') {
        let n = parse_count(count)?;
        let p = match value {
            ItemValue::Float(v) => Point::Float(v),
            ItemValue::Stale => Point::Stale,
        };
        out.extend(std::iter::repeat_n(p, n + 1));
        return Ok(());
    }
    if rest.starts_with(['+', '-']) {
        let ItemValue::Float(mut v) = value else {
            return Err("'stale' cannot be incremented".into());
        };
        let (delta, r) = take_value(rest)?;
        let ItemValue::Float(delta) = delta else {
            return Err("'stale' is not an increment".into());
        };
        let Some(count) = r.strip_prefix('x') else {
            return Err("expected 'x<count>' after the increment".into());
        };
        let n = parse_count(count)?;
        // As Prometheus: repeated addition, not a + i*b.
        for _ in 0..=n {
            out.push(Point::Float(v));
            v += delta;
        }
        return Ok(());
    }
    Err(format!("unexpected {rest:?}"))
}

/// Takes a signed number (`-1.5e3`, `+Inf`, `NaN`) or `stale` off the start
/// of `s`, the way Prometheus lexes series values.
fn take_value(s: &str) -> Result<(ItemValue, &str), String> {
    let (sign, body) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let signed = body.len() != s.len();
    let b = body.as_bytes();
    let starts_number = b.first().is_some_and(u8::is_ascii_digit)
        || (b.first() == Some(&b'.') && b.get(1).is_some_and(u8::is_ascii_digit));
    if starts_number {
        let mut i = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        let text = &body[..i];
        let rest = &body[i..];
        // Only 'x' (a repeat) may follow a number directly, of letters.
        if rest.starts_with(|c: char| (c.is_ascii_alphanumeric() || c == '_') && c != 'x') {
            return Err(format!("unexpected {rest:?} after a number"));
        }
        let v: f64 = text
            .parse()
            .map_err(|_| format!("invalid number {text:?}"))?;
        return Ok((ItemValue::Float(sign * v), rest));
    }
    if body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let n = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
        let word = &body[..n];
        let rest = &body[n..];
        if word.eq_ignore_ascii_case("inf") {
            return Ok((ItemValue::Float(sign * f64::INFINITY), rest));
        }
        if word.eq_ignore_ascii_case("nan") {
            return Ok((ItemValue::Float(f64::NAN), rest));
        }
        if word == "stale" && !signed {
            return Ok((ItemValue::Stale, rest));
        }
        return Err(format!(
            "unexpected word {word:?} (only 'stale', 'Inf' and 'NaN' are)"
        ));
    }
    Err("expected a number".into())
}

/// Whether two values are equal for a test, as Prometheus's `almost.Equal`:
/// both NaN (any NaN, stale markers included), or equal, or, when either is
/// zero or both are tiny, closer than `epsilon` times the smallest normal
/// float, else a difference under `epsilon` relative to `|a| + |b|`.
pub fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < epsilon * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

// ---------------------------------------------------------------------------
// Running.

/// An eval that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based line of the `eval` (or of the line that did not parse).
    pub line: usize,
    pub query: String,
    pub why: String,
}

/// An eval that was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub line: usize,
    pub query: String,
    pub reason: String,
}

/// The outcome of running one script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    pub passed: usize,
    /// Evals that ran and did not pass, plus evals that did not parse.
    pub failed: usize,
    pub skipped: usize,
    /// Of `skipped`, those skipped because they touch native histograms.
    pub skipped_histogram: usize,
    /// In line order.
    pub failures: Vec<Failure>,
    /// In line order.
    pub skips: Vec<Skip>,
    /// Every line that did not parse (an `eval` among them is also in
    /// `failures`).
    pub errors: Vec<ScriptError>,
}

impl FileReport {
    /// Evals counted.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped
    }
}

/// What the runner evaluates queries with: [`Engine`], or a stand-in.
pub trait QueryEngine {
    /// An instant query at `t` (ms).
    fn instant(&self, storage: &Storage, query: &str, t: i64) -> Result<Value, EvalError>;
    /// A range query from `start` to `end` (ms, inclusive) every `step` ms.
    fn range(
        &self,
        storage: &Storage,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, EvalError>;
}

impl QueryEngine for Engine {
    fn instant(&self, storage: &Storage, query: &str, t: i64) -> Result<Value, EvalError> {
        Engine::instant(self, storage, query, t)
    }

    fn range(
        &self,
        storage: &Storage,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, EvalError> {
        Engine::range(self, storage, query, start, end, step)
    }
}

/// Parses `text` and runs it against `engine` (an [`Engine`], usually) on a
/// fresh [`Storage`].
pub fn run_script(text: &str, engine: &dyn QueryEngine) -> FileReport {
    let script = parse_script(text);
    let mut runner = Runner {
        engine,
        storage: Storage::new(),
        histogram_series: BTreeSet::new(),
        report: FileReport::default(),
    };
    for cmd in &script.commands {
        runner.exec(cmd);
    }
    let mut report = runner.report;
    for e in &script.errors {
        if let Some(query) = &e.query {
            report.failed += 1;
            report.failures.push(Failure {
                line: e.line,
                query: query.clone(),
                why: format!("invalid eval: {}", e.message),
            });
        }
    }
    report.failures.sort_by_key(|f| f.line);
    report.errors = script.errors;
    report
}

/// Reads the script at `path` and runs it (see [`run_script`]).
pub fn run_file(path: impl AsRef<Path>, engine: &dyn QueryEngine) -> io::Result<FileReport> {
    let text = std::fs::read_to_string(path)?;
    Ok(run_script(&text, engine))
}

enum Outcome {
    Pass,
    Fail(String),
    SkipHistogram(String),
}

struct Runner<'a> {
    engine: &'a dyn QueryEngine,
    storage: Storage,
    /// Series holding native histogram samples (since the last `clear`).
    histogram_series: BTreeSet<Labels>,
    report: FileReport,
}

impl Runner<'_> {
    fn exec(&mut self, cmd: &Command) {
        match cmd {
            Command::Clear { .. } => {
                self.storage.clear();
                self.histogram_series.clear();
            }
            Command::Load(load) => self.load(load),
            Command::Eval(ev) => {
                let outcome = match histogram_skip_reason(ev, &self.histogram_series) {
                    Some(reason) => Outcome::SkipHistogram(reason),
                    None => self.eval(ev),
                };
                match outcome {
                    Outcome::Pass => self.report.passed += 1,
                    Outcome::Fail(why) => {
                        self.report.failed += 1;
                        self.report.failures.push(Failure {
                            line: ev.line,
                            query: ev.query.clone(),
                            why,
                        });
                    }
                    Outcome::SkipHistogram(reason) => {
                        self.report.skipped += 1;
                        self.report.skipped_histogram += 1;
                        self.report.skips.push(Skip {
                            line: ev.line,
                            query: ev.query.clone(),
                            reason,
                        });
                    }
                }
            }
        }
    }

    fn load(&mut self, load: &Load) {
        // Within one load a series defined twice keeps its last definition.
        let mut defs: BTreeMap<&Labels, &[Point]> = BTreeMap::new();
        for s in &load.series {
            defs.insert(&s.labels, &s.points);
        }
        for (&labels, &points) in &defs {
            let mut t: i64 = 0;
            for p in points {
                match *p {
                    Point::Float(v) => self.storage.append(labels.clone(), t, v),
                    Point::Stale => self.storage.append(labels.clone(), t, stale_nan()),
                    Point::Histogram => {
                        self.histogram_series.insert(labels.clone());
                    }
                    Point::Omitted => {}
                }
                t = t.saturating_add(load.interval_ms);
            }
            if load.with_nhcb
                && let Some(base) = nhcb_series(labels)
            {
                self.histogram_series.insert(base);
            }
        }
    }

    fn eval(&self, ev: &Eval) -> Outcome {
        let result = match ev.time {
            EvalTime::Instant { at_ms } => {
                let t = ev.range_vector.map_or(at_ms, |rv| rv.end_ms);
                self.engine.instant(&self.storage, &ev.query, t)
            }
            EvalTime::Range {
                start_ms,
                end_ms,
                step_ms,
            } => self
                .engine
                .range(&self.storage, &ev.query, start_ms, end_ms, step_ms),
        };
        match check(ev, result) {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        }
    }
}

/// The native histogram series a `load_with_nhcb` block derives from a
/// classic histogram series (`x_bucket{le=..}`, `x_count`, `x_sum` → `x`).
fn nhcb_series(labels: &Labels) -> Option<Labels> {
    let name = labels.get("__name__")?;
    let base = ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))?;
    let mut out = labels.clone();
    out.insert("__name__".into(), base.to_string());
    out.remove("le");
    Some(out)
}

/// Why `ev` must be skipped because it touches native histograms (see the
/// module documentation for the rules), or `None` to run it.
/// `histogram_series` are the labels of the series loaded with native
/// histogram samples.
pub fn histogram_skip_reason(ev: &Eval, histogram_series: &BTreeSet<Labels>) -> Option<String> {
    if ev.query.contains("{{") {
        return Some("the query has a native histogram literal".into());
    }
    if let Some(line) = ev.expected_series.iter().find(|s| s.has_histogram()) {
        return Some(format!(
            "line {} expects a native histogram result",
            line.line
        ));
    }
    match promql_parser::parser::parse(&ev.query) {
        Ok(expr) => {
            let mut v = HistogramUse {
                series: histogram_series,
                reason: None,
            };
            let _ = walk_expr(&mut v, &expr);
            v.reason
        }
        Err(_) => histogram_use_in_text(&ev.query, histogram_series),
    }
}

struct HistogramUse<'a> {
    series: &'a BTreeSet<Labels>,
    reason: Option<String>,
}

impl ExprVisitor for HistogramUse<'_> {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        let selector = match expr {
            Expr::Call(call) => {
                let name = call.func.name;
                if is_native_histogram_function(name) {
                    self.reason = Some(format!("calls {name}(), a native histogram function"));
                    return Ok(false);
                }
                return Ok(true);
            }
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        if let Some(labels) = self.series.iter().find(|l| selector_matches(selector, l)) {
            self.reason = Some(format!(
                "selects {}, loaded with native histogram samples",
                format_labels(labels)
            ));
            return Ok(false);
        }
        Ok(true)
    }
}

fn is_native_histogram_function(name: &str) -> bool {
    name.starts_with("histogram_") && !CLASSIC_HISTOGRAM_FUNCTIONS.contains(&name)
}

fn selector_matches(vs: &VectorSelector, labels: &Labels) -> bool {
    let get = |name: &str| labels.get(name).map_or("", String::as_str);
    if let Some(name) = &vs.name
        && get("__name__") != name
    {
        return false;
    }
    if !vs
        .matchers
        .matchers
        .iter()
        .all(|m| m.is_match(get(&m.name)))
    {
        return false;
    }
    vs.matchers.or_matchers.is_empty()
        || vs
            .matchers
            .or_matchers
            .iter()
            .any(|group| group.iter().all(|m| m.is_match(get(&m.name))))
}

/// The fallback rule for a query `promql-parser` cannot parse: a
/// `histogram_*(` call (other than [`CLASSIC_HISTOGRAM_FUNCTIONS`]), or a histogram
/// series' name as a whole word.
fn histogram_use_in_text(query: &str, histogram_series: &BTreeSet<Labels>) -> Option<String> {
    static CALL: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?:^|[^A-Za-z0-9_:])(histogram_[A-Za-z0-9_]*)\s*\(").expect("valid regex")
    });
    for c in CALL.captures_iter(query) {
        let name = &c[1];
        if is_native_histogram_function(name) {
            return Some(format!("calls {name}(), a native histogram function"));
        }
    }
    let names: BTreeSet<&str> = histogram_series
        .iter()
        .filter_map(|l| l.get("__name__").map(String::as_str))
        .collect();
    for name in names {
        let mentioned = query.match_indices(name).any(|(i, _)| {
            let before = query[..i].chars().next_back();
            let after = query[i + name.len()..].chars().next();
            !before.is_some_and(is_name_char) && !after.is_some_and(is_name_char)
        });
        if mentioned {
            return Some(format!(
                "mentions {name}, loaded with native histogram samples"
            ));
        }
    }
    None
}

/// Checks an eval's result against its expectations.
fn check(ev: &Eval, result: Result<Value, EvalError>) -> Result<(), String> {
    let value = match (result, ev.expected_failure()) {
        (Err(e), Some(_)) => {
            let msg = e.to_string();
            return match ev.expected_failures().find(|m| !m.matches(&msg)) {
                None => Ok(()),
                Some(m) => Err(format!("expected an error matching {m}, got: {msg}")),
            };
        }
        (Err(e), None) => return Err(format!("query failed: {e}")),
        (Ok(v), Some(_)) => {
            return Err(format!(
                "expected an error, got a {} result: {}",
                v.type_name(),
                describe_value(&v)
            ));
        }
        (Ok(v), None) => v,
    };
    match (ev.time, value) {
        (
            EvalTime::Range {
                start_ms,
                end_ms,
                step_ms,
            },
            Value::Matrix(m),
        ) => compare_matrix(ev, &m, start_ms, end_ms, step_ms),
        (EvalTime::Range { .. }, v) => Err(format!(
            "a range query must return a matrix, got a {}: {}",
            v.type_name(),
            describe_value(&v)
        )),
        (EvalTime::Instant { .. }, Value::Matrix(m)) => match ev.range_vector {
            Some(rv) => compare_matrix(ev, &m, rv.start_ms, rv.end_ms, rv.step_ms),
            None if m.is_empty()
                && ev.expected_series.is_empty()
                && ev.expected_scalar.is_none() =>
            {
                Ok(())
            }
            None => Err(format!(
                "the query returned a range vector ({}); an instant eval expecting one needs \
                 'expect range vector from <start> to <end> step <step>'",
                describe_matrix(&m)
            )),
        },
        (EvalTime::Instant { .. }, Value::Vector(v)) => compare_vector(ev, &v),
        (EvalTime::Instant { .. }, Value::Scalar(s)) => match ev.expected_scalar {
            None => Err(format!(
                "expected a vector or matrix result, got scalar {s}"
            )),
            Some(want) if almost_equal(want, s, DEFAULT_EPSILON) => Ok(()),
            Some(want) => Err(format!("expected scalar {want}, got {s}")),
        },
        (EvalTime::Instant { .. }, Value::String(s)) => {
            let want = ev.expected_string.as_deref().unwrap_or("");
            if want == s {
                Ok(())
            } else {
                Err(format!("expected string {want:?}, got {s:?}"))
            }
        }
    }
}

/// The expected series by labels (a repeated label set keeps its last line),
/// with their 1-based position among the expected lines.
fn expected_by_labels(ev: &Eval) -> BTreeMap<&Labels, (usize, &SeriesLine)> {
    ev.expected_series
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.labels, (i + 1, s)))
        .collect()
}

fn compare_vector(ev: &Eval, samples: &[Sample]) -> Result<(), String> {
    if let Some(want) = ev.expected_scalar {
        return Err(format!(
            "expected scalar {want}, got a vector: {}",
            describe_vector(samples)
        ));
    }
    let expected = expected_by_labels(ev);
    let mut seen = BTreeSet::new();
    for (pos, s) in samples.iter().enumerate() {
        let Some(&(exp_pos, exp)) = expected.get(&s.labels) else {
            return Err(format!(
                "unexpected series {} = {} in the result",
                format_labels(&s.labels),
                s.v
            ));
        };
        if ev.is_ordered() && exp_pos != pos + 1 {
            return Err(format!(
                "expected {} at position {exp_pos}, it is at {}",
                format_labels(&s.labels),
                pos + 1
            ));
        }
        let want = match exp.points.first() {
            Some(Point::Float(v)) => *v,
            Some(Point::Stale) => stale_nan(),
            Some(Point::Omitted) | None => {
                return Err(format!(
                    "expected no value for {}, got {}",
                    format_labels(&s.labels),
                    s.v
                ));
            }
            Some(Point::Histogram) => {
                return Err(format!(
                    "expected a native histogram for {}, got float {}",
                    format_labels(&s.labels),
                    s.v
                ));
            }
        };
        if !almost_equal(want, s.v, DEFAULT_EPSILON) {
            return Err(format!(
                "expected {want} for {}, got {}",
                format_labels(&s.labels),
                s.v
            ));
        }
        seen.insert(&s.labels);
    }
    all_seen(&expected, &seen, || describe_vector(samples))
}

fn compare_matrix(
    ev: &Eval,
    matrix: &[Series],
    start: i64,
    end: i64,
    step: i64,
) -> Result<(), String> {
    if ev.is_ordered() {
        return Err("expected an ordered result, but the query returned a matrix".into());
    }
    if let Some(want) = ev.expected_scalar {
        return Err(format!(
            "expected scalar {want}, got a matrix: {}",
            describe_matrix(matrix)
        ));
    }
    if let Some(w) = matrix.windows(2).find(|w| w[0].labels > w[1].labels) {
        return Err(format!(
            "matrix results must be sorted by labels, but {} comes before {}",
            format_labels(&w[0].labels),
            format_labels(&w[1].labels)
        ));
    }
    let expected = expected_by_labels(ev);
    let mut seen = BTreeSet::new();
    for s in matrix {
        let name = format_labels(&s.labels);
        let Some(&(_, exp)) = expected.get(&s.labels) else {
            return Err(format!(
                "unexpected series {name} in the result, with {}",
                describe_series_points(&s.points)
            ));
        };
        seen.insert(&s.labels);
        let mut want = Vec::new();
        for (i, p) in exp.points.iter().enumerate() {
            let t = i64::try_from(i)
                .ok()
                .and_then(|i| i.checked_mul(step))
                .and_then(|d| start.checked_add(d));
            let Some(t) = t.filter(|&t| t <= end) else {
                return Err(format!(
                    "expected {} points for {name}, but the query's time range cannot hold that many",
                    exp.points.len()
                ));
            };
            match *p {
                Point::Float(v) => want.push((t, v)),
                Point::Stale => want.push((t, stale_nan())),
                Point::Omitted | Point::Histogram => {}
            }
        }
        if want.len() != s.points.len() {
            return Err(format!(
                "expected {} points for {name}, got {}",
                want.len(),
                describe_series_points(&s.points)
            ));
        }
        for (i, (&(wt, wv), &(t, v))) in want.iter().zip(&s.points).enumerate() {
            if wt != t {
                return Err(format!(
                    "expected point {i} of {name} at t={wt}, it is at t={t} (got {})",
                    describe_series_points(&s.points)
                ));
            }
            if !almost_equal(wv, v, DEFAULT_EPSILON) {
                return Err(format!(
                    "expected {wv} at t={t} for {name}, got {v} (got {})",
                    describe_series_points(&s.points)
                ));
            }
        }
    }
    all_seen(&expected, &seen, || describe_matrix(matrix))
}

/// Every expected series was in the result; `got` describes the result.
fn all_seen(
    expected: &BTreeMap<&Labels, (usize, &SeriesLine)>,
    seen: &BTreeSet<&Labels>,
    got: impl Fn() -> String,
) -> Result<(), String> {
    match expected.iter().find(|(l, _)| !seen.contains(*l)) {
        Some((labels, (_, exp))) => Err(format!(
            "expected series {} {} is not in the result (got {})",
            format_labels(labels),
            describe_points(&exp.points),
            got()
        )),
        None => Ok(()),
    }
}

// Short descriptions of values for failure messages.

const SHOWN: usize = 6;

fn describe_value(v: &Value) -> String {
    match v {
        Value::Scalar(s) => s.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Vector(v) => describe_vector(v),
        Value::Matrix(m) => describe_matrix(m),
    }
}

fn describe_vector(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return "no series".into();
    }
    let mut parts: Vec<String> = samples
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} {}", format_labels(&s.labels), s.v))
        .collect();
    if samples.len() > SHOWN {
        parts.push(format!("... {} series in all", samples.len()));
    }
    parts.join(", ")
}

fn describe_matrix(matrix: &[Series]) -> String {
    if matrix.is_empty() {
        return "no series".into();
    }
    let mut parts: Vec<String> = matrix
        .iter()
        .take(SHOWN)
        .map(|s| {
            format!(
                "{} {}",
                format_labels(&s.labels),
                describe_series_points(&s.points)
            )
        })
        .collect();
    if matrix.len() > SHOWN {
        parts.push(format!("... {} series in all", matrix.len()));
    }
    parts.join(", ")
}

fn describe_series_points(points: &[(i64, f64)]) -> String {
    let mut parts: Vec<String> = points
        .iter()
        .take(SHOWN)
        .map(|(t, v)| format!("{v}@{t}"))
        .collect();
    if points.len() > SHOWN {
        parts.push(format!("... {} points", points.len()));
    }
    format!("[{}]", parts.join(" "))
}

fn describe_points(points: &[Point]) -> String {
    let mut parts: Vec<String> = points
        .iter()
        .take(SHOWN)
        .map(|p| match p {
            Point::Float(v) => v.to_string(),
            Point::Stale => "stale".into(),
            Point::Omitted => "_".into(),
            Point::Histogram => "{{...}}".into(),
        })
        .collect();
    if points.len() > SHOWN {
        parts.push(format!("... {} points", points.len()));
    }
    parts.join(" ")
}
