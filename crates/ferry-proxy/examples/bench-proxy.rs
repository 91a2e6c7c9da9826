//! Ferry's proxy alone, for `benches/proxy-bench.sh`: the same
//! `ProxyHandle` the daemon binds, with per-revision metrics recorded as in
//! production, in front of fixed upstreams.
//!
//! ```text
//! bench-proxy LISTEN LISTEN_SPLIT UPSTREAM_REV1 UPSTREAM_REV2 [WORKERS]
//! ```
//! `LISTEN` round-robins to revision 1 only; `LISTEN_SPLIT` splits 90 % to
//! revision 1 and 10 % to revision 2 (weighted routing, no stickiness).
//! Runs until killed; prints one line once both listeners are bound.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_proxy::{
    ProxyHandle, ProxyOptions, RevisionStats, RoutingTable, Split, Stickiness, Upstream,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: bench-proxy LISTEN LISTEN_SPLIT UPSTREAM_REV1 UPSTREAM_REV2 [WORKERS]");
        std::process::exit(2);
    }
    let addr = |i: usize| -> SocketAddr { args[i].parse().expect("an IP:PORT address") };
    let workers: usize = args
        .get(4)
        .map_or(2, |w| w.parse().expect("a thread count"));
    // The proxy serves on its own `workers` threads (one single-threaded
    // runtime each); this runtime only binds it and renders the metrics.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (s1, s2) = (RevisionStats::new(), RevisionStats::new());
        let rev1 = Upstream::new("rev1".into(), 1, addr(2), Arc::clone(&s1));
        let rev2 = Upstream::new("rev2".into(), 2, addr(3), Arc::clone(&s2));
        let plain = ProxyHandle::bind_with_workers(
            "bench".into(),
            addr(0),
            ProxyOptions::default(),
            workers,
        )
        .await
        .expect("bind LISTEN");
        plain.set_routes(RoutingTable {
            upstreams: vec![Arc::clone(&rev1)],
            split: None,
            stable: Some(1),
        });
        let split = ProxyHandle::bind_with_workers(
            "bench-split".into(),
            addr(1),
            ProxyOptions::default(),
            workers,
        )
        .await
        .expect("bind LISTEN_SPLIT");
        split.set_routes(RoutingTable {
            upstreams: vec![rev1, rev2],
            split: Some(Split {
                weights: vec![(2, 1_000), (1, 9_000)],
                stickiness: Stickiness::None,
                canary: Some(2),
            }),
            stable: Some(1),
        });
        println!(
            "bench-proxy ready on {} and {}",
            plain.local_addr(),
            split.local_addr()
        );
        // Print the metrics on SIGTERM-free exit paths is not needed: keep
        // serving until killed, rendering metrics every 10 s like a scrape.
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let mut out = String::new();
            ferry_proxy::render_prometheus_all(
                &[("revision=\"1\"", &s1), ("revision=\"2\"", &s2)],
                &mut out,
            );
            std::hint::black_box(out);
        }
    });
}
