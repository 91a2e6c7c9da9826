//! The listening sockets a proxy's workers accept from, built so that they
//! can be bound in one process and served in another (passed with
//! `SCM_RIGHTS`): one `SO_REUSEPORT` socket per worker on one address.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each worker's listening socket.
const BACKLOG: i32 = 1024;

/// Bind `workers` (at least 1) listening sockets on `addr`, one per worker
/// of [`ProxyHandle::from_listeners`](crate::ProxyHandle::from_listeners):
/// `SO_REUSEADDR` and `SO_REUSEPORT` (the kernel spreads new connections
/// over them), `TCP_NODELAY` (inherited by accepted sockets on Linux),
/// backlog 1024, non-blocking. No runtime is needed.
///
/// An address in use is an error: `addr` is first bound by a plain
/// exclusive listener, closed again before the reuse-port sockets are bound
/// (reuse-port sockets of the same user would otherwise silently share the
/// port). With port 0, every socket gets the port that first bind chose.
pub fn bind_listeners(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..workers.max(1))
        .map(|_| reuse_port_listener(addr))
        .collect()
}

/// One worker's listening socket on `addr`.
fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux), so a
    // connection costs no setsockopt of its own.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn port_zero_is_shared_and_an_address_in_use_is_an_error() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(listeners.len(), 3);
        let addr = listeners[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
        // Taken (by reuse-port sockets of this very user): refused.
        assert!(bind_listeners(addr, 1).is_err());
        // Zero workers still means one socket.
        let one = bind_listeners("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        assert_eq!(one.len(), 1);
        // Non-blocking: an accept with nothing queued returns at once.
        let err = one[0].accept().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
