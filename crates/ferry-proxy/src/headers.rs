//! Header rewriting: hop-by-hop removal, forwarding headers, request ids.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::net::{IpNet, is_trusted};
use crate::random::random_u64;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FERRY_REVISION: HeaderName = HeaderName::from_static("x-ferry-revision");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// Read access to a request's headers, whether parsed into a `HeaderMap`
/// (hyper's path) or still a slice of raw lines (the fast path).
pub(crate) trait HeaderView {
    /// The values of header `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]>;

    /// The first value of header `name`.
    fn value_of<'a>(&'a self, name: &'a HeaderName) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl HeaderView for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

impl HeaderView for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Remove hop-by-hop headers, including any named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most messages carry none.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.is_empty() || token.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                // Never let a client strip the Host header this way.
                if !is_hop_by_hop(&name) && name != header::HOST {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade`
/// plus an `Upgrade` header), e.g. a WebSocket handshake.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Set `X-Forwarded-For` and `X-Forwarded-Proto`. From a trusted peer the
/// client's address is appended to the `X-Forwarded-For` it sent; from any
/// other peer that header is replaced (so it cannot be forged).
pub(crate) fn set_forwarding(headers: &mut HeaderMap, client_ip: &HeaderValue, trusted: bool) {
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(client_ip.clone());
        }
        header::Entry::Occupied(mut entry) if !trusted => {
            entry.insert(client_ip.clone());
        }
        header::Entry::Occupied(mut entry) => {
            let mut joined = Vec::with_capacity(64);
            for value in entry.iter() {
                if !value.is_empty() {
                    joined.extend_from_slice(value.as_bytes());
                    joined.extend_from_slice(b", ");
                }
            }
            joined.extend_from_slice(client_ip.as_bytes());
            match HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                Ok(value) => {
                    entry.insert(value);
                }
                Err(_) => {
                    entry.insert(client_ip.clone());
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HTTP);
}

/// The client's address according to a trusted peer's `X-Forwarded-For`:
/// the rightmost entry that is not itself a trusted proxy.
pub(crate) fn forwarded_client<H: HeaderView + ?Sized>(
    headers: &H,
    trusted: &[IpNet],
) -> Option<std::net::IpAddr> {
    let mut found = None;
    for value in headers.values(&X_FORWARDED_FOR).rev() {
        let Ok(text) = std::str::from_utf8(value) else {
            return found;
        };
        for item in text.rsplit(',') {
            let item = item.trim();
            let ip = item
                .parse::<std::net::IpAddr>()
                .or_else(|_| item.parse::<std::net::SocketAddr>().map(|s| s.ip()))
                .or_else(|_| {
                    item.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                });
            let Ok(ip) = ip else {
                return found;
            };
            let ip = ip.to_canonical();
            found = Some(ip);
            if !is_trusted(trusted, ip) {
                return found;
            }
        }
    }
    found
}

/// Keep the client's W3C `traceparent` if it is well formed, else start a
/// new trace (and drop a `tracestate` that belonged to the bad one).
/// The first `traceparent` counts and is the one forwarded (as on the fast
/// path): a second one would leave the upstream to choose.
pub(crate) fn ensure_traceparent(headers: &mut HeaderMap) {
    if let Some(value) = headers.get(TRACEPARENT)
        && valid_traceparent(value.as_bytes())
    {
        if headers.get_all(TRACEPARENT).iter().nth(1).is_some() {
            let first = value.clone();
            headers.insert(TRACEPARENT, first);
        }
        return;
    }
    headers.remove(TRACESTATE);
    headers.insert(TRACEPARENT, new_traceparent());
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `version-traceid-parentid-flags` as in W3C Trace Context level 1.
pub(crate) fn valid_traceparent(v: &[u8]) -> bool {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !is_lower_hex(version) || version == b"ff" {
        return false;
    }
    // Version 00 has exactly these fields; later versions may append more.
    if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return false;
    }
    is_lower_hex(trace)
        && is_lower_hex(parent)
        && is_lower_hex(flags)
        && trace.iter().any(|&b| b != b'0')
        && parent.iter().any(|&b| b != b'0')
}

/// A `Host` value (or an absolute-form target's authority) as RFC 9112 3.2
/// allows it: `uri-host [ ":" port ]`, where `uri-host` is an IP-literal in
/// brackets (IPv6 or IPvFuture) or a reg-name (RFC 3986 unreserved,
/// sub-delims and `%XX` escapes; IPv4 addresses are reg-names too). An empty
/// value is valid (RFC 9112 3.2: a target without authority). No spaces,
/// `/`, `@` (userinfo), `\`, controls or non-ASCII.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    // One pass over a reg-name (every request on the fast path has a Host):
    // a table look-up per byte until the port.
    static REG_NAME: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = host_char(b as u8);
            b += 1;
        }
        table
    };
    let port = |rest: &[u8]| match rest.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        return valid_ip_literal(&value[1..end]) && port(&value[end + 1..]);
    }
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b'%' {
            // pct-encoded
            if !(value.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && value.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else {
            return port(&value[i..]);
        }
    }
    true
}

/// RFC 3986 `unreserved` and `sub-delims`.
const fn host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// What is between the brackets of an IP-literal: an IPv6 address (no zone)
/// or `"v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn valid_ip_literal(inside: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inside {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail.iter().all(|&b| host_char(b) || b == b':');
    }
    std::str::from_utf8(inside).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A new sampled `traceparent` with a random trace id and parent id.
pub(crate) fn new_traceparent() -> HeaderValue {
    HeaderValue::from_bytes(&new_traceparent_bytes()).expect("hex digits are a valid header value")
}

/// [`new_traceparent`] as bytes, without allocating.
pub(crate) fn new_traceparent_bytes() -> [u8; 55] {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let words = [random_u64() | 1, random_u64(), random_u64() | 1];
    let mut hex = |range: std::ops::Range<usize>, mut n: u64| {
        for byte in buf[range].iter_mut().rev() {
            *byte = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
    };
    hex(3..19, words[0]);
    hex(19..35, words[1]);
    hex(36..52, words[2]);
    buf
}

/// The request's id: the client's first non-empty `X-Request-Id` if any,
/// else a new one; the request keeps that one only (as on the fast path).
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    let first = ids.next();
    if let Some(id) = first
        && !id.is_empty()
        && ids.next().is_none()
    {
        return id.clone();
    }
    if let Some(id) = headers
        .get_all(X_REQUEST_ID)
        .iter()
        .find(|id| !id.is_empty())
        .cloned()
    {
        headers.insert(X_REQUEST_ID, id.clone());
        return id;
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// Ids handed out per thread before going back to the shared counter.
const ID_BLOCK: u64 = 1024;
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);
static ID_PREFIX: OnceLock<[u8; 12]> = OnceLock::new();

thread_local! {
    /// `(next, end)` of this thread's reserved block of ids.
    static ID_BLOCK_RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn id_prefix() -> &'static [u8; 12] {
    ID_PREFIX.get_or_init(|| {
        // `RandomState` is randomly keyed per process; mix in pid and time.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(since.as_nanos());
        }
        let mut bits = hasher.finish();
        let mut out = [0u8; 12];
        for byte in out.iter_mut() {
            *byte = HEX[(bits & 0xf) as usize];
            bits >>= 4;
        }
        out
    })
}

fn next_id_number() -> u64 {
    ID_BLOCK_RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = ID_COUNTER.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        range.set((next + 1, end));
        next
    })
}

