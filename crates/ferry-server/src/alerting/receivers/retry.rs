//! Delivering one notification to one integration: send, and on a
//! retryable failure wait (exponential backoff) and send again, until it
//! succeeds, fails for good, runs out of attempts or passes its deadline.
//! Every attempt is reported to the caller, which records it (the daemon
//! keeps them in its durable notification history).
//!
//! The daemon runs one [`deliver`] per alert group × integration, each in
//! its own task: waiting on one receiver blocks nothing else. A newer
//! notification for the same group and integration supersedes an older
//! one still retrying by dropping (aborting) its task.

use super::{Action, Integration, SendError};
use ferry_alert::notify::Notification;
use std::time::Duration;
use tokio::time::Instant;

/// How hard to try.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial_backoff: Duration,
    /// Each wait is the previous one times this.
    pub multiplier: f64,
    /// No wait is longer.
    pub max_backoff: Duration,
    /// Give up after this many attempts (at least 1 is made).
    pub max_attempts: u32,
    /// Give up once this passes: no attempt starts after it, and a wait
    /// that would end after it is not made.
    pub deadline: Option<Instant>,
}

impl Default for RetryPolicy {
    /// 100 ms, ×2, at most 10 s between attempts, 10 attempts, no deadline.
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(10),
            max_attempts: 10,
            deadline: None,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let f = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ms = (self.initial_backoff.as_secs_f64() * f).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(ms.max(0.0))
    }
}

/// What came of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// Nothing to send (an acknowledgement to a receiver without the
    /// notion, resolved alerts to one with `send_resolved: false`).
    Skipped,
    /// It failed; another attempt follows.
    Retrying,
    /// It failed and no attempt follows: not retryable, or out of
    /// attempts or time.
    GaveUp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Skipped => "skipped",
            Outcome::Retrying => "retrying",
            Outcome::GaveUp => "gave up",
        }
    }
}

/// One attempt, as reported to [`deliver`]'s caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The receiver's name.
    pub receiver: String,
    /// `webhook[0]`, …
    pub integration: String,
    /// 1-based.
    pub attempt: u32,
    pub outcome: Outcome,
    /// Why it failed (never a secret).
    pub error: Option<String>,
    /// How long the send took.
    pub duration: Duration,
}

/// Send `n` to `integration`, retrying retryable failures as `policy`
/// says, and report every attempt to `on_attempt` as it ends. The result
/// is the last attempt's.
pub async fn deliver(
    integration: &Integration,
    n: &Notification,
    action: Action,
    policy: &RetryPolicy,
    mut on_attempt: impl FnMut(Attempt),
) -> Result<(), SendError> {
    let report =
        |attempt: u32, outcome: Outcome, error: Option<String>, duration: Duration| Attempt {
            receiver: integration.receiver().to_string(),
            integration: integration.name(),
            attempt,
            outcome,
            error,
            duration,
        };
    if !integration.sends(n, action) {
        on_attempt(report(0, Outcome::Skipped, None, Duration::ZERO));
        return Ok(());
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let start = Instant::now();
        let sent = match policy.deadline {
            Some(d) => match tokio::time::timeout_at(d, integration.send(n, action)).await {
                Ok(r) => r,
                Err(_) => Err(SendError {
                    retryable: false,
                    message: format!("{}: the delivery deadline passed", integration.name()),
                }),
            },
            None => integration.send(n, action).await,
        };
        let duration = start.elapsed();
        let err = match sent {
            Ok(()) => {
                on_attempt(report(attempt, Outcome::Delivered, None, duration));
                return Ok(());
            }
            Err(e) => e,
        };
        let wait = policy.backoff(attempt);
        let in_time = policy.deadline.is_none_or(|d| Instant::now() + wait < d);
        let again = err.retryable && attempt < policy.max_attempts.max(1) && in_time;
        let outcome = if again {
            Outcome::Retrying
        } else {
            Outcome::GaveUp
        };
        on_attempt(report(
            attempt,
            outcome,
            Some(err.message.clone()),
            duration,
        ));
        if !again {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
    }
}
