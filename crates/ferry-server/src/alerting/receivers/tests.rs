//! The receivers against real sockets on 127.0.0.1: a tiny HTTP server
//! that records requests and answers from a script, and a real SMTP
//! server (Python's aiosmtpd, with and without TLS).

use super::*;
use ferry_alert::config::{EmailConfig, PagerdutyConfig, SlackConfig, WebhookConfig};
use ferry_alert::duration::PromDuration;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn labels(pairs: &[(&str, &str)]) -> ferry_alert::alert::LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A group with one firing and one resolved alert.
fn notification() -> Notification {
    Notification {
        receiver: "team-db".into(),
        group_key: r#"{}/{team="db"}:{alertname="HighLatency"}"#.into(),
        status: Status::Firing,
        group_labels: labels(&[("alertname", "HighLatency")]),
        common_labels: labels(&[
            ("alertname", "HighLatency"),
            ("severity", "critical"),
            ("team", "db"),
        ]),
        common_annotations: labels(&[("runbook", "https://runbooks/latency")]),
        route_labels: labels(&[("team", "db")]),
        external_url: "http://ferry.example:7070".into(),
        alerts: vec![
            NotifyAlert {
                status: Status::Firing,
                labels: labels(&[
                    ("alertname", "HighLatency"),
                    ("instance", "db-1:9100"),
                    ("severity", "critical"),
                    ("team", "db"),
                ]),
                annotations: labels(&[
                    ("description", "p99 is 2.5s"),
                    ("runbook", "https://runbooks/latency"),
                    ("summary", "db-1 is slow"),
                ]),
                starts_at: T0 + 5_123,
                ends_at: 0,
                generator_url: "http://ferry.example:7070/graph?g0.expr=up".into(),
                fingerprint: "0123456789abcdef".into(),
            },
            NotifyAlert {
                status: Status::Resolved,
                labels: labels(&[
                    ("alertname", "HighLatency"),
                    ("instance", "db-2:9100"),
                    ("severity", "critical"),
                    ("team", "db"),
                ]),
                annotations: labels(&[("runbook", "https://runbooks/latency")]),
                starts_at: T0,
                ends_at: T0 + 60_120,
                generator_url: String::new(),
                fingerprint: "fedcba9876543210".into(),
            },
        ],
        truncated_alerts: 0,
        reason: "new alerts".into(),
    }
}

fn resolved_only() -> Notification {
    let mut n = notification();
    n.alerts.remove(0);
    n.status = Status::Resolved;
    n
}

// ---------------------------------------------------------------- HTTP

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the test server answers: a status and body, or nothing at all.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16, &'static str),
    Never,
}

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Answers the n-th request with `script[n]`, the last one repeated.
    async fn start(script: Vec<Reply>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let count = count.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    seen.lock().unwrap().push(req);
                    let i = count.fetch_add(1, Ordering::SeqCst);
                    match script[i.min(script.len() - 1)] {
                        Reply::Never => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Reply::Status(code, body) => {
                            let head = format!(
                                "HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(body.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn receiver(name: &str) -> ReceiverConfig {
    ReceiverConfig {
        name: name.into(),
        ..Default::default()
    }
}

fn one(cfg: ReceiverConfig, global: &Global) -> Integration {
    let mut all = build_receivers(&[cfg], global).expect("valid config");
    let (_, mut list) = all.pop_first().unwrap();
    assert_eq!(list.len(), 1);
    list.pop().unwrap()
}

fn webhook(url: &str) -> Integration {
    let mut r = receiver("team-db");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret(url.into())),
        send_resolved: true,
        ..Default::default()
    });
    one(r, &Global::default())
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        multiplier: 2.0,
        max_backoff: Duration::from_millis(50),
        max_attempts,
        deadline: None,
    }
}

async fn deliver_all(
    i: &Integration,
    n: &Notification,
    action: Action,
    max: u32,
) -> (Result<(), SendError>, Vec<Attempt>) {
    let mut attempts = Vec::new();
    let r = deliver(i, n, action, &fast_policy(max), |a| attempts.push(a)).await;
    (r, attempts)
}

