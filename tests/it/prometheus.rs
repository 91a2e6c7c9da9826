//! The Prometheus provider against a real Prometheus scraping Ferry.

use super::harness::*;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Prometheus {
    child: Child,
    pub(super) url: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// A real Prometheus listening on 127.0.0.1:`port`, with `config` as
    /// its prometheus.yml and extra command-line `flags`, once it is ready.
    pub(super) fn start(port: u16, config: &str, flags: &[&str]) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "this test needs Prometheus: `apt-get install -y prometheus` (.ci/run installs it)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = reqwest::blocking::Client::new();
        wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
            client
                .get(format!("{}/-/ready", p.url))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        p
    }

    /// Its log so far, for failure messages.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's `data` (`time` in seconds, or now).
    pub(super) fn query(&self, query: &str, time: Option<&str>) -> serde_json::Value {
        let mut params = vec![("query", query)];
        params.extend(time.map(|t| ("time", t)));
        reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&params)
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .map(|v| v["data"].clone())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// A real Prometheus scraping the daemon's `/metrics` every second, with
/// the daemon's token.
fn start_prometheus(env: &Env) -> Prometheus {
    let api = env.api();
    let target = api.trim_start_matches("http://");
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ferry
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {token}
    static_configs:
      - targets: ["{target}"]
"#,
        token = env.data_dir().join("token").display()
    );
    let p = Prometheus::start(free_port(), &config, &[]);
    wait_for(
        Duration::from_secs(30),
        "Prometheus to scrape Ferry",
        || p.query("up{job=\"ferry\"}", None)["result"][0]["value"][1] == "1",
    );
    p
}

pub(super) fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A canary judged by one PromQL check (canary 5xx/s at most 0.5),
/// against `prometheus_url`, or the daemon's own store without one.
pub(super) fn spec(prometheus_url: Option<&str>) -> Spec {
    let query = r#"sum(rate(ferry_proxy_requests_total{service=\"{{service}}\",revision=\"{{revision}}\",code=\"5xx\"}[5s])) or vector(0)"#;
    let url = prometheus_url
        .map(|u| format!("prometheus_url = \"{u}\""))
        .unwrap_or_default();
    Spec {
        instances: 2,
        strategy: "canary",
        deploy_timeout: "30s",
        deploy_extra: r#"steps = [ { weight = 30 }, { pause = "4s" } ]"#.into(),
        tail: format!(
            r#"
[services.web.analysis]
interval = "1s"
failure_limit = 1
min_requests = 5
{url}
checks = [ {{ prometheus = "{query}", max = 0.5, name = "canary 5xx/s" }} ]
"#
        ),
        ..Spec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_checks_pass_a_healthy_canary_and_pull_a_failing_one() {
    let (env, prometheus) = blocking(|| {
        let env = Env::start(Spec::default());
        let prometheus = start_prometheus(&env);
        // ferry.toml is read at deploy time: no restart needed.
        env.write_config(&spec(Some(&prometheus.url)));
        (env, prometheus)
    })
    .await;
    pass_then_pull(Arc::new(env)).await;
    blocking(move || drop(prometheus)).await;
}

#[test]
fn a_prometheus_that_keeps_erroring_pauses_the_rollout_instead_of_passing_it() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = Env::start(spec(Some(&dead)));
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.ferry_ok(&["deploy", "web", "--version", "v2", "--detach"]);
    wait_for(Duration::from_secs(20), "the rollout to pause", || {
        env.json(&["status", "web"])["rollout"]["paused"]
            .as_str()
            .is_some_and(|p| p.contains("prometheus error"))
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        env.json(&["status", "web"])["stable"],
        1,
        "an erroring provider never promotes"
    );
}

/// Deploy v1, then a healthy v2 (the check passes with 0) and a v3 that
/// fails half its requests (the check pulls it), under load.
pub(super) async fn pass_then_pull(env: Arc<Env>) {
    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v1"])).await;
    let load = load(env.proxy());

    let e = env.clone();
    blocking(move || e.ferry_ok(&["deploy", "web", "--version", "v2"])).await;
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "2"])).await;
    let ms = record["measurements"].as_array().unwrap();
    assert!(!ms.is_empty(), "{record}");
    assert!(
        ms.iter()
            .any(|m| m["check"] == "canary 5xx/s" && m["verdict"] == "pass" && m["value"] == 0.0),
        "{record}"
    );

    let e = env.clone();
    let out = blocking(move || {
        e.ferry_code(
            &[
                "deploy",
                "web",
                "--version",
                "v3",
                "--set",
                "DEMO_FAILURE_RATE=0.5",
            ],
            1,
        )
    })
    .await;
    assert!(out.contains("canary 5xx/s"), "{out}");
    let report = load.stop().await;
    assert!(report.failed > 0, "{report:?}");
    let e = env.clone();
    let record = blocking(move || e.json(&["rollout", "3"])).await;
    let failing: Vec<_> = record["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] == "fail")
        .collect();
    assert!(
        failing.len() >= 2,
        "failure_limit 1: two failed measurements: {record}"
    );
    assert!(
        failing.iter().all(|m| m["value"].as_f64().unwrap() > 0.5),
        "{record}"
    );
    assert!(
        failing[0]["detail"]
            .as_str()
            .unwrap()
            .contains("query returned"),
        "{record}"
    );
}
