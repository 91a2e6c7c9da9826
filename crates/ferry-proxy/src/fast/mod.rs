//! The fast path: plain HTTP/1.1 requests forwarded by hand.
//!
//! Almost every request a service gets is a well-formed HTTP/1.1 request
//! with no body or a small one. For those, one task per client connection
//! parses the head in place (`httparse`), writes the rewritten head to an
//! upstream socket it owns, parses the response head and streams the body
//! back: two reads and two writes per request, no task hand-offs, no
//! channels, and one allocation (the exchange's boxed state; buffers come
//! from a per-worker free list).
//!
//! Anything else is handed, with the bytes already read, to hyper's path
//! (`proxy.rs`) for the rest of the connection: HTTP/1.0, `Upgrade`,
//! `Expect`, `Transfer-Encoding` or bodies over
//! [`MAX_BODY`](parse_head::MAX_BODY), heads over
//! [`MAX_HEAD`](parse_head::MAX_HEAD), absolute-form targets, `CONNECT`,
//! `Connection` headers naming other headers, and anything `httparse`
//! rejects (hyper answers 400).
//! A request it would take but for its `Host` (missing, repeated or invalid)
//! it answers 400 itself, as hyper's path does (`admit::host_rejected`).
//! The fast path therefore only ever sees unambiguous messages, and the
//! behaviour users see (headers, metrics, access log, timeouts, retries,
//! draining) is the same on both paths; the proxy tests run over both.
//!
//! Files, each depending only on those listed before it: `parse_head`
//! (the request grammar), `buf` (the per-worker buffer free list), `timer`
//! (the connection's one timer), `framing` (where a response body ends),
//! `conn` (a connection's state and socket I/O), `request` (answer or
//! forward, and the upstream's head), `response` (response heads and local
//! answers), `exchange` (forwarding and relaying), `serve` (the
//! per-connection loop).

mod buf;
mod conn;
mod exchange;
mod framing;
pub(crate) mod parse_head;
mod request;
mod response;
mod serve;
mod timer;

pub(crate) use serve::{Served, serve};

// The request and response heads' header classes side by side (a test of
// two files, kept in their parent).
#[cfg(test)]
mod unit {
    use super::parse_head::{ReqHeader, classify_request_header, parse_length, plain_path};
    use super::response::{RespHeader, classify_response_header};

    #[test]
    fn request_headers_are_classified() {
        assert!(ReqHeader::Fallback == classify_request_header("Transfer-Encoding"));
        assert!(ReqHeader::Fallback == classify_request_header("upgrade"));
        assert!(ReqHeader::Fallback == classify_request_header("Expect"));
        assert!(ReqHeader::Connection == classify_request_header("CONNECTION"));
        assert!(ReqHeader::Drop == classify_request_header("X-Forwarded-Proto"));
        assert!(ReqHeader::Keep == classify_request_header("x-forwarded-host"));
        assert!(RespHeader::Drop == classify_response_header("X-Ferry-Revision"));
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b"+42"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"4 2"), None);
        assert!(plain_path("/a?b=c&d=%20e"));
        assert!(plain_path("/users/@me/(x)*;y,z:1!$'+~"));
        assert!(!plain_path("http://x/"));
        assert!(!plain_path("/caf\u{e9}"));
        for odd in [
            "/a b", "/<x>", "/a`b", "/a\"b", "/a{b}", "/a|b", "/a\\b", "/a^b", "/p#frag",
        ] {
            assert!(!plain_path(odd), "{odd}");
        }
    }
}