#[test]
fn go_times() {
    assert_eq!(go_time(0), "0001-01-01T00:00:00Z");
    assert_eq!(go_time(T0), "2026-01-01T00:00:00Z");
    assert_eq!(go_time(T0 + 5_123), "2026-01-01T00:00:05.123Z");
    assert_eq!(go_time(T0 + 60_120), "2026-01-01T00:01:00.12Z");
    assert_eq!(go_time(951_782_400_500), "2000-02-29T00:00:00.5Z");
    assert_eq!(go_time(-1_000), "1969-12-31T23:59:59Z");
}

#[test]
fn subjects() {
    let n = notification();
    assert_eq!(default_subject(&n), "[FIRING:1] HighLatency (critical db)");
    assert_eq!(
        default_subject(&resolved_only()),
        "[RESOLVED] HighLatency (critical db)"
    );
    let mut n = n;
    n.common_labels = n.group_labels.clone();
    assert_eq!(default_subject(&n), "[FIRING:1] HighLatency");
}

#[tokio::test]
async fn webhook_posts_alertmanagers_version_4() {
    let server = Server::start(vec![Reply::Status(200, "")]).await;
    let w = webhook(&server.url("/hook"));
    assert_eq!(w.name(), "webhook[0]");
    w.send(&notification(), Action::Notify).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/hook");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    let expected = json!({
        "version": "4",
        "groupKey": "{}/{team=\"db\"}:{alertname=\"HighLatency\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "team-db",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency", "severity": "critical", "team": "db"},
        "commonAnnotations": {"runbook": "https://runbooks/latency"},
        "routeLabels": {"team": "db"},
        "externalURL": "http://ferry.example:7070",
        "notification_reason": "new alerts",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighLatency", "instance": "db-1:9100", "severity": "critical", "team": "db"},
                "annotations": {"description": "p99 is 2.5s", "runbook": "https://runbooks/latency", "summary": "db-1 is slow"},
                "startsAt": "2026-01-01T00:00:05.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://ferry.example:7070/graph?g0.expr=up",
                "fingerprint": "0123456789abcdef"
            },
            {
                "status": "resolved",
                "labels": {"alertname": "HighLatency", "instance": "db-2:9100", "severity": "critical", "team": "db"},
                "annotations": {"runbook": "https://runbooks/latency"},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "2026-01-01T00:01:00.12Z",
                "generatorURL": "",
                "fingerprint": "fedcba9876543210"
            }
        ]
    });
    assert_eq!(reqs[0].json(), expected);
}

#[tokio::test]
async fn webhook_max_alerts_truncates_and_counts() {
    let server = Server::start(vec![Reply::Status(204, "")]).await;
    let mut r = receiver("team-db");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret(server.url("/"))),
        send_resolved: true,
        max_alerts: 1,
        ..Default::default()
    });
    let w = one(r, &Global::default());
    w.send(&notification(), Action::Notify).await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(body["truncatedAlerts"], 1);
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(body["alerts"][0]["fingerprint"], "0123456789abcdef");
    // Computed from the alerts sent, as Alertmanager does.
    assert_eq!(body["commonLabels"]["instance"], "db-1:9100");
}

#[tokio::test]
async fn send_resolved_false_sends_firing_alerts_only() {
    let server = Server::start(vec![Reply::Status(200, "")]).await;
    let mut r = receiver("team-db");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret(server.url("/"))),
        send_resolved: false,
        ..Default::default()
    });
    let w = one(r, &Global::default());
    assert!(!w.sends(&resolved_only(), Action::Notify));
    w.send(&resolved_only(), Action::Notify).await.unwrap();
    assert!(server.requests().is_empty());
    w.send(&notification(), Action::Notify).await.unwrap();
    let body = server.requests()[0].json();
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["status"], "firing");
    // Acknowledgements are PagerDuty's only.
    w.send(&notification(), Action::Acknowledge).await.unwrap();
    assert_eq!(server.requests().len(), 1);
    let mut attempts = Vec::new();
    deliver(&w, &resolved_only(), Action::Notify, &fast_policy(3), |a| {
        attempts.push(a)
    })
    .await
    .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Outcome::Skipped);
}

