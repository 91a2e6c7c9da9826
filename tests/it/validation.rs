//! Validation suites: `ferry validate` against real servers started here
//! (plain HTTP, one that drops security headers, one that checks
//! credentials, a port that refuses, one that never answers, commands),
//! its reports (JUnit read by a real consumer), `ferry check` on bad
//! suites; and gates inside releases: a blue-green candidate that fails
//! its smoke suite never takes regular traffic, and no user request fails.

use super::harness::*;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// A server answering every request with `response` (a whole HTTP/1.1
/// response, `Connection: close`).
fn answering(response: &'static str) -> u16 {
    http_server(move |mut s| {
        let _ = s.write_all(response.as_bytes());
    })
}

/// 401 without `Authorization: Bearer s3cret`, 200 with it.
fn guarded() -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(100) {
            let mut s = stream;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let ok = head.contains("authorization: bearer s3cret");
            let answer = if ok {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = s.write_all(answer.as_bytes());
        }
    });
    port
}

/// A port nothing listens on.
fn refusing() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn suites(json: u16, bare: u16, guarded: u16, open: u16, refused: u16, silent: u16) -> String {
    format!(
        r#"
[validation.suites.smoke]
description = "what users reach"
[[validation.suites.smoke.checks]]
name = "status-json"
kind = "http"
url = "http://127.0.0.1:{json}/status"
expect_status = 200
expect_json = {{ "db.up" = true, status = "ok" }}
expect_headers = {{ content-type = "application/json" }}
[[validation.suites.smoke.checks]]
name = "hangs"
kind = "http"
url = "http://127.0.0.1:{silent}/"
timeout = "500ms"
[[validation.suites.smoke.checks]]
name = "database"
kind = "tcp"
address = "127.0.0.1:{refused}"

[validation.suites.security]
[[validation.suites.security.checks]]
name = "headers"
kind = "security_headers"
url = "http://127.0.0.1:{bare}/"
[[validation.suites.security.checks]]
name = "login-required"
kind = "auth"
url = "http://127.0.0.1:{guarded}/admin"
good_headers = {{ Authorization = "Bearer ${{ADMIN_TOKEN}}" }}
[[validation.suites.security.checks]]
name = "open-admin"
kind = "auth"
url = "http://127.0.0.1:{open}/admin"
severity = "warning"

[validation.suites.data]
[[validation.suites.data.checks]]
name = "migrations"
kind = "command"
command = ["sh", "-c", "echo 'schema at 42'; exit 0"]
[[validation.suites.data.checks]]
name = "replica-lag"
kind = "command"
command = "echo 'lag 3s, over 1s' >&2; exit 2"
[[validation.suites.data.checks]]
name = "backups"
kind = "command"
command = ["sh", "-c", "exit 77"]
[[validation.suites.data.checks]]
name = "ci-only"
kind = "http"
url = "http://127.0.0.1:{json}/status"
skip_if = {{ unset = "CI_ONLY_TOKEN" }}
"#
    )
}

