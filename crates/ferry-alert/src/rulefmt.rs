//! Prometheus rule files (`groups:` → `rules:`), loaded and checked as
//! Prometheus's `model/rulefmt` and `promtool check rules` do.
//!
//! YAML is read with `serde-saphyr`: its `Spanned<T>` gives every node's
//! line and column, so each error names the `file:line:col` of the node at
//! fault. Decoding is strict: a field Prometheus does not know is an error
//! (`field annotation not found in type rulefmt.Rule`), and only the first
//! YAML document is read (a warning says so when there are more).
//!
//! Names are checked under Prometheus 3's default scheme, UTF-8
//! ([`NameValidation::Utf8`]): any non-empty label or annotation name, any
//! non-empty metric name. [`NameValidation::Legacy`] (`[a-zA-Z_][a-zA-Z0-9_]*`,
//! metric names also `:`) is Prometheus's
//! `--metric-name-validation-scheme=legacy`, chosen with [`parse_with`].

use crate::alert::LabelSet;
use crate::duration::PromDuration;
use crate::template;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::Path;

/// A rule file: its groups, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleFile {
    pub groups: Vec<GroupSpec>,
    /// Not errors: more than one YAML document (only the first is read).
    pub warnings: Vec<RuleError>,
}

/// One `groups:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    /// None: the global evaluation interval.
    pub interval: Option<PromDuration>,
    /// Most alerts or series one rule may produce; 0 = no limit.
    pub limit: usize,
    pub query_offset: Option<PromDuration>,
    /// Group labels (Prometheus 3); a rule's own labels override them.
    pub labels: LabelSet,
    pub rules: Vec<RuleSpec>,
    /// Line of the group's mapping in the file (1-based).
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleKind {
    /// A recording rule and the metric name it records.
    Record(String),
    /// An alerting rule and its alert name.
    Alert(String),
}

/// One rule of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub kind: RuleKind,
    pub expr: String,
    /// `for` (alerting rules; 0 = fire at once).
    pub for_: PromDuration,
    pub keep_firing_for: PromDuration,
    pub labels: LabelSet,
    pub annotations: LabelSet,
    /// Line of the rule's mapping in the file (1-based).
    pub line: u32,
}

impl RuleSpec {
    /// The record or alert name.
    pub fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Record(n) | RuleKind::Alert(n) => n,
        }
    }
    pub fn is_alert(&self) -> bool {
        matches!(self.kind, RuleKind::Alert(_))
    }
}

/// An error (or warning) in a rule file, at `file:line:col` when the node
/// is known (line 0: position unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (l, 0) => write!(f, "{}:{l}: {}", self.file, self.message),
            (l, c) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for RuleError {}

/// How label, annotation and metric names are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameValidation {
    /// Prometheus 3's default: any non-empty UTF-8 name.
    #[default]
    Utf8,
    /// Prometheus 2's: `[a-zA-Z_][a-zA-Z0-9_]*` (metric names also `:`).
    Legacy,
}

impl NameValidation {
    pub fn is_valid_label_name(self, n: &str) -> bool {
        match self {
            NameValidation::Utf8 => !n.is_empty(),
            NameValidation::Legacy => is_legacy_name(n, false),
        }
    }
    pub fn is_valid_metric_name(self, n: &str) -> bool {
        match self {
            NameValidation::Utf8 => !n.is_empty(),
            NameValidation::Legacy => is_legacy_name(n, true),
        }
    }
}

fn is_legacy_name(n: &str, colons: bool) -> bool {
    let mut chars = n.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    match chars.next() {
        Some(c) if ok_first(c) => chars.all(|c| ok_first(c) || c.is_ascii_digit()),
        _ => false,
    }
}

/// Options of [`parse_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    pub name_validation: NameValidation,
    /// promtool's `--ignore-unknown-fields`.
    pub ignore_unknown_fields: bool,
}

/// Parse and check a rule file's text, with Prometheus 3's defaults.
/// `path_for_errors` only names the file in errors.
pub fn parse(path_for_errors: &str, text: &str) -> Result<RuleFile, Vec<RuleError>> {
    parse_with(path_for_errors, text, ParseOptions::default())
}

/// Read and parse a rule file.
pub fn load(path: &Path) -> Result<RuleFile, Vec<RuleError>> {
    load_with(path, ParseOptions::default())
}

pub fn load_with(path: &Path, opts: ParseOptions) -> Result<RuleFile, Vec<RuleError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_with(&name, &text, opts),
        Err(e) => Err(vec![RuleError {
            file: name,
            line: 0,
            column: 0,
            message: e.to_string(),
        }]),
    }
}

