//! Series and their samples, in memory.

use std::collections::BTreeMap;

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

    /// Forget samples older than `t` (ms), and series left with none.
    pub fn drop_before(&mut self, t: i64) {
        self.series.retain(|_, points| {
            let keep_from = points.partition_point(|p| p.0 < t);
            points.drain(..keep_from);
            !points.is_empty()
        });
    }

    /// Every series' labels.
    pub fn labels(&self) -> impl Iterator<Item = &Labels> {
        self.series.keys()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}
