//! What a hostile probe found (issue 8, F1–F10), each kept closed: a test
//! per finding that failed before its fix.

use super::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// POST a JSON body to the API with the token: (status, parsed body).
fn post(env: &Env, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = client()
        .post(format!("{}{path}", env.api()))
        .bearer_auth(env.token())
        .json(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

/// A deploy request as the CLI sends it, for the test service.
fn deploy_request(env: &Env, version: &str) -> serde_json::Value {
    serde_json::json!({
        "spec": {"command": [FERRY, "demo-app"], "listen": format!("127.0.0.1:{}", env.port)},
        "version": version,
        "base_dir": env.dir.path(),
    })
}

/// A plain GET through the service's proxy: (status, body).
fn get_proxy(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out))
}

/// Markers of live processes under this daemon whose marker contains `part`.
fn processes_marked(env: &Env, part: &str) -> Vec<i32> {
    let prefix = format!("FERRY_INSTANCE={}/", env.daemon_id());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            !zombie
                && environ.split(|b| *b == 0).any(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.starts_with(&prefix) && kv.contains(part)
                })
        })
        .collect()
}

fn pgid_of(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// F1: `--version ..` served the project directory, admin token included.
#[test]
fn f1_versions_that_leave_the_release_directory_or_read_as_options_are_refused() {
    let env = Env::start(Spec::default());
    for v in ["..", ".", "-rf", "--help", ".ferry"] {
        let out = env.ferry_code(&["deploy", "web", &format!("--version={v}")], 2);
        assert!(
            out.contains("must start with a letter or digit"),
            "--version={v}: {out}"
        );
        // The API refuses it too, whoever calls it.
        let (status, body) = post(&env, "/v1/services/web/deploys", &deploy_request(&env, v));
        assert_eq!(status, 422, "{v}: {body}");
        assert_eq!(body["error"]["problems"][0]["path"][0], "version", "{body}");
    }
    let services = env.json(&["status"]);
    assert_eq!(services, serde_json::json!([]), "nothing was deployed");
    assert!(env.marked_processes().is_empty(), "nothing was started");
}

/// F4: a `sh -c` command's shell and its child were both marked; after a
/// restart Ferry tracked the child, and the old instances outlived every
/// deploy and even a graceful stop.
#[test]
fn f4_shell_commands_are_adopted_by_their_group_and_stopped_whole() {
    let mut env = Env::start(Spec {
        command: Some(format!("\"'{FERRY}' demo-app; echo demo-app ended\"")),
        instances: 2,
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    assert_eq!(
        env.marked_processes().len(),
        4,
        "a shell and the app per instance"
    );
    env.kill9();
    env.start_daemon();
    wait_for(Duration::from_secs(20), "v1 adopted and serving", || {
        let s = env.json(&["status", "web"]);
        let i = s["instances"].as_array().unwrap().clone();
        i.len() == 2 && i.iter().all(|i| i["state"] == "serving")
    });
    let status = env.json(&["status", "web"]);
    let old_ports: Vec<u16> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let pid = i["pid"].as_i64().unwrap();
            assert_eq!(pgid_of(pid), pid, "Ferry tracks the group leader: {i}");
            i["port"].as_u64().unwrap() as u16
        })
        .collect();
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    wait_for(
        Duration::from_secs(15),
        "no process of revision 1 left",
        || env.marked_processes().iter().all(|(_, rev)| rev == "2"),
    );
    for port in old_ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "an old instance still listens on {port}"
        );
    }
    assert_eq!(get_proxy(env.port, "/").unwrap().0, 200);
    env.shutdown();
    assert_eq!(
        env.marked_processes(),
        vec![],
        "a shutdown leaves nothing running"
    );
    assert_eq!(env.dataplane_pid(), None, "nor the data plane");
}