#[tokio::test]
async fn webhook_5xx_is_retried_until_it_succeeds() {
    let server = Server::start(vec![
        Reply::Status(503, "busy"),
        Reply::Status(500, "oops"),
        Reply::Status(200, ""),
    ])
    .await;
    let w = webhook(&server.url("/hook"));
    let (r, attempts) = deliver_all(&w, &notification(), Action::Notify, 5).await;
    r.unwrap();
    assert_eq!(server.requests().len(), 3);
    let outcomes: Vec<Outcome> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Retrying, Outcome::Retrying, Outcome::Delivered]
    );
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[2].attempt, 3);
    assert_eq!(attempts[0].integration, "webhook[0]");
    assert_eq!(attempts[0].receiver, "team-db");
    let e = attempts[0].error.as_deref().unwrap();
    assert!(e.contains("503") && e.contains("busy"), "{e}");
    assert!(attempts[2].error.is_none());
}

#[tokio::test]
async fn webhook_4xx_is_not_retried_and_attempts_are_bounded() {
    let server = Server::start(vec![Reply::Status(404, "no such hook")]).await;
    let w = webhook(&server.url("/hook"));
    let (r, attempts) = deliver_all(&w, &notification(), Action::Notify, 5).await;
    let e = r.unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("404"), "{}", e.message);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Outcome::GaveUp);

    let server = Server::start(vec![Reply::Status(502, "")]).await;
    let w = webhook(&server.url("/hook"));
    let (r, attempts) = deliver_all(&w, &notification(), Action::Notify, 3).await;
    assert!(r.unwrap_err().retryable);
    assert_eq!(server.requests().len(), 3);
    assert_eq!(attempts.last().unwrap().outcome, Outcome::GaveUp);
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_retryably() {
    let server = Server::start(vec![Reply::Never]).await;
    let mut r = receiver("team-db");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret(server.url("/hook"))),
        send_resolved: true,
        timeout: Some(PromDuration(300)),
        ..Default::default()
    });
    let w = one(r, &Global::default());
    assert_eq!(w.timeout(), Duration::from_millis(300));
    let start = std::time::Instant::now();
    let e = w.send(&notification(), Action::Notify).await.unwrap_err();
    let took = start.elapsed();
    assert!(e.retryable);
    assert!(e.message.contains("timeout"), "{}", e.message);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A deadline ends the retries.
    let policy = RetryPolicy {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(800)),
        ..fast_policy(100)
    };
    let mut attempts = Vec::new();
    let start = std::time::Instant::now();
    let r = deliver(&w, &notification(), Action::Notify, &policy, |a| {
        attempts.push(a)
    })
    .await;
    assert!(r.is_err());
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(attempts.len() >= 2 && attempts.len() <= 3, "{attempts:?}");
    assert_eq!(attempts.last().unwrap().outcome, Outcome::GaveUp);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy::default();
    let waits: Vec<u128> = (1..=9).map(|a| p.backoff(a).as_millis()).collect();
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
    );
    assert_eq!(p.backoff(1000), Duration::from_secs(10));
}

// ---------------------------------------------------------------- Slack

