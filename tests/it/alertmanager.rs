//! A real Alertmanager (Debian's prometheus-alertmanager) for the
//! alerting tests.

use super::harness::*;
use super::prometheus::which;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(super) struct Alertmanager {
    child: Child,
    pub(super) url: String,
    dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// A real Alertmanager on 127.0.0.1:`port` with `config` as its
    /// alertmanager.yml (clustering off), once it is ready.
    pub(super) fn start(port: u16, config: &str) -> Alertmanager {
        let binary = which("prometheus-alertmanager")
            .or_else(|| which("alertmanager"))
            .unwrap_or_else(|| {
                panic!(
                    "this test needs Alertmanager: `apt-get install -y prometheus-alertmanager` (.ci/run installs it)"
                )
            });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = reqwest::blocking::Client::new();
        wait_for(Duration::from_secs(30), "Alertmanager to be ready", || {
            client
                .get(format!("{}/-/ready", am.url))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        am
    }

    /// Its log so far, for failure messages.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// `GET /api/v2/alerts` (active, silenced and inhibited).
    pub(super) fn alerts(&self) -> Vec<serde_json::Value> {
        reqwest::blocking::Client::new()
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .and_then(|r| r.json::<Vec<serde_json::Value>>())
            .unwrap_or_default()
    }
}
