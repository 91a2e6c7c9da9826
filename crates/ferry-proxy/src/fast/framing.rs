//! Response framing on the fast path: where an upstream's response body
//! ends (a length, chunked, or the connection closing), found by a chunk
//! scanner that checks the chunked framing without decoding it.

/// Where a response body ends.
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: forwarded verbatim while the scanner finds its end.
    Chunked(ChunkScanner),
    /// Until the upstream closes the connection.
    UntilClose,
}

impl Framing {
    /// Body bytes for the access log, given the bytes relayed: chunked
    /// bodies count their data, not their framing (as hyper's path does).
    pub(super) fn body_bytes(&self, relayed: u64) -> u64 {
        match self {
            Framing::Chunked(scanner) => scanner.data,
            _ => relayed,
        }
    }

    /// Of `data` just read, how many bytes belong to the body, and whether
    /// the body is complete with them.
    pub(super) fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Framing::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Framing::Chunked(scanner) => match scanner.feed(data)? {
                Some(end) => Ok((end, true)),
                None => Ok((data.len(), false)),
            },
            Framing::UntilClose => Ok((data.len(), false)),
        }
    }
}

/// Finds the end of a chunked body (RFC 9112 7.1) without decoding it.
#[derive(Default)]
pub(super) struct ChunkScanner {
    state: Chunk,
    size: u64,
    /// Hex digits of the current size line, and how many are significant.
    digits: u8,
    significant: u8,
    /// Bytes of chunk data passed over (the body without its framing).
    data: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl ChunkScanner {
    /// Feed the next bytes; `Some(n)`: the body ends after the first `n`.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0);
                        self.digits = self.digits.saturating_add(1);
                        if self.size > 0 || digit > 0 {
                            // Leading zeros do not count towards the limit.
                            self.significant += 1;
                            if self.significant > 15 {
                                return Err(());
                            }
                        }
                        self.size = self.size * 16 + u64::from(digit);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Chunk::Extension,
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Extension => match b {
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' => return Err(()),
                    _ => {}
                },
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.digits = 0;
                    self.significant = 0;
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
                }
                Chunk::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.size -= take as u64;
                    self.data += take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Size;
                }
                Chunk::TrailerStart => {
                    self.state = if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::TrailerLine
                    };
                }
                Chunk::TrailerLine => {
                    if b == b'\n' {
                        self.state = Chunk::TrailerStart;
                    }
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Done;
                    return Ok(Some(i + 1));
                }
                Chunk::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == Chunk::Done).then_some(i))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut s = ChunkScanner::default();
        let mut offset = 0;
        for part in parts {
            if let Some(end) = s.feed(part)? {
                return Ok(Some(offset + end));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn chunk_scanner_finds_the_end() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(scan(&[body]), Ok(Some(body.len())));
        // Byte by byte, the same.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&parts), Ok(Some(body.len())));
        // Trailers, and bytes after the end.
        let with_trailer = b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\nEXTRA";
        assert_eq!(scan(&[with_trailer]), Ok(Some(with_trailer.len() - 5)));
        // Not finished.
        assert_eq!(scan(&[b"5\r\nhel"]), Ok(None));
        assert_eq!(scan(&[b"0\r\n\r"]), Ok(None));
        // Malformed.
        assert_eq!(scan(&[b"zz\r\n"]), Err(()));
        assert_eq!(scan(&[b"\r\n"]), Err(()));
        assert_eq!(scan(&[b"3\r\nabcX"]), Err(()));
        assert_eq!(scan(&[b"ffffffffffffffff\r\n"]), Err(()));
    }
}
