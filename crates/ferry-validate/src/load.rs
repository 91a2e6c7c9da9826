//! `load`: Ferry's load generator against a service's own proxy, judged on
//! error rate, latency percentiles and throughput.
//!
//! A failed request is one the service did not serve: no connection, a
//! transport error, a timeout, or a 5xx answer. A 4xx (or 3xx) is the server
//! answering, so it is not an error; 4xx answers are counted and named in
//! the reason. Throughput is every finished request over the run's actual
//! seconds. Latency covers complete answers of any status, from sending
//! (connecting included) to the end of the body.
use crate::loadgen::{LoadConfig, LoadGen, LoadReport};
use crate::{Context, Finding};
use ferry_core::duration::Dur;
use ferry_core::validation::spec::defaults;
use ferry_core::validation::{CheckSpec, SuiteSpec};
use http::Method;
use http::header::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const X_FERRY_REVISION: HeaderName = HeaderName::from_static("x-ferry-revision");
/// A paced run that reaches less than this share of `rate` is a WARNING.
const RATE_SHORTFALL: f64 = 0.9;

/// What a run is judged against.
#[derive(Debug, Clone)]
struct Limits {
    rate: Option<f64>,
    min_throughput: Option<f64>,
    max_error_rate: f64,
    max_p95: Dur,
    max_p99: Dur,
}

pub(crate) async fn run(check: &CheckSpec, suite: &SuiteSpec, ctx: &Context) -> Finding {
    let (config, limits) = match plan(check, suite, ctx) {
        Ok(plan) => plan,
        Err(why) => return Finding::fail(None, why),
    };
    let (report, elapsed) = drive(config).await;
    judge(&limits, &report, elapsed)
}

/// Runs the load until it stops by itself at its duration (requests in
/// flight then are waited for); returns the report and how long it took.
async fn drive(config: LoadConfig) -> (LoadReport, Duration) {
    let started = Instant::now();
    let report = LoadGen::start(config).finish().await;
    (report, started.elapsed())
}

/// The load to send and the limits to judge it by.
fn plan(
    check: &CheckSpec,
    suite: &SuiteSpec,
    ctx: &Context,
) -> Result<(LoadConfig, Limits), String> {
    let (url, via_proxy) = ctx.target(check, suite)?;
    let (target, path) = split_url(&url)?;
    let method = match &check.method {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.as_bytes())
            .map_err(|_| format!("\"{m}\" is not an HTTP method"))?,
    };
    let mut headers = Vec::with_capacity(check.headers.len() + 1);
    for (name, value) in &check.headers {
        let name_ = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("\"{name}\" is not a header name"))?;
        // The value may hold a secret: it is never shown.
        let value = HeaderValue::try_from(ctx.expand(value))
            .map_err(|_| format!("header \"{name}\": the value is not a valid header value"))?;
        headers.push((name_, value));
    }
    if via_proxy && let Some(revision) = ctx.revision {
        headers.retain(|(name, _)| *name != X_FERRY_REVISION);
        headers.push((X_FERRY_REVISION, HeaderValue::from(revision)));
    }

    let limits = Limits {
        rate: check.rate.filter(|r| r.is_finite() && *r > 0.0),
        min_throughput: check.min_throughput,
        max_error_rate: check.max_error_rate.unwrap_or(defaults::ERROR_RATE),
        max_p95: check.max_p95.unwrap_or(defaults::P95),
        max_p99: check.max_p99.unwrap_or(defaults::P99),
    };
    let concurrency = check.concurrency.unwrap_or(8).max(1) as usize;
    // A paced run opens no more connections than requests per second, so
    // that each sends at least one a second.
    let connections = match limits.rate {
        Some(rate) => concurrency.min(rate.ceil() as usize).max(1),
        None => concurrency,
    };
    let config = LoadConfig {
        path,
        method,
        headers,
        connections,
        rate_per_connection: limits.rate.map(|rate| rate / connections as f64),
        max_duration: check.load_duration().0,
        request_timeout: request_timeout(limits.max_p99),
        ..LoadConfig::new(target)
    };
    Ok((config, limits))
}

