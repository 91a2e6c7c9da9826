//! The fast path: plain HTTP/1.1 requests forwarded by hand.
//!
//! Almost every request a service gets is a well-formed HTTP/1.1 request
//! with no body or a small one. For those, one task per client connection
//! parses the head in place (`httparse`), writes the rewritten head to an
//! upstream socket it owns, parses the response head and streams the body
//! back: two reads and two writes per request, no task hand-offs, no
//! channels, and one allocation (the exchange's boxed state; buffers come
//! from a per-worker free list).
//!
//! Anything else is handed, with the bytes already read, to hyper's path
//! (`proxy.rs`) for the rest of the connection: HTTP/1.0, `Upgrade`,
//! `Expect`, `Transfer-Encoding` or bodies over [`MAX_BODY`], heads over
//! [`MAX_HEAD`], absolute-form targets, `CONNECT`, `Connection` headers
//! naming other headers, and anything `httparse` rejects (hyper answers 400).
//! A request it would take but for its `Host` (missing, repeated or invalid)
//! it answers 400 itself, as hyper's path does (`proxy::host_rejected`).
//! The fast path therefore only ever sees unambiguous messages, and the
//! behaviour users see (headers, metrics, access log, timeouts, retries,
//! draining) is the same on both paths; the proxy tests run over both.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::access_log::Entry;
use crate::admit::{RATE_LIMITED, host_rejected, rate_limited};
use crate::client::ConnCtx;
use crate::failover::{is_replayable, pooled_or_connect, upstream_failed};
use crate::headers::{HeaderView, new_request_id_bytes, new_traceparent_bytes, valid_traceparent};
use crate::pending_log::PendingLog;
use crate::upstream::InFlight;

/// Longest request head the fast path reads; longer ones go to hyper's path.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body the fast path takes (read whole, then forwarded);
/// larger ones are streamed by hyper's path.
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// Headers per message the fast path parses; more go to hyper's path.
pub(crate) const MAX_HEADERS: usize = 64;
/// Longest response head accepted from an upstream (hyper's client allows
/// about as much).
const MAX_RESPONSE_HEAD: usize = 400 * 1024;
/// Headers per response accepted from an upstream (as hyper's client).
const MAX_RESPONSE_HEADERS: usize = 100;
/// Read buffer for upstream responses.
const RESPONSE_BUF: usize = 16 * 1024;

/// How a connection left the fast path.
pub(crate) enum Served {
    /// The connection is finished (closed, timed out or failed).
    Closed,
    /// Serve the rest of the connection with hyper: the socket and the bytes
    /// already read from it.
    Fallback(TcpStream, Vec<u8>),
}

