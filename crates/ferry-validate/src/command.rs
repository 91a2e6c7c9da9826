//! `command`: any program; exit 0 PASSED, 1 FAILED, 2 WARNING, 77 SKIPPED.
//!
//! The program runs in a process group of its own, which is killed when
//! the check ends: when the program exits (so nothing it left running
//! holds the output pipes or outlives the check), and when the check is
//! cut by its timeout. The end of its output is kept.
use crate::tcp::os_error_text;
use crate::{Context, Finding};
use ferry_core::validation::CheckSpec;
use rustix::process::{Pid, Signal, kill_process_group};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of the combined output is kept (its end), in bytes.
const KEEP: usize = 4096;
/// How long output is still read once the program has exited.
const DRAIN: Duration = Duration::from_secs(1);

pub(crate) async fn run(check: &CheckSpec, ctx: &Context) -> Finding {
    let Some(spec) = &check.command else {
        return Finding::fail(None, "a command check needs `command`");
    };
    let argv = spec.argv(|s| ctx.expand(s));
    let Some((program, args)) = argv.split_first().filter(|(p, _)| !p.trim().is_empty()) else {
        return Finding::fail(None, "command is empty");
    };
    let workdir = match &check.workdir {
        Some(w) => ctx.base_dir.join(w),
        None => ctx.base_dir.clone(),
    };
    if !workdir.is_dir() {
        return Finding::fail(
            None,
            format!("workdir {} is not a directory", workdir.display()),
        );
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(&workdir)
        .envs(check.env.iter().map(|(k, v)| (k, ctx.expand(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Finding::fail(
                None,
                format!("cannot run `{program}`: {}", os_error_text(&e)),
            );
        }
    };
    // The group's ID is the program's PID (process_group(0)).
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .map(GroupKill);
    let mut tail = Tail::default();
    let status = {
        let pump = pump(child.stdout.take(), child.stderr.take(), &mut tail);
        tokio::pin!(pump);
        let mut drained = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                () = &mut pump, if !drained => drained = true,
            }
        };
        drop(group);
        if !drained {
            let _ = tokio::time::timeout(DRAIN, &mut pump).await;
        }
        status
    };
    let output = tail.text();
    let last = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect::<String>());
    let said = |what: &str| match &last {
        Some(line) => format!("{what}: {line}"),
        None => what.to_string(),
    };
    let mut finding = match status {
        Err(e) => Finding::fail(
            None,
            format!("waiting for `{program}` failed: {}", os_error_text(&e)),
        ),
        Ok(status) => match (status.code(), status.signal()) {
            (Some(0), _) => Finding::pass(Some("exit 0".into()), "exit 0"),
            (Some(1), _) => Finding::fail(Some("exit 1".into()), said("exit 1")),
            (Some(2), _) => Finding::warn(Some("exit 2".into()), said("exit 2")),
            (Some(77), _) => Finding {
                value: Some("exit 77".into()),
                ..Finding::skip(said("exit 77"))
            },
            (Some(code), _) => {
                Finding::fail(Some(format!("exit {code}")), said(&format!("exit {code}")))
            }
            (None, Some(sig)) => Finding::fail(
                Some(format!("signal {sig}")),
                said(&format!("killed by signal {sig}{}", signal_name(sig))),
            ),
            (None, None) => Finding::fail(None, said(&format!("`{program}` ended: {status}"))),
        },
    };
    finding.output = (!output.is_empty()).then_some(output);
    finding
}

/// Kills a process group when dropped.
struct GroupKill(Pid);

impl Drop for GroupKill {
    fn drop(&mut self) {
        // ESRCH (the group is gone already) is the usual answer.
        let _ = kill_process_group(self.0, Signal::KILL);
    }
}

/// Read both pipes until each is closed, into `tail`.
async fn pump(
    mut stdout: Option<tokio::process::ChildStdout>,
    mut stderr: Option<tokio::process::ChildStderr>,
    tail: &mut Tail,
) {
    let (mut out_buf, mut err_buf) = ([0u8; 4096], [0u8; 4096]);
    loop {
        tokio::select! {
            n = read(&mut stdout, &mut out_buf), if stdout.is_some() => match n {
                Some(n) => tail.push(&out_buf[..n]),
                None => stdout = None,
            },
            n = read(&mut stderr, &mut err_buf), if stderr.is_some() => match n {
                Some(n) => tail.push(&err_buf[..n]),
                None => stderr = None,
            },
            else => break,
        }
    }
}

/// Some bytes, or None at the end (or on an error).
async fn read<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => p.read(buf).await.ok().filter(|n| *n > 0),
        None => None,
    }
}

