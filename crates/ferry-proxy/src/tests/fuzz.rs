//! Property tests ("fuzz") of the fast path's request grammar.
//!
//! `fast::parse_head` decides, for whatever bytes a client sends, whether
//! the fast path waits for more, hands the connection to hyper's path,
//! answers 400 or forwards the request, and where its body ends. Here it is
//! checked against a reference written from RFC 9112 and the fast path's
//! documented hand-off rules over httparse, on request heads built from a
//! grammar and on byte-level mutations of them; and, over real sockets,
//! that both paths treat the same bytes alike and that a request split
//! across writes reaches the upstream whole.
//!
//! CI runs a bounded number of cases (about 4 s in a debug build on two
//! cores). `PROPTEST_CASES` sets the count instead (the socket properties
//! run a sixteenth of it); a longer local run (about 3 minutes):
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test -p ferry-proxy --release fuzz
//! ```
//!
//! A failure prints its smallest input: keep it in `fuzz_regressions`
//! (parsing) or as a test in `tests.rs` (sockets) once fixed.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Seen, spawn_recording_upstream, table, upstream};
use crate::fast::parse_head::{Head, MAX_BODY, MAX_HEADERS, parse_head};
use crate::headers::valid_traceparent;
use crate::{ProxyHandle, ProxyOptions, RevisionStats};

/// `default_cases` cases, or `PROPTEST_CASES / divisor` when it is set.
fn config(default_cases: u32, divisor: u32) -> Config {
    // `Config::default()` has read `PROPTEST_CASES` (and the other
    // `PROPTEST_*` variables) already.
    let mut config = Config::default();
    config.cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        (config.cases / divisor).max(1)
    } else {
        default_cases
    };
    // Failures print their minimal input; those worth keeping become cases
    // in `fuzz_regressions` below rather than files next to the source.
    config.failure_persistence = None;
    config
}

fn run<S>(config: Config, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(config);
    if let Err(err) = runner.run(&strategy, test) {
        panic!("{err}");
    }
}

// ---------------------------------------------------------------- verdicts

/// What is to become of the bytes at the start of a client connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Wait for more bytes.
    Partial,
    /// Incomplete, and already more header lines than the fast path parses:
    /// waiting or handing off are both right.
    PartialOrFallback,
    /// hyper's path takes the connection (and answers, or rejects, it).
    Fallback,
    /// The proxy answers 400 (RFC 9112 3.2).
    Reject(HostProblem, Parsed),
    /// Forwarded by the fast path.
    Forward(Parsed),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum HostProblem {
    Missing,
    Many,
    Invalid,
}

/// A request head as read.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    method: String,
    target: String,
    /// As sent, in order.
    headers: Vec<(String, Vec<u8>)>,
    head_len: usize,
    /// The body: `Some(length)` (Content-Length) or none at all.
    length: Option<u64>,
    close: bool,
    request_id: Option<Vec<u8>>,
    traceparent_ok: bool,
}

/// The fast path's verdict.
fn fast_verdict(input: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse_head(input, &mut headers) {
        Head::Partial => return Verdict::Partial,
        Head::Fallback => return Verdict::Fallback,
        Head::Plain(head) => head,
    };
    assert!(head.seen_length || head.body_len == 0);
    let parsed = Parsed {
        method: head.method.to_owned(),
        target: head.path.to_owned(),
        headers: head
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        head_len: head.head_len,
        length: head.seen_length.then_some(head.body_len),
        close: head.close,
        request_id: head.request_id.map(<[u8]>::to_vec),
        traceparent_ok: head.traceparent_ok,
    };
    match head.rejected {
        None => Verdict::Forward(parsed),
        Some(body) => {
            let body = String::from_utf8_lossy(body);
            let problem = if body.contains("more than one") {
                HostProblem::Many
            } else if body.contains("needs a Host") {
                HostProblem::Missing
            } else if body.contains("not a valid host") {
                HostProblem::Invalid
            } else {
                panic!("unknown 400: {body}");
            };
            Verdict::Reject(problem, parsed)
        }
    }
}