#[tokio::test]
async fn slack_sends_text_and_blocks() {
    let server = Server::start(vec![Reply::Status(200, "ok")]).await;
    let mut r = receiver("team-db");
    r.slack_configs.push(SlackConfig {
        channel: Some("#db-alerts".into()),
        username: Some("ferry".into()),
        send_resolved: true,
        ..Default::default()
    });
    let global = Global {
        slack_api_url: Some(Secret(server.url("/services/T000/B000/XXXXSECRET"))),
        ..Default::default()
    };
    let s = one(r, &global);
    assert_eq!(s.name(), "slack[0]");
    s.send(&notification(), Action::Notify).await.unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.path, "/services/T000/B000/XXXXSECRET");
    let body = req.json();
    assert_eq!(body["text"], "[FIRING:1] HighLatency (critical db)");
    assert_eq!(body["channel"], "#db-alerts");
    assert_eq!(body["username"], "ferry");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(
        blocks[0]["text"]["text"],
        "[FIRING:1] HighLatency (critical db)"
    );
    let texts: Vec<&str> = blocks
        .iter()
        .filter(|b| b["type"] == "section")
        .map(|b| b["text"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "*Firing (1)*");
    assert_eq!(
        texts[1],
        "*HighLatency* — db-1 is slow\np99 is 2.5s\n`instance=db-1:9100` `severity=critical` `team=db`\n<http://ferry.example:7070/graph?g0.expr=up|Source>"
    );
    assert_eq!(texts[2], "*Resolved (1)*");
    assert!(
        texts[3].starts_with("*HighLatency*\n`instance=db-2:9100`"),
        "{}",
        texts[3]
    );
    assert_eq!(blocks.last().unwrap()["type"], "context");
    for b in blocks {
        assert!(["header", "section", "context"].contains(&b["type"].as_str().unwrap()));
    }

    // Nothing for an acknowledgement; no channel or username unless set.
    s.send(&notification(), Action::Acknowledge).await.unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn slack_templates_and_retries() {
    let server = Server::start(vec![
        Reply::Status(429, "rate_limited"),
        Reply::Status(200, "ok"),
    ])
    .await;
    let mut r = receiver("team-db");
    r.slack_configs.push(SlackConfig {
        api_url: Some(Secret(server.url("/services/T1/B1/SECRETPART"))),
        title: Some("Latency!".into()),
        text: Some("Look at *db*".into()),
        ..Default::default()
    });
    let s = one(r, &Global::default());
    let (res, attempts) = deliver_all(&s, &notification(), Action::Notify, 3).await;
    res.unwrap();
    assert_eq!(attempts.len(), 2);
    let body = server.requests()[1].json();
    assert_eq!(body["text"], "Latency!");
    assert!(body.get("channel").is_none() && body.get("username").is_none());
    assert_eq!(body["blocks"][0]["text"]["text"], "Latency!");
    assert_eq!(body["blocks"][1]["text"]["text"], "Look at *db*");
    // 400 invalid_payload: not retried.
    let server = Server::start(vec![Reply::Status(400, "invalid_payload")]).await;
    let mut r = receiver("x");
    r.slack_configs.push(SlackConfig {
        api_url: Some(Secret(server.url("/services/T1/B1/SECRETPART"))),
        ..Default::default()
    });
    let s = one(r, &Global::default());
    let (res, attempts) = deliver_all(&s, &notification(), Action::Notify, 3).await;
    assert!(!res.unwrap_err().retryable);
    assert_eq!(attempts.len(), 1);
}

// ---------------------------------------------------------------- PagerDuty

fn pagerduty(url: &str) -> Integration {
    let mut r = receiver("team-db");
    r.pagerduty_configs.push(PagerdutyConfig {
        routing_key: Some(Secret("R0UT1NGKEY0123456789abcdef012345".into())),
        send_resolved: true,
        ..Default::default()
    });
    let global = Global {
        pagerduty_url: Some(url.into()),
        ..Default::default()
    };
    one(r, &global)
}

#[test]
fn pagerduty_dedup_key_and_severity() {
    assert_eq!(
        pagerduty::dedup_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(pagerduty::severity(Some("emergency")), "critical");
    assert_eq!(pagerduty::severity(Some("critical")), "critical");
    assert_eq!(pagerduty::severity(Some("warning")), "warning");
    assert_eq!(pagerduty::severity(Some("info")), "info");
    assert_eq!(pagerduty::severity(Some("page")), "error");
    assert_eq!(pagerduty::severity(None), "error");
}

#[tokio::test]
async fn pagerduty_triggers_acknowledges_and_resolves() {
    let server = Server::start(vec![Reply::Status(
        202,
        r#"{"status":"success","message":"Event processed"}"#,
    )])
    .await;
    let p = pagerduty(&server.url("/v2/enqueue"));
    let n = notification();
    let dedup = pagerduty::dedup_key(&n.group_key);
    assert_eq!(dedup.len(), 64);
    p.send(&n, Action::Notify).await.unwrap();
    p.send(&n, Action::Acknowledge).await.unwrap();
    p.send(&resolved_only(), Action::Notify).await.unwrap();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.path == "/v2/enqueue"));

    let trigger = reqs[0].json();
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0123456789abcdef012345");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], dedup);
    assert_eq!(trigger["client"], "Ferry");
    assert_eq!(trigger["client_url"], "http://ferry.example:7070");
    let payload = &trigger["payload"];
    assert_eq!(payload["summary"], "[FIRING:1] HighLatency (critical db)");
    assert_eq!(payload["source"], "Ferry");
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["timestamp"], "2026-01-01T00:00:05.123Z");
    let details = &payload["custom_details"];
    assert_eq!(details["num_firing"], 1);
    assert_eq!(details["num_resolved"], 1);
    let firing = details["firing"].as_str().unwrap();
    assert!(firing.contains(" - instance = db-1:9100\n"), "{firing}");
    assert!(firing.contains(" - summary = db-1 is slow\n"), "{firing}");
    assert!(firing.contains("Source: http://ferry.example:7070/graph?g0.expr=up\n"));
    assert!(details["resolved"].as_str().unwrap().contains("db-2:9100"));

    assert_eq!(
        reqs[1].json(),
        json!({
            "routing_key": "R0UT1NGKEY0123456789abcdef012345",
            "event_action": "acknowledge",
            "dedup_key": dedup,
        })
    );
    let resolve = reqs[2].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup);
}