/// The last [`KEEP`] bytes of output, in at most twice that memory.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * KEEP {
            self.bytes.drain(..self.bytes.len() - KEEP);
            self.cut = true;
        }
    }

    /// As text; `…` first when the beginning was dropped.
    fn text(mut self) -> String {
        if self.bytes.len() > KEEP {
            self.bytes.drain(..self.bytes.len() - KEEP);
            self.cut = true;
        }
        if !self.cut {
            return String::from_utf8_lossy(&self.bytes).into_owned();
        }
        // Start at a character boundary.
        let start = self
            .bytes
            .iter()
            .position(|b| b & 0xc0 != 0x80)
            .unwrap_or(self.bytes.len());
        format!("…{}", String::from_utf8_lossy(&self.bytes[start..]))
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::spec::CommandSpec;
    use ferry_core::validation::{CheckKind, Status};
    use std::path::Path;
    use std::time::Instant;

    fn ctx(dir: &Path) -> Context {
        Context::for_tests(dir)
    }

    fn shell(script: &str) -> CheckSpec {
        let mut c = CheckSpec::new("cmd", CheckKind::Command);
        c.command = Some(CommandSpec::Shell(script.to_string()));
        c
    }

    async fn run_in_tmp(check: &CheckSpec) -> Finding {
        let dir = tempfile::tempdir().unwrap();
        run(check, &ctx(dir.path())).await
    }

    #[tokio::test]
    async fn exit_codes_give_statuses() {
        let f = run_in_tmp(&shell("echo fine")).await;
        assert_eq!(
            (f.status, f.reason.as_str(), f.value.as_deref()),
            (Status::Passed, "exit 0", Some("exit 0"))
        );
        assert_eq!(f.output.as_deref(), Some("fine\n"));

        let f = run_in_tmp(&shell(
            "echo first; echo 'replica lag 40s'; printf '\\n  \\n'; exit 1",
        ))
        .await;
        assert_eq!(
            (f.status, f.reason.as_str()),
            (Status::Failed, "exit 1: replica lag 40s")
        );

        let f = run_in_tmp(&shell("echo 'disk filling' >&2; exit 2")).await;
        assert_eq!(
            (f.status, f.reason.as_str()),
            (Status::Warning, "exit 2: disk filling")
        );
        assert_eq!(f.output.as_deref(), Some("disk filling\n"));

        let f = run_in_tmp(&shell("echo 'no staging here'; exit 77")).await;
        assert_eq!(
            (f.status, f.reason.as_str()),
            (Status::Skipped, "exit 77: no staging here")
        );

        let f = run_in_tmp(&shell("exit 3")).await;
        assert_eq!(
            (f.status, f.reason.as_str(), f.output),
            (Status::Failed, "exit 3", None)
        );

        let f = run_in_tmp(&shell("kill -TERM $$")).await;
        assert_eq!(
            (f.status, f.reason.as_str()),
            (Status::Failed, "killed by signal 15 (SIGTERM)")
        );
    }

    #[tokio::test]
    async fn both_streams_are_captured() {
        let f = run_in_tmp(&shell("echo to-out; echo to-err >&2; exit 1")).await;
        let out = f.output.unwrap();
        assert!(
            out.contains("to-out\n") && out.contains("to-err\n"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn only_the_end_of_long_output_is_kept() {
        let f = run_in_tmp(&shell(
            "head -c 100000 /dev/zero | tr '\\0' x; echo; echo the end; exit 1",
        ))
        .await;
        let out = f.output.unwrap();
        assert!(
            out.starts_with("…x") && out.ends_with("x\nthe end\n"),
            "{out:?}"
        );
        assert!(out.len() <= KEEP + "…".len(), "{}", out.len());
        assert_eq!(f.reason, "exit 1: the end");
    }

    #[tokio::test]
    async fn argv_env_and_workdir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut ctx = ctx(dir.path());
        ctx.env.insert("WHO".into(), "there".into());
        let mut c = CheckSpec::new("cmd", CheckKind::Command);
        // The argv is not run by a shell: `;` is an argument.
        c.command = Some(CommandSpec::Argv(vec![
            "sh".into(),
            "-c".into(),
            "echo \"$GREETING\" \"$1\" \"$(basename \"$PWD\")\"; exit 2".into(),
            "arg0".into(),
            "a;b ${WHO}".into(),
        ]));
        c.env.insert("GREETING".into(), "hello ${WHO}".into());
        c.workdir = Some("sub".into());
        let f = run(&c, &ctx).await;
        assert_eq!(
            (f.status, f.reason.as_str()),
            (Status::Warning, "exit 2: hello there a;b there sub")
        );

        c.workdir = Some("missing".into());
        let f = run(&c, &ctx).await;
        assert_eq!(f.status, Status::Failed);
        assert!(
            f.reason.starts_with("workdir ") && f.reason.ends_with("missing is not a directory"),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn a_missing_program_fails() {
        let mut c = CheckSpec::new("cmd", CheckKind::Command);
        c.command = Some(CommandSpec::Argv(vec![
            "/no/such/program".into(),
            "x".into(),
        ]));
        let f = run_in_tmp(&c).await;
        assert_eq!(f.status, Status::Failed);
        assert_eq!(
            f.reason,
            "cannot run `/no/such/program`: No such file or directory"
        );
    }

    /// Whether a process has ended (gone, or a zombie nobody reaped), within 5 s.
    async fn ended(pid: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            if stat.is_empty() || state == Some(Some('Z')) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn what_the_program_leaves_running_is_killed_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        // The background sleep holds stdout open: without the group kill
        // the check would wait for it.
        let f = run(
            &shell("sleep 30 & echo $! > bg; echo started"),
            &ctx(dir.path()),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            (f.status, f.output.as_deref()),
            (Status::Passed, Some("started\n"))
        );
        let pid = std::fs::read_to_string(dir.path().join("bg")).unwrap();
        assert!(ended(pid.trim()).await, "sleep {pid} still runs");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let c = shell("echo $$ > pids; sleep 30 & echo $! >> pids; sleep 30");
        let cut = tokio::time::timeout(Duration::from_secs(2), run(&c, &ctx(dir.path()))).await;
        assert!(cut.is_err(), "{cut:?}");
        let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
        let pids: Vec<&str> = pids.lines().collect();
        assert_eq!(pids.len(), 2, "{pids:?}");
        for pid in pids {
            assert!(ended(pid).await, "process {pid} still runs");
        }
    }
}