/// The reference: httparse reads the head (hyper's path reads it with
/// httparse too, so a head httparse rejects is hyper's 400), then RFC 9112
/// and the fast path's hand-off rules as ARCHITECTURE.md states them decide.
fn reference(input: &[u8]) -> Verdict {
    // Room for more headers than either path takes.
    let mut storage = vec![httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut storage);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let lines = input.iter().filter(|&&b| b == b'\n').count();
            return if lines > MAX_HEADERS {
                Verdict::PartialOrFallback
            } else {
                Verdict::Partial
            };
        }
        Err(_) => return Verdict::Fallback,
    };
    let method = req.method.expect("complete");
    let target = req.path.expect("complete");
    let version = req.version.expect("complete");
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
            .collect()
    };

    // Hand-offs: not HTTP/1.1, CONNECT, a target other than origin-form of
    // RFC 3986 path and query characters, Transfer-Encoding, Upgrade,
    // Expect, more headers than the fast path parses.
    const PLAIN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\
                         -._~!$&'()*+,;=:@/?%";
    let mut hand_off = version != 1
        || method == "CONNECT"
        || !target.starts_with('/')
        || !target.chars().all(|c| PLAIN.contains(c))
        || headers.len() > MAX_HEADERS
        || ["transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|name| !values(name).is_empty());
    // Content-Length: digits only (at most 18 of them, the fast path's
    // limit; hyper's path takes longer ones), one value however often
    // repeated, a body of at most MAX_BODY.
    let mut length: Option<u64> = None;
    for value in values("content-length") {
        let digits = value.iter().all(u8::is_ascii_digit) && (1..=18).contains(&value.len());
        let parsed = std::str::from_utf8(value)
            .ok()
            .filter(|_| digits)
            .and_then(|text| text.parse::<u64>().ok());
        match (parsed, length) {
            (None, _) => hand_off = true,
            (Some(n), Some(before)) if n != before => hand_off = true,
            (Some(n), _) => length = Some(n),
        }
    }
    hand_off |= length.is_some_and(|n| n > MAX_BODY as u64);
    // Connection: only `close` and `keep-alive` (anything else names
    // headers to strip, which hyper's path does).
    let mut close = false;
    for value in values("connection") {
        for token in value.split(|&b| b == b',') {
            let token = String::from_utf8_lossy(token);
            match token
                .trim_matches([' ', '\t'])
                .to_ascii_lowercase()
                .as_str()
            {
                "close" => close = true,
                "" | "keep-alive" => {}
                _ => hand_off = true,
            }
        }
    }
    if hand_off {
        return Verdict::Fallback;
    }

    let problem = match values("host")[..] {
        [] => Some(HostProblem::Missing),
        [one] if reference_host(one) => None,
        [_] => Some(HostProblem::Invalid),
        _ => Some(HostProblem::Many),
    };
    let request_id = values("x-request-id")
        .into_iter()
        .find(|v| !v.is_empty())
        .map(<[u8]>::to_vec);
    let traceparent_ok = values("traceparent")
        .first()
        .is_some_and(|v| valid_traceparent(v));
    let parsed = Parsed {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: headers.clone(),
        head_len,
        length,
        close,
        request_id,
        traceparent_ok,
    };
    match problem {
        Some(problem) => Verdict::Reject(problem, parsed),
        None => Verdict::Forward(parsed),
    }
}

/// RFC 9112 3.2 / RFC 3986 3.2.2: `Host = uri-host [ ":" port ]`.
fn reference_host(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, port)) => {
                let future = literal
                    .strip_prefix(['v', 'V'])
                    .and_then(|l| l.split_once('.'))
                    .is_some_and(|(version, rest)| {
                        !version.is_empty()
                            && version.chars().all(|c| c.is_ascii_hexdigit())
                            && !rest.is_empty()
                            && rest.chars().all(|c| {
                                c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:".contains(c)
                            })
                    });
                if !future && literal.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                ("", port)
            }
            None => return false,
        },
        None => match text.find(':') {
            Some(at) => text.split_at(at),
            None => (text, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()));
    // reg-name: unreserved / pct-encoded / sub-delims.
    let mut rest = host;
    while let Some(c) = rest.chars().next() {
        if c == '%' {
            let hex = rest.get(1..3).unwrap_or("");
            if hex.len() != 2 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return false;
            }
            rest = &rest[3..];
        } else if c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=".contains(c) {
            rest = &rest[1..];
        } else {
            return false;
        }
    }
    port_ok
}

