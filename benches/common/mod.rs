//! What the process benchmarks (`metrics_store`, `alerting`, `validation`,
//! `slo`) share: processes stopped on drop, `ferry serve` and Prometheus
//! started and waited for, free ports, CPU time from `/proc`, medians, and
//! timed queries against a Prometheus-style API. Included
//! with `mod common;`.

use std::net::TcpListener;
use std::process::{Child, Command};

/// A process stopped, with everything it started, when dropped.
pub struct Proc {
    pub child: Child,
    /// The signal that stops it and all it started (`kill` argument,
    /// e.g. `-INT`).
    pub stop: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.stop, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Clock ticks per second, for `/proc/PID/stat`.
pub fn clk_tck() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process used.
pub fn cpu_s(pid: u32, tck: f64) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (tick(11) + tick(12)) / tck
}

pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// Wait until `f` holds, checking every 50 ms; panic after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `ferry serve --api-addr 127.0.0.1:0` with `args`, in `dir` (data in
/// `dir/data`, log in `dir/ferry.log`), with `envs`; in a session of its
/// own when `session` (as under a service manager). SIGINT stops it, the
/// data plane included. Returns once the daemon wrote `api.json`.
pub fn ferry_serve(
    ferry: &str,
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
    session: bool,
) -> Proc {
    let mut cmd = if session {
        let mut c = Command::new("setsid");
        c.arg(ferry);
        c
    } else {
        Command::new(ferry)
    };
    cmd.args(["serve", "--api-addr", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .env("FERRY_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("ferry.log")).unwrap());
    let proc = Proc {
        child: cmd.spawn().unwrap(),
        stop: "-INT",
    };
    wait_for(
        "ferry serve to start",
        std::time::Duration::from_secs(30),
        || dir.join("data/api.json").exists(),
    );
    proc
}

/// Prometheus with `config`, storing in `dir/data`, on 127.0.0.1:`port`,
/// in a session of its own; returns once it says it is ready.
pub fn prometheus(bin: &str, dir: &std::path::Path, config: &std::path::Path, port: u16) -> Proc {
    let child = Command::new("setsid")
        .arg(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc {
        child,
        stop: "-TERM",
    };
    let url = format!("http://127.0.0.1:{port}/-/ready");
    wait_for(
        "prometheus to be ready",
        std::time::Duration::from_secs(30),
        || reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success()),
    );
    proc
}

/// Where a `ferry serve` in `dir` answers, and its admin token.
pub struct FerryApi {
    pub url: String,
    pub token: String,
}

pub fn ferry_api(dir: &std::path::Path) -> FerryApi {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data/api.json")).unwrap()).unwrap();
    FerryApi {
        url: info["url"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
        token: std::fs::read_to_string(dir.join("data/token"))
            .unwrap()
            .trim()
            .to_string(),
    }
}

/// A Prometheus-style query API (Ferry's with a bearer token).
pub struct Endpoint {
    pub base: String,
    pub token: Option<String>,
    pub client: reqwest::blocking::Client,
}

impl Endpoint {
    /// One request: (milliseconds, the answer's `data`).
    pub fn run(&self, path: &str, params: &[(&str, String)]) -> (f64, serde_json::Value) {
        let started = std::time::Instant::now();
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .query(params);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status();
        let body = resp.bytes().unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert!(
            status.is_success(),
            "{}{path} {params:?}: {status} {}",
            self.base,
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        (ms, v["data"].clone())
    }
}

/// The variable `name` from the environment, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The `ferry` CLI (`ferry` is its path) against the daemon whose data is
/// in `dir/data`: whether it exited 0, and its standard output followed by
/// its standard error.
pub fn ferry_cli(ferry: &str, dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(ferry)
        .args(args)
        .env("FERRY_DATA_DIR", dir.join("data"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Ferry's query API (with its token) and Prometheus's on
/// 127.0.0.1:`prom_port`, in that order, with a 300 s request timeout.
pub fn query_endpoints(ferry: &FerryApi, prom_port: u16) -> [Endpoint; 2] {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap();
    [
        Endpoint {
            base: ferry.url.clone(),
            token: Some(ferry.token.clone()),
            client: client.clone(),
        },
        Endpoint {
            base: format!("http://127.0.0.1:{prom_port}"),
            token: None,
            client,
        },
    ]
}