#[tokio::test]
async fn pagerduty_config_overrides_and_summary_limit() {
    let server = Server::start(vec![Reply::Status(202, "")]).await;
    let mut r = receiver("team-db");
    r.pagerduty_configs.push(PagerdutyConfig {
        routing_key: Some(Secret("k3y-k3y-k3y".into())),
        url: Some(server.url("/enqueue")),
        severity: Some("warning".into()),
        source: Some("db-cluster".into()),
        client: Some("Ops".into()),
        description: Some("é".repeat(2000)),
        component: Some("postgres".into()),
        details: [("team".to_string(), "db".to_string())].into(),
        send_resolved: true,
        ..Default::default()
    });
    let p = one(r, &Global::default());
    p.send(&notification(), Action::Notify).await.unwrap();
    let ev = server.requests()[0].json();
    let summary = ev["payload"]["summary"].as_str().unwrap();
    assert_eq!(summary.chars().count(), 1024);
    assert!(summary.ends_with('…'));
    assert_eq!(ev["payload"]["severity"], "warning");
    assert_eq!(ev["payload"]["source"], "db-cluster");
    assert_eq!(ev["payload"]["component"], "postgres");
    assert_eq!(ev["payload"]["custom_details"]["team"], "db");
    assert_eq!(ev["client"], "Ops");
}

#[tokio::test]
async fn pagerduty_retries_429_not_400() {
    let server = Server::start(vec![
        Reply::Status(429, "slow down"),
        Reply::Status(202, "{}"),
    ])
    .await;
    let p = pagerduty(&server.url("/v2/enqueue"));
    let (r, attempts) = deliver_all(&p, &notification(), Action::Notify, 5).await;
    r.unwrap();
    assert_eq!(server.requests().len(), 2);
    assert_eq!(
        attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [Outcome::Retrying, Outcome::Delivered]
    );

    let server = Server::start(vec![Reply::Status(
        400,
        r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect"]}"#,
    )])
    .await;
    let p = pagerduty(&server.url("/v2/enqueue"));
    let (r, attempts) = deliver_all(&p, &notification(), Action::Notify, 5).await;
    let e = r.unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("400"), "{}", e.message);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Outcome::GaveUp);
}

// ---------------------------------------------------------------- secrets

