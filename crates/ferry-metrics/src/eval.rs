//! The PromQL evaluator: `promql-parser`'s AST evaluated over a
//! [`Storage`], one timestamp at a time (a range query evaluates every
//! step). Float samples only. Semantics follow Prometheus 3 with delayed
//! name removal, as its own test scripts run it: windows are left-open
//! (`(t - range, t]`), an instant selector looks back 5 minutes, a stale
//! marker ends a series, and `__name__` is dropped at the end of the
//! evaluation from every sample an operation marked.

use crate::storage::{Labels, Selected, Source, is_stale};
use crate::value::{Sample, Series, Value};
use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset,
    VectorMatchCardinality, VectorSelector,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// The query does not parse (Prometheus's `bad_data`).
    #[error("{0}")]
    Parse(String),
    /// The query parses but cannot be evaluated (Prometheus's `execution`).
    #[error("{0}")]
    Eval(String),
}

type R<T> = Result<T, EvalError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(EvalError::Eval(msg.into()))
}

/// Evaluates queries against a [`Storage`].
#[derive(Debug, Clone)]
pub struct Engine {
    /// How far back an instant selector looks for a sample (ms).
    pub lookback_ms: i64,
    /// The step of a subquery that names none (ms).
    pub subquery_step_ms: i64,
    /// Most samples one query may load (Prometheus's
    /// `--query.max-samples` is 50,000,000).
    pub max_samples: usize,
    /// Longest one query may run.
    pub timeout: Duration,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            lookback_ms: 300_000,
            subquery_step_ms: 60_000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// One element of an instant vector while evaluating: its sample time
/// (for `timestamp()`), and whether its name is to be dropped.
#[derive(Debug, Clone)]
struct El {
    /// Shared: elements are copied from step to step and through
    /// operators far more often than their labels change.
    labels: Arc<Labels>,
    v: f64,
    ts: i64,
    drop_name: bool,
}

#[derive(Debug, Clone)]
struct MSeries {
    labels: Arc<Labels>,
    points: Vec<(i64, f64)>,
    drop_name: bool,
}

#[derive(Debug, Clone)]
enum V {
    Scalar(f64),
    Str(String),
    Vector(Vec<El>),
    Matrix(Vec<MSeries>),
}

/// A range function's results for every step of a range query: the label
/// sets once, then per step (taken as it is evaluated) each series' value.
struct Steps {
    labels: Vec<Arc<Labels>>,
    drop_name: bool,
    values: Vec<Option<Vec<(u32, f64)>>>,
}

/// Series read at a time when a range function runs over every step.
const SERIES_PER_READ: usize = 256;

/// The series one selector loaded for the whole query window, reused by
/// every step of a range query.
type Loaded = std::rc::Rc<Selected>;

struct Ctx<'a> {
    storage: &'a dyn Source,
    /// Every selector loads `(window.0, window.1]` once, when the query
    /// has no `@` (which can point anywhere).
    window: Option<(i64, i64)>,
    loaded: std::cell::RefCell<HashMap<String, Loaded>>,
    samples: std::cell::Cell<usize>,
    deadline: std::time::Instant,
    /// Range functions over a selector, computed for every step of a range
    /// query at once (one pass over each series), by the call's address.
    steps: std::cell::RefCell<HashMap<usize, Steps>>,
    engine: &'a Engine,
    /// The query's start and end (for `@ start()` and `@ end()`), and
    /// its step (0 for an instant query).
    start: i64,
    end: i64,
    step: i64,
}

fn ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
    }
}

fn system_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

impl Engine {
    /// An instant query at `t` (ms).
    pub fn instant(&self, storage: &dyn Source, query: &str, t: i64) -> Result<Value, EvalError> {
        let expr = crate::parse_error::parse(query).map_err(EvalError::Parse)?;
        let ctx = Ctx::new(storage, self, &expr, t, t, 0);
        let v = ctx.eval(&expr, t)?;
        Ok(match v {
            V::Scalar(f) => Value::Scalar(f),
            V::Str(s) => Value::String(s),
            V::Vector(els) => Value::Vector(
                finish_vector(els)?
                    .into_iter()
                    .map(|(labels, v)| Sample { labels, t, v })
                    .collect(),
            ),
            V::Matrix(series) => Value::Matrix(finish_matrix(series)?),
        })
    }