/// How long a request may take before it is a timeout: twice `max_p99`,
/// within 5 to 25 s (so a run ends inside the default timeout, its
/// duration plus 30 s).
fn request_timeout(max_p99: Dur) -> Duration {
    (max_p99.0 * 2).clamp(Duration::from_secs(5), Duration::from_secs(25))
}

/// The proxy's address and the path (with query) of `http://IP:PORT/path`.
fn split_url(url: &str) -> Result<(SocketAddr, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "a load check sends plain HTTP to a service's proxy; \"{url}\" is not an http:// URL"
        ));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let target: SocketAddr = authority.parse().map_err(|_| {
        format!(
            "a load check goes to a proxy's listen address, an IP and port; \"{authority}\" is not one"
        )
    })?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok((target, path))
}

fn judge(limits: &Limits, report: &LoadReport, elapsed: Duration) -> Finding {
    let finished = report.ok + report.failed;
    if finished == 0 {
        return Finding::fail(
            None,
            format!("no request finished in {:.1} s", elapsed.as_secs_f64()),
        );
    }
    let errors = report.server_errors + report.no_response;
    let error_pct = 100.0 * errors as f64 / finished as f64;
    let throughput = finished as f64 / elapsed.as_secs_f64().max(1e-3);
    let latency = report.latency;
    let timed = |d: Duration| {
        if latency.count == 0 {
            "n/a".to_string()
        } else {
            millis(d)
        }
    };
    let value = format!(
        "{} req/s, p95 {}, p99 {}, {error_pct:.2} % errors ({finished} requests)",
        per_second(throughput),
        timed(latency.p95),
        timed(latency.p99),
    );

    let mut failed = Vec::new();
    if error_pct > limits.max_error_rate {
        failed.push(format!(
            "errors {error_pct:.2} % > max_error_rate {} % ({} answered 5xx, {} without an answer)",
            limits.max_error_rate, report.server_errors, report.no_response
        ));
    }
    if latency.count > 0 && latency.p95 > limits.max_p95.0 {
        failed.push(format!(
            "p95 {} > max_p95 {}",
            millis(latency.p95),
            limits.max_p95
        ));
    }
    if latency.count > 0 && latency.p99 > limits.max_p99.0 {
        failed.push(format!(
            "p99 {} > max_p99 {}",
            millis(latency.p99),
            limits.max_p99
        ));
    }
    if let Some(min) = limits.min_throughput
        && throughput < min
    {
        failed.push(format!(
            "throughput {} req/s < min_throughput {min}",
            per_second(throughput)
        ));
    }
    let shortfall = limits
        .rate
        .filter(|rate| throughput < RATE_SHORTFALL * rate)
        .map(|rate| {
            format!(
                "reached {} req/s of rate = {rate} ({:.0} %)",
                per_second(throughput),
                100.0 * throughput / rate
            )
        });
    let client_errors = (report.client_errors > 0).then(|| {
        format!(
            "{} answers were 4xx (not counted as errors)",
            report.client_errors
        )
    });

    let mut finding = if !failed.is_empty() {
        failed.extend(shortfall);
        failed.extend(client_errors);
        Finding::fail(Some(value), failed.join("; "))
    } else {
        let mut within = format!(
            "within bounds: p95 < {}, p99 < {}, errors < {} %",
            limits.max_p95, limits.max_p99, limits.max_error_rate
        );
        if let Some(min) = limits.min_throughput {
            within.push_str(&format!(", throughput >= {min} req/s"));
        }
        match shortfall {
            Some(shortfall) => {
                let reason = [Some(shortfall), Some(within), client_errors];
                Finding::warn(
                    Some(value),
                    reason.into_iter().flatten().collect::<Vec<_>>().join("; "),
                )
            }
            None => {
                let reason = [Some(within), client_errors];
                Finding::pass(
                    Some(value),
                    reason.into_iter().flatten().collect::<Vec<_>>().join("; "),
                )
            }
        }
    };
    if report.failed > 0 {
        finding.output = Some(details(report));
    }
    finding
}

