//! Client connections: trusted networks, the PROXY protocol (v1 and v2) and
//! an I/O wrapper that bounds how long a write to a stalled client may wait.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// An IP network such as `10.0.0.0/8` or a single address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network `addr/prefix` (host bits are ignored).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count
    /// as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network such as 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a bad prefix length; use 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub(crate) fn is_trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

// ------------------------------------------------------------ PROXY protocol

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Read a PROXY protocol v1 or v2 header from the start of `stream`,
/// consuming exactly the header. Returns the client's address it announces
/// (`None` for `UNKNOWN` / `LOCAL`, meaning "use the peer address").
pub(crate) async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 536];
    // Peek until we know how long the header is, then read exactly that.
    let len = loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the PROXY header",
            ));
        }
        match header_len(&buf[..n])? {
            Some(len) => break len,
            None if n == buf.len() => return Err(bad("PROXY header too long")),
            None => {
                // Not all of it yet: wait a little for more bytes.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let mut header = vec![0u8; len];
    stream.read_exact(&mut header).await?;
    parse_proxy_header(&header)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Total header length once enough bytes are there; `Ok(None)` = need more.
fn header_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let sig_len = buf.len().min(12);
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        if buf.len() < 16 {
            return Ok(None);
        }
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return Ok((buf.len() >= len).then_some(len));
    }
    let prefix_len = buf.len().min(6);
    if buf[..prefix_len] != b"PROXY "[..prefix_len] {
        return Err(bad("expected a PROXY protocol header"));
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end + 2 <= 107 => Ok(Some(end + 2)),
        Some(_) => Err(bad("PROXY v1 header longer than 107 bytes")),
        None if buf.len() >= 107 => Err(bad("PROXY v1 header longer than 107 bytes")),
        None => Ok(None),
    }
}

/// Parse one complete PROXY header (v1 or v2).
pub(crate) fn parse_proxy_header(h: &[u8]) -> io::Result<Option<SocketAddr>> {
    if h.starts_with(&V2_SIGNATURE) {
        if h.len() < 16 {
            return Err(bad("short PROXY v2 header"));
        }
        let version = h[12] >> 4;
        let command = h[12] & 0xf;
        if version != 2 {
            return Err(bad("unsupported PROXY protocol version"));
        }
        let body = &h[16..];
        if command == 0 {
            return Ok(None); // LOCAL: health check from the balancer itself
        }
        if command != 1 {
            return Err(bad("unknown PROXY v2 command"));
        }
        return match h[13] >> 4 {
            1 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let port = u16::from_be_bytes([body[8], body[9]]);
                Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
            }
            2 if body.len() >= 36 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[..16]);
                let port = u16::from_be_bytes([body[32], body[33]]);
                Ok(Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(octets)),
                    port,
                )))
            }
            0 => Ok(None), // AF_UNSPEC
            1 | 2 => Err(bad("short PROXY v2 address block")),
            _ => Ok(None), // AF_UNIX: no IP to report
        };
    }
    let line = std::str::from_utf8(h)
        .ok()
        .and_then(|s| s.strip_suffix("\r\n"))
        .and_then(|s| s.strip_prefix("PROXY "))
        .ok_or_else(|| bad("malformed PROXY v1 header"))?;
    let mut parts = line.split(' ');
    match parts.next() {
        Some("UNKNOWN") => Ok(None),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(_dst), Some(sport), Some(_dport), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(bad("malformed PROXY v1 header"));
            };
            let ip: IpAddr = src
                .parse()
                .map_err(|_| bad("bad source address in PROXY v1 header"))?;
            if ip.is_ipv4() != (proto == "TCP4") {
                return Err(bad("PROXY v1 address family mismatch"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| bad("bad source port in PROXY v1 header"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(bad("malformed PROXY v1 header")),
    }
}

// ------------------------------------------------------------ client I/O

/// The client's socket. A write that cannot make progress for
/// `send_timeout` (the client stopped reading) fails, which ends the
/// connection. The timer is only allocated once a write first stalls.
pub(crate) struct ClientIo {
    inner: TcpStream,
    read: Vec<u8>,
    read_pos: usize,
    send_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ClientIo {
    /// `read`: bytes already read from `inner`, served to the reader first.
    pub(crate) fn new(inner: TcpStream, read: Vec<u8>, send_timeout: Duration) -> ClientIo {
        ClientIo {
            inner,
            read,
            read_pos: 0,
            send_timeout,
            stall: None,
            armed: false,
        }
    }

    /// Called when a write returned `Pending`: start (or check) the clock.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let sleep = match &mut self.stall {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not read the response within send_timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        res: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => match self.stalled(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_pos < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.read_pos);
            buf.put_slice(&this.read[this.read_pos..this.read_pos + n]);
            this.read_pos += n;
            if this.read_pos == this.read.len() {
                this.read = Vec::new();
                this.read_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(res, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(res, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn networks() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn proxy_v1() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n";
        assert_eq!(header_len(h).unwrap(), Some(h.len()));
        assert_eq!(header_len(&h[..10]).unwrap(), None);
        assert_eq!(
            parse_proxy_header(h).unwrap(),
            Some("192.0.2.1:56324".parse().unwrap())
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n";
        assert_eq!(
            parse_proxy_header(h6).unwrap(),
            Some("[2001:db8::1]:1000".parse().unwrap())
        );
        assert_eq!(parse_proxy_header(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_proxy_header(b"PROXY TCP4 nope 1.2.3.4 1 2\r\n").is_err());
        assert!(header_len(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn proxy_v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&[203, 0, 113, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        assert_eq!(header_len(&h).unwrap(), Some(28));
        assert_eq!(header_len(&h[..14]).unwrap(), None);
        assert_eq!(
            parse_proxy_header(&h).unwrap(),
            Some("203.0.113.9:8080".parse().unwrap())
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_proxy_header(&local).unwrap(), None);
    }
}
