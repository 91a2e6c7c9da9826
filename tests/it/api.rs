//! The API: token required, health and metrics formats, audit, secrets.

use super::harness::*;

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

#[test]
fn every_route_but_livez_and_readyz_needs_the_token() {
    let env = Env::start(Spec::default());
    let api = env.api();
    for path in ["/v1/services", "/health", "/metrics", "/v1/audit"] {
        assert_eq!(get(&format!("{api}{path}"), None).0, 401, "{path}");
        assert_eq!(get(&format!("{api}{path}"), Some("wrong")).0, 401, "{path}");
    }
    let resp = reqwest::blocking::Client::new()
        .post(format!("{api}/v1/services/web/abort"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(get(&format!("{api}/livez"), None).0, 200);
    assert_eq!(get(&format!("{api}/readyz"), None).0, 200);
    // The CLI with a wrong token says so and exits 2.
    let out = std::process::Command::new(FERRY)
        .args(["status", "--api", &api, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    // The denied mutation is in the audit log.
    let audit = env.json(&["audit"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"].as_str().unwrap().starts_with("denied")),
        "{audit}"
    );
}

#[test]
fn health_metrics_audit_and_no_secret_anywhere() {
    let env = Env::start(Spec::default());
    let token = env.token();
    let api = env.api();
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "API_TOKEN=supersecret-123",
        "-m",
        "first",
    ]);
    // Traffic through the proxy shows up in the metrics per revision.
    for _ in 0..20 {
        let (code, body) = get(&format!("http://{}/", env.proxy()), None);
        assert_eq!(code, 200);
        assert!(body.contains("hello from v1"));
    }
    let (code, metrics) = get(&format!("{api}/metrics"), Some(&token));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE ferry_proxy_requests_total counter"),
        "{metrics}"
    );
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("ferry_proxy_requests_total{service=\"web\",revision=\"1\",code=\"2xx\"}")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 20, "{line}");
    assert!(metrics.contains(
        "ferry_proxy_request_duration_seconds_bucket{service=\"web\",revision=\"1\",le=\"+Inf\"}"
    ));
    assert!(metrics.contains("# TYPE ferry_proxy_connections_open gauge\nferry_proxy_connections_open{service=\"web\"}"), "{metrics}");
    assert!(
        metrics.contains("ferry_service_serving_instances{service=\"web\"} 3"),
        "{metrics}"
    );

    let (code, health) = get(&format!("{api}/health"), Some(&token));
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["checks"]["service:web"], "healthy");
    assert!(health["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(health["version"].is_string());

    // Audit: who, what, outcome for deploy, a refused abort, and approve.
    env.ferry_code(&["abort", "web"], 1);
    let audit = env.json(&["audit"]);
    let entries = audit.as_array().unwrap();
    let deploy = entries.iter().find(|a| a["action"] == "deploy").unwrap();
    assert_eq!(deploy["outcome"], "accepted");
    assert_eq!(deploy["target"], "web");
    assert!(deploy["actor"].as_str().unwrap().contains('@'), "{deploy}");
    assert_eq!(deploy["detail"]["request"]["version"], "v1");
    assert!(
        entries
            .iter()
            .any(|a| a["action"] == "abort"
                && a["outcome"].as_str().unwrap().starts_with("rejected"))
    );

    // The secret is used by the instance but shown nowhere.
    let (_, revision) = get(&format!("{api}/v1/services/web/revisions/1"), Some(&token));
    for (what, text) in [
        ("audit", audit.to_string()),
        ("revision", revision),
        (
            "status",
            env.ferry_ok(&["status", "web", "--output", "json"]),
        ),
        ("history", env.ferry_ok(&["history", "web"])),
        ("audit text", env.ferry_ok(&["audit"])),
        ("daemon log", env.daemon_log()),
    ] {
        assert!(
            !text.contains("supersecret-123"),
            "secret leaked in {what}: {text}"
        );
    }
    let (pid, _) = env.marked_processes()[0];
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(
        environ.contains("API_TOKEN=supersecret-123"),
        "the instance gets its secret"
    );
    assert!(
        !environ.contains(&token),
        "the daemon's token never reaches an instance"
    );
}
