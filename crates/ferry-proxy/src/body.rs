//! The response body sent to the client on hyper's path, which carries the
//! in-flight guard and the pooled connection until the response is done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::pending_log::PendingLog;
use crate::upload::ReqBody;
use crate::upstream::InFlight;

/// What a response body owes its upstream once it is done: the connection
/// goes back to the pool (if the response was read completely) and the
/// in-flight count is decremented.
pub(crate) struct Lease {
    pub(crate) in_flight: InFlight,
    pub(crate) sender: SendRequest<ReqBody>,
    pub(crate) max_idle: usize,
    pub(crate) log: Option<PendingLog>,
}

impl Lease {
    fn finish(self, reusable: bool) {
        let Lease {
            in_flight,
            sender,
            max_idle,
            log,
        } = self;
        if reusable {
            in_flight.upstream().release(sender, max_idle);
        } else {
            drop(sender);
        }
        // Decrement only after the connection is back in the pool, so that a
        // drain followed by `close_idle` also closes it.
        drop(in_flight);
        if let Some(log) = log {
            log.send();
        }
    }
}

/// The body of a response sent to the client.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>, Option<PendingLog>),
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
    },
}

impl ProxyBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(bytes), None),
        }
    }

    /// A local response whose access-log line is sent when it is done.
    pub(crate) fn full_logged(bytes: Bytes, mut log: PendingLog) -> Self {
        log.entry.bytes = bytes.len() as u64;
        ProxyBody {
            kind: Kind::Full(Some(bytes), Some(log)),
        }
    }

    pub(crate) fn upstream(inner: Incoming, lease: Lease) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                inner,
                lease: Some(lease),
            },
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(..) => f.write_str("ProxyBody::Full"),
            Kind::Upstream { .. } => f.write_str("ProxyBody::Upstream"),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes, _) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { inner, lease } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                    && let Some(Lease { log: Some(log), .. }) = lease.as_mut()
                {
                    log.entry.bytes += data.map_or(0, |d| d.remaining() as u64);
                }
                let done = match &frame {
                    None => Some(true),
                    Some(Ok(_)) => inner.is_end_stream().then_some(true),
                    Some(Err(_)) => Some(false),
                };
                if let Some(reusable) = done
                    && let Some(lease) = lease.take()
                {
                    lease.finish(reusable);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes, _) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes), _) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None, _) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Upstream { inner, lease } => {
                if let Some(lease) = lease.take() {
                    // A body that was never polled (HEAD, 204, 304, or hyper saw
                    // `is_end_stream`) is complete; anything else was cut short and
                    // its connection cannot be reused.
                    lease.finish(inner.is_end_stream());
                }
            }
            Kind::Full(_, log) => {
                if let Some(log) = log.take() {
                    log.send();
                }
            }
        }
    }
}
