//! The `Host` and request-target rules of RFC 9112 3.2: `400`s answered by
//! the proxy itself, never forwarded.

use super::{
    log_lines, logged, raw_exchange, spawn_recording_upstream, start_proxy, table, upstream,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(host_and_request_target_rules_answer_400);

/// RFC 9112 3.2: a request with two `Host` lines, an HTTP/1.1 request
/// without one, one with an invalid `Host`, and a request target in none of
/// the forms allowed for its method are answered `400` by the proxy (with a
/// request id, `Connection: close`, logged) and never reach an upstream;
/// HTTP/1.0 without `Host` and `OPTIONS *` are served.
async fn host_and_request_target_rules_answer_400() {
    let (addr, seen) = spawn_recording_upstream().await;
    let stats = RevisionStats::new();
    let mut options = ProxyOptions::default();
    let log = logged(&mut options);
    let proxy = start_proxy(options).await;
    let up = upstream("r", 1, addr, &stats);
    proxy.set_routes(table(&[&up]));
    let rejected: &[(&str, &str, &str)] = &[
        (
            "two Host lines",
            "GET /two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines with one value",
            "GET /same HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines, one empty",
            "GET /empty HTTP/1.1\r\nHost: a.test\r\nHost:\r\n",
            "more than one Host",
        ),
        (
            "two Host lines on HTTP/1.0",
            "GET /old HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n",
            "more than one Host",
        ),
        (
            "two Host lines and a body",
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nHost: b.test\r\n\r\nhello",
            "more than one Host",
        ),
        (
            "two Host lines and a chunked body",
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
            "more than one Host",
        ),
        (
            "no Host on HTTP/1.1",
            "GET /none HTTP/1.1\r\nX-Other: 1\r\n",
            "needs a Host",
        ),
        (
            "no Host on HTTP/1.1, absolute-form",
            "GET http://a.test/abs HTTP/1.1\r\nX-Other: 1\r\n",
            "needs a Host",
        ),
        (
            "space in Host",
            "GET / HTTP/1.1\r\nHost: a.test b.test\r\n",
            "not a valid host",
        ),
        (
            "tab in Host",
            "GET / HTTP/1.1\r\nHost: a.test\tb.test\r\n",
            "not a valid host",
        ),
        (
            "slash in Host",
            "GET / HTTP/1.1\r\nHost: a.test/evil\r\n",
            "not a valid host",
        ),
        (
            "userinfo in Host",
            "GET / HTTP/1.1\r\nHost: user@a.test\r\n",
            "not a valid host",
        ),
        (
            "bad port in Host",
            "GET / HTTP/1.1\r\nHost: a.test:8o\r\n",
            "not a valid host",
        ),
        (
            "non-ASCII Host",
            "GET / HTTP/1.1\r\nHost: caf\u{e9}.test\r\n",
            "not a valid host",
        ),
        (
            "bad Host on HTTP/1.0",
            "GET / HTTP/1.0\r\nHost: a b\r\n",
            "not a valid host",
        ),
        (
            "target neither /path nor absolute",
            "GET a HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "authority-form without CONNECT",
            "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "asterisk without OPTIONS",
            "GET * HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "userinfo in an absolute-form target",
            "GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
        (
            "absolute-form target of another scheme",
            "GET ftp://a.test/x HTTP/1.1\r\nHost: a.test\r\n",
            "request target",
        ),
    ];
    for (i, (what, head, why)) in rejected.iter().enumerate() {
        // `Connection: close` so that a forwarded request fails the test at
        // once (the pipelined case below shows the proxy closes unasked).
        let extra = format!("X-Request-Id: probe-{i}\r\nConnection: close\r\n");
        let request = match head.split_once("\r\n\r\n") {
            Some((headers, body)) => format!("{headers}\r\n{extra}\r\n{body}"),
            None => format!("{head}{extra}\r\n"),
        };
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        // hyper answers an HTTP/1.0 client in HTTP/1.0.
        let status_line = out.split("\r\n").next().unwrap_or("");
        assert!(
            ["HTTP/1.1 400 Bad Request", "HTTP/1.0 400 Bad Request"].contains(&status_line),
            "{what}: {out}"
        );
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{what}: {out}");
        assert!(
            out.contains(&format!("\r\nx-request-id: probe-{i}\r\n")),
            "{what}: {out}"
        );
        assert!(
            lower.contains("\r\ncontent-type: text/plain; charset=utf-8\r\n"),
            "{what}: {out}"
        );
        assert!(out.ends_with('\n') && out.contains(why), "{what}: {out}");
        assert_eq!(
            out.matches(" 400 Bad Request\r\n").count(),
            1,
            "{what}: {out}"
        );
        assert!(!out.contains(" 200 OK\r\n"), "{what}: {out}");
    }
    // Control characters in Host: httparse (on both paths) rejects the head.
    for head in [
        "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
    ] {
        let out = raw_exchange(proxy.local_addr(), head.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{head:?}: {out}"
        );
    }
    // A rejected request behind a served one on the same connection: the
    // first is answered, the connection closes after the 400, and what
    // follows is neither answered nor forwarded.
    let out = raw_exchange(
        proxy.local_addr(),
        b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 400 Bad Request\r\n").count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
    {
        let seen = seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["/first"], "only the valid request went upstream");
    }
    // Logged like the proxy's other answers; no revision counted them.
    let lines = log_lines(&log, rejected.len() + 2).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"status\":400"))
            .count(),
        rejected.len() + 1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"status\":400") && l.contains("\"request_id\":\"probe-0\"")),
        "{lines:?}"
    );
    assert_eq!(stats.snapshot().total, 1);
    assert_eq!(up.in_flight(), 0);

    // Served: one valid Host (name, IPv4, IPv6, with ports, empty), HTTP/1.0
    // without Host, and OPTIONS * (asterisk-form, forwarded as such).
    seen.lock().unwrap().clear();
    let served: &[(&str, &str)] = &[
        (
            "GET /port HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
            "/port",
        ),
        (
            "GET /v4 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "/v4",
        ),
        (
            "GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
            "/v6",
        ),
        (
            "GET /empty HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
            "/empty",
        ),
        ("GET /old HTTP/1.0\r\n\r\n", "/old"),
        (
            "OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "*",
        ),
    ];
    for (request, uri) in served {
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(
            out.contains(" 200 OK\r\n") && out.ends_with("ok"),
            "{request:?}: {out}"
        );
        let last = seen.lock().unwrap().last().cloned();
        let last = last.unwrap_or_else(|| panic!("{request:?} not forwarded"));
        assert_eq!(last.uri, *uri, "{request:?}");
        let host = request
            .lines()
            .find_map(|l| l.strip_prefix("Host:"))
            .map(str::trim);
        if let Some(host) = host {
            assert_eq!(last.header("host"), Some(host.as_bytes()), "{request:?}");
        }
    }
    assert_eq!(seen.lock().unwrap()[5].method, "OPTIONS");
    // The HTTP/1.0 request goes upstream as HTTP/1.1, which needs a Host:
    // an empty one, as for a target without authority (RFC 9112 3.2).
    assert_eq!(seen.lock().unwrap()[4].header("host"), Some(&b""[..]));

    // An absolute-form target's authority replaces the Host received with
    // it (RFC 9112 3.2.2), and gives one to an HTTP/1.0 request without.
    seen.lock().unwrap().clear();
    for request in [
        "GET http://a.test:8080/abs?q=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "GET http://a.test:8080/abs?q=1 HTTP/1.0\r\n\r\n",
    ] {
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(out.contains(" 200 OK\r\n"), "{request:?}: {out}");
        let last = seen.lock().unwrap().pop().expect("forwarded");
        assert_eq!(last.uri, "/abs?q=1", "{request:?}");
        assert_eq!(
            last.header("host"),
            Some(&b"a.test:8080"[..]),
            "{request:?}"
        );
        assert_eq!(
            last.headers.iter().filter(|(n, _)| n == "host").count(),
            1,
            "{last:?}"
        );
    }
    let _ = std::fs::remove_file(log);
}
