//! The answers both paths give a request themselves before it is routed:
//! `400` for the Host and request-target rules of RFC 9112 3.2, and `429`
//! from the rate limit (counted, with the seconds to wait).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Version};

use crate::client::ConnCtx;
use crate::headers::{HeaderView, valid_host};
use crate::rate_limit::{RateLimitKey, hash_key};

/// The body of a `429`.
pub(crate) const RATE_LIMITED: &[u8] = b"too many requests: slow down and retry later\n";

/// Bodies of the `400`s the proxy answers itself (RFC 9112 3.2, 3.2.2).
const NO_HOST: &[u8] = b"bad request: an HTTP/1.1 request needs a Host header\n";
const MANY_HOSTS: &[u8] = b"bad request: more than one Host header\n";
const BAD_HOST: &[u8] = b"bad request: the Host header is not a valid host[:port]\n";
const BAD_TARGET: &[u8] = b"bad request: the request target is not valid for its method\n";

/// RFC 9112 3.2: a request without `Host` (HTTP/1.1 only; HTTP/1.0 may omit
/// it), with more than one `Host` line, or with an invalid one is answered
/// `400` and never forwarded. `hosts`: how many `Host` lines the request
/// has, `first`: the first one's value. `Some(body)`: answer `400` with it.
pub(crate) fn host_rejected(http11: bool, hosts: usize, first: &[u8]) -> Option<&'static [u8]> {
    match hosts {
        0 if http11 => Some(NO_HOST),
        0 => None,
        1 if valid_host(first) => None,
        1 => Some(BAD_HOST),
        _ => Some(MANY_HOSTS),
    }
}

/// Why hyper's path answers a request `400` itself: its `Host` (see
/// [`host_rejected`]), or a request target in none of the forms RFC 9112 3.2
/// allows for its method: origin-form (`/path`), absolute-form
/// (`http://host/path`, no userinfo), `*` for `OPTIONS` only, and
/// authority-form for `CONNECT` only (which is answered `405`). hyper reads
/// `GET a` as an authority-form `a`: forwarded, it would become `GET /`.
pub(crate) fn bad_request(parts: &http::request::Parts) -> Option<&'static [u8]> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    let count = first.map_or(0, |_| 1 + hosts.count());
    let first = first.map_or(&b""[..], HeaderValue::as_bytes);
    if let Some(body) = host_rejected(parts.version == Version::HTTP_11, count, first) {
        return Some(body);
    }
    let uri = &parts.uri;
    let valid = match (uri.scheme(), uri.authority()) {
        (None, None) => {
            uri.path().starts_with('/') || (uri.path() == "*" && parts.method == Method::OPTIONS)
        }
        (Some(scheme), Some(authority)) => {
            (*scheme == http::uri::Scheme::HTTP || *scheme == http::uri::Scheme::HTTPS)
                && !authority.host().is_empty()
                && valid_host(authority.as_str().as_bytes())
        }
        (None, Some(_)) => parts.method == Method::CONNECT,
        (Some(_), None) => false,
    };
    (!valid).then_some(BAD_TARGET)
}

/// Count a request against the service's rate limit (if any), keyed by the
/// configured header or else the client's address (`client` if already
/// known). `Some(seconds)`: over the limit, retry after that long (≥ 1).
pub(crate) fn rate_limited<H: HeaderView + ?Sized>(
    ctx: &ConnCtx,
    headers: &H,
    client: Option<IpAddr>,
    now: Instant,
) -> Option<u64> {
    let limiter = ctx.config.limiter.as_ref()?;
    let key = match &limiter.options.key {
        RateLimitKey::Header(name) => headers
            .value_of(name)
            .filter(|v| !v.is_empty())
            .map(|v| hash_key(1, v)),
        RateLimitKey::ClientIp => None,
    };
    let key = key.unwrap_or_else(|| hash_ip(client.unwrap_or_else(|| ctx.client_addr(headers))));
    let wait = limiter.check(key, now).err()?;
    ctx.shared()
        .counters
        .rate_limited
        .fetch_add(1, Ordering::Relaxed);
    Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(4, &v4.octets()),
        IpAddr::V6(v6) => hash_key(6, &v6.octets()),
    }
}