/// Answers by status and the first failure descriptions.
fn details(report: &LoadReport) -> String {
    let statuses: Vec<String> = report
        .by_status
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    let mut out = format!(
        "answers by status: {}; without an answer: {}",
        if statuses.is_empty() {
            "none".to_string()
        } else {
            statuses.join(", ")
        },
        report.no_response
    );
    // The first failures, each text once with how often it came.
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for error in &report.errors {
        match seen.iter_mut().find(|(text, _)| text == error) {
            Some((_, n)) => *n += 1,
            None => seen.push((error, 1)),
        }
    }
    if !seen.is_empty() {
        out.push_str(&format!("\nfirst {} failures:", report.errors.len()));
        for (error, n) in seen {
            out.push_str(&format!("\n  {error}"));
            if n > 1 {
                out.push_str(&format!(" (x{n})"));
            }
        }
    }
    out
}

/// "412", or "2.5" below 100.
fn per_second(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// "3.1 ms", "0.21 ms", "240 ms", "1.50 s".
fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::Latency;
    use crate::loadgen::testing::{answer, serve};
    use ferry_core::validation::{CheckKind, Status};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    fn ctx(addr: SocketAddr) -> Context {
        Context {
            services: [("web".into(), addr)].into(),
            service: Some("web".into()),
            ..Context::for_tests(&std::env::temp_dir())
        }
    }

    /// `/` for one second.
    fn check() -> CheckSpec {
        let mut check = CheckSpec::new("load", CheckKind::Load);
        check.url = Some("/".into());
        check.duration = Some(Dur::secs(1));
        check
    }

    async fn run_check(check: &CheckSpec, ctx: &Context) -> Finding {
        run(check, &SuiteSpec::default(), ctx).await
    }

    #[tokio::test]
    async fn passes_against_a_fast_server() {
        let server = serve(|_| async { answer(200, "ok", None) }).await;
        let mut check = check();
        check.concurrency = Some(4);
        let finding = run_check(&check, &ctx(server.addr)).await;
        assert_eq!(finding.status, Status::Passed, "{finding:?}");
        assert_eq!(
            finding.reason,
            "within bounds: p95 < 1s, p99 < 2s, errors < 1 %"
        );
        let value = finding.value.unwrap();
        let shape = regex::Regex::new(
            r"^\d+ req/s, p95 [\d.]+ ms, p99 [\d.]+ ms, 0\.00 % errors \(\d+ requests\)$",
        )
        .unwrap();
        assert!(shape.is_match(&value), "{value}");
        assert_eq!(finding.output, None);
    }

    #[tokio::test]
    async fn fails_on_errors_when_half_the_answers_are_500() {
        let count = Arc::new(AtomicU64::new(0));
        let server = serve(move |_| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            async move {
                if n.is_multiple_of(2) {
                    answer(500, "boom", None)
                } else {
                    answer(200, "ok", None)
                }
            }
        })
        .await;
        let finding = run_check(&check(), &ctx(server.addr)).await;
        assert_eq!(finding.status, Status::Failed, "{finding:?}");
        assert!(
            finding.reason.starts_with("errors 5")
                && finding.reason.contains("% > max_error_rate 1 %"),
            "{}",
            finding.reason
        );
        assert!(
            finding.reason.contains("answered 5xx, 0 without an answer"),
            "{}",
            finding.reason
        );
        assert!(!finding.reason.contains("p95"), "{}", finding.reason);
        let output = finding.output.unwrap();
        assert!(
            output.contains("500: ") && output.contains("status 500: boom"),
            "{output}"
        );
    }

    #[tokio::test]
    async fn fails_on_p95_against_a_slow_server() {
        let server = serve(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            answer(200, "slow", None)
        })
        .await;
        let mut check = check();
        check.max_p95 = Some(ferry_core::duration::parse("10ms").unwrap());
        let finding = run_check(&check, &ctx(server.addr)).await;
        assert_eq!(finding.status, Status::Failed, "{finding:?}");
        assert!(finding.reason.starts_with("p95 "), "{}", finding.reason);
        assert!(
            finding.reason.ends_with(" ms > max_p95 10ms"),
            "{}",
            finding.reason
        );
        assert!(finding.value.unwrap().contains("0.00 % errors"));
    }

    #[tokio::test]
    async fn paced_run_sends_about_the_rate() {
        let count = Arc::new(AtomicU64::new(0));
        let server = serve({
            let count = count.clone();
            move |_| {
                count.fetch_add(1, Ordering::Relaxed);
                async { answer(200, "ok", None) }
            }
        })
        .await;
        let mut check = check();
        check.rate = Some(200.0);
        let finding = run_check(&check, &ctx(server.addr)).await;
        let sent = count.load(Ordering::Relaxed);
        assert!(
            (150..=250).contains(&sent),
            "{sent} requests for 200/s over 1 s"
        );
        assert_ne!(finding.status, Status::Failed, "{finding:?}");
        assert!(
            finding
                .value
                .unwrap()
                .ends_with(&format!("({sent} requests)")),
            "every request the server saw is counted"
        );
    }

    /// Records each request's method and headers as one line.
    async fn recording() -> (crate::loadgen::testing::TestServer, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = serve({
            let seen = seen.clone();
            move |req: http::Request<hyper::body::Incoming>| {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .map_or("-", |v| v.to_str().unwrap_or("?"))
                        .to_string()
                };
                seen.lock().unwrap().push(format!(
                    "{} {} revision={} token={}",
                    req.method(),
                    req.uri(),
                    header("x-ferry-revision"),
                    header("x-token"),
                ));
                async { answer(200, "ok", None) }
            }
        })
        .await;
        (server, seen)
    }

    #[tokio::test]
    async fn sends_revision_method_and_expanded_headers() {
        let (server, seen) = recording().await;
        let mut ctx = ctx(server.addr);
        ctx.revision = Some(3);
        ctx.env.insert("TOKEN".into(), "s3cret".into());
        let mut check = check();
        check.url = Some("/api?x=1".into());
        check.method = Some("POST".into());
        check.headers.insert("X-Token".into(), "${TOKEN}".into());
        check.concurrency = Some(2);
        let finding = run_check(&check, &ctx).await;
        assert_eq!(finding.status, Status::Passed, "{finding:?}");
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter()
                .all(|line| line == "POST /api?x=1 revision=3 token=s3cret"),
            "{:?}",
            &seen[..seen.len().min(3)]
        );
    }

    #[tokio::test]
    async fn no_revision_header_outside_the_proxy() {
        let (server, seen) = recording().await;
        let mut ctx = ctx(server.addr);
        ctx.revision = Some(3);
        let mut check = check();
        check.url = Some(format!("http://{}/", server.addr));
        check.concurrency = Some(1);
        let finding = run_check(&check, &ctx).await;
        assert_eq!(finding.status, Status::Passed, "{finding:?}");
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|line| line == "GET / revision=- token=-")
        );
    }

    #[tokio::test]
    async fn refuses_a_host_that_is_not_an_ip() {
        let mut check = check();
        check.url = Some("http://localhost:9/".into());
        let ctx = ctx("127.0.0.1:9".parse().unwrap());
        let finding = run_check(&check, &ctx).await;
        assert_eq!(finding.status, Status::Failed);
        assert!(
            finding.reason.contains("\"localhost:9\" is not one"),
            "{}",
            finding.reason
        );

        check.url = Some("https://127.0.0.1:9/".into());
        let finding = run_check(&check, &ctx).await;
        assert!(
            finding.reason.contains("is not an http:// URL"),
            "{}",
            finding.reason
        );

        check.url = Some("/".into());
        check.headers.insert("Bad Name".into(), "x".into());
        let finding = run_check(&check, &ctx).await;
        assert_eq!(finding.reason, "\"Bad Name\" is not a header name");
    }

    #[test]
    fn splits_urls() {
        let split = |url: &str| split_url(url).map(|(a, p)| format!("{a} {p}"));
        assert_eq!(split("http://127.0.0.1:80").unwrap(), "127.0.0.1:80 /");
        assert_eq!(
            split("http://127.0.0.1:80?a=1").unwrap(),
            "127.0.0.1:80 /?a=1"
        );
        assert_eq!(
            split("http://[::1]:8080/x/y?q#frag").unwrap(),
            "[::1]:8080 /x/y?q"
        );
        assert!(split("http://127.0.0.1/").is_err(), "a port is needed");
        assert!(split("http://example.com:80/").is_err());
    }

    #[test]
    fn plans_paced_connections_and_timeouts() {
        let ctx = ctx("0.0.0.0:8080".parse().unwrap());
        let mut check = check();
        check.rate = Some(200.0);
        let (config, limits) = plan(&check, &SuiteSpec::default(), &ctx).unwrap();
        assert_eq!(config.target, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (config.connections, config.rate_per_connection),
            (8, Some(25.0))
        );
        assert_eq!(config.max_duration, Duration::from_secs(1));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(limits.max_error_rate, 1.0);
        assert!(config.headers.is_empty());

        check.rate = Some(2.5);
        check.max_p99 = Some(Dur::secs(60));
        let (config, _) = plan(&check, &SuiteSpec::default(), &ctx).unwrap();
        assert_eq!(config.connections, 3);
        assert_eq!(config.request_timeout, Duration::from_secs(25));
    }

    fn limits() -> Limits {
        Limits {
            rate: None,
            min_throughput: None,
            max_error_rate: 1.0,
            max_p95: defaults::P95,
            max_p99: defaults::P99,
        }
    }

    fn report(ok: u64, client_errors: u64, server_errors: u64, no_response: u64) -> LoadReport {
        let answered = ok + client_errors + server_errors;
        LoadReport {
            sent: answered + no_response,
            ok,
            failed: client_errors + server_errors + no_response,
            client_errors,
            server_errors,
            no_response,
            latency: Latency {
                count: answered,
                p50: Duration::from_micros(1500),
                p95: Duration::from_micros(3100),
                p99: Duration::from_millis(5),
                max: Duration::from_millis(9),
            },
            ..LoadReport::default()
        }
    }

    #[test]
    fn judges_4xx_as_answers() {
        let finding = judge(
            &limits(),
            &report(3000, 1120, 0, 0),
            Duration::from_secs(10),
        );
        assert_eq!(finding.status, Status::Passed);
        assert_eq!(
            finding.value.as_deref(),
            Some("412 req/s, p95 3.1 ms, p99 5.0 ms, 0.00 % errors (4120 requests)")
        );
        assert_eq!(
            finding.reason,
            "within bounds: p95 < 1s, p99 < 2s, errors < 1 %; 1120 answers were 4xx (not counted as errors)"
        );
        assert!(
            finding.output.is_some(),
            "4xx are in `failed`: details shown"
        );
    }

    #[test]
    fn judges_errors_including_no_answers() {
        let finding = judge(&limits(), &report(985, 0, 9, 6), Duration::from_secs(10));
        assert_eq!(finding.status, Status::Failed);
        assert_eq!(
            finding.reason,
            "errors 1.50 % > max_error_rate 1 % (9 answered 5xx, 6 without an answer)"
        );
        // At the limit exactly is within it.
        let finding = judge(&limits(), &report(990, 0, 10, 0), Duration::from_secs(10));
        assert_eq!(finding.status, Status::Passed, "{finding:?}");
    }

    #[test]
    fn judges_throughput_and_rate() {
        let mut paced = limits();
        paced.rate = Some(100.0);
        let finding = judge(&paced, &report(800, 0, 0, 0), Duration::from_secs(10));
        assert_eq!(finding.status, Status::Warning);
        assert_eq!(
            finding.reason,
            "reached 80.0 req/s of rate = 100 (80 %); within bounds: p95 < 1s, p99 < 2s, errors < 1 %"
        );
        let finding = judge(&paced, &report(950, 0, 0, 0), Duration::from_secs(10));
        assert_eq!(finding.status, Status::Passed);

        let mut floor = limits();
        floor.min_throughput = Some(500.0);
        let finding = judge(&floor, &report(4120, 0, 0, 0), Duration::from_secs(10));
        assert_eq!(finding.status, Status::Failed);
        assert_eq!(finding.reason, "throughput 412 req/s < min_throughput 500");
        floor.min_throughput = Some(400.0);
        let finding = judge(&floor, &report(4120, 0, 0, 0), Duration::from_secs(10));
        assert_eq!(
            finding.reason,
            "within bounds: p95 < 1s, p99 < 2s, errors < 1 %, throughput >= 400 req/s"
        );
    }

    #[test]
    fn judges_percentiles_and_empty_runs() {
        let mut tight = limits();
        tight.max_p95 = Dur::millis(3);
        tight.max_p99 = Dur::millis(4);
        let finding = judge(&tight, &report(100, 0, 0, 0), Duration::from_secs(1));
        assert_eq!(
            finding.reason,
            "p95 3.1 ms > max_p95 3ms; p99 5.0 ms > max_p99 4ms"
        );

        let finding = judge(&limits(), &report(0, 0, 0, 7), Duration::from_secs(1));
        assert_eq!(finding.status, Status::Failed);
        assert_eq!(
            finding.value.as_deref(),
            Some("7.0 req/s, p95 n/a, p99 n/a, 100.00 % errors (7 requests)")
        );
        let finding = judge(&limits(), &report(0, 0, 0, 0), Duration::from_secs(1));
        assert_eq!(
            (finding.status, finding.reason.as_str()),
            (Status::Failed, "no request finished in 1.0 s")
        );
    }

    #[test]
    fn formats_durations() {
        assert_eq!(millis(Duration::from_micros(210)), "0.21 ms");
        assert_eq!(millis(Duration::from_micros(3100)), "3.1 ms");
        assert_eq!(millis(Duration::from_millis(240)), "240 ms");
        assert_eq!(millis(Duration::from_millis(1500)), "1.50 s");
    }

    /// How fast the load check can go against a trivial keep-alive server,
    /// next to wrk against the same server: 3 rounds of 5 s, 64
    /// connections each, medians printed. A measurement, not an assertion:
    /// `cargo test -p ferry-validate --release -- --ignored ceiling_vs_wrk --nocapture`.
    #[test]
    #[ignore = "a measurement; needs wrk and a release build"]
    fn ceiling_vs_wrk() {
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        };
        let server_rt = runtime();
        let server = server_rt.block_on(serve(|_| async { answer(200, "ok", None) }));
        let client_rt = runtime();
        let ctx = ctx(server.addr);
        let mut check = check();
        check.concurrency = Some(64);
        check.duration = Some(Dur::secs(5));
        let url = format!("http://{}/", server.addr);

        let (mut ours, mut wrk) = (Vec::new(), Vec::new());
        for round in 1..=3 {
            let (config, limits) = plan(&check, &SuiteSpec::default(), &ctx).unwrap();
            let (report, elapsed) = client_rt.block_on(drive(config));
            let rate = (report.ok + report.failed) as f64 / elapsed.as_secs_f64();
            let finding = judge(&limits, &report, elapsed);
            println!(
                "round {round}: load check {rate:.0} req/s: {}",
                finding.value.unwrap()
            );
            ours.push(rate);

            let out = std::process::Command::new("wrk")
                .args(["-t2", "-c64", "-d5s", &url])
                .output()
                .expect("wrk runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let rate: f64 = text
                .lines()
                .find_map(|line| line.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"));
            println!("round {round}: wrk {rate:.0} req/s");
            wrk.push(rate);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (ours, wrk) = (median(&mut ours), median(&mut wrk));
        println!(
            "median: load check {ours:.0} req/s, wrk {wrk:.0} req/s, ratio {:.2}",
            ours / wrk
        );
    }
}
