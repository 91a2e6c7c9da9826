//! The daemon's own metrics, kept as time series and queried with PromQL
//! (`/api/v1/query`, `/api/v1/query_range`). First step of the embedded
//! store: the daemon scrapes its own `/metrics` every `scrape_interval`
//! into memory and keeps `retention` of it; nothing is on disk yet.

use ferry_metrics::exposition::{Exposition, Metadata};
use ferry_metrics::storage::{Labels, stale_nan};
use ferry_metrics::{Engine, EvalError, Storage, Value};
use std::collections::BTreeSet;
use std::sync::{Mutex, RwLock};

/// How long samples are kept in memory by default.
pub const DEFAULT_RETENTION_MS: i64 = 6 * 3600 * 1000;

pub struct MetricsDb {
    storage: RwLock<Storage>,
    engine: Engine,
    retention_ms: i64,
    /// The series of the last scrape: one missing from the next gets a
    /// stale marker, as Prometheus writes.
    last: Mutex<BTreeSet<Labels>>,
    /// Each family's type and help, from the last scrape.
    metadata: Mutex<std::collections::BTreeMap<String, Metadata>>,
}

impl MetricsDb {
    pub fn new(retention_ms: i64) -> MetricsDb {
        MetricsDb {
            storage: RwLock::new(Storage::new()),
            engine: Engine::default(),
            retention_ms,
            last: Mutex::new(BTreeSet::new()),
            metadata: Mutex::new(Default::default()),
        }
    }

    /// Store one scrape taken at `now` (ms).
    pub fn ingest(&self, scrape: &Exposition, now: i64) {
        let seen: BTreeSet<Labels> = scrape.samples.iter().map(|s| s.labels.clone()).collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut storage = self.storage.write().unwrap_or_else(|p| p.into_inner());
        for s in &scrape.samples {
            storage.append(s.labels.clone(), s.timestamp_ms.unwrap_or(now), s.value);
        }
        for gone in last.difference(&seen) {
            storage.append(gone.clone(), now, stale_nan());
        }
        *last = seen;
        *self.metadata.lock().unwrap_or_else(|p| p.into_inner()) = scrape.metadata.clone();
        storage.drop_before(now - self.retention_ms);
    }

    pub fn instant(&self, query: &str, t: i64) -> Result<Value, EvalError> {
        let storage = self.storage.read().unwrap_or_else(|p| p.into_inner());
        self.engine.instant(&storage, query, t)
    }

    pub fn range(&self, query: &str, start: i64, end: i64, step: i64) -> Result<Value, EvalError> {
        let storage = self.storage.read().unwrap_or_else(|p| p.into_inner());
        self.engine.range(&storage, query, start, end, step)
    }

    /// Series matching any of `selectors` (all series when there are
    /// none) with samples in `(start, end]`.
    pub fn series(
        &self,
        selectors: &[String],
        start: i64,
        end: i64,
    ) -> Result<BTreeSet<Labels>, EvalError> {
        let storage = self.storage.read().unwrap_or_else(|p| p.into_inner());
        if selectors.is_empty() {
            return Ok(storage
                .select(|_| true, start, end)
                .map(|(l, _)| l.clone())
                .collect());
        }
        let mut out = BTreeSet::new();
        for s in selectors {
            out.extend(self.engine.series(&storage, s, start, end)?);
        }
        Ok(out)
    }

    pub fn metadata(&self) -> std::collections::BTreeMap<String, Metadata> {
        self.metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn series_count(&self) -> usize {
        self.storage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .series_count()
    }
}

impl Default for MetricsDb {
    fn default() -> Self {
        MetricsDb::new(DEFAULT_RETENTION_MS)
    }
}