// ---------------------------------------------------------------------------
// The located YAML layer. Each mapping is read key by key so that an
// unknown key is reported at its own line, and every one of them, not only
// the first.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pos {
    line: u32,
    column: u32,
}

fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

type SStr = Spanned<String>;

/// A YAML mapping of strings to strings, each key and value located.
#[derive(Debug, Default)]
struct SMap(Vec<(SStr, SStr)>);

impl<'de> Deserialize<'de> for SMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of names to strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<SMap, E> {
                Ok(SMap::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<SMap, E> {
                Ok(SMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<SMap, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<SStr>()? {
                    let v: SStr = m.next_value()?;
                    out.push((k, v));
                }
                Ok(SMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Default)]
struct Unknown(Vec<(String, Pos)>);

#[derive(Debug, Default)]
struct RawFile {
    groups: Vec<Spanned<RawGroup>>,
    unknown: Unknown,
}

#[derive(Debug, Default)]
struct RawGroup {
    name: Option<SStr>,
    interval: Option<SStr>,
    query_offset: Option<SStr>,
    limit: Option<Spanned<i64>>,
    labels: SMap,
    rules: Vec<Spanned<RawRule>>,
    unknown: Unknown,
}

#[derive(Debug, Default)]
struct RawRule {
    record: Option<SStr>,
    alert: Option<SStr>,
    expr: Option<SStr>,
    for_: Option<SStr>,
    keep_firing_for: Option<SStr>,
    labels: SMap,
    annotations: SMap,
    unknown: Unknown,
}

/// Read a mapping key by key: `$field => $slot` for the known keys, the
/// rest collected as unknown.
macro_rules! located_struct {
    ($ty:ident, $what:literal, { $($key:literal => $field:ident),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        while let Some(k) = m.next_key::<SStr>()? {
                            match k.value.as_str() {
                                $($key => out.$field = m.next_value::<Option<_>>()?.unwrap_or_default(),)*
                                _ => {
                                    m.next_value::<IgnoredAny>()?;
                                    let p = pos(&k);
                                    out.unknown.0.push((k.value, p));
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

located_struct!(RawFile, "a rule file (a mapping with `groups`)", { "groups" => groups });
located_struct!(RawGroup, "a rule group (a mapping)", {
    "name" => name, "interval" => interval, "query_offset" => query_offset,
    "limit" => limit, "labels" => labels, "rules" => rules,
});
located_struct!(RawRule, "a rule (a mapping)", {
    "record" => record, "alert" => alert, "expr" => expr, "for" => for_,
    "keep_firing_for" => keep_firing_for, "labels" => labels, "annotations" => annotations,
});

/// serde-saphyr's message without its " at line L, column C" tail (the
/// position is given separately).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let s = e.without_snippet().to_string();
    match s.rfind(" at line ") {
        Some(i) if s[i..].contains(", column ") => s[..i].to_string(),
        _ => s,
    }
}

/// Parse and check with explicit options (name validation scheme,
/// unknown fields).
pub fn parse_with(
    path_for_errors: &str,
    text: &str,
    opts: ParseOptions,
) -> Result<RuleFile, Vec<RuleError>> {
    let err = |p: Pos, message: String| RuleError {
        file: path_for_errors.to_string(),
        line: p.line,
        column: p.column,
        message,
    };
    let mut reader = text.as_bytes();
    let mut docs = serde_saphyr::read::<_, RawFile>(&mut reader);
    let raw = match docs.next() {
        None => RawFile::default(),
        Some(Ok(raw)) => raw,
        Some(Err(e)) => {
            let p = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    column: l.column() as u32,
                })
                .unwrap_or_default();
            return Err(vec![err(p, yaml_message(&e))]);
        }
    };
    let mut warnings = Vec::new();
    if docs.next().is_some() {
        warnings.push(err(
            Pos::default(),
            "multiple document yaml rules files are not supported, only the first document is processed".into(),
        ));
    }
    drop(docs);

    // Decoding errors (unknown fields, bad durations) come first and stop
    // there, as in Prometheus.
    let mut errs = Vec::new();
    let unknown = |u: &Unknown, ty: &str, errs: &mut Vec<RuleError>| {
        if !opts.ignore_unknown_fields {
            for (k, p) in &u.0 {
                errs.push(err(*p, format!("field {k} not found in type rulefmt.{ty}")));
            }
        }
    };
    unknown(&raw.unknown, "RuleGroups", &mut errs);
    let duration = |s: &Option<SStr>, errs: &mut Vec<RuleError>| -> Option<PromDuration> {
        let s = s.as_ref()?;
        match PromDuration::parse(&s.value) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(err(pos(s), e));
                None
            }
        }
    };
    let mut groups = Vec::new();
    for g in &raw.groups {
        let rg = &g.value;
        unknown(&rg.unknown, "RuleGroup", &mut errs);
        let interval = duration(&rg.interval, &mut errs).filter(|d| d.0 != 0);
        let query_offset = duration(&rg.query_offset, &mut errs);
        let limit = match &rg.limit {
            None => 0,
            Some(l) if l.value >= 0 => l.value as usize,
            Some(l) => {
                errs.push(err(
                    pos(l),
                    format!("invalid limit {}: must not be negative", l.value),
                ));
                0
            }
        };
        let mut rules = Vec::new();
        for r in &rg.rules {
            let rr = &r.value;
            unknown(&rr.unknown, "Rule", &mut errs);
            let for_ = duration(&rr.for_, &mut errs).unwrap_or_default();
            let keep_firing_for = duration(&rr.keep_firing_for, &mut errs).unwrap_or_default();
            let s = |o: &Option<SStr>| o.as_ref().map(|s| s.value.clone()).unwrap_or_default();
            let kind = if !s(&rr.alert).is_empty() {
                RuleKind::Alert(s(&rr.alert))
            } else {
                RuleKind::Record(s(&rr.record))
            };
            rules.push(RuleSpec {
                kind,
                expr: s(&rr.expr),
                for_,
                keep_firing_for,
                labels: to_map(&rr.labels),
                annotations: to_map(&rr.annotations),
                line: pos(r).line,
            });
        }
        groups.push(GroupSpec {
            name: rg
                .name
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
            interval,
            limit,
            query_offset,
            labels: to_map(&rg.labels),
            rules,
            line: pos(g).line,
        });
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    validate(&raw, opts.name_validation, &mut |p, m| errs.push(err(p, m)));
    if errs.is_empty() {
        Ok(RuleFile { groups, warnings })
    } else {
        Err(errs)
    }
}

fn to_map(m: &SMap) -> LabelSet {
    // A repeated key: the last one wins, as in Go's yaml decoding.
    m.0.iter()
        .map(|(k, v)| (k.value.clone(), v.value.clone()))
        .collect()
}

/// The semantic checks of Prometheus's `RuleGroups.Validate`.
fn validate(raw: &RawFile, names: NameValidation, out: &mut dyn FnMut(Pos, String)) {
    let mut seen = BTreeMap::<&str, ()>::new();
    for g in &raw.groups {
        let rg = &g.value;
        let gname = rg.name.as_ref().map(|s| s.value.as_str()).unwrap_or("");
        let gpos = rg.name.as_ref().map(pos).unwrap_or(pos(g));
        if gname.is_empty() {
            out(gpos, "Groupname must not be empty".into());
        }
        if seen.insert(gname, ()).is_some() {
            out(
                gpos,
                format!("groupname: \"{gname}\" is repeated in the same file"),
            );
        }
        for (k, _v) in &rg.labels.0 {
            if !names.is_valid_label_name(&k.value) || k.value == "__name__" {
                out(
                    pos(k),
                    format!("group \"{gname}\": invalid label name: {}", k.value),
                );
            }
            // Label values are Rust strings: always valid UTF-8.
        }
        for (i, r) in rg.rules.iter().enumerate() {
            let rr = &r.value;
            let rpos = pos(r);
            fn val(o: &Option<SStr>) -> &str {
                o.as_ref().map(|s| s.value.as_str()).unwrap_or("")
            }
            let at = |o: &Option<SStr>| o.as_ref().map(pos).unwrap_or(rpos);
            let (record, alert) = (val(&rr.record), val(&rr.alert));
            let rname = if alert.is_empty() { record } else { alert };
            let mut rule_err = |p: Pos, m: String| {
                out(
                    p,
                    format!("group \"{gname}\", rule {}, \"{rname}\": {m}", i + 1),
                )
            };
            if !record.is_empty() && !alert.is_empty() {
                rule_err(
                    at(&rr.record),
                    "only one of 'record' and 'alert' must be set".into(),
                );
            }
            if record.is_empty() && alert.is_empty() {
                rule_err(rpos, "one of 'record' or 'alert' must be set".into());
            }
            let expr = val(&rr.expr);
            if expr.is_empty() {
                rule_err(at(&rr.expr), "field 'expr' must be set in rule".into());
            } else if let Err(e) = promql_parser::parser::parse(expr) {
                rule_err(
                    at(&rr.expr),
                    format!("could not parse expression: parse error: {e}"),
                );
            }
            if !record.is_empty() {
                let rp = at(&rr.record);
                if !rr.annotations.0.is_empty() {
                    rule_err(rp, "invalid field 'annotations' in recording rule".into());
                }
                let nonzero = |o: &Option<SStr>| {
                    o.as_ref()
                        .and_then(|s| PromDuration::parse(&s.value).ok())
                        .is_some_and(|d| d.0 != 0)
                };
                if nonzero(&rr.for_) {
                    rule_err(rp, "invalid field 'for' in recording rule".into());
                }
                if nonzero(&rr.keep_firing_for) {
                    rule_err(
                        rp,
                        "invalid field 'keep_firing_for' in recording rule".into(),
                    );
                }
                if !names.is_valid_metric_name(record) {
                    rule_err(rp, format!("invalid recording rule name: {record}"));
                }
                if record.contains(['{', '}']) {
                    rule_err(
                        rp,
                        format!(
                            "braces present in the recording rule name; should it be in expr?: {record}"
                        ),
                    );
                }
            }
            for (k, _v) in &rr.labels.0 {
                if !names.is_valid_label_name(&k.value) || k.value == "__name__" {
                    rule_err(pos(k), format!("invalid label name: {}", k.value));
                }
            }
            for (k, _v) in &rr.annotations.0 {
                if !names.is_valid_label_name(&k.value) {
                    rule_err(pos(k), format!("invalid annotation name: {}", k.value));
                }
            }
            if !alert.is_empty() {
                for (what, m) in [("label", &rr.labels), ("annotation", &rr.annotations)] {
                    for (k, v) in &m.0 {
                        if let Err(e) = template::check_alert(&v.value) {
                            rule_err(pos(v), format!("{what} \"{}\": {e}", k.value));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Lint and `promtool check rules`.

/// A set of rules sharing one name and label set (group labels merged
/// under the rule's): promtool's `duplicate-rules` lint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRule {
    pub name: String,
    pub labels: LabelSet,
}

/// promtool's `duplicate-rules` lint: each (name, labels) that occurs more
/// than once, sorted, each once.
pub fn duplicate_rules(file: &RuleFile) -> Vec<DuplicateRule> {
    let mut count = BTreeMap::<(String, LabelSet), usize>::new();
    for g in &file.groups {
        for r in &g.rules {
            let mut labels = g.labels.clone();
            labels.extend(r.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            *count.entry((r.name().to_string(), labels)).or_default() += 1;
        }
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((name, labels), _)| DuplicateRule { name, labels })
        .collect()
}

/// What `promtool check rules` printed and its exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// What promtool prints on standard output (`Checking FILE`, `SUCCESS`).
    pub stdout: String,
    /// What it prints on standard error (`FAILED:` and the errors).
    pub stderr: String,
    /// 0: fine (lint findings are not fatal by default); 1: an error;
    /// 3: lint findings with `lint_fatal`.
    pub exit_code: i32,
}

/// `promtool check rules [--lint-fatal] FILE...` with the default lint
/// (`duplicate-rules`) and name validation.
pub fn check<P: AsRef<Path>>(paths: &[P], lint_fatal: bool) -> CheckReport {
    let mut rep = CheckReport::default();
    let (mut failed, mut has_errors) = (false, false);
    for p in paths {
        let p = p.as_ref();
        rep.stdout.push_str(&format!("Checking {}\n", p.display()));
        match load(p) {
            Err(errs) => {
                failed = true;
                has_errors = true;
                rep.stderr.push_str("  FAILED:\n");
                for e in errs {
                    rep.stderr.push_str(&format!("{e}\n"));
                }
                continue;
            }
            Ok(file) => {
                for w in &file.warnings {
                    rep.stderr.push_str(&format!("  WARNING: {w}\n"));
                }
                let dups = duplicate_rules(&file);
                if dups.is_empty() {
                    let n: usize = file.groups.iter().map(|g| g.rules.len()).sum();
                    rep.stdout
                        .push_str(&format!("  SUCCESS: {n} rules found\n"));
                } else {
                    failed = true;
                    rep.stderr.push_str("  FAILED:\n");
                    rep.stderr.push_str(&format!(
                        "lint error {} duplicate rule(s) found.\n",
                        dups.len()
                    ));
                    for d in &dups {
                        rep.stderr
                            .push_str(&format!("Metric: {}\nLabel(s):\n", d.name));
                        for (k, v) in &d.labels {
                            rep.stderr.push_str(&format!("\t{k}: {v}\n"));
                        }
                    }
                    rep.stderr
                        .push_str("Might cause inconsistency while recording expressions\n");
                }
            }
        }
        rep.stdout.push('\n');
    }
    rep.exit_code = if failed && has_errors {
        1
    } else if failed && lint_fatal {
        3
    } else {
        0
    };
    rep
}

#[cfg(test)]
mod tests;