    /// The series a selector (`up{job="x"}`) matches that have samples
    /// in `(start, end]`, for `/api/v1/series` and label lookups.
    pub fn series(
        &self,
        storage: &dyn Source,
        selector: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, EvalError> {
        let expr = crate::parse_error::parse(selector).map_err(EvalError::Parse)?;
        let Expr::VectorSelector(vs) = expr else {
            return Err(EvalError::Parse(format!(
                "{selector:?} is not a series selector"
            )));
        };
        let m = selector_matchers(&vs);
        storage.series(&m, start, end).map_err(EvalError::Eval)
    }

    /// A range query: `Value::Matrix`, one series per label set, a point
    /// per step where the expression has a value.
    pub fn range(
        &self,
        storage: &dyn Source,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Value, EvalError> {
        if step <= 0 {
            return err("zero or negative query resolution step widths are not accepted");
        }
        let expr = crate::parse_error::parse(query).map_err(EvalError::Parse)?;
        let ctx = Ctx::new(storage, self, &expr, start, end, step);
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut t = start;
        while t <= end {
            ctx.check_time()?;
            match ctx.eval(&expr, t)? {
                V::Scalar(f) => out.entry(Labels::new()).or_default().push((t, f)),
                V::Vector(els) => {
                    let mut seen = HashSet::new();
                    for e in els {
                        let labels = final_labels(e.labels, e.drop_name, &mut seen)?;
                        out.entry(labels).or_default().push((t, e.v));
                    }
                }
                V::Str(_) | V::Matrix(_) => {
                    return err(format!(
                        "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                        expr.value_type()
                    ));
                }
            }
            t += step;
        }
        Ok(Value::Matrix(
            out.into_iter()
                .map(|(labels, points)| Series { labels, points })
                .collect(),
        ))
    }
}

fn without_name(l: &Labels) -> Labels {
    let mut l = l.clone();
    l.remove("__name__");
    l
}

/// The labels a result element ends with: its name dropped if an
/// operation marked it. Two elements with one label set are an error.
fn final_labels(labels: Arc<Labels>, drop_name: bool, seen: &mut HashSet<Labels>) -> R<Labels> {
    let labels = named(labels, drop_name);
    if !seen.insert(labels.clone()) {
        return err("vector cannot contain metrics with the same labelset");
    }
    Ok(labels)
}

/// Labels with the name dropped when an operation marked it.
fn named(labels: Arc<Labels>, drop_name: bool) -> Labels {
    let mut labels = Arc::unwrap_or_clone(labels);
    if drop_name {
        labels.remove("__name__");
    }
    labels
}

/// Two result elements with one label set are an error.
fn check_unique<'a>(labels: impl Iterator<Item = &'a Labels>) -> R<()> {
    let mut seen = HashSet::new();
    for l in labels {
        if !seen.insert(l) {
            return err("vector cannot contain metrics with the same labelset");
        }
    }
    Ok(())
}

fn finish_vector(els: Vec<El>) -> R<Vec<(Labels, f64)>> {
    let out: Vec<(Labels, f64)> = els
        .into_iter()
        .map(|e| (named(e.labels, e.drop_name), e.v))
        .collect();
    check_unique(out.iter().map(|x| &x.0))?;
    Ok(out)
}

fn finish_matrix(series: Vec<MSeries>) -> R<Vec<Series>> {
    let out: Vec<Series> = series
        .into_iter()
        .map(|s| Series {
            labels: named(s.labels, s.drop_name),
            points: s.points,
        })
        .collect();
    check_unique(out.iter().map(|x| &x.labels))?;
    Ok(out)
}

fn selector_matchers(vs: &VectorSelector) -> Matchers {
    let mut m = vs.matchers.clone();
    if let Some(name) = &vs.name {
        let name_m = promql_parser::label::Matcher::new(MatchOp::Equal, "__name__", name);
        if m.or_matchers.is_empty() {
            m.matchers.push(name_m);
        } else {
            for g in &mut m.or_matchers {
                g.push(name_m.clone());
            }
        }
    }
    m
}

/// How far before a step (first) and after it (second) an expression
/// reads samples; `None` when it uses `@`, which can point anywhere.
fn reach(e: &Expr, lookback: i64, sub_step: i64) -> Option<(i64, i64)> {
    let off = |o: &Option<Offset>| offset_ms(o);
    let shift = |(b, f): (i64, i64), o: i64| (b + o.max(0), f + (-o).max(0));
    let both = |a: Option<(i64, i64)>, b: Option<(i64, i64)>| {
        let (a, b) = (a?, b?);
        Some((a.0.max(b.0), a.1.max(b.1)))
    };
    match e {
        Expr::VectorSelector(vs) => vs
            .at
            .is_none()
            .then(|| shift((lookback, 0), off(&vs.offset))),
        Expr::MatrixSelector(m) => {
            m.vs.at
                .is_none()
                .then(|| shift((ms(&m.range), 0), off(&m.vs.offset)))
        }
        Expr::Subquery(sq) => {
            if sq.at.is_some() {
                return None;
            }
            let (b, f) = reach(&sq.expr, lookback, sub_step)?;
            let step = sq.step.as_ref().map(ms).unwrap_or(sub_step);
            Some(shift((b + ms(&sq.range) + step, f), off(&sq.offset)))
        }
        Expr::Paren(p) => reach(&p.expr, lookback, sub_step),
        Expr::Unary(u) => reach(&u.expr, lookback, sub_step),
        Expr::Binary(b) => both(
            reach(&b.lhs, lookback, sub_step),
            reach(&b.rhs, lookback, sub_step),
        ),
        Expr::Aggregate(a) => {
            let inner = reach(&a.expr, lookback, sub_step);
            match &a.param {
                Some(p) => both(inner, reach(p, lookback, sub_step)),
                None => inner,
            }
        }
        Expr::Call(c) => c.args.args.iter().try_fold((0, 0), |acc, a| {
            both(Some(acc), reach(a, lookback, sub_step))
        }),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Some((0, 0)),
        Expr::Extension(_) => None,
    }
}

impl<'a> Ctx<'a> {
    fn new(
        storage: &'a dyn Source,
        engine: &'a Engine,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Ctx<'a> {
        let window = reach(expr, engine.lookback_ms, engine.subquery_step_ms)
            .map(|(back, fwd)| (start - back - 1, end + fwd));
        Ctx {
            storage,
            window,
            loaded: Default::default(),
            samples: Default::default(),
            deadline: std::time::Instant::now() + engine.timeout,
            steps: Default::default(),
            engine,
            start,
            end,
            step,
        }
    }
}

impl Ctx<'_> {
    fn at_time(&self, at: &Option<AtModifier>, t: i64) -> i64 {
        match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => system_ms(st),
        }
    }

