//! The daemon's metrics store: every scrape is written to the on-disk
//! time-series store in `<data-dir>/metrics` ([`ferry_metrics::db`]) and
//! queried with PromQL (`/api/v1/query`, `/api/v1/query_range`, `ferry
//! query`, analysis). This layer adds what Prometheus's scrape loop adds
//! on top of storage: stale markers for series a target stopped
//! reporting, per-target metadata, and a feed for remote write.

use ferry_metrics::db::{Db, DbError, Options};
use ferry_metrics::exposition::Metadata;
use ferry_metrics::storage::Source;
use ferry_metrics::storage::{Labels, stale_nan};
use ferry_metrics::{Engine, EvalError, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Samples as they are stored: (series, ms, value).
pub type Batch = Vec<(Arc<Labels>, i64, f64)>;

/// A consumer of every stored sample (remote write): a bounded queue that
/// never blocks ingestion; what does not fit is dropped and counted.
pub struct Subscription {
    pub rx: tokio::sync::mpsc::Receiver<Arc<Batch>>,
    /// Samples dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// Settings of the store and its queries (`ferry serve --metrics-*`,
/// `--query-*`).
#[derive(Debug, Clone)]
pub struct TsdbOptions {
    /// How long samples are kept (default 15 days).
    pub retention: std::time::Duration,
    /// Most bytes on disk before the oldest blocks go (0: no limit).
    pub retention_bytes: u64,
    /// Most samples one query may load.
    pub query_max_samples: usize,
    /// Longest one query may run.
    pub query_timeout: std::time::Duration,
}

impl Default for TsdbOptions {
    fn default() -> Self {
        let engine = Engine::default();
        TsdbOptions {
            retention: std::time::Duration::from_millis(Options::default().retention_ms as u64),
            retention_bytes: 0,
            query_max_samples: engine.max_samples,
            query_timeout: engine.timeout,
        }
    }
}

/// The store as a query reads it: locked only while one selector loads
/// its series, not while the query computes, so scrapes go on.
struct Locked<'a>(&'a RwLock<Db>);

impl Locked<'_> {
    fn db(&self) -> std::sync::RwLockReadGuard<'_, Db> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for Locked<'_> {
    fn select(
        &self,
        matchers: &ferry_metrics::storage::Matchers,
        mint: i64,
        maxt: i64,
    ) -> Result<ferry_metrics::storage::Selected, String> {
        let db = self.db();
        Source::select(&*db, matchers, mint, maxt)
    }

    fn series(
        &self,
        matchers: &ferry_metrics::storage::Matchers,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, String> {
        let db = self.db();
        Source::series(&*db, matchers, mint, maxt)
    }

    fn select_series(
        &self,
        series: &[Labels],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, String> {
        let db = self.db();
        Source::select_series(&*db, series, mint, maxt)
    }
}

/// The store's ids of the series a target's last scrape had.
type SeenIds = HashSet<u32, foldhash::fast::RandomState>;

/// A subscription's sending side and its drop counter.
type Subscriber = (tokio::sync::mpsc::Sender<Arc<Batch>>, Arc<AtomicU64>);

pub struct MetricsDb {
    storage: RwLock<Db>,
    engine: Engine,
    /// Per target, the series of its last scrape: one missing from the
    /// next gets a stale marker, as Prometheus writes.
    last: Mutex<BTreeMap<String, SeenIds>>,
    /// Per target, each family's type and help, from its last scrape.
    metadata: Mutex<BTreeMap<String, BTreeMap<String, Metadata>>>,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl MetricsDb {
    /// Open the store in `dir` (created if missing), replaying its log.
    pub fn open(dir: &Path, opts: &TsdbOptions) -> Result<MetricsDb, DbError> {
        let db = Db::open(
            dir,
            Options {
                retention_ms: opts.retention.as_millis() as i64,
                retention_bytes: opts.retention_bytes,
                ..Options::default()
            },
        )?;
        Ok(MetricsDb {
            storage: RwLock::new(db),
            engine: Engine {
                max_samples: opts.query_max_samples,
                timeout: opts.query_timeout,
                ..Engine::default()
            },
            last: Mutex::new(BTreeMap::new()),
            metadata: Mutex::new(Default::default()),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    /// Store one scrape of `target` (any stable key, e.g. its URL) taken at
    /// `now` (ms): every sample (labels final, target labels included; a
    /// sample without a timestamp of its own has time `now`), a stale
    /// marker for each series the target's previous scrape had at `now`
    /// and this one lacks, and the families' metadata. A target that is gone
    /// for good gets `ingest_target(key, vec![], BTreeMap::new(), now)` once,
    /// which ends all its series.
    pub fn ingest_target(
        &self,
        target: &str,
        samples: Batch,
        metadata: BTreeMap<String, Metadata>,
        now: i64,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = samples;
        {
            let mut storage = self.write();
            let mut ids = Vec::new();
            if let Err(e) = storage.append_ids(&batch, &mut ids) {
                tracing::error!("{e}; this scrape of {target} is not stored");
            }
            // Series are tracked by the store's ids, not by copies of
            // their labels. As in Prometheus (without
            // `track_timestamps_staleness`), a sample that carries its own
            // timestamp (one other than the scrape's) is not tracked: its
            // series gets no stale marker when it goes missing.
            let seen: SeenIds = batch
                .iter()
                .zip(&ids)
                .filter(|(s, id)| s.1 == now && **id != u32::MAX)
                .map(|(_, id)| *id)
                .collect();
            let mut stale: Batch = Vec::new();
            if let Some(before) = last.get(target) {
                for gone in before.difference(&seen) {
                    if let Some(labels) = storage.labels_of(*gone) {
                        stale.push((labels, now, stale_nan()));
                    }
                }
            }
            if !stale.is_empty() {
                if let Err(e) = storage.append(&stale) {
                    tracing::error!("{e}; stale markers of {target} are not stored");
                }
                batch.extend(stale);
            }
            if seen.is_empty() {
                last.remove(target);
            } else {
                last.insert(target.to_string(), seen);
            }
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

    /// Cut finished periods into blocks, apply the retention, then merge
    /// blocks; a merge is written without holding the store's lock, so
    /// scrapes and queries go on meanwhile. Called every few seconds from
    /// a blocking thread.
    pub fn maintain(&self, now: i64) {
        if let Err(e) = self.write().maintain_head(now) {
            tracing::error!("{e}; retrying in a few seconds");
            return;
        }
        loop {
            let (plan, dir) = {
                let db = self.read();
                (db.plan_merge(), db.blocks_dir())
            };
            let Some(plan) = plan else { return };
            let merged = ferry_metrics::db::run_merge(&dir, &plan)
                .and_then(|path| self.write().apply_merge(&plan, path));
            if let Err(e) = merged {
                tracing::error!("{e}; merging blocks again in a few seconds");
                return;
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Db> {
        self.storage.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Db> {
        self.storage.write().unwrap_or_else(|p| p.into_inner())
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
        self.engine.instant(&Locked(&self.storage), query, t)
    }

    pub fn range(&self, query: &str, start: i64, end: i64, step: i64) -> Result<Value, EvalError> {
        self.engine
            .range(&Locked(&self.storage), query, start, end, step)
    }

    /// Series matching any of `selectors` (all series when there are
    /// none) with samples in `(start, end]`.
    pub fn series(
        &self,
        selectors: &[String],
        start: i64,
        end: i64,
    ) -> Result<BTreeSet<Labels>, EvalError> {
        let storage = self.read();
        if selectors.is_empty() {
            return Ok(storage
                .series(None, &|_| true, start, end)
                .into_iter()
                .map(|l| Labels::clone(&l))
                .collect());
        }
        let mut out = BTreeSet::new();
        for s in selectors {
            out.extend(self.engine.series(&*storage, s, start, end)?);
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

    /// The earliest time (ms) a sample may still be stored at (retention
    /// removes older ones); `None` while the store is empty.
    pub fn oldest(&self) -> Option<i64> {
        self.read().oldest()
    }

    /// Flush the log (at shutdown).
    pub fn sync(&self) {
        if let Err(e) = self
            .storage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sync()
        {
            tracing::warn!("{e}");
        }
    }
}