/// Serve `client` on the fast path for as long as its requests qualify.
pub(crate) async fn serve(
    ctx: &Arc<ConnCtx>,
    client: TcpStream,
    shutdown: &mut watch::Receiver<bool>,
) -> Served {
    let mut conn = Conn {
        ctx,
        client,
        input: Buf::new(Class::Input),
        out: Buf::new(Class::Out),
        resp: Buf::new(Class::Response),
        request_id: Vec::with_capacity(64),
        timer: Timer::new(),
    };
    loop {
        let options = &ctx.config.options;
        // The whole head must arrive within idle_timeout of when we started
        // waiting for it (slowloris), as with hyper's header_read_timeout.
        conn.timer.set(Instant::now() + options.idle_timeout);
        if conn.input.is_empty()
            && !wait_idle(&conn.client, &mut conn.input, &mut conn.timer, shutdown).await
        {
            return Served::Closed;
        }
        let request = loop {
            match conn.prepare() {
                Prepared::Partial if conn.input.len() < MAX_HEAD => {
                    // A request not yet read in full is not in flight: on
                    // shutdown the connection closes (as hyper's does).
                    let read = tokio::select! {
                        biased;
                        read = within(&mut conn.timer, read_more(&mut conn.client, &mut conn.input)) => read,
                        _ = shutdown.wait_for(|stop| *stop) => return Served::Closed,
                    };
                    match read {
                        Some(Ok(n)) if n > 0 => {}
                        _ => return Served::Closed,
                    }
                }
                Prepared::NeedBody => {
                    // Each pause in the body may last client_body_timeout.
                    conn.timer.set(Instant::now() + options.client_body_timeout);
                    match within(
                        &mut conn.timer,
                        read_more(&mut conn.client, &mut conn.input),
                    )
                    .await
                    {
                        Some(Ok(n)) if n > 0 => {}
                        Some(_) => {
                            // The client went away mid-body: logged as the
                            // 400 hyper's path logs.
                            if let Some(mut log) = conn.unfinished_log() {
                                log.entry.status = StatusCode::BAD_REQUEST;
                                log.send();
                            }
                            return Served::Closed;
                        }
                        None => {
                            let log = conn.unfinished_log();
                            let _ = Box::pin(conn.local_logged(
                                StatusCode::REQUEST_TIMEOUT,
                                b"request body timed out: the client paused too long\n",
                                None,
                                true,
                                log,
                            ))
                            .await;
                            return Served::Closed;
                        }
                    }
                }
                Prepared::Partial | Prepared::Fallback => {
                    return Served::Fallback(conn.client, conn.input.take());
                }
                Prepared::Ready(request) => break request,
            }
        };
        let consumed = request.consumed;
        let keep_open = match request.action {
            Action::Local {
                status,
                body,
                retry_after,
                log,
            } => {
                let close = request.close || *shutdown.borrow();
                Box::pin(conn.local_logged(status, &body, retry_after, close, log))
                    .await
                    .is_ok()
                    && !close
            }
            Action::Forward(forward) => {
                let close = request.close;
                // Boxed: the exchange's state is only needed while a request
                // is in progress, not by every idle connection's task.
                Box::pin(conn.forward(forward, close, shutdown)).await
            }
        };
        conn.out.release();
        if !keep_open {
            return Served::Closed;
        }
        conn.input.drain(..consumed);
        if conn.input.is_empty() {
            // Idle connections hold no read buffers.
            conn.input.release();
        }
    }
}

/// One client connection on the fast path.
struct Conn<'a> {
    ctx: &'a Arc<ConnCtx>,
    client: TcpStream,
    /// Bytes read from the client not yet consumed (pipelined requests
    /// included); lent by the worker's free list while there are any.
    input: Buf,
    /// The request head (and body) for the upstream, then the response head
    /// for the client.
    out: Buf,
    /// Bytes read from the upstream; lent while a request is forwarded.
    resp: Buf,
    /// The current request's `X-Request-Id`.
    request_id: Vec<u8>,
    timer: Timer,
}

enum Prepared {
    /// The head is not complete yet.
    Partial,
    /// The head is complete, the body not yet.
    NeedBody,
    /// Not for the fast path.
    Fallback,
    Ready(Request),
}

/// A complete request, ready to be answered.
struct Request {
    /// Bytes of `input` it occupies (head and body).
    consumed: usize,
    /// The client asked to close the connection after it.
    close: bool,
    action: Action,
}

enum Action {
    /// Answer it ourselves.
    Local {
        status: StatusCode,
        body: Bytes,
        retry_after: Option<u64>,
        log: Option<PendingLog>,
    },
    /// `out` holds the request for the upstream.
    Forward(Forward),
}

struct Forward {
    in_flight: InFlight,
    start: Instant,
    head: bool,
    replayable: bool,
    log: Option<PendingLog>,
}

/// How the client's request head treats a header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqHeader {
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