    fn eval(&self, e: &Expr, t: i64) -> R<V> {
        match e {
            Expr::NumberLiteral(n) => Ok(V::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(V::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                V::Scalar(f) => Ok(V::Scalar(-f)),
                V::Vector(els) => Ok(V::Vector(
                    els.into_iter()
                        .map(|e| El {
                            v: -e.v,
                            ts: t,
                            drop_name: true,
                            ..e
                        })
                        .collect(),
                )),
                _ => err("unary expression only allowed on scalars and instant vectors"),
            },
            Expr::VectorSelector(vs) => Ok(V::Vector(self.select_vector(vs, t)?)),
            Expr::MatrixSelector(m) => Ok(V::Matrix(self.select_matrix(&m.vs, ms(&m.range), t)?)),
            Expr::Subquery(sq) => {
                let step = sq
                    .step
                    .as_ref()
                    .map(ms)
                    .unwrap_or(self.engine.subquery_step_ms);
                let range = ms(&sq.range);
                let ref_t = self.at_time(&sq.at, t) - offset_ms(&sq.offset);
                Ok(V::Matrix(self.subquery(&sq.expr, ref_t, range, step)?))
            }
            Expr::Binary(b) => self.binary(b, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Extension(_) => err("extensions are not supported"),
        }
    }

    fn select_vector(&self, vs: &VectorSelector, t: i64) -> R<Vec<El>> {
        let ref_t = self.at_time(&vs.at, t) - offset_ms(&vs.offset);
        let m = selector_matchers(vs);
        let lookback = self.engine.lookback_ms;
        Ok(self
            .select(&m, ref_t - lookback, ref_t)?
            .into_iter()
            .filter_map(|(labels, points)| {
                let &(ts, v) = points.last()?;
                (!is_stale(v)).then_some(El {
                    labels,
                    v,
                    ts,
                    drop_name: false,
                })
            })
            .collect())
    }

    fn select_matrix(&self, vs: &VectorSelector, range: i64, t: i64) -> R<Vec<MSeries>> {
        let ref_t = self.at_time(&vs.at, t) - offset_ms(&vs.offset);
        let m = selector_matchers(vs);
        Ok(self
            .select(&m, ref_t - range, ref_t)?
            .into_iter()
            .filter_map(|(labels, mut points)| {
                points.retain(|p| !is_stale(p.1));
                (!points.is_empty()).then_some(MSeries {
                    labels,
                    points,
                    drop_name: false,
                })
            })
            .collect())
    }

    /// Series matching `m` with samples in `(mint, maxt]`: cut from what
    /// the selector loaded for the whole query when that covers it.
    fn select(&self, m: &Matchers, mint: i64, maxt: i64) -> R<Selected> {
        self.check_time()?;
        let Some((lo, hi)) = self.window.filter(|w| w.0 <= mint && maxt <= w.1) else {
            let found = self
                .storage
                .select(m, mint, maxt)
                .map_err(EvalError::Eval)?;
            self.count(found.iter().map(|s| s.1.len()).sum())?;
            return Ok(found);
        };
        let key = format!("{m:?}");
        let cached = self.loaded.borrow().get(&key).cloned();
        let all = match cached {
            Some(a) => a,
            None => {
                let found = self.storage.select(m, lo, hi).map_err(EvalError::Eval)?;
                self.count(found.iter().map(|s| s.1.len()).sum())?;
                let found = std::rc::Rc::new(found);
                self.loaded.borrow_mut().insert(key, found.clone());
                found
            }
        };
        Ok(all
            .iter()
            .filter_map(|(labels, points)| {
                let a = points.partition_point(|p| p.0 <= mint);
                let b = points.partition_point(|p| p.0 <= maxt);
                (a < b).then(|| (labels.clone(), points[a..b].to_vec()))
            })
            .collect())
    }

    /// Which step of a range query `t` is, if it is one.
    /// (An instant query is a range query of one step.)
    fn step_index(&self, t: i64) -> Option<usize> {
        if self.step == 0 {
            return (t == self.start).then_some(0);
        }
        (t >= self.start && t <= self.end && (t - self.start) % self.step == 0)
            .then(|| ((t - self.start) / self.step) as usize)
    }

    /// How many steps the query has.
    fn step_count(&self) -> usize {
        if self.step == 0 {
            1
        } else {
            ((self.end - self.start) / self.step) as usize + 1
        }
    }

    /// The time of step `i`.
    fn step_time(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    /// Range function `name` over selector `sel` at step `i` of a range
    /// query. The first step asked computes every step: each series is
    /// read once (a few at a time) and its windows slide over it, instead
    /// of every step cutting and copying its own windows. `None` when that
    /// step was already taken (the slow path then evaluates it).
    fn every_step(
        &self,
        c: &Call,
        name: &str,
        sel: &promql_parser::parser::MatrixSelector,
        i: usize,
        (extra, sf, tf): (Option<f64>, f64, f64),
    ) -> R<Option<Vec<El>>> {
        let key = c as *const Call as usize;
        let take = |s: &mut Steps| -> Option<Vec<El>> {
            let values = s.values.get_mut(i)?.take()?;
            Some(
                values
                    .into_iter()
                    .map(|(k, v)| El {
                        labels: s.labels[k as usize].clone(),
                        v,
                        ts: self.step_time(i),
                        drop_name: s.drop_name,
                    })
                    .collect(),
            )
        };
        if let Some(s) = self.steps.borrow_mut().get_mut(&key) {
            return Ok(take(s));
        }
        let range = ms(&sel.range);
        let off = offset_ms(&sel.vs.offset);
        let n = self.step_count();
        let (lo, hi) = (self.start - off - range, self.end - off);
        let m = selector_matchers(&sel.vs);
        let labels = self.storage.series(&m, lo, hi).map_err(EvalError::Eval)?;
        let mut values: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        for (part, chunk) in labels.chunks(SERIES_PER_READ).enumerate() {
            self.check_time()?;
            let data = self
                .storage
                .select_series(chunk, lo, hi)
                .map_err(EvalError::Eval)?;
            self.count(data.iter().map(Vec::len).sum())?;
            for (j, mut points) in data.into_iter().enumerate() {
                let k = (part * SERIES_PER_READ + j) as u32;
                points.retain(|p| !is_stale(p.1));
                let (mut a, mut b) = (0, 0);
                for (step, out) in values.iter_mut().enumerate() {
                    let t = self.step_time(step);
                    let ref_end = t - off;
                    while a < points.len() && points[a].0 <= ref_end - range {
                        a += 1;
                    }
                    b = b.max(a);
                    while b < points.len() && points[b].0 <= ref_end {
                        b += 1;
                    }
                    if a < b
                        && let Some(v) =
                            range_value(name, &points[a..b], ref_end, range, t, extra, sf, tf)
                    {
                        out.push((k, v));
                    }
                }
            }
        }
        let mut s = Steps {
            labels: labels.into_iter().map(Arc::new).collect(),
            drop_name: !matches!(name, "last_over_time" | "first_over_time"),
            values: values.into_iter().map(Some).collect(),
        };
        let first = take(&mut s);
        self.steps.borrow_mut().insert(key, s);
        Ok(first)
    }

    fn count(&self, n: usize) -> R<()> {
        let total = self.samples.get() + n;
        self.samples.set(total);
        if total > self.engine.max_samples {
            return err(format!(
                "query processing would load too many samples into memory (more than {}); narrow the selectors or the time range",
                self.engine.max_samples
            ));
        }
        Ok(())
    }

    fn check_time(&self) -> R<()> {
        if std::time::Instant::now() > self.deadline {
            return err(format!(
                "query timed out (it ran longer than {:?}); narrow the selectors or the time range",
                self.engine.timeout
            ));
        }
        Ok(())
    }

    fn subquery(&self, inner: &Expr, ref_t: i64, range: i64, step: i64) -> R<Vec<MSeries>> {
        // Steps aligned to multiples of `step`, in (ref_t - range, ref_t].
        let lo = ref_t - range;
        let mut ts = lo.div_euclid(step) * step;
        if ts <= lo {
            ts += step;
        }
        let mut out: BTreeMap<Labels, MSeries> = BTreeMap::new();
        while ts <= ref_t {
            match self.eval(inner, ts)? {
                V::Scalar(f) => out
                    .entry(Labels::new())
                    .or_insert_with(|| MSeries {
                        labels: Arc::new(Labels::new()),
                        points: Vec::new(),
                        drop_name: false,
                    })
                    .points
                    .push((ts, f)),
                V::Vector(els) => {
                    for e in els {
                        let key = if e.drop_name {
                            without_name(&e.labels)
                        } else {
                            Labels::clone(&e.labels)
                        };
                        out.entry(key)
                            .or_insert_with(|| MSeries {
                                labels: e.labels.clone(),
                                points: Vec::new(),
                                drop_name: e.drop_name,
                            })
                            .points
                            .push((ts, e.v));
                    }
                }
                _ => return err("subquery is only allowed on instant vector or scalar"),
            }
            ts += step;
        }
        Ok(out.into_values().collect())
    }

    // ----------------------------------------------------------- binary

    fn binary(&self, b: &BinaryExpr, t: i64) -> R<V> {
        let op = b.op.to_string();
        let op = op.as_str();
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (V::Scalar(l), V::Scalar(r)) => {
                let (v, keep) = scalar_op(op, l, r)?;
                if is_comparison(op) {
                    if !return_bool {
                        return err("comparisons between scalars must use BOOL modifier");
                    }
                    return Ok(V::Scalar(if keep { 1.0 } else { 0.0 }));
                }
                Ok(V::Scalar(v))
            }
            (V::Vector(l), V::Scalar(r)) => {
                Ok(V::Vector(vector_scalar(op, l, r, false, return_bool, t)?))
            }
            (V::Scalar(l), V::Vector(r)) => {
                Ok(V::Vector(vector_scalar(op, r, l, true, return_bool, t)?))
            }
            (V::Vector(l), V::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                match op {
                    "and" | "or" | "unless" => Ok(V::Vector(set_op(op, l, r, &matching))),
                    _ => Ok(V::Vector(vector_vector(
                        op,
                        l,
                        r,
                        &card,
                        &matching,
                        return_bool,
                        t,
                    )?)),
                }
            }
            _ => err(format!(
                "binary expression {op} on unsupported operand types"
            )),
        }
    }

    // ------------------------------------------------------ aggregation

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> R<V> {
        let op = a.op.to_string();
        let op = op.as_str();
        let param = match &a.param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        let V::Vector(input) = self.eval(&a.expr, t)? else {
            return err(format!("expected instant vector in aggregation {op}"));
        };
        // `by (__name__)` groups by the name even where it is to be dropped
        // (delayed removal); the group's result then drops it.
        let grouping = |l: &Labels| -> Labels {
            match &a.modifier {
                None => Labels::new(),
                by_or_without => signature(l, by_or_without),
            }
        };
        let num_param = || -> R<f64> {
            match &param {
                Some(V::Scalar(f)) => Ok(*f),
                _ => err(format!("expected scalar parameter for {op}")),
            }
        };
        match op {
            "topk" | "bottomk" | "limitk" => {
                let k = num_param()?;
                if k.is_nan() {
                    return err("Parameter value is NaN");
                }
                if k < 1.0 {
                    return Ok(V::Vector(Vec::new()));
                }
                let k = if k > 1e9 { usize::MAX } else { k as usize };
                let mut groups: BTreeMap<Labels, Vec<El>> = BTreeMap::new();
                for e in input {
                    groups.entry(grouping(&e.labels)).or_default().push(e);
                }
                let mut out = Vec::new();
                for (_, mut g) in groups {
                    match op {
                        "topk" => g.sort_by(|a, b| cmp_desc_nan_last(a.v, b.v)),
                        "bottomk" => g.sort_by(|a, b| cmp_asc_nan_last(a.v, b.v)),
                        _ => g.sort_by(|a, b| a.labels.cmp(&b.labels)),
                    }
                    out.extend(g.into_iter().take(k).map(|e| El { ts: t, ..e }));
                }
                return Ok(V::Vector(out));
            }
            "limit_ratio" => return err("limit_ratio is not supported"),
            "count_values" => {
                let Some(V::Str(label)) = &param else {
                    return err("expected string parameter for count_values");
                };
                if !is_valid_label_name(label) {
                    return err(format!("invalid label name {label:?}"));
                }
                let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
                for e in &input {
                    let mut g = grouping(&e.labels);
                    g.insert(label.clone(), format_value(e.v));
                    *counts.entry(g).or_default() += 1.0;
                }
                return Ok(V::Vector(
                    counts
                        .into_iter()
                        .map(|(labels, v)| El {
                            labels: Arc::new(labels),
                            v,
                            ts: t,
                            drop_name: false,
                        })
                        .collect(),
                ));
            }
            _ => {}
        }
        let q = if op == "quantile" {
            Some(num_param()?)
        } else {
            None
        };
        let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
        let mut order: Vec<Labels> = Vec::new();
        let mut drops: std::collections::HashSet<Labels> = std::collections::HashSet::new();
        for e in &input {
            let g = grouping(&e.labels);
            if !groups.contains_key(&g) {
                order.push(g.clone());
            }
            if e.drop_name && g.contains_key("__name__") {
                drops.insert(g.clone());
            }
            groups.entry(g).or_default().push(e.v);
        }
        let mut out = Vec::new();
        for g in order {
            let vals = &groups[&g];
            let v = match op {
                "sum" => kahan_sum(vals),
                "avg" => avg(vals),
                "count" => vals.len() as f64,
                "group" => 1.0,
                "min" => min_of(vals),
                "max" => max_of(vals),
                "stddev" => variance(vals).sqrt(),
                "stdvar" => variance(vals),
                "quantile" => quantile(q.unwrap_or(f64::NAN), vals),
                other => return err(format!("unsupported aggregation {other}")),
            };
            let drop_name = drops.contains(&g);
            out.push(El {
                labels: Arc::new(g),
                v,
                ts: t,
                drop_name,
            });
        }
        Ok(V::Vector(out))
    }

    // -------------------------------------------------------- functions

    fn call(&self, c: &Call, t: i64) -> R<V> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> R<V> {
            match args.get(i) {
                Some(a) => self.eval(a, t),
                None => err(format!("missing argument {i} of {name}")),
            }
        };
        let scalar_arg = |i: usize| -> R<f64> {
            match arg(i)? {
                V::Scalar(f) => Ok(f),
                _ => err(format!("expected scalar argument {i} of {name}")),
            }
        };
        let vector_arg = |i: usize| -> R<Vec<El>> {
            match arg(i)? {
                V::Vector(v) => Ok(v),
                _ => err(format!("expected instant vector argument {i} of {name}")),
            }
        };
        let map_vec = |f: &dyn Fn(f64) -> f64| -> R<V> {
            Ok(V::Vector(
                vector_arg(0)?
                    .into_iter()
                    .map(|e| El {
                        v: f(e.v),
                        ts: t,
                        drop_name: true,
                        ..e
                    })
                    .collect(),
            ))
        };
        match name {
            "abs" => map_vec(&f64::abs),
            "ceil" => map_vec(&f64::ceil),
            "floor" => map_vec(&f64::floor),
            "exp" => map_vec(&f64::exp),
            "sqrt" => map_vec(&f64::sqrt),
            "ln" => map_vec(&f64::ln),
            "log2" => map_vec(&f64::log2),
            "log10" => map_vec(&f64::log10),
            "sin" => map_vec(&f64::sin),
            "cos" => map_vec(&f64::cos),
            "tan" => map_vec(&f64::tan),
            "asin" => map_vec(&f64::asin),
            "acos" => map_vec(&f64::acos),
            "atan" => map_vec(&f64::atan),
            "sinh" => map_vec(&f64::sinh),
            "cosh" => map_vec(&f64::cosh),
            "tanh" => map_vec(&f64::tanh),
            "asinh" => map_vec(&f64::asinh),
            "acosh" => map_vec(&f64::acosh),
            "atanh" => map_vec(&f64::atanh),
            "deg" => map_vec(&|v| v * 180.0 / std::f64::consts::PI),
            "rad" => map_vec(&|v| v * std::f64::consts::PI / 180.0),
            "sgn" => map_vec(&|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            }),
            "pi" => Ok(V::Scalar(std::f64::consts::PI)),
            "step" => Ok(V::Scalar(self.step as f64 / 1000.0)),
            "range" => Ok(V::Scalar((self.end - self.start) as f64 / 1000.0)),
            "start" => Ok(V::Scalar(self.start as f64 / 1000.0)),
            "end" => Ok(V::Scalar(self.end as f64 / 1000.0)),
            "min_of" | "max_of" => {
                let (a, b) = (scalar_arg(0)?, scalar_arg(1)?);
                Ok(V::Scalar(if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else if name == "min_of" {
                    a.min(b)
                } else {
                    a.max(b)
                }))
            }
            "time" => Ok(V::Scalar(t as f64 / 1000.0)),
            "round" => {
                let to = if args.len() > 1 { scalar_arg(1)? } else { 1.0 };
                let inv = 1.0 / to;
                map_vec(&|v| (v * inv + 0.5).floor() / inv)
            }
            "clamp" => {
                let (lo, hi) = (scalar_arg(1)?, scalar_arg(2)?);
                if hi < lo {
                    return Ok(V::Vector(Vec::new()));
                }
                map_vec(&|v| v.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = scalar_arg(1)?;
                map_vec(&|v| v.max(lo))
            }
            "clamp_max" => {
                let hi = scalar_arg(1)?;
                map_vec(&|v| v.min(hi))
            }
            "scalar" => {
                let v = vector_arg(0)?;
                Ok(V::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "vector" => Ok(V::Vector(vec![El {
                labels: Arc::new(Labels::new()),
                v: scalar_arg(0)?,
                ts: t,
                drop_name: false,
            }])),
            "timestamp" => Ok(V::Vector(
                vector_arg(0)?
                    .into_iter()
                    .map(|e| El {
                        v: e.ts as f64 / 1000.0,
                        ts: t,
                        drop_name: true,
                        ..e
                    })
                    .collect(),
            )),
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" => {
                let mut v = vector_arg(0)?;
                match name {
                    "sort" => v.sort_by(|a, b| cmp_asc_nan_last(a.v, b.v)),
                    "sort_desc" => v.sort_by(|a, b| cmp_desc_nan_last(a.v, b.v)),
                    _ => {
                        let mut names = Vec::new();
                        for i in 1..args.len() {
                            match arg(i)? {
                                V::Str(s) => names.push(s),
                                _ => return err("expected label names"),
                            }
                        }
                        v.sort_by(|a, b| {
                            let key = |e: &El| {
                                names
                                    .iter()
                                    .map(|n| e.labels.get(n).cloned().unwrap_or_default())
                                    .collect::<Vec<_>>()
                            };
                            let o = natural_cmp_keys(&key(a), &key(b))
                                .then_with(|| a.labels.cmp(&b.labels));
                            if name == "sort_by_label_desc" {
                                o.reverse()
                            } else {
                                o
                            }
                        });
                    }
                }
                Ok(V::Vector(v))
            }
            "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year"
            | "days_in_month" | "month" | "year" => {
                let f = |secs: f64| date_part(name, secs);
                if args.is_empty() {
                    return Ok(V::Vector(vec![El {
                        labels: Arc::new(Labels::new()),
                        v: f(t as f64 / 1000.0),
                        ts: t,
                        drop_name: false,
                    }]));
                }
                map_vec(&f)
            }
            "label_replace" => {
                let v = vector_arg(0)?;
                let strs = (1..5)
                    .map(|i| match arg(i)? {
                        V::Str(s) => Ok(s),
                        _ => err("label_replace takes strings"),
                    })
                    .collect::<R<Vec<String>>>()?;
                let (dst, repl, src, re) = (&strs[0], &strs[1], &strs[2], &strs[3]);
                let re = regex::Regex::new(&format!("^(?s:{re})$")).map_err(|e| {
                    EvalError::Eval(format!(
                        "invalid regular expression in label_replace(): {re}: {e}"
                    ))
                })?;
                if !is_valid_label_name(dst) {
                    return err(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    ));
                }
                let out = v
                    .into_iter()
                    .map(|mut e| {
                        let sv = e.labels.get(src).cloned().unwrap_or_default();
                        if let Some(caps) = re.captures(&sv) {
                            let mut res = String::new();
                            // `$1` and `${name}` mean the same in Rust's regex as in Go's.
                            caps.expand(repl, &mut res);
                            set_label(&mut e, dst, res);
                        }
                        e
                    })
                    .collect();
                Ok(V::Vector(out))
            }
            "label_join" => {
                let v = vector_arg(0)?;
                let mut strs = Vec::new();
                for i in 1..args.len() {
                    match arg(i)? {
                        V::Str(s) => strs.push(s),
                        _ => return err("label_join takes strings"),
                    }
                }
                if strs.len() < 2 {
                    return err("label_join needs a destination and a separator");
                }
                let (dst, sep, srcs) = (strs[0].clone(), strs[1].clone(), &strs[2..]);
                if !is_valid_label_name(&dst) {
                    return err(format!(
                        "invalid destination label name in label_join(): {dst}"
                    ));
                }
                let out = v
                    .into_iter()
                    .map(|mut e| {
                        let joined = srcs
                            .iter()
                            .map(|s| e.labels.get(s).cloned().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(&sep);
                        set_label(&mut e, &dst, joined);
                        e
                    })
                    .collect();
                Ok(V::Vector(out))
            }
            "absent" | "absent_over_time" => {
                let present = match arg(0)? {
                    V::Vector(v) => !v.is_empty(),
                    V::Matrix(m) => !m.is_empty(),
                    _ => return err(format!("expected a vector argument of {name}")),
                };
                Ok(V::Vector(if present {
                    Vec::new()
                } else {
                    vec![El {
                        labels: Arc::new(absent_labels(&args[0])),
                        v: 1.0,
                        ts: t,
                        drop_name: false,
                    }]
                }))
            }
            "rate"
            | "increase"
            | "delta"
            | "irate"
            | "idelta"
            | "deriv"
            | "changes"
            | "resets"
            | "avg_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "min_over_time"
            | "max_over_time"
            | "last_over_time"
            | "first_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "present_over_time"
            | "quantile_over_time"
            | "mad_over_time"
            | "predict_linear"
            | "holt_winters"
            | "double_exponential_smoothing"
            | "ts_of_max_over_time"
            | "ts_of_min_over_time"
            | "ts_of_last_over_time"
            | "ts_of_first_over_time" => self.range_function(name, c, t),
            "histogram_quantile" => {
                let q = scalar_arg(0)?;
                let v = vector_arg(1)?;
                Ok(V::Vector(classic_histograms(v, t, |b| {
                    bucket_quantile(q, b)
                })))
            }
            "histogram_fraction" => {
                let (lo, hi) = (scalar_arg(0)?, scalar_arg(1)?);
                let v = vector_arg(2)?;
                Ok(V::Vector(classic_histograms(v, t, |b| {
                    bucket_fraction(lo, hi, b)
                })))
            }
            other => err(format!("function {other} is not supported")),
        }
    }

    fn range_function(&self, name: &str, c: &Call, t: i64) -> R<V> {
        let args = &c.args.args;
        // The matrix argument is the first one, except for quantile_over_time.
        let mi = if name == "quantile_over_time" { 1 } else { 0 };
        let mut target = args.get(mi).map(|a| a.as_ref());
        while let Some(Expr::Paren(p)) = target {
            target = Some(p.expr.as_ref());
        }
        let (range, ref_end) = match target {
            Some(Expr::MatrixSelector(m)) => (
                ms(&m.range),
                self.at_time(&m.vs.at, t) - offset_ms(&m.vs.offset),
            ),
            Some(Expr::Subquery(sq)) => (
                ms(&sq.range),
                self.at_time(&sq.at, t) - offset_ms(&sq.offset),
            ),
            _ => (0, t),
        };
        let scalar = |i: usize| -> R<f64> {
            match self.eval(&args[i], t)? {
                V::Scalar(f) => Ok(f),
                _ => err(format!("expected scalar argument {i} of {name}")),
            }
        };
        let extra = match name {
            "quantile_over_time" => Some(scalar(0)?),
            "predict_linear" => Some(scalar(1)?),
            _ => None,
        };
        let (sf, tf) = if matches!(name, "holt_winters" | "double_exponential_smoothing") {
            (scalar(1)?, scalar(2)?)
        } else {
            (0.0, 0.0)
        };
        if matches!(name, "holt_winters" | "double_exponential_smoothing")
            && !(sf > 0.0 && sf < 1.0 && tf > 0.0 && tf < 1.0)
        {
            return err(format!(
                "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
            ));
        }
        if let Some(Expr::MatrixSelector(sel)) = target
            && sel.vs.at.is_none()
            && let Some(i) = self.step_index(t)
            && args
                .iter()
                .enumerate()
                .all(|(j, a)| j == mi || matches!(a.as_ref(), Expr::NumberLiteral(_)))
            && let Some(els) = self.every_step(c, name, sel, i, (extra, sf, tf))?
        {
            return Ok(V::Vector(els));
        }
        let V::Matrix(m) = self.eval(&args[mi], t)? else {
            return err(format!("expected range vector argument of {name}"));
        };
        let mut out = Vec::new();
        for s in m {
            let keep_name = matches!(name, "last_over_time" | "first_over_time");
            let v = range_value(name, &s.points, ref_end, range, t, extra, sf, tf);
            if let Some(v) = v {
                out.push(El {
                    labels: s.labels,
                    v,
                    ts: t,
                    drop_name: s.drop_name || !keep_name,
                });
            }
        }
        Ok(V::Vector(out))
    }
}

/// What range function `name` gives for one series' samples `p` (stale
/// markers removed) in the window ending at `ref_end`, evaluated at `t`;
/// `extra` is `quantile_over_time`'s quantile or `predict_linear`'s
/// horizon, `sf`/`tf` the smoothing factors.
#[allow(clippy::too_many_arguments)]
fn range_value(
    name: &str,
    p: &[(i64, f64)],
    ref_end: i64,
    range: i64,
    t: i64,
    extra: Option<f64>,
    sf: f64,
    tf: f64,
) -> Option<f64> {
    match name {
        "rate" | "increase" | "delta" => extrapolated_rate(
            p,
            ref_end - range,
            ref_end,
            range,
            name != "delta",
            name == "rate",
        ),
        "irate" | "idelta" => instant_value(p, name == "irate"),
        "deriv" => {
            if p.len() < 2 {
                None
            } else {
                Some(linear_regression(p, p[0].0).0)
            }
        }
        "predict_linear" => {
            if p.len() < 2 {
                None
            } else {
                let (slope, icpt) = linear_regression(p, t);
                Some(slope * extra.unwrap_or(0.0) + icpt)
            }
        }
        "changes" => Some(
            p.windows(2)
                .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                .count() as f64,
        ),
        "resets" => Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
        "avg_over_time" => Some(avg(&vals(p))),
        "sum_over_time" => Some(kahan_sum(&vals(p))),
        "count_over_time" => Some(p.len() as f64),
        "present_over_time" => Some(1.0),
        "min_over_time" => Some(min_of(&vals(p))),
        "max_over_time" => Some(max_of(&vals(p))),
        "last_over_time" => p.last().map(|x| x.1),
        "first_over_time" => p.first().map(|x| x.1),
        "ts_of_last_over_time" => p.last().map(|x| x.0 as f64 / 1000.0),
        "ts_of_first_over_time" => p.first().map(|x| x.0 as f64 / 1000.0),
        "ts_of_max_over_time" => p
            .iter()
            .fold(None::<(i64, f64)>, |m, &x| match m {
                Some(b) if !(x.1 >= b.1 || b.1.is_nan()) => Some(b),
                _ => Some(x),
            })
            .map(|x| x.0 as f64 / 1000.0),
        "ts_of_min_over_time" => p
            .iter()
            .fold(None::<(i64, f64)>, |m, &x| match m {
                Some(b) if !(x.1 <= b.1 || b.1.is_nan()) => Some(b),
                _ => Some(x),
            })
            .map(|x| x.0 as f64 / 1000.0),
        "stddev_over_time" => Some(variance(&vals(p)).sqrt()),
        "stdvar_over_time" => Some(variance(&vals(p))),
        "quantile_over_time" => Some(quantile(extra.unwrap_or(f64::NAN), &vals(p))),
        "mad_over_time" if p.iter().any(|x| x.1.is_nan()) => Some(f64::NAN),
        "mad_over_time" => {
            let v = vals(p);
            let med = quantile(0.5, &v);
            let dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
            Some(quantile(0.5, &dev))
        }
        "holt_winters" | "double_exponential_smoothing" => holt_winters(&vals(p), sf, tf),
        _ => None,
    }
}

/// The smallest value, NaN only when every value is NaN (as Prometheus's
/// `min` and `min_over_time`).
fn min_of(v: &[f64]) -> f64 {
    v.iter()
        .copied()
        .fold(f64::NAN, |m, x| if m.is_nan() || x < m { x } else { m })
}

/// The largest value, NaN only when every value is NaN.
fn max_of(v: &[f64]) -> f64 {
    v.iter()
        .copied()
        .fold(f64::NAN, |m, x| if m.is_nan() || x > m { x } else { m })
}

fn vals(p: &[(i64, f64)]) -> Vec<f64> {
    p.iter().map(|x| x.1).collect()
}

fn extrapolated_rate(
    p: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (first_t, first_v) = p[0];
    let (last_t, last_v) = p[p.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        for w in p.windows(2) {
            if w[1].1 < w[0].1 {
                result += w[0].1;
            }
        }
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_between = sampled / (p.len() - 1) as f64;
    let threshold = avg_between * 1.1;
    if to_start >= threshold {
        to_start = avg_between / 2.0;
    }
    if is_counter {
        let mut to_zero = to_start;
        if result > 0.0 && first_v >= 0.0 {
            to_zero = sampled * (first_v / result);
        }
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg_between / 2.0;
    }
    let mut factor = if sampled != 0.0 {
        (sampled + to_start + to_end) / sampled
    } else {
        1.0
    };
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(p: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (t0, v0) = p[p.len() - 2];
    let (t1, v1) = p[p.len() - 1];
    let mut d = v1 - v0;
    if is_rate && v1 < v0 {
        d = v1;
    }
    let dt = t1 - t0;
    if is_rate {
        if dt == 0 {
            return None;
        }
        d /= dt as f64 / 1000.0;
    }
    Some(d)
}

/// Least squares over (seconds relative to `intercept_t`, value).
fn linear_regression(p: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let const_y = p.iter().all(|x| x.1 == p[0].1);
    if const_y {
        return (0.0, p[0].1);
    }
    let n = p.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(ts, v) in p {
        let x = (ts - intercept_t) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    let icpt = sy / n - slope * sx / n;
    (slope, icpt)
}

fn holt_winters(v: &[f64], sf: f64, tf: f64) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let (mut s0, mut s1, mut b) = (0.0, v[0], v[1] - v[0]);
    for (i, &x) in v.iter().enumerate().skip(1) {
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let next = sf * x + (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = next;
    }
    Some(s1)
}

fn kahan_sum(v: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for &x in v {
        let t = sum + x;
        if t.is_infinite() {
            c = 0.0;
        } else if sum.abs() >= x.abs() {
            c += (sum - t) + x;
        } else {
            c += (x - t) + sum;
        }
        sum = t;
    }
    if c.is_infinite() { sum } else { sum + c }
}

fn avg(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = v.contains(&f64::INFINITY);
    let neg = v.contains(&f64::NEG_INFINITY);
    if v.iter().any(|x| x.is_nan()) || (pos && neg) {
        return f64::NAN;
    }
    if pos {
        return f64::INFINITY;
    }
    if neg {
        return f64::NEG_INFINITY;
    }
    let sum = kahan_sum(v);
    if sum.is_finite() {
        return sum / v.len() as f64;
    }
    // The sum overflows: the mean, incrementally.
    let mut mean = 0.0;
    for (i, &x) in v.iter().enumerate() {
        let n = i as f64 + 1.0;
        mean += x / n - mean / n;
    }
    mean
}

fn variance(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for &x in v {
        count += 1.0;
        let delta = x - mean;
        mean += delta / count;
        m2 += delta * (x - mean);
    }
    m2 / count
}

/// Prometheus's `quantile`: linear interpolation between ranks.
fn quantile(q: f64, v: &[f64]) -> f64 {
    if v.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut s = v.to_vec();
    // As Prometheus sorts: NaN below everything.
    s.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = s.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0);
    let hi = (lo + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    s[lo as usize] * (1.0 - w) + s[hi as usize] * w
}

fn cmp_desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn cmp_asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn natural_cmp_keys(a: &[String], b: &[String]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = natural_cmp(x, y);
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Strings compared with runs of digits as numbers ("3" < "10").
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx = dx.iter().skip_while(|c| **c == b'0').count();
                let ty = dy.iter().skip_while(|c| **c == b'0').count();
                let o = tx
                    .cmp(&ty)
                    .then_with(|| dx[nx - tx..].cmp(&dy[ny - ty..]))
                    .then_with(|| nx.cmp(&ny));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// Labels as Prometheus prints them in errors: `{__name__="x", a="b"}`.
fn go_labels(l: &Labels) -> String {
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// (arithmetic result, comparison outcome).
fn scalar_op(op: &str, l: f64, r: f64) -> R<(f64, bool)> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return err(format!("operator {other} not allowed here")),
    })
}

fn vector_scalar(
    op: &str,
    v: Vec<El>,
    s: f64,
    swap: bool,
    return_bool: bool,
    t: i64,
) -> R<Vec<El>> {
    let mut out = Vec::new();
    for e in v {
        let (l, r) = if swap { (s, e.v) } else { (e.v, s) };
        let (mut val, keep) = scalar_op(op, l, r)?;
        if is_comparison(op) {
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            } else {
                // The vector's value passes through.
                val = e.v;
            }
        }
        let drop_name = e.drop_name || !is_comparison(op) || return_bool;
        out.push(El {
            v: val,
            ts: if is_comparison(op) && !return_bool {
                e.ts
            } else {
                t
            },
            drop_name,
            ..e
        });
    }
    Ok(out)
}

fn signature(l: &Labels, matching: &Option<LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(ls)) => l
            .iter()
            .filter(|(k, _)| ls.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(ls)) => l
            .iter()
            .filter(|(k, _)| !ls.labels.contains(k) && k.as_str() != "__name__")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => without_name(l),
    }
}

fn set_op(op: &str, l: Vec<El>, r: Vec<El>, matching: &Option<LabelModifier>) -> Vec<El> {
    let rsigs: std::collections::HashSet<Labels> =
        r.iter().map(|e| signature(&e.labels, matching)).collect();
    match op {
        "and" => l
            .into_iter()
            .filter(|e| rsigs.contains(&signature(&e.labels, matching)))
            .collect(),
        "unless" => l
            .into_iter()
            .filter(|e| !rsigs.contains(&signature(&e.labels, matching)))
            .collect(),
        _ => {
            let lsigs: std::collections::HashSet<Labels> =
                l.iter().map(|e| signature(&e.labels, matching)).collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|e| !lsigs.contains(&signature(&e.labels, matching))),
            );
            out
        }
    }
}

