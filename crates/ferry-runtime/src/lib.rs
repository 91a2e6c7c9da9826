//! Local processes for Ferry's local instance driver
//! (`ferry_server::driver::local`): spawn in an own process group with
//! output appended to a capped log file, signal the group, find processes
//! Ferry started (after a daemon crash) by a marker in their environment,
//! and run hooks to completion.
// One `unsafe` block, in `new_session`: starting a process in a session of
// its own needs setsid(2) between fork and exec, which std and tokio offer
// only through the unsafe `pre_exec`. Nothing else may use unsafe.
#![deny(unsafe_code)]

pub use nix::sys::signal::Signal;
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The environment variable that marks a process as Ferry's.
pub const MARKER_VAR: &str = "FERRY_INSTANCE";

/// Variables passed down from the daemon's own environment; everything else
/// an instance sees comes from its revision, so a revision re-runs the same.
const INHERITED: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"];

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start `{program}` in {workdir}: {source}")]
    Spawn {
        program: String,
        workdir: String,
        source: std::io::Error,
    },
    #[error("the command is empty")]
    Empty,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub log_path: PathBuf,
    /// Value of [`MARKER_VAR`], `<daemon id>/<instance id>`.
    pub marker: String,
}

/// Start a process in a session and process group of its own (pgid = pid),
/// stdout and stderr appended to the log file (so it keeps logging if the
/// daemon dies).
pub fn spawn(spec: &SpawnSpec) -> Result<Child, RuntimeError> {
    let program = spec.argv.first().ok_or(RuntimeError::Empty)?;
    let log = open_log(&spec.log_path)?;
    let log2 = log.try_clone().map_err(|source| RuntimeError::Log {
        path: spec.log_path.display().to_string(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.workdir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(false);
    new_session(&mut cmd);
    for name in INHERITED {
        if let Ok(v) = std::env::var(name) {
            cmd.env(name, v);
        }
    }
    cmd.envs(&spec.env);
    cmd.env(MARKER_VAR, &spec.marker);
    cmd.spawn().map_err(|source| RuntimeError::Spawn {
        program: program.clone(),
        workdir: spec.workdir.display().to_string(),
        source,
    })
}

/// Start a helper process of the daemon itself (the data plane) in a
/// session of its own, so that it outlives the daemon and a terminal's
/// signals: stdin closed, stdout and stderr shared with the daemon, the
/// daemon's environment plus `env`.
pub fn spawn_detached(
    program: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .envs(env.iter().copied())
        .kill_on_drop(false);
    new_session(&mut cmd);
    cmd.spawn()
}

/// The value of the environment variable `name` of a live process.
pub fn env_of(pid: i32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Collect the exit status of a child that is not a tokio `Child` (one a
/// previous image of this process started, before it re-executed itself),
/// so it does not stay a zombie. Does nothing for other processes.
pub fn reap(pid: i32) {
    if pid <= 1 {
        return;
    }
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// Logs hold whatever programs print (tokens included, at times): created
/// 0600 in a 0700 directory, whatever the umask.
/// Start the child in a session of its own, as a daemon's service is: it
/// leads a new process group (pgid = sid = pid), has no controlling
/// terminal (a closed terminal sends it no SIGHUP), and the scheduler gives
/// it its own share of CPU instead of the daemon's (autogroups).
#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes one, setsid(2), and
    // allocates nothing (the error converts from a raw errno).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
}

fn open_log(path: &Path) -> Result<File, RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| RuntimeError::Log {
            path: path.display().to_string(),
            source,
        })
}

/// Send `signal` to the whole process group led by `pid`.
///
/// Pids of 1 and below are refused: `killpg(0)` would signal Ferry's own
/// group, and a negative or zero pid never names a service.
pub fn signal_group(pid: i32, signal: Signal) -> bool {
    if pid <= 1 {
        return false;
    }
    killpg(Pid::from_raw(pid), signal).is_ok()
}

/// Is `pid` a live (not zombie) process?
pub fn is_alive(pid: i32) -> bool {
    if pid <= 1 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Is there a process group led by `pgid` with any live (not zombie)
/// member? Zombies count as gone: after a daemon crash, instances are
/// reparented to a PID 1 that may never reap them.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 || killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    if is_alive(pgid) {
        return true;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Fields after the command: state, ppid, pgrp.
        let mut rest = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let state = rest.next().unwrap_or("Z");
        let pgrp = rest.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

/// The marker of a live process, if it carries one.
pub fn marker_of(pid: i32) -> Option<String> {
    env_of(pid, MARKER_VAR)
}

/// A live process that carries a marker, and the process group it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub pid: i32,
    pub pgid: i32,
    pub marker: String,
}

impl Marked {
    /// Is this the process Ferry spawned? Ferry starts each instance and
    /// hook as the leader of a new group, and its children (a `sh -c`
    /// command's programs) inherit both the group and the marker.
    pub fn is_leader(&self) -> bool {
        self.pid == self.pgid
    }
}

/// The process group of a live process.
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command: state, ppid, pgrp.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat`,
/// field 22). A pid and its start time name one process: a reused pid
/// has a later start.
pub fn start_ticks(pid: i32) -> Option<u64> {
    if pid <= 1 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name; starttime is the 20th of them.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Is `pid` the live (not zombie) leader of its process group, started at
/// `started` ([`start_ticks`])? How an instance whose program rewrote its
/// environment, marker included, is recognised.
pub fn is_same_process(pid: i32, started: u64) -> bool {
    is_alive(pid) && pgid_of(pid) == Some(pid) && start_ticks(pid) == Some(started)
}

/// Every live process whose marker starts with `prefix`, with its group.
/// Used after a restart to adopt instances (by their group leader) and to
/// stop orphans (by group, so a shell's children go too).
pub fn find_marked(prefix: &str) -> Vec<Marked> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(marker) = marker_of(pid)
            && marker.starts_with(prefix)
            && is_alive(pid)
            && let Some(pgid) = pgid_of(pid)
        {
            found.push(Marked { pid, pgid, marker });
        }
    }
    found
}

/// Stop a process group: SIGTERM, wait up to `grace`, then SIGKILL.
/// `child` is reaped when Ferry started the process itself.
pub async fn stop_group(pid: i32, child: Option<&mut Child>, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let mut child = child;
    loop {
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        if !group_alive(pid) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            signal_group(pid, Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(c) = child.as_deref_mut() {
                let _ = c.wait().await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(c) = child {
        let _ = c.try_wait();
    }
}

/// The last `lines` lines of a log file (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Keep a log under `max` bytes: when it grows past, its content moves to
/// `<log>.1` (replacing the older one) and the log starts empty. The
/// process appends, so it simply continues at the new end.
pub fn rotate_if_needed(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if len <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// How a hook run ended.
#[derive(Debug, Clone)]
pub struct HookRun {
    pub ok: bool,
    pub summary: String,
    pub output: String,
}

/// Run a command to completion (its group is killed at `timeout`), output
/// captured to `spec.log_path`.
pub async fn run_to_completion(spec: &SpawnSpec, timeout: Duration) -> HookRun {
    let mut child = match spawn(spec) {
        Ok(c) => c,
        Err(e) => {
            return HookRun {
                ok: false,
                summary: e.to_string(),
                output: String::new(),
            };
        }
    };
    let pid = child.id().map(|p| p as i32);
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let (ok, summary) = match status {
        Ok(Ok(s)) if s.success() => (true, "exit status 0".to_string()),
        Ok(Ok(s)) => (false, describe_exit(s)),
        Ok(Err(e)) => (false, format!("could not wait for it: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                stop_group(pid, Some(&mut child), Duration::from_secs(2)).await;
            }
            (
                false,
                format!("timed out after {}", humantime_secs(timeout)),
            )
        }
    };
    HookRun {
        ok,
        summary,
        output: log_tail(&spec.log_path, 40),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// "exit status 3" or "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
        format!("killed by signal {sig} ({name})")
    } else {
        "ended".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, argv: &[&str], marker: &str) -> SpawnSpec {
        SpawnSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            workdir: dir.to_path_buf(),
            log_path: dir.join("logs/x.log"),
            marker: marker.into(),
        }
    }

    #[tokio::test]
    async fn spawn_marks_logs_and_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("test-{}/i1", std::process::id());
        // A shell with a child of its own: stopping must reach both.
        let s = spec(
            dir.path(),
            &["sh", "-c", "echo started $GREETING; sleep 30 & wait"],
            &marker,
        );
        let mut child = spawn(&s).unwrap();
        let pid = child.id().unwrap() as i32;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(is_alive(pid));
        let found = find_marked(&format!("test-{}/", std::process::id()));
        // The shell leads the group; its child carries the marker too, in
        // the same group, and is not the leader.
        let leaders: Vec<&Marked> = found.iter().filter(|m| m.is_leader()).collect();
        assert!(
            leaders.len() == 1 && leaders[0].pid == pid && leaders[0].marker == marker,
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| !m.is_leader() && m.pgid == pid && m.marker == marker),
            "the shell's child is found in the shell's group: {found:?}"
        );
        // Its own session, like a daemon's service: session id = pid.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let sid: i32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sid, pid, "the instance leads a session of its own");
        assert!(log_tail(&s.log_path, 5).contains("started hi"));
        stop_group(pid, Some(&mut child), Duration::from_secs(5)).await;
        assert!(!group_alive(pid), "no member of the group survives");
    }

    #[tokio::test]
    async fn hooks_report_exit_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let ok = run_to_completion(
            &spec(dir.path(), &["sh", "-c", "echo migrated"], "t/h1"),
            Duration::from_secs(10),
        )
        .await;
        assert!(ok.ok && ok.output.contains("migrated"), "{ok:?}");
        let bad = run_to_completion(
            &spec(dir.path(), &["sh", "-c", "echo boom >&2; exit 4"], "t/h2"),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            !bad.ok && bad.summary == "exit status 4" && bad.output.contains("boom"),
            "{bad:?}"
        );
        let slow = run_to_completion(
            &spec(dir.path(), &["sleep", "30"], "t/h3"),
            Duration::from_millis(200),
        )
        .await;
        assert!(!slow.ok && slow.summary.contains("timed out"), "{slow:?}");
        let missing = run_to_completion(
            &spec(dir.path(), &["/nonexistent/bin"], "t/h4"),
            Duration::from_secs(1),
        )
        .await;
        assert!(
            !missing.ok && missing.summary.contains("cannot start"),
            "{missing:?}"
        );
    }

    #[test]
    fn logs_rotate_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert!(rotate_if_needed(&p, 4096).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("a.log.1")).unwrap().len(),
            5000
        );
        assert!(!rotate_if_needed(&p, 4096).unwrap());
    }
}
