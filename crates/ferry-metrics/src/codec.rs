//! Small binary encodings shared by the write-ahead log and block files:
//! LEB128 varints, zigzag, length-prefixed strings and label sets.

use crate::storage::Labels;

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn put_labels(out: &mut Vec<u8>, labels: &Labels) {
    put_uvarint(out, labels.len() as u64);
    for (k, v) in labels {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// Reads what the `put_*` functions wrote; every read is checked, so a
/// damaged input is an error, never a panic.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed data at byte {0}")]
pub struct Malformed(pub usize);

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    #[cfg(test)]
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let b = *self.buf.get(self.pos).ok_or(Malformed(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn uvarint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Malformed(self.pos))
    }

    pub fn varint(&mut self) -> Result<i64, Malformed> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.uvarint()?).map_err(|_| Malformed(self.pos))?;
        let end = self.pos.checked_add(n).ok_or(Malformed(self.pos))?;
        let b = self.buf.get(self.pos..end).ok_or(Malformed(self.pos))?;
        self.pos = end;
        Ok(b)
    }

    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let end = self.pos + N;
        let b = self.buf.get(self.pos..end).ok_or(Malformed(self.pos))?;
        self.pos = end;
        Ok(b.try_into().expect("slice of N bytes"))
    }

    pub fn string(&mut self) -> Result<String, Malformed> {
        let at = self.pos;
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Malformed(at))
    }

    pub fn labels(&mut self) -> Result<Labels, Malformed> {
        let n = self.uvarint()?;
        let mut l = Labels::new();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.string()?;
            l.insert(k, v);
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_labels_round_trip_and_damage_is_an_error() {
        let mut out = Vec::new();
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            put_varint(&mut out, v);
        }
        put_uvarint(&mut out, u64::MAX);
        let labels: Labels = [("__name__", "up"), ("job", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        put_labels(&mut out, &labels);
        let mut r = Reader::new(&out);
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.uvarint().unwrap(), u64::MAX);
        assert_eq!(r.labels().unwrap(), labels);
        assert!(r.done());
        let mut short = Reader::new(&out[..out.len() - 1]);
        for _ in 0..9 {
            short.varint().unwrap();
        }
        assert!(short.labels().is_err());
    }
}
