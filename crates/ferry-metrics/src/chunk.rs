//! Compressed chunks of one series' samples, in the style of Facebook's
//! Gorilla paper (as Prometheus stores float samples): timestamps as
//! delta-of-deltas in variable bit widths, values as the XOR with the
//! previous value, keeping only its meaningful bits.
//!
//! Layout: two bytes of sample count (big endian), then the bit stream.
//! The first sample is 64 bits of time and 64 bits of value; every later
//! one a delta-of-delta code and an XOR code.

/// Most samples in one chunk (Prometheus's default too): beyond this a
/// series starts a new chunk, which bounds what one read decodes.
pub const MAX_SAMPLES: u16 = 120;

#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = the last byte is full or there is none).
    used: u8,
}

impl BitWriter {
    fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// The low `n` bits of `v`, most significant first.
    fn write_bits(&mut self, v: u64, n: u8) {
        for i in (0..n).rev() {
            self.write_bit((v >> i) & 1 == 1);
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(bit)
    }

    fn read_bits(&mut self, n: u8) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.read_bit()?);
        }
        Some(v)
    }
}

/// Delta-of-delta buckets: (prefix bits, prefix length, value bits).
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

fn fits(v: i64, bits: u8) -> bool {
    let half = 1i64 << (bits - 1);
    -half < v && v <= half
}

/// A chunk being written: appends keep it encoded, so an open chunk costs
/// about as much memory as a closed one.
#[derive(Debug, Clone, Default)]
pub struct ChunkBuilder {
    w: BitWriter,
    count: u16,
    mint: i64,
    t: i64,
    delta: i64,
    v_bits: u64,
    leading: u8,
    trailing: u8,
}

impl ChunkBuilder {
    pub fn new() -> ChunkBuilder {
        ChunkBuilder {
            leading: 0xff,
            ..Default::default()
        }
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count >= MAX_SAMPLES
    }

    pub fn mint(&self) -> i64 {
        self.mint
    }

    /// The newest sample's time (meaningless while empty).
    pub fn maxt(&self) -> i64 {
        self.t
    }

    /// Add a sample newer than the last one (the caller keeps order).
    pub fn append(&mut self, t: i64, v: f64) {
        let bits = v.to_bits();
        match self.count {
            0 => {
                self.w.write_bits(t as u64, 64);
                self.w.write_bits(bits, 64);
                self.mint = t;
            }
            _ => {
                let delta = t - self.t;
                let dod = delta - self.delta;
                self.write_dod(dod);
                self.write_xor(bits);
                self.delta = delta;
            }
        }
        self.t = t;
        self.v_bits = bits;
        self.count += 1;
    }

    fn write_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.w.write_bit(false);
            return;
        }
        for (prefix, plen, bits) in DOD_BUCKETS {
            if fits(dod, bits) {
                self.w.write_bits(prefix, plen);
                self.w.write_bits(dod as u64, bits);
                return;
            }
        }
        self.w.write_bits(0b1111, 4);
        self.w.write_bits(dod as u64, 64);
    }

    fn write_xor(&mut self, bits: u64) {
        let xor = bits ^ self.v_bits;
        if xor == 0 {
            self.w.write_bit(false);
            return;
        }
        self.w.write_bit(true);
        // At most 31 leading zeros, so the count fits in 5 bits.
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            // Inside the previous window: reuse it.
            self.w.write_bit(false);
            let sig = 64 - self.leading - self.trailing;
            self.w.write_bits(xor >> self.trailing, sig);
        } else {
            self.w.write_bit(true);
            let sig = 64 - leading - trailing;
            self.w.write_bits(u64::from(leading), 5);
            // 64 meaningful bits are written as 0 (6 bits hold 0..63).
            self.w.write_bits(u64::from(sig % 64), 6);
            self.w.write_bits(xor >> trailing, sig);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// The chunk as stored: count, then the bit stream.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.w.bytes.len());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.w.bytes);
        out
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A builder that continues the chunk `bytes` (e.g. read back from the
    /// write-ahead log).
    pub fn resume(bytes: &[u8]) -> Option<ChunkBuilder> {
        let mut b = ChunkBuilder::new();
        for (t, v) in Decoder::new(bytes)? {
            b.append(t, v);
        }
        Some(b)
    }
}

/// The samples of encoded chunk `bytes` in `(mint, maxt]`, appended to
/// `out`.
pub fn decode_into(bytes: &[u8], mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) {
    if let Some(d) = Decoder::new(bytes) {
        out.extend(d.filter(|&(t, _)| t > mint && t <= maxt));
    }
}

/// The samples of an encoded chunk, oldest first.
pub struct Decoder<'a> {
    r: BitReader<'a>,
    left: u16,
    read: u16,
    t: i64,
    delta: i64,
    v_bits: u64,
    leading: u8,
    trailing: u8,
}