/// Whatever the fast path takes, hyper's path would read the same way: the
/// same method, an origin-form target it keeps as it is, the same header
/// names and values; and a Host the fast path forwards is one that
/// `http::uri::Authority` takes (but for `%XX` escapes, which RFC 3986
/// allows in a reg-name and the `http` crate does not).
fn hyper_reads_it_alike(parsed: &Parsed, forwarded: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        http::Method::from_bytes(parsed.method.as_bytes()).is_ok(),
        "method {:?}",
        parsed.method
    );
    let uri = http::Uri::try_from(parsed.target.as_str());
    prop_assert!(uri.is_ok(), "target {:?}: {uri:?}", parsed.target);
    let uri = uri.unwrap();
    prop_assert!(
        uri.scheme().is_none() && uri.authority().is_none(),
        "{uri:?}"
    );
    prop_assert_eq!(
        uri.path_and_query().map(http::uri::PathAndQuery::as_str),
        Some(parsed.target.as_str())
    );
    for (name, value) in &parsed.headers {
        prop_assert!(
            http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            "{name:?}"
        );
        prop_assert!(http::HeaderValue::from_bytes(value).is_ok(), "{value:?}");
        if forwarded
            && name.eq_ignore_ascii_case("host")
            && !value.is_empty()
            && !value.contains(&b'%')
        {
            let authority = http::uri::Authority::try_from(&value[..]);
            prop_assert!(authority.is_ok(), "Host {value:?}: {authority:?}");
        }
    }
    Ok(())
}

/// The property: the fast path's verdict is the reference's; what it takes
/// hyper's path would read alike; and its verdict on a complete head does
/// not depend on what follows it, nor come before the head is complete.
fn check(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let fast = fast_verdict(input);
    let expected = reference(input);
    match (&fast, &expected) {
        (Verdict::Partial | Verdict::Fallback, Verdict::PartialOrFallback) => {}
        _ => prop_assert_eq!(
            &fast,
            &expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        ),
    }
    if let Verdict::Forward(parsed) | Verdict::Reject(_, parsed) = &fast {
        hyper_reads_it_alike(parsed, matches!(fast, Verdict::Forward(_)))?;
        let head = &input[..parsed.head_len];
        prop_assert_eq!(&fast_verdict(head), &fast, "the head alone");
        for cut in cuts {
            let cut = cut % parsed.head_len;
            prop_assert_eq!(
                fast_verdict(&head[..cut]),
                Verdict::Partial,
                "{:?} cut at {}",
                String::from_utf8_lossy(head),
                cut
            );
        }
    }
    Ok(())
}

// --------------------------------------------------------------- grammar

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> + Clone {
    select(options).prop_map(|s| s.as_bytes().to_vec())
}

/// `name` as written, lower-case or upper-case.
fn cased(name: &'static str) -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        Just(name.as_bytes().to_vec()),
        Just(name.to_ascii_lowercase().into_bytes()),
        Just(name.to_ascii_uppercase().into_bytes()),
    ]
}