#[tokio::test]
async fn secrets_never_show_in_errors_or_debug() {
    // The server echoes what it was sent: the path, the key.
    let server = Server::start(vec![Reply::Status(
        500,
        "bad request to /hooks/abc?token=T0PSECRET for key R0UT1NGKEY0123456789abcdef012345",
    )])
    .await;
    let hook = server.url("/hooks/abc?token=T0PSECRET");
    let w = webhook(&hook);
    let e = w.send(&notification(), Action::Notify).await.unwrap_err();
    assert!(!e.message.contains("T0PSECRET"), "{}", e.message);
    assert!(!e.message.contains("/hooks/abc"), "{}", e.message);
    assert!(e.message.contains("500"));

    let p = pagerduty(&server.url("/v2/enqueue"));
    let e = p.send(&notification(), Action::Notify).await.unwrap_err();
    assert!(!e.message.contains("R0UT1NGKEY"), "{}", e.message);

    // Connection refused: reqwest would name the URL.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let w = webhook(&format!(
        "http://127.0.0.1:{port}/hooks/xyz?token=T0PSECRET"
    ));
    let e = w.send(&notification(), Action::Notify).await.unwrap_err();
    assert!(e.retryable);
    assert!(
        !e.message.contains("T0PSECRET") && !e.message.contains("xyz"),
        "{}",
        e.message
    );
    assert!(!e.to_string().contains("T0PSECRET"));

    // Debug output of every kind.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "SMTPPASSW0RD\n").unwrap();
    let mut r = receiver("all");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret("https://hooks.example/abc?token=T0PSECRET".into())),
        ..Default::default()
    });
    r.slack_configs.push(SlackConfig {
        api_url: Some(Secret(
            "https://hooks.slack.com/services/T0/B0/SLACKSECRET".into(),
        )),
        ..Default::default()
    });
    r.pagerduty_configs.push(PagerdutyConfig {
        routing_key: Some(Secret("R0UT1NGKEY0123456789abcdef012345".into())),
        ..Default::default()
    });
    r.email_configs.push(EmailConfig {
        to: "ops@example.com".into(),
        from: Some("ferry@example.com".into()),
        smarthost: Some("smtp.example.com:587".into()),
        auth_username: Some("ferry".into()),
        auth_password_file: Some(pw.display().to_string()),
        ..Default::default()
    });
    let all = build_receivers(&[r], &Global::default()).unwrap();
    let debug = format!("{all:?}");
    for s in [
        "T0PSECRET",
        "SLACKSECRET",
        "R0UT1NGKEY",
        "SMTPPASSW0RD",
        "hooks.example/abc",
    ] {
        assert!(!debug.contains(s), "{s} in {debug}");
    }
    assert_eq!(all["all"].len(), 4);
    let names: Vec<String> = all["all"].iter().map(|i| i.name()).collect();
    assert_eq!(
        names,
        ["webhook[0]", "slack[0]", "pagerduty[0]", "email[0]"]
    );
}

// ---------------------------------------------------------------- building

#[test]
fn build_errors_name_the_receiver_and_field() {
    let err = |r: ReceiverConfig, g: &Global| build_receivers(&[r], g).unwrap_err();
    let g = Global::default();

    let mut r = receiver("ops");
    r.webhook_configs.push(WebhookConfig::default());
    let e = err(r, &g);
    assert!(
        e.contains("\"ops\"") && e.contains("webhook_configs[0]") && e.contains("url"),
        "{e}"
    );

    let mut r = receiver("ops");
    r.webhook_configs.push(WebhookConfig {
        url: Some(Secret("not a url T0PSECRET".into())),
        ..Default::default()
    });
    let e = err(r, &g);
    assert!(e.contains("url") && !e.contains("T0PSECRET"), "{e}");

    let mut r = receiver("ops");
    r.slack_configs.push(SlackConfig::default());
    let e = err(r, &g);
    assert!(
        e.contains("slack_configs[0]") && e.contains("api_url"),
        "{e}"
    );

    let mut r = receiver("ops");
    r.pagerduty_configs.push(PagerdutyConfig::default());
    let e = err(r, &g);
    assert!(
        e.contains("pagerduty_configs[0]") && e.contains("routing_key"),
        "{e}"
    );

    let email = EmailConfig {
        to: "ops@example.com".into(),
        ..Default::default()
    };
    let mut r = receiver("ops");
    r.email_configs.push(email.clone());
    let e = err(r.clone(), &g);
    assert!(e.contains("email_configs[0]") && e.contains("from"), "{e}");
    let g2 = Global {
        smtp_from: Some("ferry@example.com".into()),
        ..Default::default()
    };
    let e = err(r.clone(), &g2);
    assert!(e.contains("smarthost"), "{e}");
    let mut r2 = r.clone();
    r2.email_configs[0].to = String::new();
    let e = err(r2, &g2);
    assert!(e.contains("to is required"), "{e}");
    let mut r3 = r.clone();
    r3.email_configs[0].auth_username = Some("u".into());
    r3.email_configs[0].smarthost = Some("localhost:25".into());
    let e = err(r3, &g2);
    assert!(e.contains("auth_password"), "{e}");
    let mut r4 = r.clone();
    r4.email_configs[0].smarthost = Some("localhost".into());
    let e = err(r4, &g2);
    assert!(e.contains("host:port"), "{e}");

    // Missing *_file.
    let mut r = receiver("ops");
    r.pagerduty_configs.push(PagerdutyConfig {
        routing_key_file: Some("/nonexistent/key".into()),
        ..Default::default()
    });
    let e = err(r, &g);
    assert!(e.contains("routing_key_file /nonexistent/key"), "{e}");

    // Twice the same receiver.
    let e = build_receivers(&[receiver("a"), receiver("a")], &g).unwrap_err();
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn build_applies_global_defaults_and_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "  filekey  \n").unwrap();
    let mut r = receiver("ops");
    r.pagerduty_configs.push(PagerdutyConfig {
        routing_key_file: Some(key.display().to_string()),
        ..Default::default()
    });
    r.email_configs.push(EmailConfig {
        to: "a@example.com, b@example.com".into(),
        ..Default::default()
    });
    r.email_configs.push(EmailConfig {
        to: "a@example.com".into(),
        smarthost: Some("mail.example.com:465".into()),
        ..Default::default()
    });
    r.email_configs.push(EmailConfig {
        to: "a@example.com".into(),
        require_tls: Some(false),
        ..Default::default()
    });
    let g = Global {
        smtp_from: Some("Ferry <ferry@example.com>".into()),
        smtp_smarthost: Some("relay.example.com:587".into()),
        ..Default::default()
    };
    let all = build_receivers(&[r], &g).unwrap();
    let list = &all["ops"];
    let Inner::Pagerduty(p) = &list[0].inner else {
        panic!()
    };
    let ev = p.event(&notification(), Action::Acknowledge).unwrap();
    assert_eq!(ev["routing_key"], "filekey");
    let debug = format!("{:?}", list[0]);
    assert!(!debug.contains("filekey"), "{debug}");
    let dbg: Vec<String> = list[1..].iter().map(|i| format!("{i:?}")).collect();
    assert!(
        dbg[0].contains("relay.example.com") && dbg[0].contains("StartTls"),
        "{}",
        dbg[0]
    );
    assert!(
        dbg[1].contains("mail.example.com") && dbg[1].contains("Implicit"),
        "{}",
        dbg[1]
    );
    assert!(dbg[2].contains("Plain"), "{}", dbg[2]);
    assert_eq!(list[1].name(), "email[0]");
    assert_eq!(list[3].name(), "email[2]");
    assert!(!list[1].send_resolved());
}

