//! Series and their samples, in memory.

use promql_parser::label::MatchOp;
pub use promql_parser::label::Matchers;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Series with their samples, as a selection returns them (label sets
/// shared, as the store holds them).
pub type Selected = Vec<(Arc<Labels>, Vec<(i64, f64)>)>;

/// Where the evaluator reads series from: the in-memory [`Storage`] of
/// test scripts, or the on-disk [`crate::db::Db`].
pub trait Source {
    /// Series that `matchers` match and that have samples in
    /// `(mint, maxt]`, with those samples (stale markers included),
    /// oldest first, sorted by labels.
    fn select(&self, matchers: &Matchers, mint: i64, maxt: i64) -> Result<Selected, String>;

    /// The label sets `select` would return, without their samples.
    fn series(&self, matchers: &Matchers, mint: i64, maxt: i64) -> Result<Vec<Labels>, String> {
        Ok(self
            .select(matchers, mint, maxt)?
            .into_iter()
            .map(|(l, _)| Arc::unwrap_or_clone(l))
            .collect())
    }

    /// The samples in `(mint, maxt]` of each of `series`, in that order
    /// (empty for one without samples there): lets a query read a few
    /// series at a time instead of all at once.
    fn select_series(
        &self,
        series: &[Labels],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, String>;
}

/// Whether a series' labels satisfy a selector's matchers.
pub fn matches(matchers: &Matchers, labels: &Labels) -> bool {
    let one = |m: &promql_parser::label::Matcher| {
        let v = labels.get(&m.name).map(String::as_str).unwrap_or("");
        m.is_match(v)
    };
    if !matchers.or_matchers.is_empty() {
        return matchers
            .or_matchers
            .iter()
            .any(|group| group.iter().all(one));
    }
    matchers.matchers.iter().all(one)
}

/// The metric name a selector requires, when it requires exactly one.
pub fn required_name(matchers: &Matchers) -> Option<&str> {
    if !matchers.or_matchers.is_empty() {
        return None;
    }
    matchers
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
        .map(|m| m.value.as_str())
}

impl Source for Storage {
    fn select(&self, matchers: &Matchers, mint: i64, maxt: i64) -> Result<Selected, String> {
        Ok(Storage::select(self, |l| matches(matchers, l), mint, maxt)
            .map(|(l, p)| (Arc::new(l.clone()), p.to_vec()))
            .collect())
    }

    fn select_series(
        &self,
        series: &[Labels],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, String> {
        Ok(series
            .iter()
            .map(|labels| {
                let points = self.series.get(labels).map_or(&[][..], Vec::as_slice);
                let a = points.partition_point(|p| p.0 <= mint);
                let b = points.partition_point(|p| p.0 <= maxt);
                points[a..b.max(a)].to_vec()
            })
            .collect())
    }
}

impl Source for crate::db::Db {
    fn select(&self, matchers: &Matchers, mint: i64, maxt: i64) -> Result<Selected, String> {
        crate::db::Db::select(
            self,
            required_name(matchers),
            &|l| matches(matchers, l),
            mint,
            maxt,
        )
        .map_err(|e| e.to_string())
    }

    fn select_series(
        &self,
        series: &[Labels],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, String> {
        crate::db::Db::select_series(self, series, mint, maxt).map_err(|e| e.to_string())
    }

    fn series(&self, matchers: &Matchers, mint: i64, maxt: i64) -> Result<Vec<Labels>, String> {
        Ok(crate::db::Db::series(
            self,
            required_name(matchers),
            &|l| matches(matchers, l),
            mint,
            maxt,
        )
        .into_iter()
        .map(|l| Labels::clone(&l))
        .collect())
    }
}

/// A series' identity: label name to value, `__name__` included, sorted.
pub type Labels = BTreeMap<String, String>;

/// Prometheus's stale marker: a NaN with this exact bit pattern ends a
/// series (it is not a value).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// `name{a="b", c="d"}`, as Prometheus prints a series.
pub fn format_labels(labels: &Labels) -> String {
    let name = labels.get("__name__").map(String::as_str).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// Every series and its samples (milliseconds, value), oldest first.
#[derive(Debug, Default, Clone)]
pub struct Storage {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
}

impl Storage {
    pub fn new() -> Storage {
        Storage::default()
    }

    /// Add a sample; samples of a series are kept in time order (a sample
    /// at a time already present replaces it).
    pub fn append(&mut self, labels: Labels, t: i64, v: f64) {
        let points = self.series.entry(labels).or_default();
        match points.last() {
            Some(&(last, _)) if last < t => points.push((t, v)),
            None => points.push((t, v)),
            _ => match points.binary_search_by_key(&t, |p| p.0) {
                Ok(i) => points[i] = (t, v),
                Err(i) => points.insert(i, (t, v)),
            },
        }
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// Series whose labels satisfy `keep`, with their samples in
    /// `(mint, maxt]` (stale markers included).
    pub fn select<'a>(
        &'a self,
        keep: impl Fn(&Labels) -> bool + 'a,
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = (&'a Labels, &'a [(i64, f64)])> + 'a {
        self.series
            .iter()
            .filter(move |(l, _)| keep(l))
            .filter_map(move |(l, points)| {
                let start = points.partition_point(|p| p.0 <= mint);
                let end = points.partition_point(|p| p.0 <= maxt);
                (start < end).then(|| (l, &points[start..end]))
            })
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}