fn vector_vector(
    op: &str,
    l: Vec<El>,
    r: Vec<El>,
    card: &VectorMatchCardinality,
    matching: &Option<LabelModifier>,
    return_bool: bool,
    t: i64,
) -> R<Vec<El>> {
    let (one_to_many, include) = match card {
        VectorMatchCardinality::OneToMany(ls) => (true, ls.labels.clone()),
        VectorMatchCardinality::ManyToOne(ls) => (false, ls.labels.clone()),
        VectorMatchCardinality::ManyToMany => {
            return err("many-to-many only allowed for set operators");
        }
        VectorMatchCardinality::OneToOne => (false, Vec::new()),
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    // The "one" side is indexed; for group_right it is the left side.
    let (many, one) = if one_to_many { (r, l) } else { (l, r) };
    let mut index: HashMap<Labels, El> = HashMap::new();
    for e in one {
        let sig = signature(&e.labels, matching);
        if let Some(prev) = index.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            let mut pair = [go_labels(&prev.labels), go_labels(&e.labels)];
            pair.sort();
            return err(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                go_labels(&sig),
                pair[0],
                pair[1]
            ));
        }
        index.insert(sig, e);
    }
    let mut out = Vec::new();
    let mut seen: HashMap<(Labels, Labels), ()> = HashMap::new();
    let mut matched_one: HashMap<Labels, usize> = HashMap::new();
    for m in many {
        let sig = signature(&m.labels, matching);
        let Some(o) = index.get(&sig) else { continue };
        let (lv, rv) = if one_to_many { (o.v, m.v) } else { (m.v, o.v) };
        // Result labels: the "many" side's, with the one-to-one matching
        // applied and the group_x labels copied from the "one" side.
        let mut labels = Labels::clone(&m.labels);
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(ls)) => labels.retain(|k, _| ls.labels.contains(k)),
                Some(LabelModifier::Exclude(ls)) => labels.retain(|k, _| !ls.labels.contains(k)),
                None => {}
            }
        }
        for ln in &include {
            match o.labels.get(ln) {
                Some(v) if !v.is_empty() => {
                    labels.insert(ln.clone(), v.clone());
                }
                _ => {
                    labels.remove(ln);
                }
            }
        }
        // Duplicates are errors whether or not a comparison keeps them.
        if one_to_one {
            *matched_one.entry(sig.clone()).or_default() += 1;
            if matched_one[&sig] > 1 {
                return err(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                );
            }
        } else if seen.insert((sig.clone(), labels.clone()), ()).is_some() {
            return err("multiple matches for labels: grouping labels must ensure unique matches");
        }
        let (mut val, keep) = scalar_op(op, lv, rv)?;
        if is_comparison(op) {
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            } else {
                val = lv;
            }
        }
        let drop_name = m.drop_name || !is_comparison(op) || return_bool;
        out.push(El {
            labels: Arc::new(labels),
            v: val,
            ts: t,
            drop_name,
        });
    }
    Ok(out)
}

