//! Immutable block files: every series' compressed chunks for one time
//! range `[mint, maxt)`, written once (to a temporary name, fsynced, then
//! renamed) and only ever deleted or merged into a larger block.
//!
//! Layout of `<mint>-<maxt>.block`:
//! - `FRYBLK01` (8 bytes);
//! - per series, its chunks back to back, then per chunk a fixed 28-byte
//!   entry: mint i64, maxt i64, offset u64, length u32 (little endian);
//! - the index: series count, then per series its labels, where its
//!   chunk entries start, how many there are, and its first and last
//!   sample times;
//! - a 40-byte footer: index offset u64, index length u64, block mint
//!   i64, block maxt i64, CRC-32 of the index u32, `FRYE`.
//!
//! Opening a block reads only its index (labels, kept in memory and
//! shared with the head); chunks are read on demand with positioned
//! reads, so memory does not grow with how much history is kept.

use crate::codec::{Reader, put_labels, put_uvarint, put_varint};
use crate::storage::Labels;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"FRYBLK01";
const FOOTER: usize = 40;
const ENTRY: usize = 28;

/// One encoded chunk and the times of its first and last samples.
#[derive(Debug, Clone)]
pub struct ChunkData {
    pub mint: i64,
    pub maxt: i64,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct BlockSeries {
    labels: Arc<Labels>,
    entries_off: u64,
    n: u32,
    mint: i64,
    maxt: i64,
}

#[derive(Debug)]
pub struct Block {
    pub path: PathBuf,
    file: File,
    /// The time range the block covers: `[mint, maxt)`.
    pub mint: i64,
    pub maxt: i64,
    pub size: u64,
    series: Vec<BlockSeries>,
    /// Series positions by metric name.
    by_name: HashMap<String, Vec<u32>>,
    /// Series positions by label set, built the first time one is asked.
    by_labels: std::sync::OnceLock<HashMap<Arc<Labels>, u32>>,
}

/// A new file only its owner can read (the store may hold anything the
/// scraped targets expose).
pub fn private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// A directory (and its parents) only its owner can enter.
pub fn private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

pub fn file_name(mint: i64, maxt: i64) -> String {
    format!("{mint}-{maxt}.block")
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Writes a block one series at a time, so memory holds only the index
/// (labels and a few numbers per series), never the samples. Each series'
/// chunk entries follow its chunks.
pub struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    out: io::BufWriter<File>,
    pos: u64,
    mint: i64,
    maxt: i64,
    index: Vec<u8>,
    count: u64,
}

impl Writer {
    pub fn new(dir: &Path, mint: i64, maxt: i64) -> io::Result<Writer> {
        let tmp = dir.join(format!("{}.tmp", file_name(mint, maxt)));
        let mut out = io::BufWriter::with_capacity(1 << 20, private_file(&tmp)?);
        out.write_all(MAGIC)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            tmp,
            out,
            pos: MAGIC.len() as u64,
            mint,
            maxt,
            index: Vec::new(),
            count: 0,
        })
    }

    /// Add one series and its chunks (oldest first); series without
    /// chunks are left out.
    pub fn add(&mut self, labels: &Labels, chunks: &[ChunkData]) -> io::Result<()> {
        let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
            return Ok(());
        };
        let mut entries = Vec::with_capacity(chunks.len() * ENTRY);
        for c in chunks {
            entries.extend_from_slice(&c.mint.to_le_bytes());
            entries.extend_from_slice(&c.maxt.to_le_bytes());
            entries.extend_from_slice(&self.pos.to_le_bytes());
            entries.extend_from_slice(&(c.bytes.len() as u32).to_le_bytes());
            self.out.write_all(&c.bytes)?;
            self.pos += c.bytes.len() as u64;
        }
        let entries_off = self.pos;
        self.out.write_all(&entries)?;
        self.pos += entries.len() as u64;
        put_labels(&mut self.index, labels);
        put_uvarint(&mut self.index, entries_off);
        put_uvarint(&mut self.index, chunks.len() as u64);
        put_varint(&mut self.index, first.mint);
        put_varint(&mut self.index, last.maxt);
        self.count += 1;
        Ok(())
    }

    /// Write the index and footer, make the file durable and give it its
    /// name; returns the path.
    pub fn finish(mut self) -> io::Result<PathBuf> {
        let mut index = Vec::with_capacity(self.index.len() + 10);
        put_uvarint(&mut index, self.count);
        index.extend_from_slice(&self.index);
        let crc = crc32fast::hash(&index);
        self.out.write_all(&index)?;
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(&self.pos.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&self.mint.to_le_bytes());
        footer.extend_from_slice(&self.maxt.to_le_bytes());
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(b"FRYE");
        self.out.write_all(&footer)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = self.dir.join(file_name(self.mint, self.maxt));
        fs::rename(&self.tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }
}

