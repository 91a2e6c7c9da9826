//! How both paths reach an upstream and give up on one: a pooled or new
//! connection with a move to the next untried upstream when connecting
//! fails (which marks the upstream down for a cooldown), which requests may
//! be replayed (on a new connection, or once on another upstream when an
//! instance closed the connection without answering), and the accounting
//! of a request no upstream could serve.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::headers::HeaderView;
use crate::pending_log::PendingLog;
use crate::upstream::{InFlight, Upstream};

/// A connection to `in_flight`'s upstream, for either path's kind of
/// connection: a pooled one (`checkout`, unless `fresh_only`) or a new one
/// (`connect`). When connecting fails, `next` moves the request to the next
/// untried upstream (a refused connect is never the request's fault).
/// `Ok((in_flight, connection, reused))`, or `Err(last upstream)` when none
/// could be connected to.
pub(crate) async fn pooled_or_connect<C, Fut>(
    service: &str,
    mut in_flight: InFlight,
    fresh_only: bool,
    checkout: impl Fn(&Upstream) -> Option<C>,
    connect: impl Fn(Arc<Upstream>) -> Fut,
    mut next: impl FnMut(InFlight) -> Result<InFlight, InFlight>,
) -> Result<(InFlight, C, bool), InFlight>
where
    Fut: Future<Output = io::Result<C>>,
{
    if !fresh_only && let Some(pooled) = checkout(in_flight.upstream()) {
        return Ok((in_flight, pooled, true));
    }
    loop {
        let upstream = in_flight.upstream();
        match connect(Arc::clone(upstream)).await {
            Ok(new) => return Ok((in_flight, new, false)),
            Err(err) => {
                tracing::warn!(
                    service,
                    instance = upstream.instance_id(),
                    addr = %upstream.addr(),
                    error = %err,
                    "cannot connect to upstream"
                );
                // Passive health: down for a cooldown, so that routing
                // prefers the others meanwhile.
                upstream.connect_failed();
                in_flight = next(in_flight)?;
                // A different upstream: its pool may have a connection.
                if let Some(pooled) = checkout(in_flight.upstream()) {
                    return Ok((in_flight, pooled, true));
                }
            }
        }
    }
}

/// Whether a body-less request is safe to send twice: a safe method, or
/// one the client marked with `Idempotency-Key`. Such a request is resent
/// on a new connection when a reused one turns out closed, and once on
/// another untried upstream when an instance closes or resets a connection
/// after the request was written and before any response byte.
pub(crate) fn is_replayable<H: HeaderView + ?Sized>(method: &str, headers: &H) -> bool {
    const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
        || headers.value_of(&IDEMPOTENCY_KEY).is_some()
}

/// Count a request no upstream could serve (502/504) against `in_flight`'s
/// revision, note the instance in the access log, stop counting the request
/// in flight, and return the body to answer with.
pub(crate) fn upstream_failed(
    in_flight: InFlight,
    status: StatusCode,
    elapsed: Duration,
    log: &mut Option<PendingLog>,
) -> &'static [u8] {
    let upstream = in_flight.upstream();
    upstream.record_upstream_error(status, elapsed);
    if let Some(log) = log.as_mut() {
        log.served_by(upstream);
    }
    drop(in_flight);
    if status == StatusCode::GATEWAY_TIMEOUT {
        b"gateway timeout: the upstream did not answer in time\n"
    } else {
        b"bad gateway: no upstream could serve the request\n"
    }
}
