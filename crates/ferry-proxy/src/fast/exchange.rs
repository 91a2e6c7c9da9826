//! Forwarding a request the fast path took: the head written to a pooled
//! or new upstream connection (retried as on hyper's path), the response
//! head read and rewritten, and the body relayed as it arrives, the
//! upstream connection going back to the pool once its response is whole.
//! A request no upstream answered is answered `502`/`504`.

use std::sync::Arc;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::failover::{pooled_or_connect, upstream_failed};
use crate::fast::conn::{Conn, read_more, write_two};
use crate::fast::parse_head::MAX_HEADERS;
use crate::fast::request::Forward;
use crate::fast::response::{HeadFailure, RespHead};
use crate::fast::timer::within;
use crate::pending_log::PendingLog;
use crate::upstream::{InFlight, Upstream};

impl Conn<'_> {
    /// Pick another upstream for the current request, skipping those in
    /// `tried`. Routes on the head written for the upstream (`out`), so a
    /// retry sees the rewritten forwarding headers as the first pick did.
    fn next_upstream(
        &self,
        current: InFlight,
        tried: &mut Vec<Arc<Upstream>>,
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
    pub(super) async fn forward(&mut self, forward: Forward, client_close: bool) -> bool {
        let start = forward.start;
        let keep_open = match self.exchange(forward, client_close).await {
            Ok(keep_open) => keep_open,
            Err(Failed {
                in_flight,
                status,
                mut log,
            }) => {
                let body = upstream_failed(in_flight, status, start.elapsed(), &mut log);
                let close = client_close || self.ctx.shared().closing();
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
    async fn exchange(&mut self, forward: Forward, client_close: bool) -> Result<bool, Failed> {
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
        // Already moved once to another upstream after an instance closed
        // the connection without answering.
        let mut moved = false;
        let upstream_conn = loop {
            let found = pooled_or_connect(
                &self.ctx.shared().service,
                in_flight,
                fresh_only,
                Upstream::checkout_raw,
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
                HeadFailure::Closed { any: false } if replayable && !moved => {
                    // The instance closed (or reset) a new connection after
                    // the request was written, before any response byte: it
                    // may be dying. Once, on another untried upstream.
                    tracing::warn!(
                        service = %self.ctx.shared().service,
                        instance = upstream.instance_id(),
                        "upstream closed the connection without answering; retrying on another"
                    );
                    drop(stream);
                    match self.next_upstream(in_flight, &mut tried) {
                        Ok(next) => {
                            in_flight = next;
                            fresh_only = false;
                            moved = true;
                        }
                        Err(last) => {
                            return Err(Failed {
                                in_flight: last,
                                status: StatusCode::BAD_GATEWAY,
                                log,
                            });
                        }
                    }
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
        upstream.exchange_succeeded();

        // The response head for the client (parsed in a plain function, so
        // that its header array is not kept in this future's state). A
        // retiring or stopping listener closes the connection after it.
        let shutting_down = self.ctx.shared().closing();
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
        upstream.record(status, start.elapsed());
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
}

fn finish_log(log: Option<PendingLog>, bytes: u64) {
    if let Some(mut log) = log {
        log.entry.bytes = bytes;
        log.send();
    }
}

/// A request no upstream answered: what `Conn::forward` answers for it.
struct Failed {
    in_flight: InFlight,
    status: StatusCode,
    log: Option<PendingLog>,
}
