//! Body types: the request body sent upstream and the response body sent to
//! the client (which carries the in-flight guard and the pooled connection).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::upstream::InFlight;

/// Tracks when a streamed request body has been fully handed to the upstream
/// connection, so the response-header timeout only starts counting then.
#[derive(Debug)]
pub(crate) struct UploadState {
    start: Instant,
    /// Nanoseconds after `start` at which the upload finished; 0 = not yet.
    done_after_nanos: AtomicU64,
}

impl UploadState {
    fn mark_done(&self) {
        if self.done_after_nanos.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.done_after_nanos.store(nanos.max(1), Ordering::Release);
        }
    }

    /// When the upload finished, if it has.
    pub(crate) fn done_at(&self) -> Option<Instant> {
        match self.done_after_nanos.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.start + std::time::Duration::from_nanos(n)),
        }
    }
}

/// The body of a request forwarded upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    /// No body (also used when a body-less request is replayed).
    Empty,
    /// The client's body, streamed through as-is.
    Stream {
        inner: Incoming,
        upload: Arc<UploadState>,
    },
}

impl ReqBody {
    /// Wrap the client's body; returns the upload tracker for non-empty bodies.
    pub(crate) fn new(incoming: Incoming) -> (Self, Option<Arc<UploadState>>) {
        if incoming.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let upload = Arc::new(UploadState {
            start: Instant::now(),
            done_after_nanos: AtomicU64::new(0),
        });
        let body = ReqBody::Stream {
            inner: incoming,
            upload: Arc::clone(&upload),
        };
        (body, Some(upload))
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream { inner, upload } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !inner.is_end_stream() => {}
                    _ => upload.mark_done(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// What a response body owes its upstream once it is done: the connection
/// goes back to the pool (if the response was read completely) and the
/// in-flight count is decremented.
pub(crate) struct Lease {
    pub(crate) in_flight: InFlight,
    pub(crate) sender: SendRequest<ReqBody>,
    pub(crate) max_idle: usize,
}

impl Lease {
    fn finish(self, reusable: bool) {
        let Lease {
            in_flight,
            sender,
            max_idle,
        } = self;
        if reusable {
            in_flight.upstream().release(sender, max_idle);
        } else {
            drop(sender);
        }
        // Decrement only after the connection is back in the pool, so that a
        // drain followed by `close_idle` also closes it.
        drop(in_flight);
    }
}

/// The body of a response sent to the client.
pub struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
    },
}

impl ProxyBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(bytes)),
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
            Kind::Full(_) => f.write_str("ProxyBody::Full"),
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
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { inner, lease } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
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
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Kind::Upstream { inner, lease } = &mut self.kind
            && let Some(lease) = lease.take()
        {
            // A body that was never polled (HEAD, 204, 304, or hyper saw
            // `is_end_stream`) is complete; anything else was cut short and
            // its connection cannot be reused.
            lease.finish(inner.is_end_stream());
        }
    }
}