/// A new process-unique id: 12 random hex digits, `-`, 12 hex digits of counter.
pub(crate) fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id_bytes()).expect("hex digits are a valid header value")
}

/// [`new_request_id`] as bytes, without allocating.
pub(crate) fn new_request_id_bytes() -> [u8; 25] {
    let mut buf = [0u8; 25];
    buf[..12].copy_from_slice(id_prefix());
    buf[12] = b'-';
    let mut n = next_id_number();
    for byte in buf[13..].iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    buf
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(header::HOST));
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &ip, false);
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");

        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let mut untrusted = h.clone();
        set_forwarding(&mut h, &ip, true);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        // From an untrusted peer the header is replaced, not appended to.
        set_forwarding(&mut untrusted, &ip, false);
        assert_eq!(untrusted.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(untrusted[X_FORWARDED_FOR], "127.0.0.1");
    }

    #[test]
    fn client_from_trusted_forwarded_for() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_client(&h, &trusted), None);
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("203.0.113.5, 198.51.100.7"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        // 10.0.0.9 is another trusted proxy: the client is the next one left.
        assert_eq!(
            forwarded_client(&h, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("garbage, 10.1.1.1"),
        );
        assert_eq!(
            forwarded_client(&h, &trusted),
            Some("10.1.1.1".parse().unwrap())
        );
    }

    #[test]
    fn traceparent_kept_or_created() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(good));
        h.insert(TRACESTATE, HeaderValue::from_static("x=1"));
        ensure_traceparent(&mut h);
        assert_eq!(h[TRACEPARENT], good);
        assert_eq!(h[TRACESTATE], "x=1");
        // The first counts, and is the only one forwarded.
        let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        h.append(TRACEPARENT, HeaderValue::from_static(other));
        ensure_traceparent(&mut h);
        assert_eq!(h.get_all(TRACEPARENT).iter().collect::<Vec<_>>(), [good]);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            h.insert(TRACESTATE, HeaderValue::from_static("x=1"));
            ensure_traceparent(&mut h);
            let made = h[TRACEPARENT].as_bytes();
            assert!(valid_traceparent(made), "{bad} -> {:?}", h[TRACEPARENT]);
            assert_ne!(h[TRACEPARENT], bad);
            assert!(h.get(TRACESTATE).is_none());
        }
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        assert_ne!(new_traceparent(), new_traceparent());
    }

    #[test]
    fn host_values() {
        for good in [
            "web.test",
            "web.test:8080",
            "WEB.test:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::ffff:1.2.3.4]",
            "[v7.fe80::1:zone]",
            "a%2Db",
            "x_y-z~!$&'()*+,;=",
            "",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "web test",
            "web.test/",
            "user@web.test",
            "web.test:80:80",
            "web.test:8o",
            "a\tb",
            "a\0b",
            "a\r\nb",
            "[::1",
            "[::1]x",
            "[::1]:8x",
            "[fe80::1%25eth0]",
            "[v.x]",
            "[vz.x]",
            "[v1.]",
            "::1",
            "a%2",
            "a%zz",
            "a\\b",
            "caf\u{e9}",
            "a\"b",
            "<a>",
            "a?b",
            "a#b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_unique() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 25);
        assert_eq!(&a.as_bytes()[..13], &b.as_bytes()[..13]);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");
        // The first non-empty one, and only it, as on the fast path.
        let mut h = HeaderMap::new();
        for id in ["", "b", "c"] {
            h.append(X_REQUEST_ID, HeaderValue::from_static(id));
        }
        assert_eq!(ensure_request_id(&mut h), "b");
        assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
        assert_eq!(h[X_REQUEST_ID], "b");
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static(""));
        let made = ensure_request_id(&mut h);
        assert!(!made.is_empty());
        assert_eq!(h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), [made]);
    }
}