impl<'a> Decoder<'a> {
    /// `None` when `bytes` is too short to be a chunk.
    pub fn new(bytes: &'a [u8]) -> Option<Decoder<'a>> {
        let count = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
        Some(Decoder {
            r: BitReader {
                bytes: &bytes[2..],
                pos: 0,
            },
            left: count,
            read: 0,
            t: 0,
            delta: 0,
            v_bits: 0,
            leading: 0,
            trailing: 0,
        })
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        if self.read == 0 {
            self.t = self.r.read_bits(64)? as i64;
            self.v_bits = self.r.read_bits(64)?;
        } else {
            let dod = self.read_dod()?;
            self.delta += dod;
            self.t += self.delta;
            self.read_xor()?;
        }
        self.read += 1;
        Some((self.t, f64::from_bits(self.v_bits)))
    }

    fn read_dod(&mut self) -> Option<i64> {
        let mut ones = 0;
        while ones < 4 && self.r.read_bit()? {
            ones += 1;
        }
        let bits = match ones {
            0 => return Some(0),
            1 => 14,
            2 => 17,
            3 => 20,
            _ => 64,
        };
        let raw = self.r.read_bits(bits)?;
        // Sign-extend the `bits`-wide value.
        Some(if bits == 64 {
            raw as i64
        } else {
            let shift = 64 - u32::from(bits);
            ((raw << shift) as i64) >> shift
        })
    }

    fn read_xor(&mut self) -> Option<()> {
        if !self.r.read_bit()? {
            return Some(());
        }
        if self.r.read_bit()? {
            self.leading = self.r.read_bits(5)? as u8;
            let sig = self.r.read_bits(6)? as u8;
            let sig = if sig == 0 { 64 } else { sig };
            self.trailing = 64 - self.leading - sig;
        }
        let sig = 64 - self.leading - self.trailing;
        let xor = self.r.read_bits(sig)? << self.trailing;
        self.v_bits ^= xor;
        Some(())
    }
}

impl Iterator for Decoder<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let s = self.next_sample();
        if s.is_none() {
            // A truncated chunk ends here rather than inventing samples.
            self.left = 0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(samples: &[(i64, f64)]) -> usize {
        let mut b = ChunkBuilder::new();
        for &(t, v) in samples {
            b.append(t, v);
        }
        let bytes = b.bytes();
        let back: Vec<(i64, f64)> = Decoder::new(&bytes).unwrap().collect();
        assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
        let resumed = ChunkBuilder::resume(&bytes).unwrap();
        assert_eq!(resumed.bytes(), bytes);
        bytes.len()
    }

    #[test]
    fn regular_counters_take_about_a_byte_or_two_per_sample() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i * 3) as f64))
            .collect();
        let size = roundtrip(&samples);
        assert!(size < 120 * 3, "{size} bytes");
    }

    #[test]
    fn every_kind_of_value_and_gap_comes_back_bit_for_bit() {
        let weird = [
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0002),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            1e-300,
            123.456,
            -7.0,
        ];
        let mut t = -5_000_000_000i64;
        let mut samples = Vec::new();
        let gaps = [1, 15_000, 8_191, 8_192, 65_537, 524_289, 1 << 40, 3, 1];
        for i in 0..60 {
            t += gaps[i % gaps.len()];
            samples.push((t, weird[i % weird.len()]));
        }
        roundtrip(&samples);
        roundtrip(&[(i64::MIN / 4, 1.0), (i64::MAX / 4, 2.0)]);
        roundtrip(&[(5, 1.0)]);
    }

    #[test]
    fn truncated_bytes_end_the_samples_instead_of_inventing_them() {
        let mut b = ChunkBuilder::new();
        for i in 0..50 {
            b.append(i * 1000, i as f64 * 1.5);
        }
        let bytes = b.bytes();
        let short: Vec<_> = Decoder::new(&bytes[..bytes.len() / 2]).unwrap().collect();
        assert!(short.len() < 50);
        assert!(Decoder::new(&[1]).is_none());
    }
}