/// Write a block of `series` (each with its chunks, oldest first) into
/// `dir`, durably; returns the file's path.
pub fn write(
    dir: &Path,
    mint: i64,
    maxt: i64,
    series: &[(Arc<Labels>, Vec<ChunkData>)],
) -> io::Result<PathBuf> {
    let mut w = Writer::new(dir, mint, maxt)?;
    for (labels, chunks) in series {
        w.add(labels, chunks)?;
    }
    w.finish()
}

impl Block {
    /// Open a block, reading its index; `intern` shares label sets with
    /// the rest of the store.
    pub fn open(path: &Path, intern: &mut dyn FnMut(Labels) -> Arc<Labels>) -> io::Result<Block> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        if size < (MAGIC.len() + FOOTER) as u64 {
            return Err(invalid(path, "too short to be a block"));
        }
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, size - FOOTER as u64)?;
        let num = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().expect("8 bytes"));
        let (index_off, index_len) = (num(0), num(8));
        let (mint, maxt) = (num(16) as i64, num(24) as i64);
        let crc = u32::from_le_bytes(footer[32..36].try_into().expect("4 bytes"));
        if &footer[36..] != b"FRYE" || index_off + index_len + FOOTER as u64 != size {
            return Err(invalid(path, "damaged footer"));
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_off)?;
        if crc32fast::hash(&index) != crc {
            return Err(invalid(path, "index checksum mismatch"));
        }
        let mut r = Reader::new(&index);
        let bad = |_| invalid(path, "malformed index");
        let n = r.uvarint().map_err(bad)?;
        let mut series = Vec::with_capacity(n.min(1 << 24) as usize);
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for i in 0..n {
            let labels = intern(r.labels().map_err(bad)?);
            let entries_off = r.uvarint().map_err(bad)?;
            let count = r.uvarint().map_err(bad)? as u32;
            let smin = r.varint().map_err(bad)?;
            let smax = r.varint().map_err(bad)?;
            if entries_off + u64::from(count) * ENTRY as u64 > index_off {
                return Err(invalid(path, "chunk entries out of range"));
            }
            if let Some(name) = labels.get("__name__") {
                by_name.entry(name.clone()).or_default().push(i as u32);
            }
            series.push(BlockSeries {
                labels,
                entries_off,
                n: count,
                mint: smin,
                maxt: smax,
            });
        }
        Ok(Block {
            path: path.to_path_buf(),
            file,
            mint,
            maxt,
            size,
            series,
            by_name,
            by_labels: std::sync::OnceLock::new(),
        })
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Positions of the series that may match: those named `name`, or all.
    pub fn candidates(&self, name: Option<&str>) -> Vec<u32> {
        match name {
            Some(n) => self.by_name.get(n).cloned().unwrap_or_default(),
            None => (0..self.series.len() as u32).collect(),
        }
    }

    /// The position of the series with exactly these labels.
    pub fn position(&self, labels: &Labels) -> Option<u32> {
        self.by_labels
            .get_or_init(|| {
                self.series
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.labels.clone(), i as u32))
                    .collect()
            })
            .get(labels)
            .copied()
    }

    pub fn labels(&self, i: u32) -> &Arc<Labels> {
        &self.series[i as usize].labels
    }

    /// Whether series `i` has samples in `(mint, maxt]`.
    pub fn overlaps(&self, i: u32, mint: i64, maxt: i64) -> bool {
        let s = &self.series[i as usize];
        s.maxt > mint && s.mint <= maxt
    }

    /// The chunks of series `i` that hold samples in `(mint, maxt]`.
    pub fn chunks(&self, i: u32, mint: i64, maxt: i64) -> io::Result<Vec<ChunkData>> {
        let s = &self.series[i as usize];
        let mut entries = vec![0u8; s.n as usize * ENTRY];
        self.file.read_exact_at(&mut entries, s.entries_off)?;
        let wanted: Vec<(i64, i64, u64, u32)> = entries
            .chunks_exact(ENTRY)
            .map(|e| {
                let n = |a: usize| u64::from_le_bytes(e[a..a + 8].try_into().expect("8 bytes"));
                (
                    n(0) as i64,
                    n(8) as i64,
                    n(16),
                    u32::from_le_bytes(e[24..28].try_into().expect("4 bytes")),
                )
            })
            .filter(|&(cmin, cmax, _, _)| cmax > mint && cmin <= maxt)
            .collect();
        let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
            return Ok(Vec::new());
        };
        let start = first.2;
        let end = last.2 + u64::from(last.3);
        if end > self.size || start > end {
            return Err(invalid(&self.path, "chunk out of range"));
        }
        let mut span = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut span, start)?;
        Ok(wanted
            .into_iter()
            .map(|(cmin, cmax, off, len)| {
                let a = (off - start) as usize;
                ChunkData {
                    mint: cmin,
                    maxt: cmax,
                    bytes: span[a..a + len as usize].to_vec(),
                }
            })
            .collect())
    }

    /// Every sample of series `i` in `(mint, maxt]`, appended to `out`.
    pub fn samples(
        &self,
        i: u32,
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> io::Result<()> {
        for c in self.chunks(i, mint, maxt)? {
            crate::chunk::decode_into(&c.bytes, mint, maxt, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkBuilder;

    fn chunk(samples: &[(i64, f64)]) -> ChunkData {
        let mut b = ChunkBuilder::new();
        for &(t, v) in samples {
            b.append(t, v);
        }
        ChunkData {
            mint: samples[0].0,
            maxt: samples.last().unwrap().0,
            bytes: b.bytes(),
        }
    }

    fn labels(name: &str, job: &str) -> Arc<Labels> {
        Arc::new(
            [("__name__", name), ("job", job)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_written_block_reads_back_by_name_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<(i64, f64)> = (0..120).map(|i| (i * 1000, i as f64)).collect();
        let b: Vec<(i64, f64)> = (120..200).map(|i| (i * 1000, i as f64)).collect();
        let series = vec![
            (labels("up", "x"), vec![chunk(&a), chunk(&b)]),
            (labels("other", "y"), vec![chunk(&[(5000, 1.5)])]),
        ];
        let path = write(dir.path(), 0, 600_000, &series).unwrap();
        let block = Block::open(&path, &mut |l| Arc::new(l)).unwrap();
        assert_eq!(
            (block.mint, block.maxt, block.series_count()),
            (0, 600_000, 2)
        );
        let ups = block.candidates(Some("up"));
        assert_eq!(ups.len(), 1);
        assert_eq!(block.labels(ups[0])["job"], "x");
        let mut out = Vec::new();
        block.samples(ups[0], 118_000, 125_000, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (119_000, 119.0),
                (120_000, 120.0),
                (121_000, 121.0),
                (122_000, 122.0),
                (123_000, 123.0),
                (124_000, 124.0),
                (125_000, 125.0)
            ]
        );
        assert!(!block.overlaps(ups[0], 199_000, 300_000));
        assert_eq!(block.candidates(None).len(), 2);
    }

    #[test]
    fn a_damaged_block_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let series = vec![(labels("up", "x"), vec![chunk(&[(1, 1.0)])])];
        let path = write(dir.path(), 0, 10, &series).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 45] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let e = Block::open(&path, &mut |l| Arc::new(l)).unwrap_err();
        assert!(
            e.to_string().contains("checksum") || e.to_string().contains("malformed"),
            "{e}"
        );
        fs::write(&path, b"short").unwrap();
        assert!(Block::open(&path, &mut |l| Arc::new(l)).is_err());
    }
}