fn classify_request_header(name: &str) -> ReqHeader {
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
fn plain_path(path: &str) -> bool {
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
fn parse_length(value: &[u8]) -> Option<u64> {
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
    /// `Some(body)`: answer `400` with it (`proxy::host_rejected`).
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

impl Conn<'_> {
    /// Parse the request at the start of `input` and decide what to do with
    /// it; for a forwarded request, write its upstream head into `out`.
    fn prepare(&mut self) -> Prepared {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let PlainHead {
            method,
            path,
            headers,
            head_len,
            body_len,
            seen_length,
            close,
            request_id,
            traceparent_ok,
            rejected,
        } = match parse_head(&self.input, &mut headers) {
            Head::Partial => return Prepared::Partial,
            Head::Fallback => return Prepared::Fallback,
            Head::Plain(head) => head,
        };
        // Set before the body has arrived: a 408 for it carries the id.
        self.request_id.clear();
        match request_id {
            Some(id) => self.request_id.extend_from_slice(id),
            None => self.request_id.extend_from_slice(&new_request_id_bytes()),
        }
        let ctx = self.ctx;
        if let Some(body) = rejected {
            // Answered at once, body or not, and the connection closed after
            // it (as on hyper's path): nothing of it reaches an upstream.
            let new_traceparent = (!traceparent_ok).then(new_traceparent_bytes);
            let traceparent_name = crate::headers::TRACEPARENT;
            let traceparent = match &new_traceparent {
                Some(new) => Some(&new[..]),
                None => headers.value_of(&traceparent_name),
            };
            let log = new_log(
                ctx,
                headers,
                method,
                path,
                &self.request_id,
                traceparent,
                Instant::now(),
            );
            return Prepared::Ready(Request {
                consumed: head_len,
                close: true,
                action: Action::Local {
                    status: StatusCode::BAD_REQUEST,
                    body: Bytes::from_static(body),
                    retry_after: None,
                    log,
                },
            });
        }
        let consumed = head_len + body_len as usize;
        if self.input.len() < consumed {
            return Prepared::NeedBody;
        }

        let shared = ctx.shared();
        let start = Instant::now();
        let new_traceparent = (!traceparent_ok).then(new_traceparent_bytes);

        // Second pass: the upstream's request head, written before routing
        // so that routing (stickiness) and the rate limit see the headers
        // as the upstream will, as on hyper's path.
        let out = self.out.get();
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for = false;
        let mut traceparent_kept = false;
        for h in headers {
            match classify_request_header(h.name) {
                ReqHeader::Keep | ReqHeader::Host => {}
                ReqHeader::Tracestate if traceparent_ok => {}
                ReqHeader::Traceparent if traceparent_ok && !traceparent_kept => {
                    traceparent_kept = true;
                }
                ReqHeader::ForwardedFor if ctx.trusted => {
                    // Collected below, in order, into one header.
                    forwarded_for |= !h.value.is_empty();
                    continue;
                }
                _ => continue,
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if seen_length {
            // One canonical Content-Length, however the client wrote it.
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(body_len, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        let xff_start = out.len();
        if forwarded_for {
            for h in headers {
                if classify_request_header(h.name) == ReqHeader::ForwardedFor && !h.value.is_empty()
                {
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b", ");
                }
            }
        }
        out.extend_from_slice(ctx.client_ip.as_bytes());
        let xff = xff_start..out.len();
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-request-id: ");
        out.extend_from_slice(&self.request_id);
        if let Some(new) = &new_traceparent {
            out.extend_from_slice(b"\r\ntraceparent: ");
            out.extend_from_slice(new);
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.input[head_len..consumed]);

        let traceparent_name = crate::headers::TRACEPARENT;
        let traceparent = match &new_traceparent {
            Some(new) => Some(&new[..]),
            None => headers.value_of(&traceparent_name),
        };
        let view = Rewritten {
            raw: headers,
            forwarded_for: &self.out[xff],
            request_id: &self.request_id,
            traceparent,
        };
        let log = new_log(
            ctx,
            headers,
            method,
            path,
            &self.request_id,
            traceparent,
            start,
        );
        let local = |status, body, retry_after, log| {
            Prepared::Ready(Request {
                consumed,
                close,
                action: Action::Local {
                    status,
                    body,
                    retry_after,
                    log,
                },
            })
        };
        let client = log.as_ref().map(|log| log.entry.client);
        if let Some(secs) = rate_limited(ctx, &view, client, start.into_std()) {
            return local(
                StatusCode::TOO_MANY_REQUESTS,
                Bytes::from_static(RATE_LIMITED),
                Some(secs),
                log,
            );
        }
        let Some(in_flight) = shared.acquire(&view, &[]) else {
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                shared.no_instance_body.clone(),
                None,
                log,
            );
        };
        let replayable = body_len == 0 && is_replayable(method, headers);
        Prepared::Ready(Request {
            consumed,
            close,
            action: Action::Forward(Forward {
                in_flight,
                start,
                head: method == "HEAD",
                replayable,
                log,
            }),
        })
    }

    /// The access-log entry of a request whose body never arrived in full
    /// (parsed again from `input`).
    fn unfinished_log(&self) -> Option<PendingLog> {
        self.ctx.config.log.as_ref()?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&self.input).ok()?;
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return None;
        };
        let traceparent = crate::headers::TRACEPARENT;
        new_log(
            self.ctx,
            req.headers,
            method,
            path,
            &self.request_id,
            req.headers.value_of(&traceparent),
            Instant::now(),
        )
    }

    /// Pick another upstream for the current request, skipping those in
    /// `tried`. Routes on the head written for the upstream (`out`), so a
    /// retry sees the rewritten forwarding headers as the first pick did.
    fn next_upstream(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<crate::Upstream>>,
    ) -> Result<InFlight, InFlight> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&self.out).is_err() {
            return Err(current);
        }
        self.ctx
            .shared()
            .next_upstream(current, tried, &*req.headers)
    }

    /// Forward the request in `out` and relay the response, or answer
    /// 502/504 if no upstream could. Returns whether the client connection
    /// stays open.
    async fn forward(
        &mut self,
        forward: Forward,
        client_close: bool,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let start = forward.start;
        let keep_open = match self.exchange(forward, client_close, shutdown).await {
            Ok(keep_open) => keep_open,
            Err(Failed {
                in_flight,
                status,
                mut log,
            }) => {
                let body = upstream_failed(in_flight, status, start.elapsed(), &mut log);
                let close = client_close || *shutdown.borrow();
                self.local_logged(status, body, None, close, log)
                    .await
                    .is_ok()
                    && !close
            }
        };
        self.resp.release();
        keep_open
    }

    /// Send the request upstream (retrying as `proxy.rs` does) and relay the
    /// response; `Err` when no upstream answered usefully.
    async fn exchange(
        &mut self,
        forward: Forward,
        client_close: bool,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<bool, Failed> {
        let Forward {
            mut in_flight,
            start,
            head,
            replayable,
            mut log,
        } = forward;
        let options = &self.ctx.config.options;
        let mut tried = Vec::new();
        let mut fresh_only = false;
        let upstream_conn = loop {
            let found = pooled_or_connect(
                &self.ctx.shared().service,
                in_flight,
                fresh_only,
                crate::Upstream::checkout_raw,
                |upstream| async move { upstream.connect_raw(options.connect_timeout).await },
                |current| self.next_upstream(current, &mut tried),
            )
            .await;
            let (mut stream, reused);
            (in_flight, stream, reused) = match found {
                Ok(found) => found,
                Err(last) => {
                    return Err(Failed {
                        in_flight: last,
                        status: StatusCode::BAD_GATEWAY,
                        log,
                    });
                }
            };
            let upstream = in_flight.upstream();
            self.timer
                .set(Instant::now() + options.response_header_timeout);
            let sent = within(&mut self.timer, stream.write_all(&self.out)).await;
            let failure = match sent {
                Some(Ok(())) => match self.read_response_head(&mut stream).await {
                    Ok(head_len) => break (stream, head_len),
                    Err(failure) => failure,
                },
                Some(Err(_)) => HeadFailure::Closed { any: false },
                None => HeadFailure::Timeout,
            };
            match failure {
                HeadFailure::Closed { any: false } if reused && replayable => {
                    // A pooled connection the upstream had closed: try a new one.
                    tracing::debug!("pooled connection was stale; replaying");
                    fresh_only = true;
                }
                HeadFailure::Closed { .. } | HeadFailure::Invalid(_) => {
                    let why = match &failure {
                        HeadFailure::Invalid(why) => why,
                        _ => "the connection closed before a response",
                    };
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = upstream.instance_id(),
                        error = why,
                        "upstream request failed"
                    );
                    return Err(Failed {
                        in_flight,
                        status: StatusCode::BAD_GATEWAY,
                        log,
                    });
                }
                HeadFailure::Timeout => {
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = upstream.instance_id(),
                        "upstream response header timeout"
                    );
                    return Err(Failed {
                        in_flight,
                        status: StatusCode::GATEWAY_TIMEOUT,
                        log,
                    });
                }
            }
        };
        let (stream, head_len) = upstream_conn;
        let upstream = in_flight.upstream();

        // The response head for the client (parsed in a plain function, so
        // that its header array is not kept in this future's state).
        let shutting_down = *shutdown.borrow();
        let Some(RespHead {
            status,
            framing,
            mut upstream_keeps,
            until_close,
            close,
        }) = self.response_head(head_len, head, client_close || shutting_down, upstream)
        else {
            tracing::warn!(
                service = %self.ctx.shared().service,
                instance = upstream.instance_id(),
                "upstream sent an invalid Content-Length"
            );
            return Err(Failed {
                in_flight,
                status: StatusCode::BAD_GATEWAY,
                log,
            });
        };
        upstream.stats().record(status, start.elapsed());
        if let Some(log) = log.as_mut() {
            log.entry.status = status;
            log.served_by(upstream);
        }

        // The body: what came with the head, then the rest as it arrives.
        let mut framing = framing;
        let mut bytes = 0u64;
        let mut first = head_len..self.resp.len();
        let mut sent_head = false;
        // The upstream connection and the in-flight count, until the
        // upstream's part is over.
        let mut lease = Some((stream, in_flight));
        let complete = loop {
            let chunk = &self.resp[first.clone()];
            let (take, done) = match framing.advance(chunk) {
                Ok(step) => step,
                Err(()) => break false,
            };
            if take < chunk.len() {
                // Bytes past the end of the response: the connection is not
                // in a state to be reused.
                upstream_keeps = false;
            }
            if done && let Some((stream, in_flight)) = lease.take() {
                // The whole response is read: the connection goes back to
                // the pool before the in-flight count drops (so that a drain
                // followed by `close_idle` closes it), both before the last
                // write to the client.
                if upstream_keeps {
                    let upstream = in_flight.upstream();
                    upstream.release_raw(stream, options.max_idle_per_upstream);
                }
                drop(in_flight);
            }
            let body = &chunk[..take];
            bytes += body.len() as u64;
            self.timer.set(Instant::now() + options.send_timeout);
            let written = if sent_head {
                within(&mut self.timer, self.client.write_all(body)).await
            } else {
                sent_head = true;
                within(
                    &mut self.timer,
                    write_two(&mut self.client, &self.out, body),
                )
                .await
            };
            if !matches!(written, Some(Ok(()))) {
                // The client is gone or stopped reading.
                break false;
            }
            if done {
                break true;
            }
            let Some((stream, _)) = lease.as_mut() else {
                break false;
            };
            self.resp.clear();
            match read_more(stream, &mut self.resp).await {
                Ok(0) => break until_close,
                Ok(_) => first = 0..self.resp.len(),
                Err(_) => break false,
            }
        };
        // A response cut short (or delimited by closing): its connection is
        // closed, not reused.
        drop(lease);
        finish_log(log, framing.body_bytes(bytes));
        Ok(complete && !close)
    }

    /// Parse the upstream's response head (`resp[..head_len]`) and write the
    /// client's into `out`. `None`: its framing is invalid.
    fn response_head(
        &mut self,
        head_len: usize,
        head: bool,
        close_client: bool,
        upstream: &crate::Upstream,
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
    async fn read_response_head(&mut self, stream: &mut TcpStream) -> Result<usize, HeadFailure> {
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

    async fn local_logged(
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

fn finish_log(log: Option<PendingLog>, bytes: u64) {
    if let Some(mut log) = log {
        log.entry.bytes = bytes;
        log.send();
    }
}

/// The access-log entry of a request (`None` when the log is off).
fn new_log(
    ctx: &Arc<ConnCtx>,
    headers: &[httparse::Header<'_>],
    method: &str,
    path: &str,
    request_id: &[u8],
    traceparent: Option<&[u8]>,
    start: Instant,
) -> Option<PendingLog> {
    ctx.config.log.as_ref()?;
    Some(PendingLog {
        entry: Box::new(Entry {
            time: SystemTime::now(),
            client: ctx.client_addr(headers),
            method: Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            // `plain_path` only lets through targets `Uri` accepts.
            uri: Uri::try_from(path).unwrap_or_default(),
            status: StatusCode::OK,
            revision: None,
            instance: None,
            duration: Duration::ZERO,
            bytes: 0,
            request_id: header_value(request_id),
            traceparent: traceparent.map(header_value),
            user_agent: headers
                .value_of(&http::header::USER_AGENT)
                .map(header_value),
        }),
        start: start.into_std(),
        config: Arc::clone(&ctx.config),
    })
}

/// The request's headers as the upstream receives them: the rewritten
/// forwarding, id and trace headers over the client's own (routing and the
/// rate limit read these, as on hyper's path).
struct Rewritten<'a> {
    raw: &'a [httparse::Header<'a>],
    forwarded_for: &'a [u8],
    request_id: &'a [u8],
    traceparent: Option<&'a [u8]>,
}

impl HeaderView for Rewritten<'_> {
    fn values<'a>(
        &'a self,
        name: &'a http::HeaderName,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        let set: Option<Option<&'a [u8]>> = if *name == crate::headers::X_FORWARDED_FOR {
            Some(Some(self.forwarded_for))
        } else if *name == crate::headers::X_REQUEST_ID {
            Some(Some(self.request_id))
        } else if *name == crate::headers::TRACEPARENT {
            Some(self.traceparent)
        } else if *name == crate::headers::X_FORWARDED_PROTO {
            Some(Some(b"http"))
        } else {
            None
        };
        let raw = set.is_none();
        set.flatten()
            .into_iter()
            .chain(self.raw.values(name).filter(move |_| raw))
    }
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
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

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A request no upstream answered: what `Conn::forward` answers for it.
struct Failed {
    in_flight: InFlight,
    status: StatusCode,
    log: Option<PendingLog>,
}

enum HeadFailure {
    /// The connection closed or failed; `any`: some response bytes came.
    Closed {
        any: bool,
    },
    Invalid(&'static str),
    Timeout,
}

/// How the upstream's response head treats a header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RespHeader {
    Keep,
    Date,
    Drop,
    Connection,
    ContentLength,
    TransferEncoding,
}

fn classify_response_header(name: &str) -> RespHeader {
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
struct RespHead {
    status: StatusCode,
    framing: Framing,
    /// The upstream connection may be reused after the body.
    upstream_keeps: bool,
    /// The body ends when the upstream closes.
    until_close: bool,
    /// Close the client connection after this response.
    close: bool,
}

/// Where a response body ends.
enum Framing {
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
    fn body_bytes(&self, relayed: u64) -> u64 {
        match self {
            Framing::Chunked(scanner) => scanner.data,
            _ => relayed,
        }
    }

    /// Of `data` just read, how many bytes belong to the body, and whether
    /// the body is complete with them.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
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
struct ChunkScanner {
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

/// Read what is available into the spare capacity of `buf`.
async fn read_more(stream: &mut TcpStream, buf: &mut Buf) -> io::Result<usize> {
    let buf = buf.get();
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// Wait for the next request on an idle connection, taking a buffer only
/// once there are bytes to read. `false`: the connection is to close (the
/// client closed it or failed, the idle timeout passed, or shutdown).
///
/// Written as one poll function over the socket's readiness, the timer and
/// the shutdown signal, so that the state an idle connection keeps is small.
async fn wait_idle(
    stream: &TcpStream,
    buf: &mut Buf,
    timer: &mut Timer,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let mut stop = pin!(shutdown.changed());
    poll_fn(|cx| {
        while stream.poll_read_ready(cx).is_ready() {
            match stream.try_read_buf(buf.get()) {
                Ok(n) => return Poll::Ready(n > 0),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => buf.release(),
                Err(_) => return Poll::Ready(false),
            }
        }
        if stop.as_mut().poll(cx).is_ready() || timer.poll_expired(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// The two kinds of read buffer, and their sizes.
#[derive(Clone, Copy)]
enum Class {
    /// Bytes from the client.
    Input = 0,
    /// Bytes from the upstream.
    Response = 1,
    /// A head being written (to the upstream, then to the client).
    Out = 2,
}

const CLASS_SIZE: [usize; 3] = [4096, RESPONSE_BUF, 1024];

/// Buffers kept per class by each worker thread.
const FREE_BUFFERS: usize = 64;

thread_local! {
    static FREE: std::cell::RefCell<[Vec<Vec<u8>>; 3]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// A read buffer taken from the worker's free list when first needed and
/// given back when released (or dropped), so that memory follows the
/// requests in progress rather than the connections open, as nginx's does.
struct Buf {
    vec: Vec<u8>,
    class: Class,
}

impl Buf {
    fn new(class: Class) -> Buf {
        Buf {
            vec: Vec::new(),
            class,
        }
    }

    /// The buffer, taken from the free list if not held yet.
    fn get(&mut self) -> &mut Vec<u8> {
        if self.vec.capacity() == 0 {
            let class = self.class as usize;
            self.vec = FREE
                .with(|free| free.borrow_mut()[class].pop())
                .unwrap_or_else(|| Vec::with_capacity(CLASS_SIZE[class]));
        }
        &mut self.vec
    }

    /// Give the buffer back (its contents are discarded).
    fn release(&mut self) {
        let class = self.class as usize;
        let mut vec = std::mem::take(&mut self.vec);
        let size = CLASS_SIZE[class];
        if (size..=4 * size).contains(&vec.capacity()) {
            vec.clear();
            // `try_with`: a connection may be dropped while its thread exits.
            let _ = FREE.try_with(|free| {
                let mut free = free.borrow_mut();
                if free[class].len() < FREE_BUFFERS {
                    free[class].push(vec);
                }
            });
        }
    }

    /// The bytes, leaving the buffer empty (not returned to the free list).
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.vec)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::ops::Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.vec
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }
}

/// Write `a` then `b` with as few syscalls as possible.
async fn write_two(stream: &mut TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    let total = a.len() + b.len();
    let mut done = 0;
    while done < total {
        let n = if done < a.len() {
            stream
                .write_vectored(&[IoSlice::new(&a[done..]), IoSlice::new(b)])
                .await?
        } else {
            stream.write(&b[done - a.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// A connection's one timer. Setting a deadline only stores it; the
/// underlying `Sleep` is re-armed when it fires early or when a deadline
/// moves earlier, so a request costs no timer-wheel work.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    deadline: Instant,
}

impl Timer {
    fn new() -> Timer {
        let far = Instant::now() + Duration::from_secs(86_400);
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            armed: far,
            deadline: far,
        }
    }

    fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.armed {
            self.armed = deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Ready once the current deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            self.armed = self.deadline;
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}

/// `fut`'s output, or `None` if the timer's deadline passes first.
async fn within<F: Future>(timer: &mut Timer, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.poll_expired(cx).map(|()| None)
    })
    .await
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

    #[test]
    fn request_headers_are_classified() {
        assert!(ReqHeader::Fallback == classify_request_header("Transfer-Encoding"));
        assert!(ReqHeader::Fallback == classify_request_header("upgrade"));
        assert!(ReqHeader::Fallback == classify_request_header("Expect"));
        assert!(ReqHeader::Connection == classify_request_header("CONNECTION"));
        assert!(ReqHeader::Drop == classify_request_header("X-Forwarded-Proto"));
        assert!(ReqHeader::Keep == classify_request_header("x-forwarded-host"));
        assert!(RespHeader::Drop == classify_response_header("X-Ferry-Revision"));
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b"+42"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"4 2"), None);
        assert!(plain_path("/a?b=c&d=%20e"));
        assert!(plain_path("/users/@me/(x)*;y,z:1!$'+~"));
        assert!(!plain_path("http://x/"));
        assert!(!plain_path("/caf\u{e9}"));
        for odd in [
            "/a b", "/<x>", "/a`b", "/a\"b", "/a{b}", "/a|b", "/a\\b", "/a^b", "/p#frag",
        ] {
            assert!(!plain_path(odd), "{odd}");
        }
    }
}
