//! A connection's one timer, re-armed lazily, and [`within`], which runs a
//! future against its deadline: every fast-path timeout (idle, head, body,
//! response head, send) is a deadline set on it.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A connection's one timer. Setting a deadline only stores it; the
/// underlying `Sleep` is re-armed when it fires early or when a deadline
/// moves earlier, so a request costs no timer-wheel work.
pub(super) struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    deadline: Instant,
}

impl Timer {
    pub(super) fn new() -> Timer {
        let far = Instant::now() + Duration::from_secs(86_400);
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            armed: far,
            deadline: far,
        }
    }

    pub(super) fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.armed {
            self.armed = deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Ready once the current deadline has passed.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
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
pub(super) async fn within<F: Future>(timer: &mut Timer, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.poll_expired(cx).map(|()| None)
    })
    .await
}
