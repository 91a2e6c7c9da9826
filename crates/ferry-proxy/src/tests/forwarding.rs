//! What the upstream receives: the client's address from trusted proxies
//! and the PROXY protocol, and one canonical `Content-Length`,
//! `traceparent` and `X-Request-Id`.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::{
    fetch, raw_exchange, spawn_recording_upstream, spawn_upstream, start_proxy, table, upstream,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    client_address_from_trusted_proxies_and_proxy_protocol,
    forwarded_heads_are_canonical
);

async fn client_address_from_trusted_proxies_and_proxy_protocol() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let u = upstream("u", 1, up.addr, &stats);
    let trusted = ProxyOptions {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..ProxyOptions::default()
    };

    // A trusted load balancer's X-Forwarded-For is appended to.
    let proxy = start_proxy(trusted.clone()).await;
    proxy.set_routes(table(&[&u]));
    let req = Request::get("/")
        .header("host", "web.test")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = fetch(proxy.local_addr(), req).await;
    assert_eq!(resp.header("x-seen-xff"), "203.0.113.9, 127.0.0.1");

    // PROXY protocol: the address it announces is the client's.
    let proxy = start_proxy(ProxyOptions {
        proxy_protocol: true,
        ..trusted
    })
    .await;
    proxy.set_routes(table(&[&u]));
    let addr = proxy.local_addr();
    let resp = raw_exchange(
        addr,
        b"PROXY TCP4 198.51.100.4 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nhost: web\r\n\
          x-forwarded-for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The end client is not a trusted proxy: its own X-Forwarded-For is dropped.
    assert!(resp.contains("x-seen-xff: 198.51.100.4\r\n"), "{resp}");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 77, 127, 0, 0, 1, 0x30, 0x39, 0, 80]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    let resp = raw_exchange(addr, &v2).await;
    assert!(resp.contains("x-seen-xff: 203.0.113.77\r\n"), "{resp}");

    // A trusted peer that does not send the header is refused.
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert_eq!(resp, "");
}

/// What the property tests (`fuzz.rs`) found hyper's path forwarding
/// otherwise than the fast path: a Content-Length as the client spelled it
/// (`007`), every `traceparent`, and every `X-Request-Id` (or a fresh id
/// when the first was empty). Both paths send one canonical Content-Length, the first
/// `traceparent`, and the first non-empty id, which is also the response's.
async fn forwarded_heads_are_canonical() {
    let (addr, seen) = spawn_recording_upstream().await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions::default()).await;
    proxy.set_routes(table(&[&upstream("r", 1, addr, &stats)]));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let cases: &[(String, &str, &[u8])] = &[
        (
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\nhello!!".into(),
            "content-length",
            b"7",
        ),
        (
            format!(
                "GET /c HTTP/1.1\r\nHost: a\r\ntraceparent: {trace}\r\ntraceparent: {other}\r\n\r\n"
            ),
            "traceparent",
            trace.as_bytes(),
        ),
        (
            "GET /d HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\nX-Request-Id: second\r\n\r\n".into(),
            "x-request-id",
            b"second",
        ),
        (
            "GET /e HTTP/1.1\r\nHost: a\r\nX-Request-Id: first\r\nX-Request-Id: second\r\n\r\n"
                .into(),
            "x-request-id",
            b"first",
        ),
    ];
    for (request, name, expected) in cases {
        seen.lock().unwrap().clear();
        let request = request.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
        let out = raw_exchange(proxy.local_addr(), request.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{request:?}: {out}");
        let seen = seen.lock().unwrap().pop().expect("forwarded");
        let values: Vec<&[u8]> = seen
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .collect();
        assert_eq!(values, [*expected], "{request:?}: {seen:?}");
        if *name == "x-request-id" {
            let id = String::from_utf8_lossy(expected);
            assert!(
                out.contains(&format!("\r\nx-request-id: {id}\r\n")),
                "{out}"
            );
        }
        if request.starts_with("POST") {
            assert_eq!(&seen.body[..], b"hello!!");
        }
    }
}
