//! Test harness: a `ferry serve` process on a temp dir, the CLI, and a
//! ferry.toml running the bundled demo app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A port free now, below Linux's ephemeral range (32768 and up): a port
/// the kernel handed out for `:0` could be handed out again, e.g. to the
/// daemon's API, before the test binds it. Each call gets a new port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 500) * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (offset + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Knobs of the test service's spec.
pub struct Spec {
    /// The `command` value as TOML (default: the bundled demo app).
    pub command: Option<String>,
    pub instances: u32,
    /// More `KEY = "value"` pairs for the `env` table, each after a comma.
    pub env_extra: String,
    pub strategy: &'static str,
    pub min_ready: &'static str,
    pub deploy_timeout: &'static str,
    pub scale_down_delay: &'static str,
    pub drain_timeout: &'static str,
    /// Lines for `[services.web]`.
    pub extra: String,
    /// Lines for `[services.web.deploy]`.
    pub deploy_extra: String,
    /// Tables appended at the end (e.g. `[services.web.analysis]`).
    pub tail: String,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            command: None,
            instances: 3,
            env_extra: String::new(),
            strategy: "rolling",
            min_ready: "300ms",
            deploy_timeout: "10s",
            scale_down_delay: "30s",
            drain_timeout: "5s",
            extra: String::new(),
            deploy_extra: String::new(),
            tail: String::new(),
        }
    }
}

/// Analysis that judges quickly on little traffic: every 500 ms over 3 s,
/// no failure allowed, at least 5 requests.
pub const ANALYSIS: &str = r#"
[services.web.analysis]
interval = "500ms"
window = "3s"
failure_limit = 0
min_requests = 5
checks = [ { metric = "error_rate", max = 0.05 } ]
"#;

/// `ferry status web`, as JSON.
pub fn status(env: &Env) -> serde_json::Value {
    env.json(&["status", "web"])
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub daemon: Option<Child>,
}

impl Env {
    /// A temp dir with a ferry.toml for service `web` and a running daemon.
    pub fn start(spec: Spec) -> Env {
        let mut env = Env::prepare(spec);
        env.start_daemon();
        env
    }