/// Group classic-histogram buckets (`le` labels) by series without `le`,
/// and compute one value per group.
fn classic_histograms(v: Vec<El>, t: i64, f: impl Fn(&mut Vec<(f64, f64)>) -> f64) -> Vec<El> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for e in v {
        let Some(le) = e.labels.get("le") else {
            continue;
        };
        let Ok(upper) = parse_le(le) else { continue };
        let mut key = Labels::clone(&e.labels);
        key.remove("le");
        groups.entry(key).or_default().push((upper, e.v));
    }
    groups
        .into_iter()
        .map(|(labels, mut buckets)| {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            El {
                labels: Arc::new(labels),
                v: f(&mut buckets),
                ts: t,
                drop_name: true,
            }
        })
        .collect()
}

fn coalesce(buckets: &mut Vec<(f64, f64)>) {
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for &(u, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == u => last.1 += c,
            _ => merged.push((u, c)),
        }
    }
    *buckets = merged;
}

/// Prometheus's `BucketFraction`: the share of observations between
/// `lower` and `upper`, interpolating linearly inside buckets.
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    coalesce(buckets);
    let count = buckets[buckets.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if buckets[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, &(upper_bound, bcount)) in buckets.iter().enumerate() {
        if i > 0 {
            lower_bound = buckets[i - 1].0;
        }
        let interpolate = |v: f64, rank: f64| {
            if lower_bound == f64::NEG_INFINITY {
                bcount
            } else {
                rank + (bcount - rank) * (v - lower_bound) / (upper_bound - lower_bound)
            }
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower, rank);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper, rank);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = bcount;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

fn parse_le(s: &str) -> Result<f64, ()> {
    match s.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        other => other.parse().map_err(|_| ()),
    }
}