// ---------------------------------------------------------------- email

/// A real SMTP server: `python3 -m aiosmtpd`, writing what it receives to
/// a maildir. Killed on drop.
struct Smtp {
    port: u16,
    maildir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Smtp {
    /// `extra`: aiosmtpd's TLS options (`--tlscert`/`--tlskey`,
    /// `--smtpscert`/`--smtpskey`).
    async fn start(extra: &[String]) -> Smtp {
        let maildir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(extra)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (with aiosmtpd: python3 -m pip install aiosmtpd)");
        let mut smtp = Smtp {
            port,
            maildir,
            child,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return smtp;
            }
            if let Ok(Some(status)) = smtp.child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}); is it installed? python3 -m pip install aiosmtpd"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not start listening on port {}", smtp.port);
    }

    /// The messages received so far, raw.
    async fn messages(&self, want: usize) -> Vec<String> {
        let new = self.maildir.path().join("mail").join("new");
        for _ in 0..100 {
            let mut out = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&new) {
                for e in entries.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap());
                }
            }
            if out.len() >= want {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no message arrived");
    }
}

fn email(port: u16, f: impl FnOnce(&mut EmailConfig)) -> Integration {
    let mut c = EmailConfig {
        to: "oncall@example.com, db-team@example.com".into(),
        from: Some("Ferry <ferry@example.com>".into()),
        smarthost: Some(format!("127.0.0.1:{port}")),
        send_resolved: true,
        ..Default::default()
    };
    f(&mut c);
    let mut r = receiver("team-db");
    r.email_configs.push(c);
    one(r, &Global::default())
}

