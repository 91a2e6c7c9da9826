//! A listener's configuration: the public [`ProxyOptions`] and the
//! [`Config`] built from them (hyper's connection builder, the rate limiter,
//! the access-log writer) that each client connection keeps for its life.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

use crate::access_log::{AccessLog, AccessLogOptions};
use crate::net::IpNet;
use crate::rate_limit::{RateLimitOptions, RateLimiter};

/// Tunables of a proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyOptions {
    /// Timeout for establishing a TCP connection to an upstream. Default 5s.
    pub connect_timeout: Duration,
    /// Time the upstream has to send response headers once the request
    /// (including its body) has been sent. Default 60s.
    pub response_header_timeout: Duration,
    /// How long a client keep-alive connection may sit idle between requests;
    /// a request head must also arrive within it (a slow client sending its
    /// headers byte by byte is cut off). Default 60s.
    pub idle_timeout: Duration,
    /// Longest pause allowed while reading a client's request body; beyond
    /// it the request fails with 408. Default 60s.
    pub client_body_timeout: Duration,
    /// Longest a write to a client may stall (the client stopped reading);
    /// beyond it the connection is closed. Default 60s.
    pub send_timeout: Duration,
    /// Client connections open at once (upgraded ones included); more are
    /// answered `503` and closed. Default 10 000.
    pub max_connections: usize,
    /// Maximum idle pooled connections kept per upstream by each worker
    /// thread (each worker has its own pool, as each nginx worker process
    /// has). Default 64.
    pub max_idle_per_upstream: usize,
    /// Load balancers in front of the proxy. A connection from one of these
    /// may send a PROXY protocol header (if `proxy_protocol`) and its
    /// `X-Forwarded-For` is trusted: appended to, and used to find the
    /// client's address. From any other peer, `X-Forwarded-For` is replaced
    /// by the peer's address. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// Connections from `trusted_proxies` must start with a PROXY protocol
    /// (v1 or v2) header giving the client's address. Default false.
    pub proxy_protocol: bool,
    /// JSON-lines access log; `None` (default) disables it.
    pub access_log: Option<AccessLogOptions>,
    /// Per-client rate limit; `None` (default) disables it.
    pub rate_limit: Option<RateLimitOptions>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_idle_per_upstream: 64,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            access_log: None,
            rate_limit: None,
        }
    }
}

/// The options in force plus what is built from them. Replaced as a whole
/// by [`ProxyHandle::set_options`](crate::ProxyHandle::set_options); each client connection keeps the one it
/// was accepted under.
pub(crate) struct Config {
    pub(crate) options: ProxyOptions,
    pub(crate) builder: http1::Builder,
    pub(crate) limiter: Option<RateLimiter>,
    pub(crate) log: Option<AccessLog>,
}

impl Config {
    /// Build the config for `options`, opening the access log (if any),
    /// whose dropped lines are counted in `access_log_dropped`.
    pub(crate) fn new(
        service: &str,
        options: ProxyOptions,
        access_log_dropped: &Arc<AtomicU64>,
    ) -> io::Result<Config> {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it waits for a request head, so it
            // is both the keep-alive idle timeout and the header read timeout.
            .header_read_timeout(options.idle_timeout)
            .keep_alive(true);
        let limiter = options.rate_limit.clone().map(RateLimiter::new);
        let log = match &options.access_log {
            Some(log) => Some(AccessLog::start(
                log,
                service,
                Arc::clone(access_log_dropped),
            )?),
            None => None,
        };
        Ok(Config {
            options,
            builder,
            limiter,
            log,
        })
    }
}