fn regex(pattern: &'static str) -> impl Strategy<Value = Vec<u8>> + Clone {
    pattern.prop_map(String::into_bytes)
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];
const ODD_METHODS: &[&str] = &[
    "CONNECT", "get", "PROPFIND", "M-SEARCH", "G\0T", "", "GET/", "G\u{c9}T", "GET\r",
];
const ODD_TARGETS: &[&str] = &[
    "*",
    "a",
    "a.test:80",
    "http://a.test/x",
    "https://a.test",
    "http://user@a.test/",
    "//x",
    "/%zz",
    "/%",
    "",
    "/caf\u{e9}",
    "ftp://a/b",
    "/a\0b",
    "/a#f",
    "/?",
    "/..",
    "/%2F",
    "/a b",
    "/a\tb",
];
const ODD_VERSIONS: &[&str] = &[
    "HTTP/1.2",
    "HTTP/2.0",
    "http/1.1",
    "HTTP/1.10",
    "HTTP/1",
    "HTTP/1.1 ",
    "HTTP/0.9",
    "HTTP/1.1\0",
    "",
];
const HOSTS: &[&str] = &[
    "web.test",
    "web.test:8080",
    "127.0.0.1",
    "[::1]:80",
    "[v1.x]",
    "",
    "a%41",
    "x_y-z~!$&'()*+,;=",
];
const ODD_HOSTS: &[&str] = &[
    "a b",
    "a/b",
    "user@a",
    "a\tb",
    "a:8o",
    "a:",
    "a%4",
    "[::1",
    "::1",
    "caf\u{e9}",
    "a\\b",
    "a,b",
    "a;b",
    "a:1:2",
];
const LENGTHS: &[&str] = &["0", "5", "005", "16384", "000000000000000005"];
const ODD_LENGTHS: &[&str] = &[
    "16385",
    "+5",
    "-1",
    "5, 5",
    "5,5",
    "",
    "1e3",
    "0x5",
    "999999999999999999",
    "9999999999999999999",
    "18446744073709551616",
    "0000000000000000005",
];
const ENCODINGS: &[&str] = &["chunked", "gzip, chunked", "chunked, gzip", "identity", ""];
const CONNECTIONS: &[&str] = &[
    "close",
    "keep-alive",
    "Close",
    "KEEP-ALIVE",
    "close, keep-alive",
    " , close ,",
    "",
    ",",
];
const ODD_CONNECTIONS: &[&str] = &["upgrade", "x-secret", "close x", "te, close"];
const REQUEST_IDS: &[&str] = &["", "id-1", "id-2", "a b"];
const TRACEPARENTS: &[&str] = &[
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "garbage",
    "",
];
const HOP_NAMES: &[&str] = &["Upgrade", "Expect"];
const OTHER_NAMES: &[&str] = &[
    "TE",
    "Trailer",
    "Keep-Alive",
    "Proxy-Connection",
    "X-Forwarded-Proto",
    "X-Forwarded-For",
    "tracestate",
    "Accept",
    "Idempotency-Key",
    "Transfer_Encoding",
    "Content-Length2",
    "Hosts",
];
const ODD_NAMES: &[&str] = &[
    "Bad Header",
    "Host ",
    " Host",
    "",
    "X\0Y",
    "Host\t",
    "(x)",
    "X:Y",
    "\u{e9}",
];
/// Bytes that make or break HTTP framing.
const SHARP: &[u8] = b"\0\r\n \t:,;/@%\x7f\x80\xffaA0";

fn value() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        40 => regex("[!-~]([ -~\t\u{80}-\u{ff}]{0,16}[!-~])?"),
        2 => vec(select(SHARP), 0..8),
        1 => vec(any::<u8>(), 0..16),
        // Huge values.
        1 => (1usize..20_000).prop_map(|n| vec![b'v'; n]),
    ]
}

/// A header line's name and value: mostly ones a client sends, now and then
/// an odd one (several of which hand the request to hyper's path).
fn field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> + Clone {
    prop_oneof![
        4 => (cased("Host"), prop_oneof![8 => pick(HOSTS), 2 => pick(ODD_HOSTS), 1 => value()]),
        6 => (cased("Content-Length"), prop_oneof![4 => pick(LENGTHS), 1 => pick(ODD_LENGTHS)]),
        1 => (cased("Transfer-Encoding"), pick(ENCODINGS)),
        8 => (cased("Connection"), prop_oneof![6 => pick(CONNECTIONS), 1 => pick(ODD_CONNECTIONS)]),
        4 => (cased("X-Request-Id"), pick(REQUEST_IDS)),
        4 => (cased("traceparent"), pick(TRACEPARENTS)),
        1 => (pick(HOP_NAMES), value()),
        6 => (pick(OTHER_NAMES), value()),
        24 => (regex("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"), value()),
        1 => (pick(ODD_NAMES), value()),
    ]
}