/// Prometheus's classic-bucket quantile (buckets sorted by upper bound).
fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if buckets.is_empty() || buckets.last().is_some_and(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Merge buckets with the same upper bound, then force monotonicity.
    coalesce(buckets);
    let mut max = f64::NEG_INFINITY;
    for b in buckets.iter_mut() {
        if b.1 < max {
            b.1 = max;
        } else {
            max = b.1;
        }
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets.partition_point(|x| x.1 < rank);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(m) => &m.vs,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut dup = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if !seen.insert(m.name.clone()) {
            dup.insert(m.name.clone());
        }
        if m.op == MatchOp::Equal && m.name != "__name__" {
            out.insert(m.name.clone(), m.value.clone());
        }
    }
    for d in dup {
        out.remove(&d);
    }
    out
}

/// Set (or, to an empty value, remove) a label; a name set this way is
/// kept whatever an earlier operation marked.
fn set_label(e: &mut El, name: &str, value: String) {
    if value.is_empty() {
        Arc::make_mut(&mut e.labels).remove(name);
    } else {
        Arc::make_mut(&mut e.labels).insert(name.to_string(), value);
    }
    if name == "__name__" {
        e.drop_name = false;
    }
}

/// Any UTF-8 name but the empty one (Prometheus 3); a `\xff` escape in
/// the query decodes to a replacement character, which is refused.
fn is_valid_label_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('\u{FFFD}')
}

