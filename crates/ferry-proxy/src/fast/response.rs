//! Response heads on the fast path: the upstream's read (interim `1xx`
//! skipped) and rewritten for the client (hop-by-hop headers dropped,
//! `X-Ferry-Revision`, `X-Request-Id`, `Date`, its framing decided), and
//! the answers the proxy writes itself.

use std::io;
use std::time::SystemTime;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::fast::conn::{Conn, read_more};
use crate::fast::framing::{ChunkScanner, Framing};
use crate::fast::parse_head::parse_length;
use crate::fast::timer::within;
use crate::pending_log::PendingLog;
use crate::upstream::Upstream;

/// Longest response head accepted from an upstream (hyper's client allows
/// about as much).
const MAX_RESPONSE_HEAD: usize = 400 * 1024;

/// Headers per response accepted from an upstream (as hyper's client).
const MAX_RESPONSE_HEADERS: usize = 100;

pub(super) enum HeadFailure {
    /// The connection closed or failed; `any`: some response bytes came.
    Closed {
        any: bool,
    },
    Invalid(&'static str),
    Timeout,
}

/// How the upstream's response head treats a header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RespHeader {
    Keep,
    Date,
    Drop,
    Connection,
    ContentLength,
    TransferEncoding,
}

pub(super) fn classify_response_header(name: &str) -> RespHeader {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => RespHeader::Drop,
        4 if is("date") => RespHeader::Date,
        7 if is("upgrade") || is("trailer") => RespHeader::Drop,
        10 if is("connection") => RespHeader::Connection,
        10 if is("keep-alive") => RespHeader::Drop,
        12 if is("x-request-id") => RespHeader::Drop,
        14 if is("content-length") => RespHeader::ContentLength,
        16 if is("x-ferry-revision") || is("proxy-connection") => RespHeader::Drop,
        17 if is("transfer-encoding") => RespHeader::TransferEncoding,
        _ => RespHeader::Keep,
    }
}

/// What `Conn::response_head` found.
pub(super) struct RespHead {
    pub(super) status: StatusCode,
    pub(super) framing: Framing,
    /// The upstream connection may be reused after the body.
    pub(super) upstream_keeps: bool,
    /// The body ends when the upstream closes.
    pub(super) until_close: bool,
    /// Close the client connection after this response.
    pub(super) close: bool,
}

impl Conn<'_> {
    /// Parse the upstream's response head (`resp[..head_len]`) and write the
    /// client's into `out`. `None`: its framing is invalid.
    pub(super) fn response_head(
        &mut self,
        head_len: usize,
        head: bool,
        close_client: bool,
        upstream: &Upstream,
    ) -> Option<RespHead> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = resp.parse(&self.resp[..head_len]) else {
            unreachable!("read_response_head returned a complete head");
        };
        let code = resp.code.unwrap_or(502);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut upstream_keeps = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut encoded = false;
        let mut bad_length = false;
        let mut named: Vec<&[u8]> = Vec::new();
        let mut dated = false;
        for h in resp.headers.iter() {
            match classify_response_header(h.name) {
                RespHeader::Date => dated = true,
                RespHeader::Connection => {
                    for token in h.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            upstream_keeps = false;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                            named.push(token);
                        }
                    }
                }
                RespHeader::TransferEncoding => {
                    encoded = true;
                    chunked = h
                        .value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
                RespHeader::ContentLength => match parse_length(h.value) {
                    Some(len) if length.is_none_or(|l| l == len) => length = Some(len),
                    _ => bad_length = true,
                },
                _ => {}
            }
        }
        let bodyless = head || code < 200 || code == 204 || code == 304;
        let framing = if bodyless {
            Framing::Length(0)
        } else if encoded {
            // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
            if chunked {
                Framing::Chunked(ChunkScanner::default())
            } else {
                Framing::UntilClose
            }
        } else if bad_length {
            return None;
        } else {
            match length {
                Some(len) => Framing::Length(len),
                None => Framing::UntilClose,
            }
        };
        let until_close = matches!(framing, Framing::UntilClose);
        let close = close_client || until_close;

        let out = self.out.get();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            match classify_response_header(h.name) {
                RespHeader::Keep => {
                    if named
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
                    {
                        continue;
                    }
                }
                RespHeader::Date => {}
                RespHeader::ContentLength if !encoded => {}
                RespHeader::TransferEncoding if chunked && !bodyless => {}
                _ => continue,
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if !dated {
            // As hyper's server does (RFC 9110 6.6.1: a proxy may add one).
            push_date(out);
        }
        out.extend_from_slice(b"x-ferry-revision: ");
        out.extend_from_slice(upstream.revision_header().as_bytes());
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(&self.request_id);
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");

        Some(RespHead {
            status,
            framing,
            upstream_keeps,
            until_close,
            close,
        })
    }

    /// Read the upstream's response head into `resp`, skipping interim
    /// (1xx) responses; returns its length.
    pub(super) async fn read_response_head(
        &mut self,
        stream: &mut TcpStream,
    ) -> Result<usize, HeadFailure> {
        self.resp.clear();
        loop {
            let read = within(&mut self.timer, read_more(stream, &mut self.resp)).await;
            match read {
                None => return Err(HeadFailure::Timeout),
                Some(Ok(0)) | Some(Err(_)) => {
                    return Err(HeadFailure::Closed {
                        any: !self.resp.is_empty(),
                    });
                }
                Some(Ok(_)) => {}
            }
            loop {
                let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.resp) {
                    Ok(httparse::Status::Complete(len)) => match resp.code {
                        None | Some(0..=99) => {
                            return Err(HeadFailure::Invalid("bad status code"));
                        }
                        Some(101) => {
                            return Err(HeadFailure::Invalid(
                                "switched protocols without being asked",
                            ));
                        }
                        Some(100..=199) => {
                            // Interim responses are not forwarded.
                            self.resp.drain(..len);
                            continue;
                        }
                        _ => return Ok(len),
                    },
                    Ok(httparse::Status::Partial) if self.resp.len() < MAX_RESPONSE_HEAD => break,
                    Ok(httparse::Status::Partial) => {
                        return Err(HeadFailure::Invalid("response head too large"));
                    }
                    Err(_) => return Err(HeadFailure::Invalid("malformed response head")),
                }
            }
        }
    }

    async fn local(
        &mut self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<u64>,
        close: bool,
    ) -> io::Result<()> {
        let out = self.out.get();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        push_date(out);
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\nx-request-id: ");
        out.extend_from_slice(&self.request_id);
        if let Some(secs) = retry_after {
            out.extend_from_slice(format!("\r\nretry-after: {secs}").as_bytes());
        }
        out.extend_from_slice(format!("\r\ncontent-length: {}", body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        self.timer
            .set(Instant::now() + self.ctx.config.options.send_timeout);
        match within(&mut self.timer, self.client.write_all(&self.out)).await {
            Some(res) => res,
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    pub(super) async fn local_logged(
        &mut self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<u64>,
        close: bool,
        log: Option<PendingLog>,
    ) -> io::Result<()> {
        let res = self.local(status, body, retry_after, close).await;
        if let Some(mut log) = log {
            log.entry.status = status;
            log.entry.bytes = body.len() as u64;
            log.send();
        }
        res
    }
}

/// Append `date: <now, IMF-fixdate>\r\n`, formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs || date.1.is_empty() {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}