/// Line ends: CRLF, and now and then a bare LF (httparse takes it), a CR
/// without LF, or worse.
fn eol() -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![
        80 => Just("\r\n"),
        3 => Just("\n"),
        1 => Just("\r"),
        1 => Just("\r\r\n"),
        1 => Just("\n\r"),
    ]
}

#[derive(Debug, Clone)]
struct Line {
    name: Vec<u8>,
    value: Vec<u8>,
    /// Whitespace before and after the value.
    before: &'static str,
    after: &'static str,
    end: &'static str,
    /// Continued on a second line (obs-fold).
    folded: bool,
}

fn line() -> impl Strategy<Value = Line> + Clone {
    (
        field(),
        prop_oneof![16 => Just(" "), 2 => Just(""), 1 => Just("\t"), 1 => Just("  ")],
        prop_oneof![10 => Just(""), 1 => Just(" "), 1 => Just("\t")],
        eol(),
        proptest::bool::weighted(0.005),
    )
        .prop_map(|((name, value), before, after, end, folded)| Line {
            name,
            value,
            before,
            after,
            end,
            folded,
        })
}

#[derive(Debug, Clone)]
struct Generated {
    method: Vec<u8>,
    target: Vec<u8>,
    version: Vec<u8>,
    /// Between method, target and version.
    gaps: (&'static str, &'static str),
    first_end: &'static str,
    /// A `Host` line first (most requests have one).
    host: Option<Vec<u8>>,
    /// Plain `x-fill-N: N` lines then (to pass the header limit).
    filler: usize,
    lines: Vec<Line>,
    last_end: &'static str,
    body: Vec<u8>,
}

