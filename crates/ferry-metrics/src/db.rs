//! The on-disk time-series store: a write-ahead log ([`crate::wal`]), an
//! in-memory head of compressed chunks for the newest samples, and
//! immutable block files ([`crate::block`]) for everything older.
//!
//! - Appends are checked (a series' samples must be newer than its last
//!   one, and newer than what blocks already hold), written to the log,
//!   then added to the head's open chunk.
//! - Every `block` period (10 minutes by default) [`Db::maintain`] writes
//!   the head's chunks of a finished period to a block, drops them from
//!   memory, and replaces the log with a checkpoint of what the head still
//!   holds. Memory per series is bounded by one period of compressed
//!   samples.
//! - Blocks are merged into larger ones (6, 36 and 216 periods, capped at
//!   a tenth of the retention), their chunks re-encoded to full size.
//! - Blocks older than the retention are deleted, oldest first also while
//!   the store is over its size limit.
//!
//! The directory holds `wal/` and `blocks/`; nothing else is needed to
//! reopen it.

use crate::block::{self, Block, ChunkData};
use crate::chunk::{ChunkBuilder, Decoder, MAX_SAMPLES};
use crate::codec::{Reader, put_labels, put_uvarint, put_varint};
use crate::storage::{Labels, Selected};
use crate::wal::Wal;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Maps keyed by label sets and ids, hashed fast (the keys are not
/// attacker-chosen in a way that matters: a target can only slow its own
/// scrape).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

const SERIES: u8 = 1;
const SAMPLES: u8 = 2;
const CHUNK: u8 = 3;

#[derive(Debug, Clone)]
pub struct Options {
    /// The head's period: how much of the newest data is in memory, and
    /// the smallest block (ms).
    pub block_ms: i64,
    /// Blocks wholly older than this are deleted (ms).
    pub retention_ms: i64,
    /// When blocks and log together exceed this many bytes the oldest
    /// blocks are deleted (0: no limit).
    pub retention_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_ms: 10 * 60_000,
            retention_ms: 15 * 24 * 3_600_000,
            retention_bytes: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("metrics store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct HeadSeries {
    labels: Arc<Labels>,
    /// Closed chunks not yet written to a block, oldest first.
    closed: Vec<ChunkData>,
    open: ChunkBuilder,
    /// The newest sample's time and value bits (`i64::MIN`: none yet).
    last_t: i64,
    last_bits: u64,
}

impl HeadSeries {
    /// The samples in `(mint, maxt]` of the chunks still in memory.
    fn samples(&self, mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) {
        for c in &self.closed {
            if c.maxt > mint && c.mint <= maxt {
                crate::chunk::decode_into(&c.bytes, mint, maxt, out);
            }
        }
        if !self.open.is_empty() && self.open.mint() <= maxt {
            crate::chunk::decode_into(&self.open.bytes(), mint, maxt, out);
        }
    }
}

/// What one append did with its samples.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub accepted: usize,
    /// Samples not newer than their series' last one (or than the
    /// blocks), which are dropped as Prometheus drops them.
    pub out_of_order: usize,
}

/// Per block start, the series and chunks going into it.
type Cut = std::collections::BTreeMap<i64, Vec<(Arc<Labels>, Vec<ChunkData>)>>;

pub struct Db {
    dir: PathBuf,
    opts: Options,
    head: FastMap<u32, HeadSeries>,
    ids: FastMap<Arc<Labels>, u32>,
    /// Ids by the address of the head's own `Arc` of their labels: a
    /// caller that appends with that `Arc` (a scrape cache does) skips
    /// hashing the labels. Valid because the head holds the `Arc` for as
    /// long as the entry exists.
    by_ptr: FastMap<usize, u32>,
    head_by_name: FastMap<String, Vec<u32>>,
    next_id: u32,
    /// Blocks in time order; ranges do not overlap.
    blocks: Vec<Arc<Block>>,
    /// Label sets blocks refer to, shared with the head.
    interned: FastSet<Arc<Labels>>,
    wal: Wal,
    /// Samples older than this belong to blocks and are refused.
    head_mint: i64,
}

/// XOR of two values' bits, as stored in the log: a byte with the
/// leading and trailing zero-byte counts, then the bytes between.
fn put_xor(out: &mut Vec<u8>, xor: u64) {
    let bytes = xor.to_be_bytes();
    let lead = bytes.iter().take_while(|b| **b == 0).count().min(8);
    let trail = if lead == 8 {
        0
    } else {
        bytes.iter().rev().take_while(|b| **b == 0).count()
    };
    out.push(((lead as u8) << 4) | trail as u8);
    out.extend_from_slice(&bytes[lead..8 - trail.min(8 - lead)]);
}

fn read_xor(r: &mut Reader) -> Result<u64, crate::codec::Malformed> {
    let at = r.pos;
    let h = r.u8()?;
    let (lead, trail) = ((h >> 4) as usize, (h & 0xf) as usize);
    if lead + trail > 8 {
        return Err(crate::codec::Malformed(at));
    }
    let mut bytes = [0u8; 8];
    for b in bytes.iter_mut().take(8 - trail).skip(lead) {
        *b = r.u8()?;
    }
    Ok(u64::from_be_bytes(bytes))
}

impl Db {
    /// Open (or create) the store in `dir`: load the blocks' indexes and
    /// replay the log into the head.
    pub fn open(dir: &Path, opts: Options) -> Result<Db, DbError> {
        let blocks_dir = dir.join("blocks");
        block::private_dir(&blocks_dir).map_err(io_err(&blocks_dir))?;
        let mut interned: FastSet<Arc<Labels>> = FastSet::default();
        let mut blocks: Vec<Arc<Block>> = Vec::new();
        for e in fs::read_dir(&blocks_dir).map_err(io_err(&blocks_dir))? {
            let path = e.map_err(io_err(&blocks_dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".block") {
                continue;
            }
            let mut intern = |l: Labels| intern(&mut interned, l);
            match Block::open(&path, &mut intern) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(e) => {
                    // Keep the bytes for inspection, out of the way.
                    tracing::warn!("metrics store: setting aside unreadable block: {e}");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        blocks.sort_by_key(|b| (b.mint, std::cmp::Reverse(b.maxt)));
        // A merge that died before deleting its sources leaves blocks
        // inside a larger one: the larger one has their data.
        let mut kept: Vec<Arc<Block>> = Vec::new();
        for b in blocks {
            if kept.last().is_some_and(|k| b.mint < k.maxt) {
                let _ = fs::remove_file(&b.path);
            } else {
                kept.push(b);
            }
        }
        let head_mint = kept.last().map_or(i64::MIN, |b| b.maxt);
        let wal_dir = dir.join("wal");
        let (wal, replay) = Wal::open(&wal_dir).map_err(io_err(&wal_dir))?;
        if let Some((path, at)) = &replay.truncated_at {
            tracing::warn!(
                "metrics store: write-ahead log {} was cut at byte {at} (a write torn by a crash)",
                path.display()
            );
        }
        let mut db = Db {
            dir: dir.to_path_buf(),
            opts,
            head: FastMap::default(),
            ids: FastMap::default(),
            by_ptr: FastMap::default(),
            head_by_name: FastMap::default(),
            next_id: 0,
            blocks: kept,
            interned,
            wal,
            head_mint,
        };
        for p in &replay.payloads {
            if let Err(e) = db.replay(p) {
                tracing::warn!("metrics store: skipping a damaged log record: {e}");
            }
        }
        Ok(db)
    }

    fn replay(&mut self, p: &[u8]) -> Result<(), crate::codec::Malformed> {
        let mut r = Reader::new(p);
        match r.u8()? {
            SERIES => {
                let id = r.uvarint()? as u32;
                let labels = r.labels()?;
                let last_t = r.varint()?;
                let last_bits = u64::from_le_bytes(r.fixed::<8>()?);
                let labels = intern(&mut self.interned, labels);
                self.insert_series(id, labels, last_t, last_bits);
            }
            CHUNK => {
                let id = r.uvarint()? as u32;
                let open = r.u8()? == 1;
                let mint = r.varint()?;
                let maxt = r.varint()?;
                let bytes = r.bytes()?.to_vec();
                let Some(s) = self.head.get_mut(&id) else {
                    return Ok(());
                };
                if maxt < self.head_mint {
                    return Ok(());
                }
                if open {
                    if let Some(b) = ChunkBuilder::resume(&bytes) {
                        s.open = b;
                    }
                } else {
                    s.closed.push(ChunkData { mint, maxt, bytes });
                }
            }
            SAMPLES => {
                let t_base = r.varint()?;
                let n = r.uvarint()?;
                let mut id = 0i64;
                for _ in 0..n {
                    let (sid, t, bits) = read_entry(&mut r, &mut id, t_base, &self.head)?;
                    let head_mint = self.head_mint;
                    let block_ms = self.opts.block_ms;
                    if let Some(s) = self.head.get_mut(&sid)
                        && t > s.last_t
                    {
                        s.last_t = t;
                        s.last_bits = bits;
                        if t >= head_mint {
                            push_sample(s, t, f64::from_bits(bits), block_ms);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn insert_series(&mut self, id: u32, labels: Arc<Labels>, last_t: i64, last_bits: u64) {
        if let Some(name) = labels.get("__name__") {
            self.head_by_name.entry(name.clone()).or_default().push(id);
        }
        self.ids.insert(labels.clone(), id);
        self.by_ptr.insert(Arc::as_ptr(&labels) as usize, id);
        self.head.insert(
            id,
            HeadSeries {
                labels,
                closed: Vec::new(),
                open: ChunkBuilder::new(),
                last_t,
                last_bits,
            },
        );
        self.next_id = self.next_id.max(id + 1);
    }

    /// Store a batch of samples: log first, then the head. Samples not
    /// newer than their series' last one are dropped and counted.
    pub fn append(&mut self, batch: &[(Arc<Labels>, i64, f64)]) -> Result<Appended, DbError> {
        self.append_ids(batch, &mut Vec::new())
    }

    /// [`Db::append`], also giving each sample's series id in `ids`
    /// (`u32::MAX` for a sample whose new series was not created).
    pub fn append_ids(
        &mut self,
        batch: &[(Arc<Labels>, i64, f64)],
        ids: &mut Vec<u32>,
    ) -> Result<Appended, DbError> {
        ids.clear();
        ids.reserve(batch.len());
        let mut out = Appended::default();
        // Each series' last time and value move as the batch is checked
        // (a series twice in a batch is checked against itself); `undo`
        // puts them back if the log cannot be written.
        let mut undo: Vec<(u32, i64, u64)> = Vec::with_capacity(batch.len());
        let mut created: Vec<u32> = Vec::new();
        let mut accepted: Vec<(u32, i64, f64)> = Vec::with_capacity(batch.len());
        let t_base = batch.first().map_or(0, |s| s.1);
        let mut entries = Vec::with_capacity(batch.len() * 4);
        let mut prev_id = 0i64;
        for (labels, t, v) in batch {
            let known = self
                .by_ptr
                .get(&(Arc::as_ptr(labels) as usize))
                .or_else(|| self.ids.get(&**labels));
            let id = match known {
                Some(&id) => id,
                None => {
                    let id = self.next_id;
                    let labels = intern_arc(&mut self.interned, labels);
                    self.insert_series(id, labels, i64::MIN, 0);
                    created.push(id);
                    id
                }
            };
            ids.push(id);
            let Some(s) = self.head.get_mut(&id) else {
                continue;
            };
            if *t <= s.last_t || *t < self.head_mint {
                out.out_of_order += 1;
                continue;
            }
            undo.push((id, s.last_t, s.last_bits));
            let xor = v.to_bits() ^ s.last_bits;
            s.last_t = *t;
            s.last_bits = v.to_bits();
            let delta = i64::from(id) - prev_id;
            prev_id = i64::from(id);
            let zz = ((delta << 1) ^ (delta >> 63)) as u64;
            let flags = u64::from(*t != t_base) | (u64::from(xor == 0) << 1);
            put_uvarint(&mut entries, (zz << 2) | flags);
            if *t != t_base {
                put_varint(&mut entries, t - t_base);
            }
            if xor != 0 {
                put_xor(&mut entries, xor);
            }
            accepted.push((id, *t, *v));
        }
        // Series whose every sample was refused are not kept.
        let mut kept = Vec::with_capacity(created.len());
        for id in created {
            match self.head.get(&id) {
                Some(s) if s.last_t == i64::MIN => {
                    self.remove_series(id);
                    for x in ids.iter_mut().filter(|x| **x == id) {
                        *x = u32::MAX;
                    }
                }
                _ => kept.push(id),
            }
        }
        if accepted.is_empty() {
            return Ok(out);
        }
        let mut log = Vec::with_capacity(kept.len() + 1);
        for id in &kept {
            let mut rec = vec![SERIES];
            put_uvarint(&mut rec, u64::from(*id));
            put_labels(&mut rec, &self.head[id].labels);
            put_varint(&mut rec, i64::MIN);
            rec.extend_from_slice(&0u64.to_le_bytes());
            log.push(rec);
        }
        let mut rec = Vec::with_capacity(entries.len() + 16);
        rec.push(SAMPLES);
        put_varint(&mut rec, t_base);
        put_uvarint(&mut rec, accepted.len() as u64);
        rec.extend_from_slice(&entries);
        log.push(rec);
        let wal_dir = self.dir.join("wal");
        for rec in &log {
            if let Err(e) = self.wal.append(rec) {
                for (id, t, bits) in undo.into_iter().rev() {
                    if let Some(s) = self.head.get_mut(&id) {
                        s.last_t = t;
                        s.last_bits = bits;
                    }
                }
                for id in kept {
                    self.remove_series(id);
                }
                return Err(io_err(&wal_dir)(e));
            }
        }
        let block_ms = self.opts.block_ms;
        for (id, t, v) in &accepted {
            if let Some(s) = self.head.get_mut(id) {
                push_sample(s, *t, *v, block_ms);
            }
        }
        out.accepted = accepted.len();
        Ok(out)
    }

    fn remove_series(&mut self, id: u32) {
        if let Some(s) = self.head.remove(&id) {
            self.ids.remove(&s.labels);
            self.by_ptr.remove(&(Arc::as_ptr(&s.labels) as usize));
            if let Some(name) = s.labels.get("__name__")
                && let Some(v) = self.head_by_name.get_mut(name)
            {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.head_by_name.remove(name);
                }
            }
        }
    }

    /// Series (label sets) whose metric name is `name` (any, for `None`)
    /// and that `keep` accepts, with their samples in `(mint, maxt]`,
    /// stale markers included, oldest first; series without samples there
    /// are left out. Sorted by labels.
    pub fn select(
        &self,
        name: Option<&str>,
        keep: &dyn Fn(&Labels) -> bool,
        mint: i64,
        maxt: i64,
    ) -> Result<Selected, DbError> {
        let mut found: HashMap<Arc<Labels>, Vec<(i64, f64)>> = HashMap::new();
        for b in &self.blocks {
            if b.maxt <= mint || b.mint > maxt {
                continue;
            }
            for i in b.candidates(name) {
                if !b.overlaps(i, mint, maxt) || !keep(b.labels(i)) {
                    continue;
                }
                let points = found.entry(b.labels(i).clone()).or_default();
                b.samples(i, mint, maxt, points).map_err(io_err(&b.path))?;
            }
        }
        let ids: Box<dyn Iterator<Item = &u32>> = match name {
            Some(n) => Box::new(self.head_by_name.get(n).into_iter().flatten()),
            None => Box::new(self.head.keys()),
        };
        for id in ids {
            let Some(s) = self.head.get(id) else { continue };
            if s.last_t <= mint || !keep(&s.labels) {
                continue;
            }
            s.samples(mint, maxt, found.entry(s.labels.clone()).or_default());
        }
        let mut out: Vec<_> = found.into_iter().filter(|(_, p)| !p.is_empty()).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The samples in `(mint, maxt]` of each of `series` (label sets, e.g.
    /// from [`Db::series`]), in that order; a series without samples there
    /// comes back empty.
    pub fn select_series(
        &self,
        series: &[Labels],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>, DbError> {
        let blocks: Vec<&Arc<Block>> = self
            .blocks
            .iter()
            .filter(|b| b.maxt > mint && b.mint <= maxt)
            .collect();
        let mut out = Vec::with_capacity(series.len());
        for labels in series {
            let mut points = Vec::new();
            for b in &blocks {
                if let Some(i) = b.position(labels)
                    && b.overlaps(i, mint, maxt)
                {
                    b.samples(i, mint, maxt, &mut points)
                        .map_err(io_err(&b.path))?;
                }
            }
            if let Some(s) = self.ids.get(labels).and_then(|id| self.head.get(id))
                && s.last_t > mint
            {
                s.samples(mint, maxt, &mut points);
            }
            out.push(points);
        }
        Ok(out)
    }

    /// The label sets [`Db::select`] would return, without reading any
    /// samples (a series counts when its chunks' span meets the range).
    pub fn series(
        &self,
        name: Option<&str>,
        keep: &dyn Fn(&Labels) -> bool,
        mint: i64,
        maxt: i64,
    ) -> Vec<Arc<Labels>> {
        let mut found: HashSet<Arc<Labels>> = HashSet::new();
        for b in &self.blocks {
            if b.maxt <= mint || b.mint > maxt {
                continue;
            }
            for i in b.candidates(name) {
                if b.overlaps(i, mint, maxt) && keep(b.labels(i)) {
                    found.insert(b.labels(i).clone());
                }
            }
        }
        let ids: Box<dyn Iterator<Item = &u32>> = match name {
            Some(n) => Box::new(self.head_by_name.get(n).into_iter().flatten()),
            None => Box::new(self.head.keys()),
        };
        for id in ids {
            let Some(s) = self.head.get(id) else { continue };
            let first = s.closed.first().map_or(s.open.mint(), |c| c.mint);
            let has = !(s.closed.is_empty() && s.open.is_empty());
            if has && s.last_t > mint && first <= maxt && keep(&s.labels) {
                found.insert(s.labels.clone());
            }
        }
        let mut out: Vec<_> = found.into_iter().collect();
        out.sort();
        out
    }

    /// Write finished periods of the head to blocks, merge blocks, and
    /// apply the retention, as of `now` (ms). Cheap when there is nothing
    /// to do; call it every few seconds.
    pub fn maintain(&mut self, now: i64) -> Result<(), DbError> {
        self.maintain_head(now)?;
        self.compact()
    }

    /// The quick part of [`Db::maintain`]: cut finished periods of the
    /// head into blocks and apply the retention; merges are left to
    /// [`Db::plan_merge`], [`run_merge`] (which needs no lock) and
    /// [`Db::apply_merge`].
    pub fn maintain_head(&mut self, now: i64) -> Result<(), DbError> {
        self.cut(now)?;
        self.retain(now)
    }

    /// The head's id of a series, if it has one.
    pub fn id_of(&self, labels: &Labels) -> Option<u32> {
        self.ids.get(labels).copied()
    }

    /// The labels of the head's series `id`.
    pub fn labels_of(&self, id: u32) -> Option<Arc<Labels>> {
        self.head.get(&id).map(|s| s.labels.clone())
    }

    /// Move every chunk of periods that ended at least half a period ago
    /// into blocks, then checkpoint the log.
    fn cut(&mut self, now: i64) -> Result<(), DbError> {
        let b = self.opts.block_ms;
        let cut_to = (now - b / 2).div_euclid(b) * b;
        if cut_to <= self.head_mint {
            return Ok(());
        }
        let mut by_block: Cut = Default::default();
        for s in self.head.values_mut() {
            if !s.open.is_empty() && s.open.maxt() < cut_to {
                let open = std::mem::replace(&mut s.open, ChunkBuilder::new());
                s.closed.push(close(&open));
            }
            let (old, young): (Vec<ChunkData>, Vec<ChunkData>) =
                s.closed.drain(..).partition(|c| c.maxt < cut_to);
            s.closed = young;
            let mut per: std::collections::BTreeMap<i64, Vec<ChunkData>> = Default::default();
            for c in old {
                per.entry(c.mint.div_euclid(b) * b).or_default().push(c);
            }
            for (start, chunks) in per {
                by_block
                    .entry(start)
                    .or_default()
                    .push((s.labels.clone(), chunks));
            }
        }
        let blocks_dir = self.dir.join("blocks");
        for (start, mut series) in by_block {
            series.sort_by(|a, b| a.0.cmp(&b.0));
            // Chunks below the newest block (only after a clock jump) are
            // kept out of overlapping ranges.
            if start < self.head_mint {
                continue;
            }
            let end = (start + b).min(cut_to);
            let path =
                block::write(&blocks_dir, start, end, &series).map_err(io_err(&blocks_dir))?;
            let mut intern_fn = |l: Labels| intern(&mut self.interned, l);
            let opened = Block::open(&path, &mut intern_fn).map_err(io_err(&path))?;
            self.blocks.push(Arc::new(opened));
        }
        self.head_mint = cut_to;
        // Series silent for a whole period leave the head.
        let gone: Vec<u32> = self
            .head
            .iter()
            .filter(|(_, s)| s.closed.is_empty() && s.open.is_empty() && s.last_t < cut_to - b)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_series(id);
        }
        self.checkpoint()?;
        self.prune_interned();
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), DbError> {
        let mut recs = Vec::new();
        let mut ids: Vec<&u32> = self.head.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let s = &self.head[id];
            let mut rec = vec![SERIES];
            put_uvarint(&mut rec, u64::from(*id));
            put_labels(&mut rec, &s.labels);
            put_varint(&mut rec, s.last_t);
            rec.extend_from_slice(&s.last_bits.to_le_bytes());
            recs.push(rec);
            let open = (!s.open.is_empty()).then(|| close(&s.open));
            for (c, is_open) in s
                .closed
                .iter()
                .map(|c| (c, false))
                .chain(open.iter().map(|c| (c, true)))
            {
                let mut rec = vec![CHUNK];
                put_uvarint(&mut rec, u64::from(*id));
                rec.push(u8::from(is_open));
                put_varint(&mut rec, c.mint);
                put_varint(&mut rec, c.maxt);
                crate::codec::put_bytes(&mut rec, &c.bytes);
                recs.push(rec);
            }
        }
        let wal_dir = self.dir.join("wal");
        self.wal
            .checkpoint(recs.into_iter())
            .map_err(io_err(&wal_dir))
    }

    /// The span blocks are merged into at each level: 6, 36 and 216
    /// periods, none longer than a tenth of the retention.
    fn levels(&self) -> Vec<i64> {
        let b = self.opts.block_ms;
        let cap = (self.opts.retention_ms / 10).max(b);
        [6, 36, 216]
            .iter()
            .map(|k| k * b)
            .filter(|s| *s <= cap)
            .collect()
    }

    fn compact(&mut self) -> Result<(), DbError> {
        while let Some(plan) = self.plan_merge() {
            let path = run_merge(&self.blocks_dir(), &plan)?;
            self.apply_merge(&plan, path)?;
        }
        Ok(())
    }

    /// The next merge to do: blocks within one aligned span that has
    /// ended, at the smallest level that has such a group.
    pub fn plan_merge(&self) -> Option<MergePlan> {
        for span in self.levels() {
            let mut group: Vec<Arc<Block>> = Vec::new();
            for blk in &self.blocks {
                let start = blk.mint.div_euclid(span) * span;
                if blk.maxt > start + span || start + span > self.head_mint {
                    continue;
                }
                if group
                    .first()
                    .is_some_and(|g| g.mint.div_euclid(span) * span != start)
                {
                    if group.len() >= 2 {
                        break;
                    }
                    group.clear();
                }
                group.push(blk.clone());
            }
            if group.len() >= 2 {
                let start = group[0].mint.div_euclid(span) * span;
                let end = group.last().map_or(start, |b| b.maxt);
                return Some(MergePlan { group, start, end });
            }
        }
        None
    }

    /// Put a merged block (from [`run_merge`]) in place of its sources,
    /// deleting them; a merge some of whose sources are gone meanwhile
    /// (retention) is thrown away.
    pub fn apply_merge(&mut self, plan: &MergePlan, path: PathBuf) -> Result<(), DbError> {
        let present = plan
            .group
            .iter()
            .all(|g| self.blocks.iter().any(|b| Arc::ptr_eq(b, g)));
        if !present {
            let _ = fs::remove_file(&path);
            return Ok(());
        }
        let mut intern_fn = |l: Labels| intern(&mut self.interned, l);
        let merged = Arc::new(Block::open(&path, &mut intern_fn).map_err(io_err(&path))?);
        for g in &plan.group {
            if g.path != path {
                let _ = fs::remove_file(&g.path);
            }
        }
        self.blocks
            .retain(|b| !plan.group.iter().any(|g| Arc::ptr_eq(b, g)));
        self.blocks.push(merged);
        self.blocks.sort_by_key(|b| b.mint);
        self.prune_interned();
        Ok(())
    }

    /// Where block files go.
    pub fn blocks_dir(&self) -> PathBuf {
        self.dir.join("blocks")
    }

    fn retain(&mut self, now: i64) -> Result<(), DbError> {
        let before = self.blocks.len();
        let horizon = now - self.opts.retention_ms;
        while let Some(b) = self.blocks.first() {
            let over_size =
                self.opts.retention_bytes > 0 && self.disk_bytes() > self.opts.retention_bytes;
            if b.maxt > horizon && !over_size {
                break;
            }
            let _ = fs::remove_file(&b.path);
            self.blocks.remove(0);
        }
        if self.blocks.len() != before {
            self.prune_interned();
        }
        Ok(())
    }

    fn prune_interned(&mut self) {
        self.interned.retain(|l| Arc::strong_count(l) > 1);
    }

    /// Bytes of blocks and log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.size).sum::<u64>() + self.wal.size()
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The earliest time (ms) the store may hold a sample at: the oldest
    /// block's start, else the head's oldest chunk's; `None` when empty.
    /// Retention (by age or size) moves it forward.
    pub fn oldest(&self) -> Option<i64> {
        if let Some(b) = self.blocks.first() {
            return Some(b.mint);
        }
        self.head
            .values()
            .filter_map(|s| match s.closed.first() {
                Some(c) => Some(c.mint),
                None => (!s.open.is_empty()).then(|| s.open.mint()),
            })
            .min()
    }

    /// Flush the log to disk (at shutdown).
    pub fn sync(&self) -> Result<(), DbError> {
        let wal_dir = self.dir.join("wal");
        self.wal.sync().map_err(io_err(&wal_dir))
    }
}

/// Blocks to merge into one over `[start, end)`.
pub struct MergePlan {
    group: Vec<Arc<Block>>,
    start: i64,
    end: i64,
}

/// Write the merge of `plan`'s blocks into `dir`, one series at a time:
/// full chunks are copied as they are, runs of partial ones (a series'
/// chunks are cut at every period) re-encoded into full ones. Reads only
/// immutable blocks, so it needs no lock on the store.
pub fn run_merge(dir: &Path, plan: &MergePlan) -> Result<PathBuf, DbError> {
    let mut all: Vec<&Arc<Labels>> = Vec::new();
    let mut positions: Vec<HashMap<&Labels, u32>> = Vec::new();
    for b in &plan.group {
        let mut pos = HashMap::new();
        for i in b.candidates(None) {
            all.push(b.labels(i));
            pos.insert(&**b.labels(i), i);
        }
        positions.push(pos);
    }
    all.sort();
    all.dedup();
    let mut w = block::Writer::new(dir, plan.start, plan.end).map_err(io_err(dir))?;
    for labels in all {
        let mut out: Vec<ChunkData> = Vec::new();
        let mut pending = ChunkBuilder::new();
        for (b, pos) in plan.group.iter().zip(&positions) {
            let Some(&i) = pos.get(&**labels) else {
                continue;
            };
            for c in b.chunks(i, i64::MIN, i64::MAX).map_err(io_err(&b.path))? {
                let full = c.bytes.len() >= 2
                    && u16::from_be_bytes([c.bytes[0], c.bytes[1]]) >= MAX_SAMPLES;
                if full && pending.is_empty() {
                    out.push(c);
                    continue;
                }
                for (t, v) in Decoder::new(&c.bytes).into_iter().flatten() {
                    if pending.is_full() {
                        let done = std::mem::replace(&mut pending, ChunkBuilder::new());
                        out.push(close(&done));
                    }
                    pending.append(t, v);
                }
            }
        }
        if !pending.is_empty() {
            out.push(close(&pending));
        }
        w.add(labels, &out).map_err(io_err(dir))?;
    }
    w.finish().map_err(io_err(dir))
}

fn read_entry(
    r: &mut Reader,
    id: &mut i64,
    t_base: i64,
    head: &FastMap<u32, HeadSeries>,
) -> Result<(u32, i64, u64), crate::codec::Malformed> {
    let at = r.pos;
    let word = r.uvarint()?;
    let zz = word >> 2;
    let delta = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
    *id += delta;
    let sid = u32::try_from(*id).map_err(|_| crate::codec::Malformed(at))?;
    let t = if word & 1 == 1 {
        t_base + r.varint()?
    } else {
        t_base
    };
    let before = head.get(&sid).map_or(0, |s| s.last_bits);
    let bits = if word & 2 == 2 {
        before
    } else {
        before ^ read_xor(r)?
    };
    Ok((sid, t, bits))
}

fn intern(set: &mut FastSet<Arc<Labels>>, l: Labels) -> Arc<Labels> {
    if let Some(a) = set.get(&l) {
        return a.clone();
    }
    let a = Arc::new(l);
    set.insert(a.clone());
    a
}

/// Like [`intern`], keeping the caller's `Arc` when the set has none.
fn intern_arc(set: &mut FastSet<Arc<Labels>>, l: &Arc<Labels>) -> Arc<Labels> {
    if let Some(a) = set.get(&**l) {
        return a.clone();
    }
    set.insert(l.clone());
    l.clone()
}

fn close(b: &ChunkBuilder) -> ChunkData {
    ChunkData {
        mint: b.mint(),
        maxt: b.maxt(),
        bytes: b.bytes(),
    }
}

/// Add a sample to the open chunk, closing it first when it is full or
/// the sample falls in the next period (a chunk never spans two).
fn push_sample(s: &mut HeadSeries, t: i64, v: f64, block_ms: i64) {
    if !s.open.is_empty()
        && (s.open.is_full() || t.div_euclid(block_ms) != s.open.mint().div_euclid(block_ms))
    {
        let open = std::mem::replace(&mut s.open, ChunkBuilder::new());
        s.closed.push(close(&open));
    }
    s.open.append(t, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str, i: usize) -> Labels {
        [("__name__", name.to_string()), ("i", i.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn opts() -> Options {
        Options {
            block_ms: 60_000,
            retention_ms: 3_600_000,
            retention_bytes: 0,
        }
    }

    fn all(db: &Db, name: &str) -> Selected {
        db.select(Some(name), &|_| true, i64::MIN, i64::MAX)
            .unwrap()
    }

    /// 20 series, a sample every second for `secs` seconds from `from`.
    fn fill(db: &mut Db, from: i64, secs: i64) {
        for s in from..from + secs {
            let batch: Vec<_> = (0..20)
                .map(|i| {
                    (
                        Arc::new(labels("m", i)),
                        s * 1000,
                        (s * i as i64) as f64 + 0.5,
                    )
                })
                .collect();
            db.append(&batch).unwrap();
            db.maintain(s * 1000).unwrap();
        }
    }

    #[test]
    fn samples_survive_reopen_without_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), opts()).unwrap();
        fill(&mut db, 0, 150);
        let before = all(&db, "m");
        assert_eq!(before.len(), 20);
        assert_eq!(before[3].1.len(), 150);
        assert!(db.block_count() >= 1, "a finished period went to a block");
        // No sync, no drop: what a kill -9 leaves.
        std::mem::forget(db);
        let db = Db::open(dir.path(), opts()).unwrap();
        assert_eq!(all(&db, "m"), before);
    }

    #[test]
    fn out_of_order_and_duplicate_samples_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), opts()).unwrap();
        let l = Arc::new(labels("m", 1));
        let a = db
            .append(&[
                (l.clone(), 2000, 1.0),
                (l.clone(), 2000, 2.0),
                (l.clone(), 1000, 3.0),
            ])
            .unwrap();
        assert_eq!(
            a,
            Appended {
                accepted: 1,
                out_of_order: 2
            }
        );
        assert_eq!(all(&db, "m")[0].1, vec![(2000, 1.0)]);
    }

    #[test]
    fn blocks_merge_and_retention_deletes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), opts()).unwrap();
        assert_eq!(db.oldest(), None, "an empty store");
        fill(&mut db, 0, 60 * 14);
        assert_eq!(db.oldest(), Some(0));
        // 6-minute spans are merged once they end.
        assert!(
            db.blocks.iter().any(|b| b.maxt - b.mint == 360_000),
            "{:?}",
            db.blocks
                .iter()
                .map(|b| (b.mint, b.maxt))
                .collect::<Vec<_>>()
        );
        let points = &all(&db, "m")[5].1;
        assert_eq!(points.len(), 60 * 14);
        assert!(points.windows(2).all(|w| w[0].0 + 1000 == w[1].0));
        let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
        let reopened = {
            drop(db);
            Db::open(dir.path(), opts()).unwrap()
        };
        let again: Vec<i64> = all(&reopened, "m")[5].1.iter().map(|p| p.0).collect();
        assert_eq!(again, ts);
        // Three hours later everything older than an hour is gone.
        let mut db = reopened;
        db.maintain(3 * 3_600_000).unwrap();
        assert_eq!(db.block_count(), 0);
        assert!(all(&db, "m").is_empty());
    }

    #[test]
    fn the_size_limit_deletes_the_oldest_blocks_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(
            dir.path(),
            Options {
                retention_bytes: 6_000,
                ..opts()
            },
        )
        .unwrap();
        fill(&mut db, 0, 60 * 5);
        assert!(
            db.disk_bytes() <= 6_000 || db.block_count() == 0,
            "{}",
            db.disk_bytes()
        );
        let first = all(&db, "m")[0].1[0].0;
        assert!(first > 0, "the oldest samples went first");
        let oldest = db.oldest().unwrap();
        assert!(oldest > 0 && oldest <= first, "{oldest} {first}");
    }

    #[test]
    fn a_torn_log_tail_loses_only_the_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), opts()).unwrap();
        fill(&mut db, 0, 10);
        std::mem::forget(db);
        let seg = fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = fs::metadata(&seg).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let db = Db::open(dir.path(), opts()).unwrap();
        let got = all(&db, "m");
        assert_eq!(got.len(), 20);
        assert_eq!(got[0].1.len(), 9, "the last second's record was torn");
    }

    #[test]
    fn queries_over_blocks_and_head_answer_as_the_in_memory_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), opts()).unwrap();
        let mut mem = crate::storage::Storage::new();
        // 15 minutes at 1 s, a counter that resets, a gauge that goes
        // stale for a while: over several blocks, merged ones and the head.
        for s in 0..900i64 {
            let t = s * 1000 + 7;
            let mut batch = vec![(Arc::new(labels("c", 1)), t, ((s * 3) % 500) as f64)];
            if !(300..420).contains(&s) {
                batch.push((Arc::new(labels("g", 2)), t, (s as f64).sin() * 10.0));
            } else if s == 300 {
                batch.push((Arc::new(labels("g", 2)), t, crate::storage::stale_nan()));
            }
            for (l, t, v) in &batch {
                mem.append(Labels::clone(l), *t, *v);
            }
            db.append(&batch).unwrap();
            db.maintain(t).unwrap();
        }
        assert!(db.block_count() >= 2);
        let engine = crate::Engine::default();
        let queries = [
            "c",
            "rate(c[1m])",
            "increase(c[5m])",
            "resets(c[10m])",
            "g",
            "avg_over_time(g[2m])",
            "max_over_time(rate(c[30s])[3m:10s])",
            "c offset 5m",
            "count_over_time({__name__=~\"c|g\"}[15m])",
        ];
        for q in queries {
            for t in [61_500, 299_900, 360_001, 600_000, 899_999] {
                let a = engine.instant(&mem, q, t).unwrap();
                let b = engine.instant(&db, q, t).unwrap();
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{q} at {t}");
            }
            let a = engine.range(&mem, q, 30_000, 890_000, 15_000);
            let b = engine.range(&db, q, 30_000, 890_000, 15_000);
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{q} as a range");
        }
    }
}
