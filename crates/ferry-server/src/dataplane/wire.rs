//! The protocol between the control plane and a data-plane process: frames
//! on a Unix stream socket in the data dir (private: the data dir is 0700).
//! A frame is a big-endian `u32` length, a `u32` count of file descriptors
//! and that many bytes of JSON ([`Msg`]); the descriptors (listening
//! sockets) travel as `SCM_RIGHTS` with the frame's first byte.
//!
//! The control plane speaks first ([`Msg::Hello`]); the data plane answers
//! with its own `Hello`. Then the control plane sends listening sockets
//! (`Listeners`), plans (`Apply`), `Close`, `Poll` (answered by `Report`),
//! `TakeListeners` (answered by `Listeners`: a control plane that restarted
//! gets copies of the sockets it no longer holds), `Retire` and `Shutdown`.

use super::{Plan, Report};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The protocol's version; both sides say theirs in `Hello`.
pub const PROTOCOL: u32 = 1;

/// The most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// The largest frame accepted (a plan for many services is well below).
const MAX_FRAME: usize = 64 << 20;

/// Listening sockets of one service: `count` descriptors follow the frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSet {
    pub service: String,
    pub addr: SocketAddr,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum Msg {
    /// Both ways, first. The data plane adds what it runs.
    Hello {
        protocol: u32,
        version: String,
        pid: u32,
        /// The data plane: when it started (ms since the epoch).
        #[serde(default)]
        started_at: u64,
        /// The data plane: the last plan it applied.
        #[serde(default)]
        generation: u64,
        /// The data plane: the services it holds listening sockets for.
        #[serde(default)]
        listeners: Vec<ListenerSet>,
        /// The data plane: the instances its routing tables hold now.
        #[serde(default)]
        serving: Vec<String>,
    },
    /// The listening sockets of one service (replacing any it had).
    Listeners {
        set: ListenerSet,
    },
    /// Serve this plan.
    Apply {
        generation: u64,
        plan: Plan,
    },
    /// Close the idle connections to an instance being stopped.
    Close {
        instance: String,
    },
    /// Ask for a `Report`.
    Poll,
    Report {
        report: Report,
    },
    /// Send copies of every listening socket held (one `Listeners` each,
    /// then `ListenersDone`).
    TakeListeners,
    ListenersDone,
    /// Stop accepting; finish open connections within `grace_ms`; exit.
    Retire {
        grace_ms: u64,
    },
    /// Stop proxying at once (in-flight requests finish); exit.
    Shutdown,
    /// Something went wrong with the last message.
    Error {
        message: String,
    },
}

/// Send one message, with `fds` attached.
pub async fn send(stream: &UnixStream, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(fds.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut sent = 0;
    while sent < frame.len() {
        let with_fds = sent == 0 && !fds.is_empty();
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
                let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
                if with_fds {
                    control.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
                }
                rustix::net::sendmsg(
                    stream,
                    &[io::IoSlice::new(&frame[sent..])],
                    &mut control,
                    rustix::net::SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Reads frames, keeping descriptors that arrived ahead of their frame.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Reader {
    /// The next message and its descriptors; `None` when the peer closed
    /// the connection between frames.
    pub async fn recv(&mut self, stream: &UnixStream) -> io::Result<Option<(Msg, Vec<OwnedFd>)>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let (n, fds, truncated) = stream
                .async_io(Interest::READABLE, || {
                    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                    let got = rustix::net::recvmsg(
                        stream,
                        &mut [io::IoSliceMut::new(&mut chunk)],
                        &mut control,
                        rustix::net::RecvFlags::CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    let mut fds = Vec::new();
                    for m in control.drain() {
                        if let rustix::net::RecvAncillaryMessage::ScmRights(received) = m {
                            fds.extend(received);
                        }
                    }
                    let truncated = got.flags.contains(rustix::net::ReturnFlags::CTRUNC);
                    Ok((got.bytes, fds, truncated))
                })
                .await?;
            if truncated {
                return Err(io::Error::other(
                    "descriptors were lost in transit (control message truncated)",
                ));
            }
            self.fds.extend(fds);
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection mid-frame",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse(&mut self) -> io::Result<Option<(Msg, Vec<OwnedFd>)>> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
        let nfds = u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME || nfds > MAX_FDS {
            return Err(io::Error::other(format!(
                "a frame of {len} bytes with {nfds} descriptors is out of bounds"
            )));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        if self.fds.len() < nfds {
            return Err(io::Error::other(format!(
                "a frame announced {nfds} descriptors and {} arrived",
                self.fds.len()
            )));
        }
        let msg = serde_json::from_slice(&self.buf[8..8 + len])
            .map_err(|e| io::Error::other(format!("a message that does not parse: {e}")))?;
        self.buf.drain(..8 + len);
        let fds = self.fds.drain(..nfds).collect();
        Ok(Some((msg, fds)))
    }
}

/// Borrow a set of sockets for [`send`].
pub fn borrowed<T: AsFd>(items: &[T]) -> Vec<BorrowedFd<'_>> {
    items.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_listening_sockets_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let set = ListenerSet {
            service: "web".into(),
            addr,
            count: 1,
        };
        send(
            &a,
            &Msg::Listeners { set: set.clone() },
            &borrowed(&[&listener]),
        )
        .await
        .unwrap();
        send(&a, &Msg::Poll, &[]).await.unwrap();
        let mut reader = Reader::default();
        let (msg, fds) = reader.recv(&b).await.unwrap().unwrap();
        assert_eq!(msg, Msg::Listeners { set });
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same listening socket.
        drop(listener);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        received.accept().unwrap();
        let (msg, fds) = reader.recv(&b).await.unwrap().unwrap();
        assert_eq!(msg, Msg::Poll);
        assert!(fds.is_empty());
        drop(a);
        assert!(reader.recv(&b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_big_plan_arrives_whole_and_garbage_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let plan = Plan {
            proxies: (0..300)
                .map(|i| super::super::ProxyPlan {
                    service: format!("service-{i}"),
                    listen: "127.0.0.1:8080".parse().unwrap(),
                    settings: Default::default(),
                    settings_of: 1,
                    routes: Default::default(),
                    drain_timeout_ms: 30_000,
                })
                .collect(),
        };
        let msg = Msg::Apply {
            generation: 7,
            plan,
        };
        let sender = {
            let msg = msg.clone();
            tokio::spawn(async move {
                send(&a, &msg, &[]).await.unwrap();
                tokio::io::AsyncWriteExt::write_all(
                    &mut { a },
                    &[0, 0, 0, 3, 0, 0, 0, 0, b'{', b'x', b'}'],
                )
                .await
                .unwrap();
            })
        };
        let mut reader = Reader::default();
        let (got, _) = reader.recv(&b).await.unwrap().unwrap();
        assert_eq!(got, msg);
        let err = reader.recv(&b).await.unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
        sender.await.unwrap();
    }
}