/// F4: a `sh -c` hook interrupted by kill -9 was "stopped" but finished
/// later anyway.
#[test]
fn f4_an_interrupted_shell_hook_is_stopped_for_good() {
    let mut env = Env::start(Spec {
        instances: 1,
        extra: "pre_deploy = \"sleep 3; touch hook-finished\"\npre_deploy_timeout = \"1m\"".into(),
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1", "--detach"]);
    wait_for(Duration::from_secs(10), "the hook to run", || {
        processes_marked(&env, "/hook-").len() >= 2
    });
    env.kill9();
    env.start_daemon();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !env.dir.path().join("hook-finished").exists(),
        "the interrupted hook ran on to the end"
    );
    assert_eq!(processes_marked(&env, "/hook-"), Vec::<i32>::new());
    let history = env.json(&["history", "web"]);
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("daemon restarted while the pre_deploy hook was running"),
        "{history}"
    );
}

/// F5: a failed first deploy left a proxy on its address, and a later
/// deploy on another address was never listened on.
#[test]
fn f5_the_proxy_follows_the_listen_address_and_closes_when_nothing_serves() {
    let mut env = Env::start(Spec {
        command: Some("[\"/nonexistent/ferry-test-program\"]".into()),
        instances: 1,
        ..Spec::default()
    });
    let first = env.port;
    env.ferry_code(&["deploy", "web", "--version", "v1"], 1);
    wait_for(
        Duration::from_secs(5),
        "the failed service's proxy to close",
        || TcpStream::connect(("127.0.0.1", first)).is_err(),
    );
    env.port = free_port();
    env.write_config(&Spec {
        instances: 1,
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    let (status, body) = get_proxy(env.port, "/").expect("the new address answers");
    assert!(status == 200 && body.contains("v2"), "{body}");
    assert!(TcpStream::connect(("127.0.0.1", first)).is_err());
    assert_eq!(
        env.json(&["status", "web"])["listen"],
        format!("127.0.0.1:{}", env.port)
    );
}

/// F6: a proxy that could not listen was reported healthy and serving.
#[test]
fn f6_health_and_status_say_when_a_proxy_cannot_listen_and_it_recovers() {
    let mut env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    env.shutdown();
    let holder = std::net::TcpListener::bind(env.proxy()).unwrap();
    env.start_daemon();
    let health = || {
        let resp = client()
            .get(format!("{}/health", env.api()))
            .bearer_auth(env.token())
            .send()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().unwrap(),
        )
    };
    wait_for(
        Duration::from_secs(20),
        "health to report the bind failure",
        || {
            let (code, body) = health();
            code == 503
                && body["checks"]["service:web"] == "unhealthy"
                && body["problems"]["service:web"]
                    .as_str()
                    .is_some_and(|p| p.contains("cannot listen on"))
        },
    );
    let text = env.ferry_ok(&["status", "web"]);
    assert!(
        text.contains(&format!("NOT SERVING: cannot listen on {}", env.proxy())),
        "{text}"
    );
    drop(holder);
    wait_for(
        Duration::from_secs(10),
        "the proxy to bind once the port is free",
        || get_proxy(env.port, "/").is_some_and(|(s, _)| s == 200),
    );
    let (code, body) = health();
    assert_eq!(code, 200, "{body}");
}

/// F8: input that was accepted and then misbehaved.
#[test]
fn f8_bad_names_values_probe_paths_intervals_programs_and_addresses_are_refused() {
    let env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    for set in ["A B=1", "é=1", "1X=1"] {
        let out = env.ferry_code(&["deploy", "web", "--version", "v1", "--set", set], 2);
        assert!(
            out.contains("not a valid environment variable name"),
            "{out}"
        );
    }
    let mut req = deploy_request(&env, "v1");
    req["overrides"] = serde_json::json!({"X": "a\u{0}b"});
    let (status, body) = post(&env, "/v1/services/web/deploys", &req);
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("NUL"));

    let path = env.dir.path().join("ferry.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let cases = [
        (
            good.replace(
                "http = \"/health\"",
                "http = \"/health\\r\\nX-Injected: 1\"",
            ),
            "services.web.readiness.http",
        ),
        (
            good.replace("interval = \"100ms\"", "interval = \"1ns\""),
            "use at least \"100ms\"",
        ),
        (
            good.replace(FERRY, "/nonexistent/ferry-test-program"),
            "is not an executable file",
        ),
        (
            good.replace(FERRY, "no-such-program-for-ferry"),
            "is not on PATH",
        ),
        (
            format!(
                "{good}\n[services.other]\ncommand = [\"{FERRY}\", \"demo-app\"]\nlisten = \"0.0.0.0:{}\"\n",
                env.port
            ),
            "overlaps",
        ),
    ];
    for (text, expect) in &cases {
        std::fs::write(&path, text).unwrap();
        let out = env.ferry_code(&["check"], 2);
        assert!(
            out.contains(expect) && out.contains("ferry.toml:"),
            "expected `{expect}`:\n{out}"
        );
    }
    std::fs::write(&path, &good).unwrap();
    env.ferry_ok(&["check"]);

    // The daemon refuses a second service whose address overlaps.
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let mut other = deploy_request(&env, "v1");
    other["spec"]["listen"] = serde_json::json!(format!("0.0.0.0:{}", env.port));
    let (status, body) = post(&env, "/v1/services/other/deploys", &other);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("used by service `web`"),
        "{body}"
    );

    // Errors from the HTTP layer come in the API's JSON shape.
    let big = "x".repeat(2 << 20);
    let resp = client()
        .post(format!("{}/v1/services/web/deploys", env.api()))
        .bearer_auth(env.token())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let resp = client()
        .get(format!("{}/v1/rollouts/abc", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}

/// F9: a deploy message with terminal escapes reached the terminal raw.
#[test]
fn f9_terminal_escapes_in_user_text_are_shown_not_obeyed() {
    let env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    let hostile = "fix \u{1b}[2J\u{1b}]0;pwned\u{7} \u{202e}done";
    env.ferry_ok(&["deploy", "web", "--version", "v1", "-m", hostile]);
    for args in [
        &["history", "web"][..],
        &["audit"][..],
        &["rollout", "1"][..],
    ] {
        let out = env.ferry_ok(args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'),
            "{args:?} printed a control character: {out:?}"
        );
    }
    let history = env.ferry_ok(&["history", "web"]);
    assert!(
        history.contains("fix \\x1b[2J\\x1b]0;pwned\\x07 \\u{202e}done"),
        "{history}"
    );
}

/// F10: an existing data dir kept loose permissions, and the store and
/// logs were created world-readable.
#[test]
fn f10_the_data_dir_is_private_whatever_the_umask() {
    let mut env = Env::prepare(Spec {
        instances: 1,
        ..Spec::default()
    });
    let data = env.data_dir();
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(data.join("logs")).unwrap();
    std::fs::set_permissions(data.join("logs"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(data.join("logs/old.log"), "x").unwrap();
    std::fs::set_permissions(
        data.join("logs/old.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let log = std::fs::File::create(env.dir.path().join("daemon.log")).unwrap();
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "umask 000; exec \"$0\" serve --api-addr 127.0.0.1:0",
            FERRY,
        ])
        .env("FERRY_DATA_DIR", &data)
        .current_dir(env.dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    env.daemon = Some(child);
    wait_for(Duration::from_secs(20), "the daemon to start", || {
        data.join("api.json").exists()
    });
    env.ferry_ok(&["deploy", "web", "--version", "v1", "--set", "DB_PASSWORD=x"]);
    assert!(
        env.daemon_log()
            .contains("was mode 0755, open to other users; made it 0700"),
        "{}",
        env.daemon_log()
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("logs")), 0o700);
    for name in [
        "ferry.db",
        "ferry.db-wal",
        "ferry.db-shm",
        "token",
        "secret.key",
        "api.json",
        "daemon.lock",
        "logs/old.log",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    let logs: Vec<_> = std::fs::read_dir(data.join("logs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(logs.len() >= 2, "an instance log exists");
    for entry in logs {
        assert_eq!(mode(&entry.path()), 0o600, "{:?}", entry.path());
    }
}

/// F2: idle and slow-header API connections were never closed, so enough of
/// them took every file descriptor of the daemon.
#[test]
fn f2_api_connections_are_limited_and_idle_or_slow_ones_closed() {
    let mut env = Env::prepare(Spec {
        instances: 1,
        ..Spec::default()
    });
    env.start_daemon_with(
        &["--api-header-timeout", "2s", "--api-max-connections", "40"],
        &[],
    );
    env.ferry_ok(&["deploy", "web", "--version", "v1"]);
    let pid = env.daemon.as_ref().unwrap().id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let addr: std::net::SocketAddr = env.api().trim_start_matches("http://").parse().unwrap();
    let mut idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    assert!(
        during <= before + 40 + 10,
        "the daemon holds {during} descriptors with 151 clients connected (was {before}; limit 40)"
    );
    // The proxy is not affected.
    assert_eq!(get_proxy(env.port, "/").unwrap().0, 200);
    // A slow header trickle is cut off at the header timeout.
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = loop {
        let _ = slow.write_all(b"X");
        match slow.read(&mut buf) {
            Ok(_) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(closed, "a slow header stayed open for 10 s");
    // Idle connections are closed at the header timeout, in turns of 40.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let all_closed = Instant::now();
    for s in &mut idle {
        let mut b = [0u8; 1];
        let n = s.read(&mut b);
        assert!(matches!(n, Ok(0) | Err(_)), "an idle connection got data");
    }
    assert!(
        all_closed.elapsed() < Duration::from_secs(20),
        "150 idle connections took {:?} to be closed",
        all_closed.elapsed()
    );
    drop(idle);
    env.ferry_ok(&["status"]);
}

/// F3: unauthenticated requests with a 60 KB name grew the store by 57 MB.
#[test]
fn f3_unauthenticated_floods_are_throttled_and_audited_in_bounded_size() {
    let env = Env::start(Spec {
        instances: 1,
        ..Spec::default()
    });
    let db = env.data_dir().join("ferry.db");
    let size = || {
        ["", "-wal"]
            .iter()
            .map(|s| {
                std::fs::metadata(format!("{}{s}", db.display()))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let before = size();
    let name = "n".repeat(60_000);
    let c = client();
    let mut codes = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..500 {
        let resp = c
            .post(format!("{}/v1/services/{name}/abort", env.api()))
            .send()
            .unwrap();
        *codes.entry(resp.status().as_u16()).or_default() += 1;
    }
    assert_eq!(
        codes.get(&401).copied().unwrap_or(0) + codes.get(&429).copied().unwrap_or(0),
        500,
        "{codes:?}"
    );
    assert!(codes.get(&429).copied().unwrap_or(0) >= 480, "{codes:?}");
    let grown = size().saturating_sub(before);
    assert!(grown < 512 * 1024, "the store grew by {grown} bytes");
    let resp = c
        .get(format!("{}/v1/audit?limit=10000", env.api()))
        .bearer_auth(env.token())
        .send()
        .unwrap();
    let text = resp.text().unwrap();
    assert!(text.len() < 64 * 1024, "audit is {} bytes", text.len());
    let audit: serde_json::Value = serde_json::from_str(&text).unwrap();
    let denied: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"].as_str().unwrap().starts_with("denied"))
        .collect();
    assert!((1..=11).contains(&denied.len()), "{}", denied.len());
    assert!(
        denied[0]["target"].as_str().unwrap().len() < 200,
        "{}",
        denied[0]
    );
    // Authenticated clients are not throttled by it.
    env.ferry_ok(&["status"]);
}

/// Secrets at rest: sealed in the store, opened for instances, refused
/// without the key, and kept across a key rotation.
#[test]
fn secrets_are_sealed_at_rest_and_survive_a_key_rotation() {
    let mut env = Env::start(Spec {
        instances: 1,
        env_extra: ", DB_PASSWORD = \"hunter2-in-config\"".into(),
        ..Spec::default()
    });
    env.ferry_ok(&[
        "deploy",
        "web",
        "--version",
        "v1",
        "--set",
        "API_TOKEN=tok-from-cli-4242",
    ]);
    let environ_of_instance = |env: &Env| {
        let pid = env.json(&["status", "web"])["instances"][0]["pid"]
            .as_i64()
            .unwrap();
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_owned()
    };
    let environ = environ_of_instance(&env);
    assert!(
        environ.contains("DB_PASSWORD=hunter2-in-config")
            && environ.contains("API_TOKEN=tok-from-cli-4242"),
        "the instance gets its secrets"
    );
    let data = env.data_dir();
    let in_clear = |data: &Path| -> Vec<String> {
        let mut found = Vec::new();
        for name in ["ferry.db", "ferry.db-wal", "ferry.db-shm"] {
            let bytes = std::fs::read(data.join(name)).unwrap_or_default();
            for secret in ["hunter2-in-config", "tok-from-cli-4242"] {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    found.push(format!("{secret} in {name}"));
                }
            }
        }
        found
    };
    assert_eq!(in_clear(&data), Vec::<String>::new());
    env.stop();
    assert_eq!(in_clear(&data), Vec::<String>::new());

    // Without its key the store is refused, not misread.
    let key = std::fs::read_to_string(data.join("secret.key")).unwrap();
    std::fs::remove_file(data.join("secret.key")).unwrap();
    let out = std::process::Command::new(FERRY)
        .args(["serve", "--api-addr", "127.0.0.1:0"])
        .env("FERRY_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secret.key is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !data.join("secret.key").exists(),
        "no key replaces the lost one"
    );
    // A wrong key is refused too.
    std::fs::write(data.join("secret.key"), "00".repeat(32)).unwrap();
    let out = std::process::Command::new(FERRY)
        .args(["serve", "--api-addr", "127.0.0.1:0"])
        .env("FERRY_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sealed with another key"));
    std::fs::write(data.join("secret.key"), &key).unwrap();

    // Rotation: a new key, every secret sealed again, the old one useless.
    let out = env.ferry_ok(&["rotate-key"]);
    assert!(out.contains("sealed the secrets of 1 revisions"), "{out}");
    let new_key = std::fs::read_to_string(data.join("secret.key")).unwrap();
    assert_ne!(new_key.trim(), key.trim());
    assert_eq!(mode(&data.join("secret.key")), 0o600);
    env.start_daemon();
    let out = env.ferry_code(&["rotate-key"], 2);
    assert!(out.contains("another ferry daemon"), "{out}");
    env.ferry_ok(&["deploy", "web", "--version", "v2"]);
    env.ferry_ok(&["rollback", "web"]);
    let environ = environ_of_instance(&env);
    assert!(
        environ.contains("FERRY_REVISION=1")
            && environ.contains("DB_PASSWORD=hunter2-in-config")
            && environ.contains("API_TOKEN=tok-from-cli-4242"),
        "revision 1's secrets open with the new key"
    );
}

/// A key given in the environment is used and no key file is written.
#[test]
fn a_secret_key_from_the_environment_keeps_no_key_file() {
    let mut env = Env::prepare(Spec {
        instances: 1,
        ..Spec::default()
    });
    let key = "ab".repeat(32);
    env.start_daemon_with(&[], &[("FERRY_SECRET_KEY", &key)]);
    env.ferry_ok(&["deploy", "web", "--version", "v1", "--set", "X_TOKEN=t"]);
    assert!(!env.data_dir().join("secret.key").exists());
    env.stop();
    let out = std::process::Command::new(FERRY)
        .args(["serve", "--api-addr", "127.0.0.1:0"])
        .env("FERRY_DATA_DIR", env.data_dir())
        .env("FERRY_SECRET_KEY", "cd".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a wrong key is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_SECRET_KEY"));
}
