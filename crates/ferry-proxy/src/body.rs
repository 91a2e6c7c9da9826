//! Body types: the request body sent upstream and the response body sent to
//! the client (which carries the in-flight guard and the pooled connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Sleep;

use crate::Config;
use crate::access_log::Entry;
use crate::upstream::InFlight;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tracks when a streamed request body has been fully handed to the upstream
/// connection, so the response-header timeout only starts counting then.
#[derive(Debug)]
pub(crate) struct UploadState {
    start: Instant,
    /// Nanoseconds after `start` at which the upload finished; 0 = not yet.
    done_after_nanos: AtomicU64,
    /// The client paused longer than `client_body_timeout`.
    timed_out: AtomicBool,
}

impl UploadState {
    fn mark_done(&self) {
        if self.done_after_nanos.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.done_after_nanos.store(nanos.max(1), Ordering::Release);
        }
    }

    /// Whether the client stalled past `client_body_timeout`.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
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
    /// The client's body, streamed through as-is, frame by frame: never
    /// held whole in memory.
    Stream(Box<Upload>),
}

/// A streamed request body and its stall timer.
#[derive(Debug)]
pub(crate) struct Upload {
    inner: Incoming,
    upload: Arc<UploadState>,
    /// Longest pause allowed between two pieces of the body.
    timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ReqBody {
    /// Wrap the client's body; returns the upload tracker for non-empty bodies.
    pub(crate) fn new(incoming: Incoming, timeout: Duration) -> (Self, Option<Arc<UploadState>>) {
        if incoming.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let upload = Arc::new(UploadState {
            start: Instant::now(),
            done_after_nanos: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
        });
        let body = ReqBody::Stream(Box::new(Upload {
            inner: incoming,
            upload: Arc::clone(&upload),
            timeout,
            stall: None,
            armed: false,
        }));
        (body, Some(upload))
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, ReqBody::Empty)
    }
}

impl Upload {
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.timeout;
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
        sleep.as_mut().poll(cx)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream(up) => {
                let frame = match Pin::new(&mut up.inner).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        ready!(up.poll_stall(cx));
                        up.upload.timed_out.store(true, Ordering::Relaxed);
                        up.upload.mark_done();
                        return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client paused its request body longer than client_body_timeout",
                        )))));
                    }
                };
                up.armed = false;
                match &frame {
                    Some(Ok(_)) if !up.inner.is_end_stream() => {}
                    _ => up.upload.mark_done(),
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream(up) => up.inner.size_hint(),
        }
    }
}

/// An access-log entry waiting for its response to finish.
pub(crate) struct PendingLog {
    pub(crate) entry: Box<Entry>,
    pub(crate) start: Instant,
    pub(crate) config: Arc<Config>,
}

impl PendingLog {
    /// Record which instance (and revision) the request went to.
    pub(crate) fn served_by(&mut self, upstream: &crate::Upstream) {
        self.entry.revision = Some(upstream.revision());
        self.entry.instance = Some(Arc::clone(upstream.instance()));
    }

    pub(crate) fn send(mut self) {
        self.entry.duration = self.start.elapsed();
        if let Some(log) = &self.config.log {
            log.log(self.entry);
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
