//! Running under systemd: sd_notify readiness, reload and stop as systemd
//! would receive them, journal-formatted logs, and `ferry install-service`.

use super::harness::*;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The next notification systemd would get, as text.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_notifies_ready_reloading_and_stopping_and_logs_for_the_journal() {
    let mut env = Env::prepare(Spec {
        instances: 1,
        ..Spec::default()
    });
    let path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // systemd connects stderr to the journal and names that stream in
    // JOURNAL_STREAM; the harness's stderr is daemon.log.
    let log = env.dir.path().join("daemon.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    env.start_daemon_with(
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("JOURNAL_STREAM", &stream),
        ],
    );
    let ready = next(&socket);
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving; API on http://127.0.0.1:"),
        "{ready}"
    );

    // `systemctl reload` runs `ferry upgrade`: RELOADING=1, then the
    // re-executed control plane (same pid) says READY=1 again.
    let pid = env.daemon.as_ref().unwrap().id();
    env.ferry_ok(&["upgrade"]);
    let reloading = next(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let monotonic: u64 = reloading
        .rsplit_once('=')
        .unwrap()
        .1
        .trim()
        .parse()
        .unwrap();
    assert!(monotonic > 0);
    assert!(next(&socket).starts_with("READY=1\n"));
    let status = env.ferry_ok(&["status"]);
    assert!(
        status.contains(&format!("control plane pid {pid} ")),
        "the same process, re-executed: {status}"
    );

    env.stop();
    assert_eq!(next(&socket), "STOPPING=1");

    let text = env.daemon_log();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "every line carries a journal priority: {line:?}"
        );
        assert!(
            !line.contains('\x1b'),
            "no colours for the journal: {line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("INFO")),
        "{text}"
    );
}

#[test]
fn install_service_writes_a_unit_and_refuses_to_clobber_one() {
    let env = Env::prepare(Spec::default());
    let unit = env.dir.path().join("ferry.service");
    let unit_arg = unit.to_str().unwrap();
    let install = [
        "install-service",
        "--unit-file",
        unit_arg,
        "--api-addr",
        "127.0.0.1:7171",
        "--env-file",
        "/etc/ferry.env",
    ];
    let out = env.ferry_ok(&install);
    assert!(out.contains("systemctl daemon-reload"), "{out}");
    let text = std::fs::read_to_string(&unit).unwrap();
    let dir = std::fs::canonicalize(env.dir.path()).unwrap();
    let data = std::path::absolute(env.data_dir()).unwrap();
    let serve = format!(
        "ExecStart={FERRY} serve --data-dir {} --api-addr 127.0.0.1:7171",
        data.display()
    );
    for want in [
        serve.as_str(),
        &format!("ExecReload={FERRY} upgrade --data-dir {}", data.display()),
        &format!("WorkingDirectory={}", dir.display()),
        "Type=notify",
        "KillMode=process",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/ferry.env",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "{want:?} missing in:\n{text}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&unit).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);

    // The same unit again: nothing to do. A different one: refused, exit 2.
    env.ferry_ok(&install);
    let out = env.ferry_code(&["install-service", "--unit-file", unit_arg], 2);
    assert!(out.contains("--force"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        text,
        "left as it was"
    );
    env.ferry_ok(&["install-service", "--unit-file", unit_arg, "--force"]);
    assert!(!std::fs::read_to_string(&unit).unwrap().contains("7171"));

    let out = env.ferry_code(
        &[
            "install-service",
            "--unit-file",
            &format!("{}/ferry.unit", dir.display()),
        ],
        2,
    );
    assert!(out.contains(".service"), "{out}");
    let out = env.ferry_code(
        &[
            "install-service",
            "--unit-file",
            unit_arg,
            "-c",
            "nope.toml",
        ],
        2,
    );
    assert!(
        out.contains("nope.toml") && out.contains("ferry init"),
        "{out}"
    );
    let out = env.ferry_code(
        &[
            "install-service",
            "--unit-file",
            unit_arg,
            "--force",
            "--user=no/slash",
        ],
        2,
    );
    assert!(out.contains("user"), "{out}");
}