#[test]
fn ferry_validate_reports_every_check_against_real_servers() {
    let json = answering(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 34\r\nConnection: close\r\n\r\n{\"status\":\"ok\",\"db\":{\"up\":true}}  ",
    );
    let bare = answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    let open = answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    let silent = http_server(|s| {
        std::thread::sleep(Duration::from_secs(5));
        drop(s);
    });
    let env = Env::prepare(Spec {
        tail: suites(json, bare, guarded(), open, refusing(), silent),
        ..Spec::default()
    });
    let run = |args: &[&str]| {
        let mut all = vec!["validate"];
        all.extend_from_slice(args);
        env.ferry_env(&all, &[("ADMIN_TOKEN", "s3cret")])
    };

    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = |name: &str| -> String {
        text.lines()
            .find(|l| l.contains(&format!(" {name} (")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{text}"))
            .to_string()
    };
    assert!(line("status-json").contains("✅ PASSED"), "{text}");
    let hangs = line("hangs");
    assert!(
        hangs.contains("❌ FAILED") && hangs.contains("did not finish within its timeout (500ms)"),
        "{hangs}"
    );
    let db = line("database");
    assert!(
        db.contains("❌ FAILED") && db.contains("connection refused"),
        "{db}"
    );
    let headers = line("headers");
    assert!(
        headers.contains("⚠️ WARNING") && headers.contains("missing Content-Security-Policy"),
        "{headers}"
    );
    assert!(line("login-required").contains("✅ PASSED"), "{text}");
    let open_admin = line("open-admin");
    assert!(
        open_admin.contains("⚠️ WARNING")
            && open_admin.contains("a request without credentials got 200, expected 401 or 403"),
        "{open_admin}"
    );
    assert!(line("migrations").contains("✅ PASSED"), "{text}");
    assert!(line("replica-lag").contains("⚠️ WARNING"), "{text}");
    assert!(
        text.contains("lag 3s, over 1s"),
        "a warning shows the command's output:\n{text}"
    );
    assert!(line("backups").contains("⏭️ SKIPPED"), "{text}");
    let ci = line("ci-only");
    assert!(
        ci.contains("⏭️ SKIPPED") && ci.contains("$CI_ONLY_TOKEN is not set"),
        "{ci}"
    );
    let last = text.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("Summary: 10 checks: 3 passed, 2 failed, 3 warnings, 2 skipped in ")
            && last.ends_with(": FAILED"),
        "{last}"
    );
    // The credential went to the server and nowhere else.
    assert!(!text.contains("s3cret"), "{text}");

    // One suite that passes: exit 0.
    let out = run(&["--suite", "data"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // JSON on stdout; JUnit in a file, read by a real JUnit consumer.
    let out = run(&[
        "--suite",
        "smoke",
        "--suite",
        "security",
        "--format",
        "junit",
        "--report",
        "report.xml",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["total"], 6, "{report}");
    assert_eq!(report["summary"]["failed"], 2, "{report}");
    assert_eq!(report["ok"], false);
    let hang = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "hangs")
        .unwrap();
    assert_eq!(hang["status"], "FAILED");
    assert!(hang["duration_ms"].as_u64().unwrap() < 3000, "{hang}");
    let consumer = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom junitparser import JUnitXml, Failure, Skipped\nx = JUnitXml.fromfile(sys.argv[1])\nfor s in x:\n    for c in s:\n        kinds = [type(r).__name__ for r in c.result]\n        print(s.name, c.name, c.classname, ','.join(kinds) or 'passed')\nprint('totals', x.tests, x.failures, x.skipped, x.errors)",
            env.dir.path().join("report.xml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let parsed = String::from_utf8_lossy(&consumer.stdout).to_string();
    assert!(
        consumer.status.success(),
        "{parsed}{}",
        String::from_utf8_lossy(&consumer.stderr)
    );
    assert!(
        parsed.contains("smoke hangs smoke.http Failure"),
        "{parsed}"
    );
    assert!(
        parsed.contains("smoke database smoke.tcp Failure"),
        "{parsed}"
    );
    assert!(
        parsed.contains("security headers security.security_headers passed"),
        "{parsed}"
    );
    assert!(parsed.contains("totals 6 2 0 0"), "{parsed}");

    // Markdown on stdout.
    let out = run(&["--suite", "data", "--format", "markdown"]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| ⏭️ SKIPPED | data | backups | command |"),
        "{md}"
    );

    // HTML to a file: one page, the failures marked.
    let out = run(&[
        "--suite",
        "smoke",
        "--format",
        "html",
        "--report",
        "report.html",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let page = std::fs::read_to_string(env.dir.path().join("report.html")).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert_eq!(page.matches("<tr class=\"FAILED\">").count(), 2, "{page}");

    // Usage errors exit 2 and name the fix.
    let out = run(&["--suite", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--suite nope") && err.contains("smoke"),
        "{err}"
    );
}

#[test]
fn ferry_check_rejects_bad_suites_with_file_and_line() {
    let env = Env::prepare(Spec {
        deploy_extra: "validate = { candidate = [\"smoke\", \"missing\"] }".into(),
        tail: r#"
[validation.suites.smoke]
[[validation.suites.smoke.checks]]
name = "a"
kind = "http"
url = "ftp://example.com/"
[[validation.suites.smoke.checks]]
name = "b"
kind = "http"
url = "/"
service = "api"
[[validation.suites.smoke.checks]]
name = "c"
kind = "tls"
address = "example.com"
[[validation.suites.smoke.checks]]
name = "d"
kind = "http"
url = "/"
headers = { Authorization = "Bearer literal" }
[[validation.suites.smoke.checks]]
name = "e"
kind = "command"
command = ["./no-such-checker", "--all"]
[[validation.suites.smoke.checks]]
name = "f"
kind = "tls"
address = "127.0.0.1:443"
ca_file = "certs/missing-ca.pem"
"#
        .into(),
        ..Spec::default()
    });
    let out = env.ferry_code(&["check"], 2);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    let find = |key: &str| {
        lines
            .iter()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no error for {key}:\n{out}"))
            .to_string()
    };
    let text = std::fs::read_to_string(env.dir.path().join("ferry.toml")).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        find("checks.0.url").contains(&format!("ferry.toml:{}:", line_of("ftp://"))),
        "{out}"
    );
    assert!(
        find("checks.1.service").contains("service \"api\" is not declared"),
        "{out}"
    );
    assert!(find("checks.2.address").contains("has no port"), "{out}");
    assert!(
        find("checks.3.headers.Authorization").contains("literal credential"),
        "{out}"
    );
    // What only the machine can tell: a program and a file that are not there.
    let fixed = text
        .replace("ftp://example.com/", "http://example.com/")
        .replace("service = \"api\"\n", "")
        .replace("\"example.com\"", "\"example.com:443\"")
        .replace("Bearer literal", "Bearer ${TOKEN}")
        .replace("\"smoke\", \"missing\"", "\"smoke\"");
    std::fs::write(env.dir.path().join("ferry.toml"), &fixed).unwrap();
    let fixed_line = fixed
        .lines()
        .position(|l| l.contains("./no-such-checker"))
        .unwrap()
        + 1;
    let out = env.ferry_code(&["check"], 2);
    assert!(
        out.contains(&format!("ferry.toml:{fixed_line}:"))
            && out.contains("checks.4.command: `./no-such-checker` is not an executable file"),
        "{out}"
    );
    assert!(
        out.contains("checks.5.ca_file: cannot read") && out.contains("missing-ca.pem"),
        "{out}"
    );
    std::fs::write(env.dir.path().join("ferry.toml"), &text).unwrap();
    let gate = find("validate.candidate.1");
    assert!(
        gate.contains(&format!("ferry.toml:{}:", line_of("validate = {")))
            && gate.contains("suite \"missing\" is not declared"),
        "{gate}"
    );
    // An unknown kind is a parse error with its position.
    std::fs::write(
        env.dir.path().join("ferry.toml"),
        text.replace("kind = \"tls\"", "kind = \"ssl\""),
    )
    .unwrap();
    let out = env.ferry_code(&["check"], 2);
    assert!(
        out.contains(&format!("ferry.toml:{}:", line_of("kind = \"tls\"")))
            && out.contains("unknown variant `ssl`"),
        "{out}"
    );
}

const SMOKE: &str = r#"
[validation.suites.smoke]
[[validation.suites.smoke.checks]]
name = "home"
kind = "http"
url = "/"
expect_status = 200
expect_body = "hello from"
[[validation.suites.smoke.checks]]
name = "health"
kind = "http"
url = "/health"
expect_json = { status = "healthy" }
[[validation.suites.smoke.checks]]
name = "headers"
kind = "security_headers"
url = "/"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_fails_its_smoke_suite_never_takes_traffic() {
    let (hook, announced) = receiver();
    let env = Arc::new(Env::start(Spec {
        extra: format!(r#"webhooks = [ {{ url = "http://127.0.0.1:{hook}/hook" }} ]"#),
        instances: 2,
        strategy: "blue-green",
        scale_down_delay: "0s",
        deploy_extra:
            "auto_promote = true\nvalidate = { candidate = [\"smoke\"], after = [\"smoke\"] }"
                .into(),
        tail: SMOKE.into(),
        ..Spec::default()
    }));
    let out = ferry_async(&env, &["deploy", "web", "--version", "v1"], 0).await;
    assert!(out.contains("succeeded"), "{out}");
    let load = load(env.proxy());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2 answers every `/` with 500: its candidate gate fails, and it
    // never takes a user's request.
    let v2 = [
        "deploy",
        "web",
        "--version",
        "v2",
        "--set",
        "DEMO_FAILURE_RATE=1",
    ];
    let out = ferry_async(&env, &v2, 1).await;
    assert!(out.contains("candidate validation failed"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 50, "{report:?}");
    assert_eq!(
        report.by_version.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "{report:?}"
    );

    let e = env.clone();
    let (record, text, status) = blocking(move || {
        (
            e.json(&["rollout", "2"]),
            e.ferry_ok(&["rollout", "2"]),
            status(&e),
        )
    })
    .await;
    assert_eq!(record["rollout"]["outcome"], "failed", "{record}");
    assert_eq!(status["stable"], 1, "{status}");
    let gates = record["rollout"]["validations"]
        .as_array()
        .expect("validations");
    assert_eq!(gates.len(), 1, "{record}");
    assert_eq!(gates[0]["stage"], "candidate");
    assert_eq!(gates[0]["revision"], 2);
    let result = |name: &str| {
        gates[0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(result("home")["status"], "FAILED");
    assert!(
        result("home")["reason"]
            .as_str()
            .unwrap()
            .contains("expected status 200, got 500"),
        "{record}"
    );
    assert_eq!(result("health")["status"], "PASSED");
    assert_eq!(result("headers")["status"], "WARNING");
    assert!(text.contains("❌ FAILED  smoke/home"), "{text}");
    assert!(text.contains("candidate validation (smoke) against revision 2: 3 checks: 1 passed, 1 failed, 1 warning, 0 skipped"), "{text}");
    let kinds: Vec<&str> = record["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k}: {kinds:?}"))
    };
    assert!(
        at("validating") < at("validated") && at("validated") < at("failed"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"switched"), "{kinds:?}");

    // v1's record: the first deploy ran both gates and passed them.
    let e = env.clone();
    let first = blocking(move || e.json(&["rollout", "1"])).await;
    let stages: Vec<&str> = first["rollout"]["validations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["stage"].as_str())
        .collect();
    assert_eq!(stages, vec!["candidate", "after"], "{first}");

    // Warnings are announced without stopping anything: v1's gates went to
    // the webhook as `validated` events naming the missing headers.
    let e = env.clone();
    blocking(move || {
        wait_for(Duration::from_secs(10), "the validated events", || {
            announced
                .lock()
                .unwrap()
                .iter()
                .filter(|b| b["event"] == "validated")
                .count()
                >= 3
        });
        let got = announced.lock().unwrap().clone();
        let first: Vec<&str> = got
            .iter()
            .filter(|b| b["event"] == "validated" && b["rollout"] == 1)
            .filter_map(|b| b["message"].as_str())
            .collect();
        assert_eq!(first.len(), 2, "{got:?}");
        assert!(
            first
                .iter()
                .all(|m| m.contains("1 warning") && m.contains("WARNING smoke/headers")),
            "{first:?}"
        );
        drop(e);
    })
    .await;
}

#[test]
fn query_checks_ask_the_daemons_metrics() {
    let env = Env::start(Spec {
        tail: r#"
[validation.suites.metrics]
[[validation.suites.metrics.checks]]
name = "scraped"
kind = "query"
query = 'up{job="ferry"}'
min = 1
[[validation.suites.metrics.checks]]
name = "too-high"
kind = "query"
query = "vector(2)"
max = 1
[[validation.suites.metrics.checks]]
name = "nothing"
kind = "query"
query = "absent_metric_for_the_test"
max = 0
empty = "skip"
"#
        .into(),
        ..Spec::default()
    });
    wait_for(Duration::from_secs(30), "the daemon's first scrape", || {
        let out = env.ferry(&["validate", "--suite", "metrics", "--output", "json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        r["results"][0]["status"] == "PASSED"
    });
    let out = env.ferry(&["validate", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = |name: &str| {
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by("scraped")["status"], "PASSED", "{r}");
    assert_eq!(by("too-high")["status"], "FAILED", "{r}");
    assert_eq!(
        by("too-high")["reason"],
        "`vector(2)`: = 2 is above max 1",
        "{r}"
    );
    assert_eq!(by("nothing")["status"], "SKIPPED", "{r}");
}

#[test]
fn a_dry_run_lists_the_gates() {
    let env = Env::start(Spec::default());
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.write_config(&Spec {
        deploy_extra: "validate = { before = [\"smoke\"], candidate = [\"smoke\"] }".into(),
        tail: SMOKE.into(),
        ..Spec::default()
    });
    let out = env.ferry_ok(&["deploy", "web", "--version", "v2", "--dry-run"]);
    assert!(
        out.contains("before validation: running suites smoke before any new instance starts"),
        "{out}"
    );
    assert!(
        out.contains("candidate validation: running suites smoke against revision 2 (X-Ferry-Revision) before it takes regular traffic"),
        "{out}"
    );
}

#[test]
fn validate_revision_reaches_one_revision_by_x_ferry_revision() {
    let env = Env::start(Spec {
        instances: 1,
        strategy: "blue-green",
        scale_down_delay: "60s",
        deploy_extra: "auto_promote = true".into(),
        tail: r#"
[validation.suites.version]
[[validation.suites.version.checks]]
name = "is-v1"
kind = "http"
url = "/"
expect_body = "hello from v1"
"#
        .into(),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    // Regular traffic is on v2; v1 keeps running for its scale-down delay.
    let out = env.ferry_code(&["validate", "--service", "web"], 1);
    assert!(
        out.contains("the body does not contain \"hello from v1\" (it starts \"hello from v2\")"),
        "{out}"
    );
    let out = env.ferry_ok(&["validate", "--service", "web", "--revision", "1"]);
    assert!(out.contains("✅ PASSED  is-v1"), "{out}");
    assert!(
        out.contains("Validation of suite version against web (revision 1)"),
        "{out}"
    );
    let out = env.ferry_code(&["validate", "--revision", "1"], 2);
    assert!(out.contains("--revision needs --service"), "{out}");
}
