//! One client connection on the fast path: its socket, buffers, timer and
//! current request id, and the socket reads and writes done with them.
//! What it does with a request is in `request.rs` (deciding),
//! `exchange.rs` (forwarding and relaying) and `response.rs` (response
//! heads and the proxy's own answers).

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::ConnCtx;
use crate::fast::buf::Buf;
use crate::fast::timer::Timer;

/// One client connection on the fast path.
pub(super) struct Conn<'a> {
    pub(super) ctx: &'a Arc<ConnCtx>,
    pub(super) client: TcpStream,
    /// Bytes read from the client not yet consumed (pipelined requests
    /// included); lent by the worker's free list while there are any.
    pub(super) input: Buf,
    /// The request head (and body) for the upstream, then the response head
    /// for the client.
    pub(super) out: Buf,
    /// Bytes read from the upstream; lent while a request is forwarded.
    pub(super) resp: Buf,
    /// The current request's `X-Request-Id`.
    pub(super) request_id: Vec<u8>,
    pub(super) timer: Timer,
}

/// Read what is available into the spare capacity of `buf`.
pub(super) async fn read_more(stream: &mut TcpStream, buf: &mut Buf) -> io::Result<usize> {
    let buf = buf.get();
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// Wait for the next request on an idle connection, taking a buffer only
/// once there are bytes to read. `false`: the connection is to close (the
/// client closed it or failed, the idle timeout passed, or shutdown).
///
/// Written as one poll function over the socket's readiness, the timer and
/// the shutdown signal, so that the state an idle connection keeps is small.
pub(super) async fn wait_idle(
    stream: &TcpStream,
    buf: &mut Buf,
    timer: &mut Timer,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let mut stop = pin!(shutdown.changed());
    poll_fn(|cx| {
        while stream.poll_read_ready(cx).is_ready() {
            match stream.try_read_buf(buf.get()) {
                Ok(n) => return Poll::Ready(n > 0),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => buf.release(),
                Err(_) => return Poll::Ready(false),
            }
        }
        if stop.as_mut().poll(cx).is_ready() || timer.poll_expired(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// Write `a` then `b` with as few syscalls as possible.
pub(super) async fn write_two(stream: &mut TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    let total = a.len() + b.len();
    let mut done = 0;
    while done < total {
        let n = if done < a.len() {
            stream
                .write_vectored(&[IoSlice::new(&a[done..]), IoSlice::new(b)])
                .await?
        } else {
            stream.write(&b[done - a.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}
