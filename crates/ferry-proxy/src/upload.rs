//! The request body sent upstream on hyper's path: the client's body
//! streamed through frame by frame with a stall timer, and the record of
//! when it was fully handed over (the response-header timeout starts then).
//! The upstream pools hold connections typed by it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

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
