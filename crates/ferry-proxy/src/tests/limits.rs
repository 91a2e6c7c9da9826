//! Limits: the connection cap (`503`) and the per-client rate limit
//! (`429`).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{
    Client, eventually, fetch, get, raw_exchange, spawn_upstream, start_proxy, table, upstream,
    within,
};
use crate::{ProxyOptions, RevisionStats};

on_both_paths!(
    connection_cap_answers_503,
    rate_limit_answers_429_with_retry_after
);

async fn connection_cap_answers_503() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions {
        max_connections: 2,
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));
    let addr = proxy.local_addr();
    let mut first = Client::connect(addr).await;
    let second = Client::connect(addr).await;
    assert_eq!(
        within("get", first.get("/")).await.unwrap().status,
        StatusCode::OK
    );
    eventually("two open", || proxy.counters().connections_open == 2).await;
    let resp = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("too many connections"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
    assert_eq!(proxy.counters().connections_rejected, 1);
    drop(second);
    eventually("one open", || proxy.counters().connections_open == 1).await;
    assert_eq!(fetch(addr, get("/")).await.status, StatusCode::OK);
}

async fn rate_limit_answers_429_with_retry_after() {
    let up = spawn_upstream("u", true).await;
    let stats = RevisionStats::new();
    let proxy = start_proxy(ProxyOptions {
        rate_limit: Some(crate::RateLimitOptions {
            per_second: 0.5,
            burst: 3,
            key: crate::RateLimitKey::Header(http::HeaderName::from_static("x-api-key")),
        }),
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_routes(table(&[&upstream("u", 1, up.addr, &stats)]));
    let mut client = Client::connect(proxy.local_addr()).await;
    let keyed = |key: &str| {
        Request::get("/")
            .header("host", "web.test")
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..3 {
        let resp = within("get", client.send(keyed("alice"))).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
    }
    let resp = within("get", client.send(keyed("alice"))).await.unwrap();
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.header("retry-after"), "2");
    assert!(resp.headers.get("x-request-id").is_some());
    // Another key has its own budget; no key falls back to the client address.
    let resp = within("get", client.send(keyed("bob"))).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            within("get", client.get("/")).await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(
        within("get", client.get("/")).await.unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(proxy.counters().rate_limited, 2);
    assert_eq!(stats.snapshot().total, 7, "429s never reach an upstream");
}
