//! The fast path's per-connection loop: wait for a request (holding no
//! buffer while idle), read its head and body under their deadlines, answer
//! or forward it, and keep the connection alive for the next one, until it
//! closes or a request the fast path does not take hands it to hyper's path.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ConnCtx;
use crate::fast::buf::{Buf, Class};
use crate::fast::conn::{Conn, read_more, wait_idle};
use crate::fast::parse_head::MAX_HEAD;
use crate::fast::request::{Action, Prepared};
use crate::fast::timer::{Timer, within};

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
                            ctx.shared()
                                .counters
                                .unrouted
                                .record(StatusCode::REQUEST_TIMEOUT, Duration::ZERO);
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
                let close = request.close || ctx.shared().closing();
                Box::pin(conn.local_logged(status, &body, retry_after, close, log))
                    .await
                    .is_ok()
                    && !close
            }
            Action::Forward(forward) => {
                let close = request.close;
                // Boxed: the exchange's state is only needed while a request
                // is in progress, not by every idle connection's task.
                Box::pin(conn.forward(forward, close)).await
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
