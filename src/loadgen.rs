//! The load generator lives in `ferry-validate` (the `load` check and the
//! daemon's gates use it too); the demo, tests and benches reach it here.
pub use ferry_validate::loadgen::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo_app::{self, DemoAppConfig};
    use bytes::Bytes;
    use http::{HeaderValue, Request};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    const GENEROUS: Duration = Duration::from_secs(20);

    fn demo_config(version: &str) -> DemoAppConfig {
        DemoAppConfig {
            port: 0,
            version: version.to_string(),
            failure_rate: 0.0,
            latency: Duration::ZERO,
            startup_delay: Duration::ZERO,
            crash_on_start: false,
            never_ready: false,
            unhealthy_after: None,
            misbehave_after: None,
        }
    }

    /// Starts the demo app on an ephemeral port; send on the channel to stop it.
    async fn demo(config: DemoAppConfig) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(demo_app::serve(listener, config, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    fn load(target: SocketAddr, connections: usize) -> LoadConfig {
        LoadConfig {
            connections,
            max_duration: Duration::from_secs(60),
            ..LoadConfig::new(target)
        }
    }

    async fn stop(gen_: LoadGen) -> LoadReport {
        tokio::time::timeout(GENEROUS, gen_.stop())
            .await
            .expect("load generator stops")
    }

    /// Waits (generously) until at least `n` requests succeeded.
    async fn wait_ok(gen_: &LoadGen, n: u64) {
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().ok < n {
            assert!(std::time::Instant::now() < deadline, "{:?}", gen_.report());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn counts_versions_against_demo_app() {
        let (addr, _server) = demo(demo_config("v1")).await;
        let gen_ = LoadGen::start(load(addr, 4));
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_ok(&gen_, 1).await;
        let live = gen_.report();
        let window = gen_.take_window();
        assert!(window.get("v1").copied().unwrap_or(0) > 0, "{window:?}");
        let report = stop(gen_).await;
        assert!(report.ok > 0, "{report:?}");
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.sent, report.ok + report.failed);
        assert!(report.ok >= live.ok);
        assert_eq!(report.by_version.get("v1"), Some(&report.ok));
        assert_eq!(report.by_status.get(&200), Some(&report.ok));
        assert_eq!(report.last_version.as_deref(), Some("v1"));
        assert!(report.errors.is_empty());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["failed"], 0);
    }

    #[tokio::test]
    async fn take_window_resets() {
        let (addr, _server) = demo(demo_config("w")).await;
        let gen_ = LoadGen::start(load(addr, 2));
        wait_ok(&gen_, 5).await;
        let first = gen_.take_window();
        assert!(first["w"] >= 1);
        let report = stop(gen_).await;
        // Whatever came after the first window is in the second.
        let total: u64 = first.values().sum::<u64>();
        assert!(total <= report.ok);
    }

    #[tokio::test]
    async fn closed_port_counts_failures_with_a_message() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let gen_ = LoadGen::start(load(addr, 2));
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().failed == 0 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = stop(gen_).await;
        assert!(report.failed > 0, "{report:?}");
        assert_eq!(report.ok, 0);
        assert_eq!(report.sent, report.failed);
        assert!(report.by_version.is_empty());
        assert!(!report.errors.is_empty());
        assert!(report.errors.len() <= MAX_ERRORS);
        assert!(
            report.errors[0].starts_with("connect: "),
            "{:?}",
            report.errors
        );
        assert!(
            !report.errors[0].contains("os error"),
            "{:?}",
            report.errors
        );
    }

    #[tokio::test]
    async fn non_2xx_answers_are_failures_with_body() {
        let (addr, _server) = demo(DemoAppConfig {
            failure_rate: 1.0,
            ..demo_config("broken")
        })
        .await;
        let gen_ = LoadGen::start(load(addr, 2));
        let deadline = std::time::Instant::now() + GENEROUS;
        while gen_.report().failed == 0 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = stop(gen_).await;
        assert_eq!(report.ok, 0);
        assert!(report.by_version.is_empty(), "2xx only");
        assert_eq!(report.by_status.get(&500), Some(&report.failed));
        assert_eq!(report.errors[0], "status 500: error from broken");
        assert_eq!(
            report.failed_by_version.get("broken"),
            Some(&report.failed),
            "each failure is counted against the version that answered it"
        );
    }

    #[tokio::test]
    async fn rate_limits_each_connection() {
        let (addr, _server) = demo(demo_config("paced")).await;
        let started = std::time::Instant::now();
        let gen_ = LoadGen::start(LoadConfig {
            rate_per_connection: Some(20.0),
            ..load(addr, 2)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait_ok(&gen_, 1).await;
        let report = stop(gen_).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert!(report.ok > 0);
        assert_eq!(report.failed, 0);
        // At most one request per tick, the first tick immediate.
        let bound = 2.0 * (20.0 * elapsed + 1.0);
        assert!((report.sent as f64) <= bound, "{} > {bound}", report.sent);
    }

    #[tokio::test]
    async fn stops_by_itself_at_max_duration() {
        let (addr, _server) = demo(demo_config("bounded")).await;
        let gen_ = LoadGen::start(LoadConfig {
            max_duration: Duration::from_millis(300),
            ..load(addr, 2)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The count settles without `stop` being called.
        let deadline = std::time::Instant::now() + GENEROUS;
        let mut previous = gen_.report().sent;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = gen_.report().sent;
            if now == previous {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still sending");
            previous = now;
        }
        let report = gen_.report();
        assert!(report.ok > 0);
        assert!(gen_.finished());
        assert_eq!(stop(gen_).await.sent, report.sent);
    }

    /// A server that closes every connection after one answer: the
    /// generator reconnects, and reconnecting is not a failure.
    #[tokio::test]
    async fn reconnects_when_server_closes_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<_>| async move {
                        assert_eq!(req.headers()["connection"], "keep-alive");
                        let user = req.headers()["x-user-id"].to_str().unwrap();
                        let n: u64 = user.strip_prefix("user-").unwrap().parse().unwrap();
                        assert!(n < 100);
                        let mut resp = hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok\n"),
                        ));
                        resp.headers_mut()
                            .insert("x-version", HeaderValue::from_static("closer"));
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let gen_ = LoadGen::start(load(addr, 2));
        wait_ok(&gen_, 20).await;
        let report = stop(gen_).await;
        server.abort();
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.by_version.get("closer"), Some(&report.ok));
    }

    #[test]
    fn error_texts() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert!(!io_error_text(&refused).contains("os error"));
        let config = LoadConfig::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(config.path, "/");
        assert_eq!(config.connections, 8);
    }
}