    /// A temp dir with a ferry.toml for service `web`; no daemon yet.
    pub fn prepare(spec: Spec) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ferry-it-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let env = Env {
            dir,
            port,
            daemon: None,
        };
        env.write_config(&spec);
        env
    }

    pub fn write_config(&self, spec: &Spec) {
        let text = format!(
            r#"[services.web]
command = {command}
instances = {instances}
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}"{env_extra} }}
{extra}
[services.web.readiness]
http = "/health"
interval = "100ms"
failure_threshold = 2

[services.web.deploy]
strategy = "{strategy}"
min_ready = "{min_ready}"
drain_timeout = "{drain_timeout}"
deploy_timeout = "{deploy_timeout}"
stop_timeout = "5s"
scale_down_delay = "{scale_down_delay}"
{deploy_extra}
{tail}
"#,
            command = spec
                .command
                .clone()
                .unwrap_or_else(|| format!(r#"["{FERRY}", "demo-app"]"#)),
            instances = spec.instances,
            env_extra = spec.env_extra,
            port = self.port,
            extra = spec.extra,
            strategy = spec.strategy,
            min_ready = spec.min_ready,
            deploy_timeout = spec.deploy_timeout,
            scale_down_delay = spec.scale_down_delay,
            drain_timeout = spec.drain_timeout,
            deploy_extra = spec.deploy_extra,
            tail = spec.tail,
        );
        std::fs::write(self.dir.path().join("ferry.toml"), text).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[], &[]);
    }

    /// Start `ferry serve` with extra arguments and environment variables.
    pub fn start_daemon_with(&mut self, args: &[&str], envs: &[(&str, &str)]) {
        let _ = std::fs::remove_file(self.data_dir().join("api.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(FERRY)
            .args(["serve", "--api-addr", "127.0.0.1:0"])
            .args(args)
            .envs(envs.iter().copied())
            .env("FERRY_DATA_DIR", self.data_dir())
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait_for(
            Duration::from_secs(20),
            "the daemon to write api.json",
            || self.data_dir().join("api.json").exists(),
        );
    }

    /// SIGKILL the daemon: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM the daemon and wait: the control plane stops; the data
    /// plane and the instances keep serving for the next `ferry serve`.
    pub fn stop(&mut self) {
        if let Some(c) = self.daemon.take() {
            signal(c.id() as i32, Signal::SIGTERM);
            Self::wait_exit(c);
        }
    }

    /// `ferry shutdown`, and wait: the proxies, the instances and the
    /// daemon all stop.
    pub fn shutdown(&mut self) {
        if let Some(c) = self.daemon.take() {
            let _ = self.ferry(&["shutdown", "--timeout", "60s"]);
            Self::wait_exit(c);
        }
    }

    fn wait_exit(mut c: Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if c.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The data-plane process recorded in the data dir, if it is alive.
    pub fn dataplane_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("dataplane.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let pid = v["pid"].as_i64()? as i32;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let marked = environ
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"FERRY_DATAPLANE_OF="));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_none_or(|(_, r)| r.trim_start().starts_with('Z'));
        (marked && !zombie).then_some(pid)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        self.ferry_env(args, &[])
    }

    /// Run the CLI with more environment variables.
    pub fn ferry_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new(FERRY)
            .args(args)
            .envs(envs.iter().copied())
            .env("FERRY_DATA_DIR", self.data_dir())
            .env_remove("FERRY_API")
            .env_remove("FERRY_TOKEN")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run the CLI and expect an exit code; returns stdout + stderr.
    pub fn ferry_ok(&self, args: &[&str]) -> String {
        self.ferry_code(args, 0)
    }

    pub fn ferry_code(&self, args: &[&str], code: i32) -> String {
        let out = self.ferry(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "ferry {args:?} exited {:?}, expected {code}:\n{text}\n--- daemon log ---\n{}",
            out.status.code(),
            self.daemon_log()
        );
        text
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let text = self.ferry_ok(&all);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub fn proxy(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The daemon's `/metrics` text (empty when it cannot be read).
    pub fn metrics_text(&self) -> String {
        reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.api()))
            .bearer_auth(self.token())
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn api(&self) -> String {
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir().join("api.json")).unwrap(),
        )
        .unwrap();
        info["url"].as_str().unwrap().to_string()
    }

    /// The daemon's id: the prefix of every marker it puts on processes.
    pub fn daemon_id(&self) -> String {
        let conn = rusqlite::Connection::open(self.data_dir().join("ferry.db")).unwrap();
        conn.query_row("SELECT value FROM meta WHERE key = 'daemon_id'", [], |r| {
            r.get(0)
        })
        .unwrap()
    }

    /// Live processes carrying this daemon's marker: (pid, FERRY_REVISION).
    pub fn marked_processes(&self) -> Vec<(i32, String)> {
        let prefix = format!("FERRY_INSTANCE={}/", self.daemon_id());
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            if !vars.iter().any(|v| v.starts_with(&prefix)) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            {
                continue;
            }
            let rev = vars
                .iter()
                .find_map(|v| v.strip_prefix("FERRY_REVISION="))
                .unwrap_or("?")
                .to_string();
            out.push((pid, rev));
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown();
        // Nothing Ferry started may outlive the test.
        if let Some(pid) = self.dataplane_pid() {
            signal(pid, Signal::SIGKILL);
        }
        if self.data_dir().join("ferry.db").exists() {
            for (pid, _) in self.marked_processes() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}

pub use nix::sys::signal::Signal;

/// Send `sig` to the process `pid`. Pids below 2 are refused: `kill(-1)`
/// signals every process the caller may signal (the shell tool's `kill
/// -KILL -<pgid>` turned into exactly that once), and 0 is the caller's
/// own group.
pub fn signal(pid: i32, sig: Signal) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Send `sig` to the process group led by `pgid` (an instance: Ferry
/// starts each in a session of its own).
pub fn signal_group(pgid: i32, sig: Signal) {
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Start the load generator: 8 keep-alive connections at a steady rate.
pub fn load(target: SocketAddr) -> ferry::loadgen::LoadGen {
    let mut c = ferry::loadgen::LoadConfig::new(target);
    c.connections = 8;
    c.rate_per_connection = Some(50.0);
    c.max_duration = Duration::from_secs(120);
    ferry::loadgen::LoadGen::start(c)
}

/// Versions answering over the next `window`.
pub async fn versions_now(load: &ferry::loadgen::LoadGen, window: Duration) -> Vec<String> {
    let _ = load.take_window();
    tokio::time::sleep(window).await;
    load.take_window().into_keys().collect()
}

/// Run a blocking CLI call off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// `ferry ARGS` off the async runtime, expecting exit `code`; returns
/// stdout + stderr.
pub async fn ferry_async(env: &std::sync::Arc<Env>, args: &[&str], code: i32) -> String {
    let env = env.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.ferry_code(&args, code)
    })
    .await
}

/// A tiny webhook receiver: records each POSTed JSON body.
pub fn receiver() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(200) {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                sink.lock().unwrap().push(v);
            }
            let mut s = stream;
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// A test HTTP server on 127.0.0.1: `answer` gets each connection once
/// the request head is read.
pub fn http_server(answer: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                answer(stream);
            });
        }
    });
    port
}
