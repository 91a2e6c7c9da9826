//! The fast path's request grammar: where a request head ends, whether the
//! fast path takes it or hands the connection to hyper's path, whether its
//! `Host` is answered `400`, and how long its body is. Free of side effects
//! (the property tests in `tests/fuzz.rs` check it against httparse and
//! hyper's path); the limits it enforces live here too.

use crate::admit::host_rejected;
use crate::headers::valid_traceparent;

/// Longest request head the fast path reads; longer ones go to hyper's path.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Largest request body the fast path takes (read whole, then forwarded);
/// larger ones are streamed by hyper's path.
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// Headers per message the fast path parses; more go to hyper's path.
pub(crate) const MAX_HEADERS: usize = 64;

/// How the client's request head treats a header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqHeader {
    /// Forwarded as is.
    Keep,
    /// Hop-by-hop or rewritten by the proxy: not forwarded as is.
    Drop,
    Connection,
    ContentLength,
    ForwardedFor,
    RequestId,
    Traceparent,
    Tracestate,
    /// Checked (exactly one, valid) and forwarded as is.
    Host,
    /// The fast path does not handle it.
    Fallback,
}

pub(super) fn classify_request_header(name: &str) -> ReqHeader {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => ReqHeader::Drop,
        4 if is("host") => ReqHeader::Host,
        6 if is("expect") => ReqHeader::Fallback,
        7 if is("upgrade") => ReqHeader::Fallback,
        7 if is("trailer") => ReqHeader::Drop,
        10 if is("connection") => ReqHeader::Connection,
        10 if is("keep-alive") => ReqHeader::Drop,
        11 if is("traceparent") => ReqHeader::Traceparent,
        10 if is("tracestate") => ReqHeader::Tracestate,
        12 if is("x-request-id") => ReqHeader::RequestId,
        14 if is("content-length") => ReqHeader::ContentLength,
        15 if is("x-forwarded-for") => ReqHeader::ForwardedFor,
        16 if is("proxy-connection") => ReqHeader::Drop,
        17 if is("transfer-encoding") => ReqHeader::Fallback,
        17 if is("x-forwarded-proto") => ReqHeader::Drop,
        _ => ReqHeader::Keep,
    }
}

/// A request target the fast path forwards verbatim: origin-form, made of
/// RFC 3986 path and query characters only (unreserved, sub-delims, `:`,
/// `@`, `/`, `?`, `%`). Anything else (`"<>\\^`{|}#`, non-ASCII) is left to
/// hyper's path, which decides whether it is a 400 or how to forward it.
pub(super) fn plain_path(path: &str) -> bool {
    const fn table() -> [bool; 256] {
        let mut ok = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            ok[b] = c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                );
            b += 1;
        }
        ok
    }
    static PLAIN: [bool; 256] = table();
    path.starts_with('/') && path.bytes().all(|b| PLAIN[usize::from(b)])
}

/// A `Content-Length` value: digits only, no sign, no spaces.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// What [`parse_head`] found at the start of the client's bytes.
pub(crate) enum Head<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: hyper's path takes the connection.
    Fallback,
    /// A request the fast path takes: answered `400` if `rejected`, else
    /// forwarded.
    Plain(PlainHead<'h, 'b>),
}

/// A request head the fast path takes, as [`parse_head`] read it.
pub(crate) struct PlainHead<'h, 'b> {
    pub(crate) method: &'b str,
    /// Origin-form, of [`plain_path`] characters.
    pub(crate) path: &'b str,
    /// As the client sent them, in order.
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, up to and including the empty line.
    pub(crate) head_len: usize,
    /// The body's length (≤ [`MAX_BODY`]); 0 without `Content-Length`.
    pub(crate) body_len: u64,
    /// The request has a `Content-Length` (one value, maybe repeated).
    pub(crate) seen_length: bool,
    /// `Connection: close`.
    pub(crate) close: bool,
    /// The first non-empty `X-Request-Id`.
    pub(crate) request_id: Option<&'b [u8]>,
    /// The first `traceparent` is well formed.
    pub(crate) traceparent_ok: bool,
    /// `Some(body)`: answer `400` with it (`admit::host_rejected`).
    pub(crate) rejected: Option<&'static [u8]>,
}

/// Parse the request head at the start of `input` (with room for
/// `headers.len()` headers) and decide whether the fast path takes it: the
/// fast path's whole request grammar, free of side effects (the property
/// tests in `tests/fuzz.rs` check it against httparse and hyper's path).
pub(crate) fn parse_head<'h, 'b>(
    input: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Head<'h, 'b> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Fallback,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Fallback;
    };
    if method == "CONNECT" || !plain_path(path) {
        return Head::Fallback;
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    // Is it ours, how long is the body, what to keep.
    let mut body_len = 0u64;
    let mut seen_length = false;
    let mut close = false;
    let mut request_id: Option<&[u8]> = None;
    let mut traceparent_ok = false;
    let mut traceparent_seen = false;
    let mut hosts = 0usize;
    let mut host: &[u8] = b"";
    for h in headers {
        match classify_request_header(h.name) {
            ReqHeader::Fallback => return Head::Fallback,
            ReqHeader::Host => {
                if hosts == 0 {
                    host = h.value;
                }
                hosts += 1;
            }
            ReqHeader::ContentLength => {
                let Some(len) = parse_length(h.value) else {
                    return Head::Fallback;
                };
                if seen_length && len != body_len {
                    return Head::Fallback;
                }
                seen_length = true;
                body_len = len;
            }
            ReqHeader::Connection => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        // Names other headers as hop-by-hop (or asks to
                        // upgrade): hyper's path strips those.
                        return Head::Fallback;
                    }
                }
            }
            ReqHeader::RequestId if request_id.is_none() && !h.value.is_empty() => {
                request_id = Some(h.value);
            }
            ReqHeader::Traceparent if !traceparent_seen => {
                // As hyper's path: the first one counts.
                traceparent_seen = true;
                traceparent_ok = valid_traceparent(h.value);
            }
            _ => {}
        }
    }
    if body_len > MAX_BODY as u64 {
        return Head::Fallback;
    }
    Head::Plain(PlainHead {
        method,
        path,
        headers,
        head_len,
        body_len,
        seen_length,
        close,
        request_id,
        traceparent_ok,
        rejected: host_rejected(true, hosts, host),
    })
}
