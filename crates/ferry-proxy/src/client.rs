//! A client connection as both paths see it: its slot (counted against
//! `max_connections` and in its worker's load until dropped) and the context
//! its requests share (the config it was accepted under, the client's
//! address and whether it is a trusted proxy).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderValue;

use crate::config::Config;
use crate::headers::{HeaderView, forwarded_client};
use crate::shared::Shared;

/// Held by every connection of a worker, so that it can wait for them all.
pub(crate) type Alive = tokio::sync::mpsc::Sender<()>;

/// One open client connection, counted against `max_connections` (and in
/// its worker's load) until dropped (after the connection and any tunnel it
/// became have ended).
pub(crate) struct ConnSlot {
    shared: Arc<Shared>,
    worker: usize,
    _alive: Alive,
}

impl ConnSlot {
    /// The slot of a connection already counted in `Counters::connections`
    /// and in worker `worker`'s load.
    pub(crate) fn new(shared: Arc<Shared>, worker: usize, alive: Alive) -> ConnSlot {
        ConnSlot {
            shared,
            worker,
            _alive: alive,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared
            .counters
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.worker_conns[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per client connection state shared by its requests.
pub(crate) struct ConnCtx {
    pub(crate) slot: ConnSlot,
    pub(crate) config: Arc<Config>,
    /// The client's address: the peer's, or the one its PROXY header gave.
    pub(crate) client: IpAddr,
    /// `client` formatted once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// `client` is a trusted proxy: its `X-Forwarded-For` is believed.
    pub(crate) trusted: bool,
}

impl ConnCtx {
    pub(crate) fn shared(&self) -> &Shared {
        &self.slot.shared
    }

    /// The end client's address (from a trusted `X-Forwarded-For` if any).
    pub(crate) fn client_addr<H: HeaderView + ?Sized>(&self, headers: &H) -> IpAddr {
        if self.trusted {
            forwarded_client(headers, &self.config.options.trusted_proxies).unwrap_or(self.client)
        } else {
            self.client
        }
    }
}