impl Generated {
    fn render(&self) -> Vec<u8> {
        let mut out = self.method.clone();
        out.extend_from_slice(self.gaps.0.as_bytes());
        out.extend_from_slice(&self.target);
        out.extend_from_slice(self.gaps.1.as_bytes());
        out.extend_from_slice(&self.version);
        out.extend_from_slice(self.first_end.as_bytes());
        if let Some(host) = &self.host {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\r\n");
        }
        for i in 0..self.filler {
            out.extend_from_slice(format!("x-fill-{i}: {i}\r\n").as_bytes());
        }
        for line in &self.lines {
            out.extend_from_slice(&line.name);
            out.push(b':');
            out.extend_from_slice(line.before.as_bytes());
            out.extend_from_slice(&line.value);
            out.extend_from_slice(line.after.as_bytes());
            if line.folded {
                out.extend_from_slice(line.end.as_bytes());
                out.extend_from_slice(b" folded");
            }
            out.extend_from_slice(line.end.as_bytes());
        }
        out.extend_from_slice(self.last_end.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

fn gap() -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![60 => Just(" "), 1 => Just("  "), 1 => Just("\t"), 1 => Just("")]
}

fn generated() -> impl Strategy<Value = Generated> {
    let method = prop_oneof![
        30 => pick(METHODS),
        1 => pick(ODD_METHODS),
        1 => regex("[A-Z!#$%&'*+.^_`|~-]{1,8}"),
    ];
    let target = prop_oneof![
        40 => regex("/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,24}"),
        2 => regex("/[ -~]{0,16}"),
        2 => pick(ODD_TARGETS),
        1 => vec(any::<u8>(), 0..12).prop_map(|bytes| [&b"/"[..], &bytes].concat()),
        1 => (1usize..20_000).prop_map(|n| [&b"/"[..], &vec![b'a'; n]].concat()),
    ];
    let version = prop_oneof![
        40 => Just(b"HTTP/1.1".to_vec()),
        2 => Just(b"HTTP/1.0".to_vec()),
        1 => pick(ODD_VERSIONS),
    ];
    let lines = prop_oneof![
        12 => vec(line(), 0..5),
        2 => vec(line(), 5..12),
    ];
    let host = prop_oneof![10 => pick(HOSTS).prop_map(Some), 1 => Just(None)];
    (
        method,
        target,
        version,
        (gap(), gap()),
        eol(),
        (host, prop_oneof![20 => Just(0usize), 1 => 55usize..75]),
        lines,
        eol(),
        vec(any::<u8>(), 0..12),
    )
        .prop_map(
            |(method, target, version, gaps, first_end, (host, filler), lines, last_end, body)| {
                Generated {
                    method,
                    target,
                    version,
                    gaps,
                    first_end,
                    host,
                    filler,
                    lines,
                    last_end,
                    body,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Repeat(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![3 => select(SHARP), 1 => any::<u8>()];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Repeat(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Set(at, b) if len > 0 => bytes[at % len] = b,
            Mutation::Set(..) => {}
            Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Mutation::Delete(at, n) => {
                let at = at % (len + 1);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Repeat(at, n) => {
                let at = at % (len + 1);
                let copy = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
            Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
        }
    }
    bytes
}

// ------------------------------------------------------------ properties

/// Where to cut an accepted head to check it is not decided early.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(any::<usize>(), 4)
}

#[test]
fn fuzz_fast_path_grammar_matches_the_reference() {
    run(
        config(16_000, 1),
        (generated(), cuts()),
        |(generated, cuts)| check(&generated.render(), &cuts),
    );
}

#[test]
fn fuzz_fast_path_mutated_heads_match_the_reference() {
    run(
        config(16_000, 1),
        (generated(), vec(mutation(), 1..5), cuts()),
        |(generated, mutations, cuts)| check(&mutate(generated.render(), &mutations), &cuts),
    );
}

/// Inputs worth keeping: the edges the grammar aims at. (What the socket
/// property found, hyper's path forwarding otherwise, is kept in
/// `tests.rs` as `forwarded_heads_are_canonical`.)
#[test]
fn fuzz_regressions() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
        b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000005\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\nX-Request-Id: b\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for case in cases {
        if let Err(err) = check(case, &[1, 7, 15, 40]) {
            panic!("{:?}: {err}", String::from_utf8_lossy(case));
        }
    }
}

// ---------------------------------------------------------- over sockets

/// A request that can be sent over a socket to either path and answered:
/// its body is framed by a Content-Length that matches it (or by one that
/// hyper's path rejects before any body), never chunked, never waiting for
/// `100 Continue` or an upgrade.
#[derive(Debug, Clone)]
struct Wire {
    method: &'static str,
    target: Vec<u8>,
    version: &'static str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    length: Length,
    body: Vec<u8>,
}

/// How a [`Wire`] request states its body's length.
#[derive(Debug, Clone, Copy)]
enum Length {
    /// No Content-Length (and no body).
    Absent,
    /// The body's length, with leading zeros, maybe on two lines.
    Exact { zeros: usize, twice: bool },
    /// Two different lengths.
    Conflicting,
    /// `n, n` on one line.
    Listed,
    /// `+n`.
    Signed,
}

impl Wire {
    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.push(b' ');
        out.extend_from_slice(self.version.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let n = self.body.len();
        let lengths = match self.length {
            Length::Absent => vec![],
            Length::Exact { zeros, twice } => {
                let value = format!("{}{n}", "0".repeat(zeros));
                if twice {
                    vec![value.clone(), value]
                } else {
                    vec![value]
                }
            }
            Length::Conflicting => vec![n.to_string(), (n + 1).to_string()],
            Length::Listed => vec![format!("{n}, {n}")],
            Length::Signed => vec![format!("+{n}")],
        };
        for value in lengths {
            out.extend_from_slice(format!("Content-Length: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn wire_field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> + Clone {
    prop_oneof![
        2 => (cased("Host"), prop_oneof![4 => pick(HOSTS), 1 => pick(ODD_HOSTS)]),
        3 => (cased("Connection"), prop_oneof![6 => pick(CONNECTIONS), 2 => pick(ODD_CONNECTIONS)]),
        3 => (cased("X-Request-Id"), pick(REQUEST_IDS)),
        3 => (cased("traceparent"), pick(TRACEPARENTS)),
        1 => (cased("tracestate"), pick(&["k=v", ""])),
        2 => (cased("X-Forwarded-For"), pick(&["10.0.0.1", "10.0.0.1, 10.0.0.2", "", "garbage"])),
        4 => (pick(OTHER_NAMES), regex("[!-~]{0,8}")),
        1 => (pick(&["x-secret", "X-Secret"]), Just(b"hunter2".to_vec())),
        8 => (regex("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"), regex("[!-~]([ -~]{0,12}[!-~])?")),
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    let method = prop_oneof![
        20 => select(&["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"][..]),
        1 => select(&["get", "CONNECT", "TRACE", "PROPFIND"][..]),
    ];
    let target = prop_oneof![
        20 => regex("/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,24}"),
        2 => regex("/[!-~]{0,12}"),
        2 => pick(&["*", "a", "a.test:80", "/a#f", "/%zz", "http://web.test/abs?q", "/caf\u{e9}"]),
    ];
    let version = prop_oneof![12 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")];
    let host = prop_oneof![8 => pick(HOSTS).prop_map(Some), 1 => Just(None)];
    let length = prop_oneof![
        6 => Just(Length::Absent),
        6 => (0usize..3, proptest::bool::weighted(0.2))
            .prop_map(|(zeros, twice)| Length::Exact { zeros, twice }),
        1 => Just(Length::Conflicting),
        1 => Just(Length::Listed),
        1 => Just(Length::Signed),
    ];
    (
        method,
        target,
        version,
        host,
        vec(wire_field(), 0..6),
        length,
        vec(any::<u8>(), 1..64),
    )
        .prop_map(|(method, target, version, host, fields, length, body)| {
            let mut headers: Vec<_> = host.map(|h| (b"Host".to_vec(), h)).into_iter().collect();
            headers.extend(fields);
            let body = if matches!(length, Length::Absent) {
                Vec::new()
            } else {
                body
            };
            Wire {
                method,
                target,
                version,
                headers,
                length,
                body,
            }
        })
}

/// A response as the client saw it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Header names, sorted (values such as ids and dates differ).
    names: Vec<String>,
    connection: Option<String>,
    body: Vec<u8>,
}

/// Read one response (framed by its Content-Length, or by the connection
/// closing) from `stream`; `buf` keeps what was read past it.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Answer> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) {
            let mut names: Vec<String> = resp
                .headers
                .iter()
                .map(|h| h.name.to_ascii_lowercase())
                .collect();
            names.sort();
            let value = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let connection = value("connection");
            let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
            let status = resp.code.unwrap_or(0);
            while length.is_none_or(|n| buf.len() < head_len + n) {
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let end = length.map_or(buf.len(), |n| (head_len + n).min(buf.len()));
            let body = buf[head_len..end].to_vec();
            buf.drain(..end);
            return Some(Answer {
                status,
                names,
                connection,
                body,
            });
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Send `pieces` (pausing between them, so that they arrive apart), then
/// read up to `answers` responses.
async fn send_pieces(addr: SocketAddr, pieces: &[&[u8]], answers: usize) -> Vec<Option<Answer>> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if stream.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for _ in 0..answers {
        let answer =
            tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream, &mut buf))
                .await
                .unwrap_or(None);
        out.push(answer);
    }
    out
}

/// `seen` with its headers sorted by name (the two paths order different
/// names differently) and ids and traces the proxy made (not in `sent`)
/// blanked.
fn normalized(seen: &Seen, sent: &[u8]) -> Seen {
    let mut seen = seen.clone();
    seen.headers.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in &mut seen.headers {
        let made = (name == "x-request-id" || name == "traceparent")
            && !sent.windows(value.len().max(1)).any(|w| w == &value[..]);
        if made {
            *value = b"<made by the proxy>".to_vec();
        }
    }
    seen
}

/// Two proxies in front of one recording upstream: the fast path's, and
/// hyper's path for everything.
async fn two_proxies() -> (ProxyHandle, ProxyHandle, Arc<std::sync::Mutex<Vec<Seen>>>) {
    let (addr, seen) = spawn_recording_upstream().await;
    let stats = RevisionStats::new();
    let options = ProxyOptions {
        client_body_timeout: Duration::from_secs(2),
        // The client is a trusted proxy: its X-Forwarded-For is appended
        // to (the more involved of the two rules).
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..ProxyOptions::default()
    };
    let fast = ProxyHandle::bind(
        "web".into(),
        "127.0.0.1:0".parse().unwrap(),
        options.clone(),
    )
    .await
    .unwrap();
    let slow = ProxyHandle::bind("web".into(), "127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    slow.set_fast_path(false);
    let up = upstream("r", 1, addr, &stats);
    fast.set_routes(table(&[&up]));
    slow.set_routes(table(&[&up]));
    (fast, slow, seen)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The same bytes sent to the fast path's proxy and to hyper's path's get
/// the same answer, and the upstream receives the same request (or none)
/// from both.
#[test]
fn fuzz_both_paths_answer_alike_over_sockets() {
    let rt = runtime();
    let (fast, slow, seen) = rt.block_on(two_proxies());
    run(config(1_000, 16), wire(), |wire| {
        let bytes = wire.render();
        rt.block_on(async {
            let mut outcomes = Vec::new();
            for proxy in [&fast, &slow] {
                seen.lock().unwrap().clear();
                let answer = send_pieces(proxy.local_addr(), &[&bytes], 1).await;
                let upstream: Vec<Seen> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| normalized(s, &bytes))
                    .collect();
                outcomes.push((answer, upstream));
            }
            let hyper = outcomes.pop();
            let fast = outcomes.pop();
            prop_assert_eq!(
                fast,
                hyper,
                "{:?}: fast path, then hyper's path",
                String::from_utf8_lossy(&bytes)
            );
            Ok(())
        })
    });
}

/// A request the fast path takes whole, keep-alive (the last one may ask to
/// close), with one valid Host.
fn plain_wire() -> impl Strategy<Value = Wire> {
    (
        select(&["GET", "POST", "PUT", "DELETE", "OPTIONS"][..]),
        regex("/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,24}"),
        pick(HOSTS),
        vec(
            prop_oneof![
                (cased("X-Request-Id"), pick(&["id-1", "id-2"])),
                (cased("Connection"), pick(&["keep-alive", ""])),
                (
                    regex("[A-Za-z0-9-]{1,12}"),
                    regex("[!-~]([ -~]{0,12}[!-~])?")
                ),
            ],
            0..4,
        ),
        prop_oneof![
            Just(Length::Absent),
            (0usize..2).prop_map(|zeros| Length::Exact {
                zeros,
                twice: false
            }),
        ],
        vec(any::<u8>(), 1..300),
    )
        .prop_map(|(method, target, host, fields, length, body)| {
            let mut headers = vec![(b"Host".to_vec(), host)];
            headers.extend(fields);
            let body = if matches!(length, Length::Absent) {
                Vec::new()
            } else {
                body
            };
            Wire {
                method,
                target,
                version: "HTTP/1.1",
                headers,
                length,
                body,
            }
        })
}

/// One or two pipelined requests written in pieces, with pauses that make
/// the proxy read a head or a body in parts, reach the upstream as they do
/// written at once, and are answered alike.
#[test]
fn fuzz_split_writes_reach_the_upstream_whole() {
    let rt = runtime();
    let (fast, _, seen) = rt.block_on(two_proxies());
    run(
        config(150, 16),
        (vec(plain_wire(), 1..3), vec(any::<usize>(), 1..5)),
        |(wires, cuts)| {
            let bytes: Vec<u8> = wires.iter().flat_map(Wire::render).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| 1 + c % (bytes.len() - 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                pieces.push(&bytes[from..cut]);
                from = cut;
            }
            rt.block_on(async {
                let mut outcomes = Vec::new();
                for pieces in [&[&bytes[..]][..], &pieces[..]] {
                    seen.lock().unwrap().clear();
                    let answers = send_pieces(fast.local_addr(), pieces, wires.len()).await;
                    let upstream: Vec<Seen> = seen
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|s| normalized(s, &bytes))
                        .collect();
                    prop_assert_eq!(upstream.len(), wires.len());
                    for answer in &answers {
                        prop_assert_eq!(answer.as_ref().map(|a| a.status), Some(200));
                    }
                    outcomes.push((answers, upstream));
                }
                prop_assert_eq!(&outcomes[0], &outcomes[1], "{:?}", pieces);
                Ok(())
            })
        },
    );
}