/// The header `name`'s value in a raw message (unfolded).
fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn check_delivered(raw: &str) {
    assert_eq!(
        header(raw, "From"),
        Some("Ferry <ferry@example.com>"),
        "{raw}"
    );
    let to = header(raw, "To").unwrap();
    assert!(
        to.contains("oncall@example.com") && to.contains("db-team@example.com"),
        "{to}"
    );
    assert_eq!(
        header(raw, "Subject"),
        Some("[FIRING:1] HighLatency (critical db)"),
        "{raw}"
    );
    assert!(raw.contains("multipart/alternative"), "{raw}");
    assert!(
        raw.contains("text/plain") && raw.contains("text/html"),
        "{raw}"
    );
    assert!(raw.contains("HighLatency"));
    assert!(raw.contains("db-1:9100"));
}

#[tokio::test]
async fn email_plain_to_a_local_relay() {
    let smtp = Smtp::start(&[]).await;
    let e = email(smtp.port, |c| {
        c.require_tls = Some(false);
        c.headers = [("x-ferry-group".to_string(), "db".to_string())].into();
    });
    assert_eq!(e.name(), "email[0]");
    e.send(&notification(), Action::Notify).await.unwrap();
    let msgs = smtp.messages(1).await;
    check_delivered(&msgs[0]);
    assert_eq!(header(&msgs[0], "X-Ferry-Group"), Some("db"));
    assert!(msgs[0].contains("1 alert firing:"), "{}", msgs[0]);
    assert!(
        msgs[0].contains("Started: 2026-01-01T00:00:05.123Z"),
        "{}",
        msgs[0]
    );

    // html: "" leaves out the HTML part.
    let e = email(smtp.port, |c| {
        c.require_tls = Some(false);
        c.html = Some(String::new());
        c.headers = [("Subject".to_string(), "custom subject".to_string())].into();
    });
    e.send(&notification(), Action::Notify).await.unwrap();
    let msgs = smtp.messages(2).await;
    let m = msgs
        .iter()
        .find(|m| header(m, "Subject") == Some("custom subject"))
        .unwrap();
    assert!(!m.contains("text/html") && m.contains("text/plain"), "{m}");
}

#[tokio::test]
async fn email_requires_starttls_by_default() {
    let smtp = Smtp::start(&[]).await;
    let e = email(smtp.port, |_| {});
    let err = e.send(&notification(), Action::Notify).await.unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("STARTTLS"), "{}", err.message);
    assert!(err.message.contains("require_tls"), "{}", err.message);
    assert!(err.message.contains(&format!("127.0.0.1:{}", smtp.port)));
    assert!(smtp.messages_now().is_empty());
}

impl Smtp {
    fn messages_now(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail").join("new");
        std::fs::read_dir(new)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A CA and a server certificate for 127.0.0.1 made by the `openssl`
/// CLI: (dir, ca.pem, server.pem, server.key).
fn test_certs() -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key, key, csr, cert, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("srv.key"),
        p("srv.csr"),
        p("srv.pem"),
        p("ext.cnf"),
    );
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=ferry test CA",
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (dir, ca, cert, key)
}

#[tokio::test]
async fn email_starttls_and_smtps_with_a_private_ca() {
    let (_dir, ca, cert, key) = test_certs();
    let smtp = Smtp::start(&[
        "--tlscert".into(),
        cert.clone(),
        "--tlskey".into(),
        key.clone(),
    ])
    .await;
    let tls_config = json!({"ca_file": ca});
    let e = email(smtp.port, |c| c.tls_config = Some(tls_config.clone()));
    e.send(&notification(), Action::Notify).await.unwrap();
    check_delivered(&smtp.messages(1).await[0]);

    // Without the CA, the server's certificate is refused.
    let e = email(smtp.port, |_| {});
    let err = e.send(&notification(), Action::Notify).await.unwrap_err();
    assert!(err.message.contains("SMTP 127.0.0.1"), "{}", err.message);
    assert!(
        err.message
            .ends_with("Connection error: invalid peer certificate: UnknownIssuer"),
        "{}",
        err.message
    );
    assert_eq!(smtp.messages_now().len(), 1);

    // SMTPS (implicit TLS).
    let smtps = Smtp::start(&["--smtpscert".into(), cert, "--smtpskey".into(), key]).await;
    let e = email(smtps.port, |c| {
        c.tls = Some(true);
        c.tls_config = Some(tls_config.clone());
    });
    e.send(&notification(), Action::Notify).await.unwrap();
    check_delivered(&smtps.messages(1).await[0]);
}
