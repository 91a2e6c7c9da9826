//! The write-ahead log of the metrics store: every accepted sample is
//! written here before the in-memory head takes it, so a restart (or
//! `kill -9`) loses nothing the store acknowledged. Writes go to the page
//! cache without fsync, which survives a killed process; a power loss may
//! lose the last seconds. Segments are fsynced when a checkpoint rotates
//! them.
//!
//! Files: `wal/NNNNNNNN`, each a sequence of frames `[len u32 LE][crc32 u32
//! LE][payload]`. A checkpoint is written as a new segment that starts with
//! a checkpoint frame and holds everything the head still needs (its
//! series and their unpersisted chunks); once it is in place the older
//! segments are deleted, and at open any segment older than the newest
//! checkpoint is ignored and removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The first payload byte of a checkpoint segment's first frame.
pub const CHECKPOINT: u8 = 0;

pub struct Wal {
    dir: PathBuf,
    seq: u64,
    file: File,
    /// Bytes in the current segment.
    size: u64,
}

/// What a replay found besides the payloads.
#[derive(Debug, Default)]
pub struct Replay {
    pub payloads: Vec<Vec<u8>>,
    /// A damaged or torn frame was found and the log cut there.
    pub truncated_at: Option<(PathBuf, u64)>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:08}")
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some(seq) = name.to_str().and_then(|n| n.parse::<u64>().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Split a segment into frame payloads, and the offset of the first torn
/// or damaged frame, if any (the payloads are those before it).
fn frames(buf: &[u8]) -> (Vec<Vec<u8>>, Option<u64>) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let Some(head) = buf.get(pos..pos + 8) else {
            return (out, Some(pos as u64));
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let Some(payload) = buf.get(pos + 8..pos + 8 + len) else {
            return (out, Some(pos as u64));
        };
        if crc32fast::hash(payload) != crc || payload.is_empty() {
            return (out, Some(pos as u64));
        }
        out.push(payload.to_vec());
        pos += 8 + len;
    }
    (out, None)
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Open the log in `dir` (created if missing) and read back every
    /// payload since the newest checkpoint, in order. A torn tail (the
    /// process died mid-write) is cut off so new frames follow good ones.
    pub fn open(dir: &Path) -> io::Result<(Wal, Replay)> {
        crate::block::private_dir(dir)?;
        let _ = fs::remove_file(dir.join("checkpoint.tmp"));
        let mut seqs = segments(dir)?;
        let mut replay = Replay::default();
        let mut bufs = Vec::new();
        for &seq in &seqs {
            bufs.push((seq, fs::read(dir.join(segment_name(seq)))?));
        }
        // Only the newest checkpoint and what follows it count.
        if let Some(i) = bufs
            .iter()
            .rposition(|(_, b)| b.len() > 8 && b[8] == CHECKPOINT)
        {
            for (seq, _) in bufs.drain(..i) {
                fs::remove_file(dir.join(segment_name(seq)))?;
            }
            seqs.drain(..i);
        }
        for (i, (seq, buf)) in bufs.iter().enumerate() {
            let (payloads, bad) = frames(buf);
            replay.payloads.extend(payloads);
            if let Some(at) = bad {
                let path = dir.join(segment_name(*seq));
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(at)?;
                f.sync_all()?;
                replay.truncated_at = Some((path, at));
                // Later segments cannot be trusted to follow on.
                for &later in &seqs[i + 1..] {
                    fs::remove_file(dir.join(segment_name(later)))?;
                }
                seqs.truncate(i + 1);
                break;
            }
        }
        let seq = seqs.last().copied().unwrap_or(1);
        let path = dir.join(segment_name(seq));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?
        };
        // Every segment still here counts toward the store's size.
        let mut size = 0;
        for &seq in &seqs {
            size += fs::metadata(dir.join(segment_name(seq))).map_or(0, |m| m.len());
        }
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                seq,
                file,
                size,
            },
            replay,
        ))
    }

    /// Append one payload (not fsynced: see the module docs).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 8);
        frame(payload, &mut buf);
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Replace the log with a checkpoint holding `payloads` (the first is
    /// written after a checkpoint marker frame), durably, then delete the
    /// older segments.
    pub fn checkpoint(&mut self, payloads: impl Iterator<Item = Vec<u8>>) -> io::Result<()> {
        let mut buf = Vec::new();
        frame(&[CHECKPOINT], &mut buf);
        for p in payloads {
            frame(&p, &mut buf);
        }
        let tmp = self.dir.join("checkpoint.tmp");
        {
            let mut f = crate::block::private_file(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        let next = self.seq + 1;
        let path = self.dir.join(segment_name(next));
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let old = self.seq;
        self.seq = next;
        self.file = file;
        self.size = buf.len() as u64;
        for seq in segments(&self.dir)? {
            if seq <= old {
                fs::remove_file(self.dir.join(segment_name(seq)))?;
            }
        }
        Ok(())
    }

    /// Bytes in the log's segments.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flush to disk (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_back_in_order_across_reopen_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path()).unwrap();
        assert!(replay.payloads.is_empty());
        wal.append(b"\x01one").unwrap();
        wal.append(b"\x01two").unwrap();
        drop(wal);
        let (mut wal, replay) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            replay.payloads,
            vec![b"\x01one".to_vec(), b"\x01two".to_vec()]
        );
        wal.checkpoint([b"\x02state".to_vec()].into_iter()).unwrap();
        wal.append(b"\x01three").unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            replay.payloads,
            vec![
                vec![CHECKPOINT],
                b"\x02state".to_vec(),
                b"\x01three".to_vec()
            ]
        );
        assert_eq!(segments(dir.path()).unwrap(), vec![2]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_follow_the_good_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(b"\x01good").unwrap();
        wal.append(b"\x01torn-away").unwrap();
        drop(wal);
        let seg = dir.path().join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut wal, replay) = Wal::open(dir.path()).unwrap();
        assert_eq!(replay.payloads, vec![b"\x01good".to_vec()]);
        assert!(replay.truncated_at.is_some());
        wal.append(b"\x01after").unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path()).unwrap();
        assert_eq!(
            replay.payloads,
            vec![b"\x01good".to_vec(), b"\x01after".to_vec()]
        );
        assert!(replay.truncated_at.is_none());
    }
}