/// How `count_values` prints a value (Go's `strconv.FormatFloat(v, 'f', -1, 64)`).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn date_part(name: &str, secs: f64) -> f64 {
    if secs.is_nan() || secs.is_infinite() {
        return f64::NAN;
    }
    let s = secs.floor() as i64;
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match name {
        "minute" => ((sod / 60) % 60) as f64,
        "hour" => (sod / 3600) as f64,
        "day_of_week" => ((days + 4).rem_euclid(7)) as f64,
        "day_of_month" => d as f64,
        "day_of_year" => {
            let jan1 = days_from_civil(y, 1, 1);
            (days - jan1 + 1) as f64
        }
        "days_in_month" => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as f64
        }
        "month" => m as f64,
        "year" => y as f64,
        _ => f64::NAN,
    }
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// http_requests{job, instance}: a counter rising 10 per minute
    /// (instance 1) and 20 per minute (instance 2), for 10 minutes.
    fn storage() -> Storage {
        let mut s = Storage::new();
        for i in 0..=10 {
            for (inst, per) in [("1", 10.0), ("2", 20.0)] {
                s.append(
                    labels(&[
                        ("__name__", "http_requests"),
                        ("job", "api"),
                        ("instance", inst),
                    ]),
                    i * 60_000,
                    per * i as f64,
                );
            }
        }
        s
    }

    fn vector(v: Value) -> Vec<(Labels, f64)> {
        match v {
            Value::Vector(s) => s.into_iter().map(|s| (s.labels, s.v)).collect(),
            other => panic!("not a vector: {other:?}"),
        }
    }

    #[test]
    fn rate_sums_and_arithmetic() {
        let s = storage();
        let e = Engine::default();
        let v = vector(
            e.instant(&s, "sum(rate(http_requests[5m]))", 600_000)
                .unwrap(),
        );
        assert_eq!(v.len(), 1);
        assert!((v[0].1 - 0.5).abs() < 1e-9, "{v:?}");
        assert!(v[0].0.is_empty());
        let v = vector(
            e.instant(
                &s,
                "http_requests / on(job, instance) http_requests",
                600_000,
            )
            .unwrap(),
        );
        assert_eq!(v.len(), 2);
        assert!(
            v.iter()
                .all(|(l, x)| *x == 1.0 && !l.contains_key("__name__"))
        );
        let v = vector(e.instant(&s, "http_requests > 150", 600_000).unwrap());
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].0["__name__"], "http_requests",
            "a filter keeps the name"
        );
        assert_eq!(e.instant(&s, "1 + 2 * 3", 0).unwrap(), Value::Scalar(7.0));
    }

    #[test]
    fn lookback_staleness_and_errors() {
        let mut s = storage();
        let e = Engine::default();
        // Nothing within 5 minutes of t = 20m.
        assert!(vector(e.instant(&s, "http_requests", 1_200_000).unwrap()).is_empty());
        s.append(
            labels(&[
                ("__name__", "http_requests"),
                ("job", "api"),
                ("instance", "1"),
            ]),
            660_000,
            crate::storage::stale_nan(),
        );
        assert_eq!(
            vector(e.instant(&s, "http_requests", 700_000).unwrap()).len(),
            1
        );
        assert!(matches!(e.instant(&s, "sum(", 0), Err(EvalError::Parse(_))));
    }

    #[test]
    fn range_queries_give_a_point_per_step() {
        let s = storage();
        let e = Engine::default();
        let Value::Matrix(m) = e
            .range(&s, "sum by (job) (http_requests)", 0, 120_000, 60_000)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].points, vec![(0, 0.0), (60_000, 30.0), (120_000, 60.0)]);
    }
}
