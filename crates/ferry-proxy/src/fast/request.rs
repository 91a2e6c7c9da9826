//! What the fast path does with a request `parse_head` took: answer it
//! itself (`400` for its `Host`, `429`, `503`) or write the head the
//! upstream gets (forwarding, id and trace headers rewritten) and pick the
//! upstream, with the rate limit and routing reading the headers as
//! rewritten, as on hyper's path; and the request's access-log entry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::admit::{RATE_LIMITED, rate_limited};
use crate::client::ConnCtx;
use crate::failover::is_replayable;
use crate::fast::conn::Conn;
use crate::fast::parse_head::{
    Head, MAX_HEADERS, PlainHead, ReqHeader, classify_request_header, parse_head,
};
use crate::headers::{
    HeaderView, TRACEPARENT, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
    new_request_id_bytes, new_traceparent_bytes,
};
use crate::pending_log::PendingLog;
use crate::upstream::InFlight;

pub(super) enum Prepared {
    /// The head is not complete yet.
    Partial,
    /// The head is complete, the body not yet.
    NeedBody,
    /// Not for the fast path.
    Fallback,
    Ready(Request),
}

/// A complete request, ready to be answered.
pub(super) struct Request {
    /// Bytes of `input` it occupies (head and body).
    pub(super) consumed: usize,
    /// The client asked to close the connection after it.
    pub(super) close: bool,
    pub(super) action: Action,
}

pub(super) enum Action {
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

pub(super) struct Forward {
    pub(super) in_flight: InFlight,
    pub(super) start: Instant,
    pub(super) head: bool,
    pub(super) replayable: bool,
    pub(super) log: Option<PendingLog>,
}

impl Conn<'_> {
    /// Parse the request at the start of `input` and decide what to do with
    /// it; for a forwarded request, write its upstream head into `out`.
    pub(super) fn prepare(&mut self) -> Prepared {
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
            let traceparent_name = TRACEPARENT;
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
            ctx.shared()
                .counters
                .unrouted
                .record(StatusCode::BAD_REQUEST, Duration::ZERO);
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

        let traceparent_name = TRACEPARENT;
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
            shared.counters.unrouted.record(status, start.elapsed());
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
        let in_flight = match shared.acquire(&view, &[]) {
            Ok(in_flight) => in_flight,
            Err(no_route) => {
                let (status, body) = no_route.pin_refusal().unwrap_or_else(|| {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        shared.no_instance_body.clone(),
                    )
                });
                return local(status, body, None, log);
            }
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
    pub(super) fn unfinished_log(&self) -> Option<PendingLog> {
        self.ctx.config.log.as_ref()?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&self.input).ok()?;
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return None;
        };
        let traceparent = TRACEPARENT;
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
        let set: Option<Option<&'a [u8]>> = if *name == X_FORWARDED_FOR {
            Some(Some(self.forwarded_for))
        } else if *name == X_REQUEST_ID {
            Some(Some(self.request_id))
        } else if *name == TRACEPARENT {
            Some(self.traceparent)
        } else if *name == X_FORWARDED_PROTO {
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

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}
