//! The daemon's own metrics, kept as time series and queried with PromQL
//! (`/api/v1/query`, `/api/v1/query_range`). First step of the embedded
//! store: the daemon scrapes its own `/metrics` every `scrape_interval`
//! into memory and keeps `retention` of it; nothing is on disk yet.

use ferry_metrics::exposition::{Exposition, Metadata};
use ferry_metrics::storage::{Labels, stale_nan};
use ferry_metrics::{Engine, EvalError, Storage, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Samples as they are stored: (series, ms, value).
pub type Batch = Vec<(Labels, i64, f64)>;

/// A consumer of every stored sample (remote write): a bounded queue that
/// never blocks ingestion; what does not fit is dropped and counted.
pub struct Subscription {
    pub rx: tokio::sync::mpsc::Receiver<Arc<Batch>>,
    /// Samples dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// One subscription's sending side and its count of dropped samples.
type Subscriber = (tokio::sync::mpsc::Sender<Arc<Batch>>, Arc<AtomicU64>);

/// How long samples are kept in memory by default.
pub const DEFAULT_RETENTION_MS: i64 = 6 * 3600 * 1000;

pub struct MetricsDb {
    storage: RwLock<Storage>,
    engine: Engine,
    retention_ms: i64,
    /// Per target, the series of its last scrape: one missing from the
    /// next gets a stale marker, as Prometheus writes.
    last: Mutex<BTreeMap<String, BTreeSet<Labels>>>,
    /// Per target, each family's type and help, from its last scrape.
    metadata: Mutex<BTreeMap<String, BTreeMap<String, Metadata>>>,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl MetricsDb {
    pub fn new(retention_ms: i64) -> MetricsDb {
        MetricsDb {
            storage: RwLock::new(Storage::new()),
            engine: Engine::default(),
            retention_ms,
            last: Mutex::new(BTreeMap::new()),
            metadata: Mutex::new(Default::default()),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Store the daemon's own scrape taken at `now` (ms), as target "ferry".
    pub fn ingest(&self, scrape: &Exposition, now: i64) {
        let samples = scrape
            .samples
            .iter()
            .map(|s| (s.labels.clone(), s.timestamp_ms.unwrap_or(now), s.value))
            .collect();
        self.ingest_target("ferry", samples, scrape.metadata.clone(), now);
    }

    /// Store one scrape of `target` (any stable key, e.g. its URL) taken at
    /// `now` (ms): every sample (labels final, target labels included), a
    /// stale marker for each series the target's previous scrape had and
    /// this one lacks, and the families' metadata. A target that is gone
    /// for good gets `ingest_target(key, vec![], BTreeMap::new(), now)` once,
    /// which ends all its series.
    pub fn ingest_target(
        &self,
        target: &str,
        samples: Batch,
        metadata: BTreeMap<String, Metadata>,
        now: i64,
    ) {
        let seen: BTreeSet<Labels> = samples.iter().map(|s| s.0.clone()).collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = samples;
        if let Some(before) = last.get(target) {
            for gone in before.difference(&seen) {
                batch.push((gone.clone(), now, stale_nan()));
            }
        }
        {
            let mut storage = self.storage.write().unwrap_or_else(|p| p.into_inner());
            for (labels, t, v) in &batch {
                storage.append(labels.clone(), *t, *v);
            }
            storage.drop_before(now - self.retention_ms);
        }
        if seen.is_empty() {
            last.remove(target);
        } else {
            last.insert(target.to_string(), seen);
        }
        let mut meta = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
        if metadata.is_empty() {
            meta.remove(target);
        } else {
            meta.insert(target.to_string(), metadata);
        }
        drop(meta);
        drop(last);
        self.publish(batch);
    }

    /// Hand a stored batch to every subscriber, never waiting.
    fn publish(&self, batch: Batch) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if subs.is_empty() || batch.is_empty() {
            return;
        }
        subs.retain(|(tx, _)| !tx.is_closed());
        let batch = Arc::new(batch);
        for (tx, dropped) in subs.iter() {
            if tx.try_send(batch.clone()).is_err() {
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Every batch stored from now on, through a queue of `capacity` batches.
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((tx, dropped.clone()));
        Subscription { rx, dropped }
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

    /// Each family's type and help, over every target (the first target,
    /// in key order, wins a family two of them report).
    pub fn metadata(&self) -> BTreeMap<String, Metadata> {
        let meta = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for families in meta.values() {
            for (name, m) in families {
                out.entry(name.clone()).or_insert_with(|| m.clone());
            }
        }
        out
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
