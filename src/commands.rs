//! The client commands: each reads its input, validates it up front, calls
//! the API and prints for people (text) or machines (`--output json`).

/// `println!` that ends the process quietly when stdout is closed (e.g.
/// `ferry history web | head`), instead of panicking. Every line goes
/// through [`crate::term::printable`]: what the commands print includes
/// text users and programs wrote (messages, reasons, probe details).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        if writeln!(std::io::stdout(), "{}", crate::term::printable(&line)).is_err() {
            std::process::exit(0);
        }
    }};
}

use crate::client::{CliError, CliResult, Client};
use ferry_api::{
    AuditEntry, DeployRequest, HistoryEntry, RollbackRequest, RolloutAccepted, RolloutView,
    ServiceStatus, StoredEvent, StoredMeasurement, rfc3339,
};
use ferry_core::config::{self, Config};
use ferry_core::revision::check_version;
use ferry_core::spec::{Strategy, valid_env_name};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Read and validate a config file; exit 2 with every problem on failure.
pub fn load_config(path: &Path) -> CliResult<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read {}: {e}. Create one with `ferry init`, or pass --config FILE",
            path.display()
        ))
    })?;
    config::parse(path, &text).map_err(|errors| {
        let n = errors.len();
        let list: Vec<String> = errors.iter().map(|e| format!("error: {e}")).collect();
        CliError::usage(format!(
            "{}\n{} has {n} problem{}; nothing was changed",
            list.join("\n"),
            path.display(),
            if n == 1 { "" } else { "s" }
        ))
    })
}

pub fn init(path: &Path, force: bool) -> CliResult<()> {
    if path.exists() && !force {
        return Err(CliError::usage(format!(
            "{} already exists; keep it, or overwrite it with `ferry init --force`",
            path.display()
        )));
    }
    std::fs::write(path, config::EXAMPLE)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    say!(
        "wrote {}: an example service `web`. Check it with `ferry check`.",
        path.display()
    );
    Ok(())
}

/// `ferry install-service`: write the systemd unit for this binary, data
/// dir and config.
#[allow(clippy::too_many_arguments)]
pub fn install_service(
    data_dir: &Path,
    config: &Path,
    user: Option<String>,
    unit_file: &Path,
    force: bool,
    api_addr: Option<std::net::SocketAddr>,
    env_file: Option<&Path>,
) -> CliResult<()> {
    use ferry::systemd::{InstallError, UnitOptions};
    let config = std::fs::canonicalize(config).map_err(|e| {
        CliError::usage(format!(
            "{}: {e}; the unit runs `ferry serve` where ferry.toml is: run this there, pass --config PATH, or write one with `ferry init`",
            config.display()
        ))
    })?;
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
    };
    let options = UnitOptions {
        binary: std::env::current_exe()
            .map_err(|e| CliError::failed(format!("cannot find this program's path: {e}")))?,
        data_dir: absolute(data_dir)?,
        config_dir: config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
        user,
        api_addr: api_addr.map(|a| a.to_string()),
        environment_file: env_file.map(absolute).transpose()?,
    };
    let message = ferry::systemd::install(&options, unit_file, force).map_err(|e| match e {
        InstallError::BadOption { .. }
        | InstallError::Exists { .. }
        | InstallError::NotAServiceName { .. } => CliError::usage(e.to_string()),
        _ => CliError::failed(e.to_string()),
    })?;
    say!("{message}");
    Ok(())
}

/// `ferry check FILE.yml…`: Prometheus rule files, checked as `promtool
/// check rules` does (its output; exit 2 on an error, as for any config).
pub fn check_rules(files: &[PathBuf], output: Output) -> CliResult<()> {
    let report = ferry_alert::rulefmt::check(files, false);
    if output == Output::Json {
        say!(
            "{}",
            serde_json::json!({"ok": report.exit_code == 0, "stdout": report.stdout, "stderr": report.stderr})
        );
    } else {
        for line in report.stdout.lines() {
            say!("{line}");
        }
        if report.exit_code == 0 && !report.stderr.is_empty() {
            eprint!("{}", report.stderr);
        }
    }
    if report.exit_code != 0 {
        return Err(CliError::usage(report.stderr.trim_end().to_string()));
    }
    Ok(())
}

/// The `[alerting]` of a config file, read and checked (rule files,
/// routing, receivers): what `ferry serve --config` would run.
pub fn load_alerting(
    path: &Path,
    cfg: &Config,
) -> CliResult<(
    ferry_server::alerting::Source,
    ferry_server::alerting::load::Loaded,
)> {
    let source = ferry_server::alerting::Source {
        config_file: Some(path.canonicalize().unwrap_or_else(|_| path.to_path_buf())),
        config: cfg.alerting.clone(),
    };
    match source.load() {
        Ok(loaded) => Ok((source, loaded)),
        Err(errors) => {
            let n = errors.len();
            let list: Vec<String> = errors.iter().map(|e| format!("error: {e}")).collect();
            Err(CliError::usage(format!(
                "{}
[alerting] in {} has {n} problem{}; nothing was changed",
                list.join("\n"),
                path.display(),
                if n == 1 { "" } else { "s" }
            )))
        }
    }
}

/// `ferry check`: the file parses, validates (its `[alerting]` too), and
/// each `listen` is free (or already served by this daemon for the same
/// service).
pub async fn check(path: &Path, client: Option<Client>, output: Output) -> CliResult<()> {
    let cfg = load_config(path)?;
    let (_, alerting) = load_alerting(path, &cfg)?;
    let ours: BTreeMap<String, String> = match &client {
        Some(c) => c
            .get::<Vec<ServiceStatus>>("/v1/services")
            .await
            .map(|list| {
                list.into_iter()
                    .filter_map(|s| Some((s.name, s.listen?)))
                    .collect()
            })
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let mut problems = Vec::new();
    for (name, spec) in &cfg.services {
        let addr = spec.listen_addr().expect("validated");
        if ours.get(name).is_some_and(|l| l.parse().ok() == Some(addr)) {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let p = ferry_core::spec::Problem {
                path: vec!["services".into(), name.clone(), "listen".into()],
                message: format!(
                    "{addr} is already in use ({e}); stop what listens there or choose another address"
                ),
            };
            problems.push(format!("error: {}", config::positioned(path, &text, &p)));
        }
    }
    let base_dir = path
        .canonicalize()
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (name, spec) in &cfg.services {
        for p in missing_programs(name, spec, &base_dir) {
            problems.push(format!("error: {}", config::positioned(path, &text, &p)));
        }
    }
    for p in missing_check_files(&cfg.validation, &base_dir) {
        problems.push(format!("error: {}", config::positioned(path, &text, &p)));
    }
    if !problems.is_empty() {
        return Err(CliError::usage(format!(
            "{}\nnothing was changed",
            problems.join("\n")
        )));
    }
    match output {
        Output::Json => say!(
            "{}",
            serde_json::json!({
                "ok": true,
                "file": path,
                "services": cfg.services.keys().collect::<Vec<_>>(),
                "rule_groups": alerting.groups.len(),
                "rules": alerting.groups.iter().map(|g| g.spec.rules.len()).sum::<usize>(),
                "warnings": alerting.warnings,
            })
        ),
        Output::Text => {
            for w in &alerting.warnings {
                eprintln!("warning: {w}");
            }
            let names: Vec<&String> = cfg.services.keys().collect();
            let rules: usize = alerting.groups.iter().map(|g| g.spec.rules.len()).sum();
            let services = if names.is_empty() {
                "no services".to_string()
            } else {
                format!(
                    "{} service{}: {}",
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            say!(
                "{}: OK ({services}; {rules} alerting and recording rules, routing from {})",
                path.display(),
                alerting.am_source
            );
        }
    }
    Ok(())
}

/// Why `program` cannot be run from `dir` (an executable file for a path,
/// a name on PATH otherwise), if it cannot.
fn program_problem(program: &str, dir: &Path, who: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(&dir.join(program))
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| executable(&d.join(program)))
        })
    };
    if found {
        return None;
    }
    let wherein = if program.contains('/') {
        format!(
            "is not an executable file (relative paths start from {})",
            dir.display()
        )
    } else {
        format!("is not on PATH ({who} see the daemon's PATH)")
    };
    Some(format!("`{program}` {wherein}; install it or fix the path"))
}

/// Programs of a service's `command` and `pre_deploy` that do not exist
/// (names that depend on `{version}` are checked at deploy).
fn missing_programs(
    name: &str,
    spec: &ferry_core::spec::ServiceSpec,
    base_dir: &Path,
) -> Vec<ferry_core::spec::Problem> {
    let workdir = spec.workdir.as_deref().map(|w| base_dir.join(w));
    let mut problems = Vec::new();
    let commands = [
        ("command", Some(&spec.command)),
        ("pre_deploy", spec.pre_deploy.as_ref()),
    ];
    for (key, command) in commands {
        let Some(argv) = command.map(|c| c.argv(|a| a.to_string())) else {
            continue;
        };
        let Some(program) = argv.first().filter(|p| !p.contains('{')) else {
            continue;
        };
        let dir = workdir.as_deref().unwrap_or(base_dir);
        if program.contains('/') && dir.to_string_lossy().contains('{') && !program.starts_with('/')
        {
            continue;
        }
        if let Some(message) = program_problem(program, dir, "instances") {
            problems.push(ferry_core::spec::Problem {
                path: vec!["services".into(), name.into(), key.into()],
                message,
            });
        }
    }
    problems
}

/// Validation checks that cannot run here: a `command` check's program
/// that does not exist, a `ca_file` that cannot be read.
fn missing_check_files(
    validation: &ferry_core::validation::ValidationConfig,
    base_dir: &Path,
) -> Vec<ferry_core::spec::Problem> {
    let mut problems = Vec::new();
    for (suite, spec) in &validation.suites {
        for (i, check) in spec.checks.iter().enumerate() {
            let at = |key: &str| -> Vec<String> {
                vec![
                    "validation".into(),
                    "suites".into(),
                    suite.clone(),
                    "checks".into(),
                    i.to_string(),
                    key.into(),
                ]
            };
            if let Some(ferry_core::spec::CommandSpec::Argv(argv)) = &check.command
                && let Some(program) = argv.first().filter(|p| !p.contains("${"))
            {
                let dir = check
                    .workdir
                    .as_deref()
                    .map_or_else(|| base_dir.to_path_buf(), |w| base_dir.join(w));
                if let Some(message) = program_problem(program, &dir, "checks") {
                    problems.push(ferry_core::spec::Problem {
                        path: at("command"),
                        message,
                    });
                }
            }
            if let Some(ca) = &check.ca_file
                && let Err(e) = std::fs::metadata(base_dir.join(ca))
            {
                problems.push(ferry_core::spec::Problem {
                    path: at("ca_file"),
                    message: format!(
                        "cannot read {} ({e}); relative paths start from {}",
                        base_dir.join(ca).display(),
                        base_dir.display()
                    ),
                });
            }
        }
    }
    problems
}

/// `-m` is `--message`. Operations scripts write `-m 600` for "monitor 600
/// s" (seed 001); a message that is only a number or a duration is refused
/// rather than taken as a message while nothing is monitored.
fn check_message(m: &str) -> CliResult<()> {
    let t = m.trim();
    let numeric = !t.is_empty() && t.parse::<f64>().is_ok();
    if numeric || ferry_core::duration::parse(t).is_ok() {
        let d = if numeric {
            format!("{t}s")
        } else {
            t.to_string()
        };
        return Err(CliError::usage(format!(
            "-m/--message \"{t}\" is only a number or a duration; -m is the release message, not the monitoring window. To watch the release after it reaches 100 %, use --monitor {d}; for a message, write words (e.g. -m \"release {t}\")"
        )));
    }
    Ok(())
}

pub struct DeployArgs {
    pub service: String,
    pub version: String,
    pub strategy: Option<String>,
    pub set: Vec<String>,
    pub message: Option<String>,
    pub dry_run: bool,
    pub auto_approve: bool,
    pub detach: bool,
    /// Return once the release serves all traffic, before its monitoring
    /// window ends.
    pub until_serving: bool,
    pub monitor: Option<String>,
    /// Go ahead over a spent error budget, saying why.
    pub override_budget: bool,
    pub reason: Option<String>,
    /// `--commit-time` as written.
    pub commit_time: Option<String>,
    pub config: PathBuf,
}

/// Everything about a deploy that can be checked without the daemon.
pub fn build_deploy(args: &DeployArgs) -> CliResult<DeployRequest> {
    let cfg = load_config(&args.config)?;
    let Some(spec) = cfg.services.get(&args.service) else {
        let known: Vec<&str> = cfg.services.keys().map(|s| s.as_str()).collect();
        return Err(CliError::usage(format!(
            "{} declares no service `{}`; it declares: {}",
            args.config.display(),
            args.service,
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    check_version(&args.version).map_err(CliError::usage)?;
    if let Some(m) = &args.message {
        check_message(m)?;
    }
    let strategy = match &args.strategy {
        None => None,
        Some(s) => Some(Strategy::parse(s).ok_or_else(|| {
            CliError::usage(format!(
                "--strategy `{s}` is not a strategy; use rolling, blue-green or canary"
            ))
        })?),
    };
    let mut overrides = BTreeMap::new();
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CliError::usage(format!(
                "--set `{kv}` needs the form KEY=VALUE"
            )));
        };
        if !valid_env_name(k) {
            return Err(CliError::usage(format!(
                "--set: `{k}` is not a valid environment variable name; use ASCII letters, digits and `_`, not starting with a digit"
            )));
        }
        overrides.insert(k.to_string(), v.to_string());
    }
    let monitor = match &args.monitor {
        None => None,
        Some(m) => Some(
            ferry_core::duration::parse(m)
                .map_err(|e| CliError::usage(format!("--monitor: {e}")))?,
        ),
    };
    let file = args
        .config
        .canonicalize()
        .map_err(|e| CliError::usage(format!("{}: {e}", args.config.display())))?;
    let base_dir = file
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let commit_time = commit_time(args.commit_time.as_deref(), &args.version, &base_dir)?;
    Ok(DeployRequest {
        spec: spec.clone(),
        version: args.version.clone(),
        overrides,
        message: args.message.clone(),
        strategy,
        auto_approve: args.auto_approve,
        dry_run: args.dry_run,
        monitor,
        base_dir,
        config_file: file.display().to_string(),
        validation: ferry_core::validation::ValidationConfig {
            concurrency: cfg.validation.concurrency,
            suites: spec
                .deploy
                .validate
                .all()
                .into_iter()
                .filter_map(|n| Some((n.clone(), cfg.validation.suites.get(&n)?.clone())))
                .collect(),
        },
        override_budget: args.override_budget,
        override_reason: args.reason.clone(),
        commit_time,
    })
}

/// The change's commit time, ms: `--commit-time` (RFC 3339 or seconds
/// since 1970), else git's committer time when the version names a commit
/// of the repository holding the config file, else none.
fn commit_time(given: Option<&str>, version: &str, dir: &str) -> CliResult<Option<u64>> {
    if let Some(t) = given.map(str::trim).filter(|t| !t.is_empty()) {
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(Some(secs * 1000));
        }
        return humantime::parse_rfc3339_weak(t)
            .ok()
            .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Some(d.as_millis() as u64))
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--commit-time {t:?} is not a time; write RFC 3339 (2026-12-06T10:00:00Z) or seconds since 1970"
                ))
            });
    }
    let looks_like_commit =
        (7..=40).contains(&version.len()) && version.chars().all(|c| c.is_ascii_hexdigit());
    if !looks_like_commit {
        return Ok(None);
    }
    let out = std::process::Command::new("git")
        .args([
            "-C",
            dir,
            "show",
            "-s",
            "--format=%ct",
            &format!("{version}^{{commit}}"),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    Ok(out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|s| s * 1000))
}

/// Catch Ctrl-C from before the request is sent, so an interrupt never
/// kills the client halfway; the rollout itself lives in the daemon.
fn interrupt() -> CliResult<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::failed(format!("cannot watch for Ctrl-C: {e}")))
}

pub async fn deploy(client: &Client, args: &DeployArgs, output: Output) -> CliResult<()> {
    let req = build_deploy(args)?;
    let sigint = interrupt()?;
    let accepted: RolloutAccepted = client
        .post(&format!("/v1/services/{}/deploys", args.service), &req)
        .await?;
    if args.dry_run {
        match output {
            Output::Json => say!("{}", serde_json::to_string(&accepted).unwrap_or_default()),
            Output::Text => {
                say!("{}", accepted.message);
                for line in &accepted.plan {
                    say!("  - {line}");
                }
                say!("(dry run: nothing was changed)");
            }
        }
        return Ok(());
    }
    let id = accepted.rollout.unwrap_or_default();
    if args.detach || output == Output::Json {
        report_start(&accepted, output);
    }
    if args.detach {
        if output == Output::Text {
            say!("detached; follow it with `ferry status {}`", args.service);
        }
        return Ok(());
    }
    watch(client, id, output, sigint, args.until_serving).await
}

fn report_start(accepted: &RolloutAccepted, output: Output) {
    match output {
        Output::Json => say!(
            "{}",
            serde_json::json!({"type": "accepted", "rollout": accepted.rollout, "revision": accepted.revision, "message": accepted.message})
        ),
        Output::Text => say!("{}", accepted.message),
    }
}

/// Follow a rollout until it ends, its monitoring window included (or,
/// with `until_serving`, until it serves all traffic). Ctrl-C stops
/// watching, not the rollout.
pub async fn watch(
    client: &Client,
    id: u64,
    output: Output,
    mut sigint: tokio::signal::unix::Signal,
    until_serving: bool,
) -> CliResult<()> {
    let mut announced_monitoring = false;
    let tty = output == Output::Text && std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let pb = indicatif::ProgressBar::new(1);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} available  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let mut after = 0;
    loop {
        // The rollout first, then its events: every event of a rollout seen
        // as done is already stored when the events are read.
        let view: RolloutView = client.get(&format!("/v1/rollouts/{id}")).await?;
        let events: Vec<StoredEvent> = client
            .get(&format!("/v1/rollouts/{id}/events?after={after}"))
            .await?;
        for e in &events {
            after = after.max(e.seq);
            match output {
                Output::Json => say!(
                    "{}",
                    serde_json::json!({"type": "event", "rollout": id, "seq": e.seq, "at": rfc3339(e.at), "kind": e.kind, "message": e.message})
                ),
                Output::Text => {
                    let line = format!(
                        "  {} {}",
                        rfc3339(e.at).get(11..19).unwrap_or(""),
                        e.message
                    );
                    match &bar {
                        Some(pb) => pb.println(crate::term::printable(&line)),
                        None => say!("{line}"),
                    }
                }
            }
        }
        if let Some(pb) = &bar {
            pb.set_length(view.rollout.params.instances as u64);
            pb.set_position(view.available as u64);
            pb.set_message(format!("{:?}", view.rollout.phase).to_lowercase());
        }
        if view.rollout.phase == ferry_core::rollout::Phase::Monitoring
            && events.is_empty()
            && !announced_monitoring
        {
            announced_monitoring = true;
            let r = &view.rollout;
            let window = ferry_core::duration::Dur::millis(r.params.monitor_ms);
            if until_serving {
                if let Some(pb) = &bar {
                    pb.finish_and_clear();
                }
                match output {
                    Output::Json => say!(
                        "{}",
                        serde_json::json!({"type": "result", "rollout": r.id, "revision": r.to, "version": view.to_version, "outcome": "monitoring", "reason": format!("serving all traffic; watched for {window}")})
                    ),
                    Output::Text => say!(
                        "rollout {}: revision {} ({}) of {} serves all traffic; watched for {window} (a failure rolls back by itself; `ferry status {}`)",
                        r.id,
                        r.to,
                        view.to_version,
                        r.service,
                        r.service
                    ),
                }
                return Ok(());
            }
            if output == Output::Text {
                let line = format!(
                    "  serving all traffic; watching it for {window} before it counts as done (Ctrl-C stops watching; the window goes on)"
                );
                match &bar {
                    Some(pb) => pb.println(crate::term::printable(&line)),
                    None => say!("{line}"),
                }
            }
        }
        if view.rollout.is_done() && events.is_empty() {
            if let Some(pb) = &bar {
                pb.finish_and_clear();
            }
            return finish(&view, output);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = sigint.recv() => {
                if let Some(pb) = &bar {
                    pb.finish_and_clear();
                }
                return Err(CliError {
                    code: crate::client::EXIT_INTERRUPTED,
                    message: format!(
                        "stopped watching; rollout {id} goes on in the daemon. Follow it with `ferry status {}`",
                        view.rollout.service
                    ),
                });
            }
        }
    }
}

fn finish(view: &RolloutView, output: Output) -> CliResult<()> {
    let r = &view.rollout;
    let outcome = r.outcome.map(|o| o.as_str()).unwrap_or("unknown");
    let reason = r.reason.clone().unwrap_or_default();
    if output == Output::Json {
        say!(
            "{}",
            serde_json::json!({"type": "result", "rollout": r.id, "revision": r.to, "version": view.to_version, "outcome": outcome, "reason": reason})
        );
    } else if outcome == "succeeded" {
        say!(
            "rollout {} succeeded: revision {} ({}) of {} is serving",
            r.id,
            r.to,
            view.to_version,
            r.service
        );
    }
    if outcome == "succeeded" {
        return Ok(());
    }
    // `ferry rollback` during a rollout aborts it: that abort is the
    // rollback succeeding.
    let rolled_back = r.outcome == Some(ferry_core::rollout::Outcome::Aborted) && r.rolled_back;
    if rolled_back {
        if output == Output::Text {
            say!(
                "rolled back: rollout {} stopped; revision {} of {} serves all traffic",
                r.id,
                r.from.map_or("(none)".to_string(), |f| f.to_string()),
                r.service
            );
        }
        return Ok(());
    }
    let mut message = format!("rollout {} {outcome}: {reason}", r.id);
    if let Some(hook) = &r.hook
        && !hook.ok
        && !hook.output.is_empty()
    {
        message.push_str(&format!("\npre_deploy output:\n{}", hook.output));
    }
    if let Some(from) = r.from {
        message.push_str(&format!("\ntraffic stays on revision {from}"));
    }
    Err(CliError::failed(message))
}

pub async fn rollback(
    client: &Client,
    service: &str,
    to: Option<u64>,
    detach: bool,
    output: Output,
) -> CliResult<()> {
    let sigint = interrupt()?;
    let accepted: RolloutAccepted = client
        .post(
            &format!("/v1/services/{service}/rollback"),
            &RollbackRequest { to_revision: to },
        )
        .await?;
    report_start(&accepted, output);
    match accepted.rollout {
        Some(id) if !detach => watch(client, id, output, sigint, false).await,
        _ => Ok(()),
    }
}

pub async fn gate(client: &Client, service: &str, action: &str, output: Output) -> CliResult<()> {
    gate_with(client, service, action, &serde_json::json!({}), output).await
}

pub async fn gate_with(
    client: &Client,
    service: &str,
    action: &str,
    body: &serde_json::Value,
    output: Output,
) -> CliResult<()> {
    let accepted: RolloutAccepted = client
        .post(&format!("/v1/services/{service}/{action}"), body)
        .await?;
    match output {
        Output::Json => say!("{}", serde_json::to_string(&accepted).unwrap_or_default()),
        Output::Text => say!("{}", accepted.message),
    }
    Ok(())
}

pub async fn status(
    client: CliResult<Client>,
    data_dir: &Path,
    service: Option<&str>,
    output: Output,
) -> CliResult<()> {
    let away = |e: CliError| match dataplane_alone(data_dir) {
        Some(text) => CliError {
            code: e.code,
            message: format!("{}\n{text}", e.message),
        },
        None => e,
    };
    let client = client.map_err(away)?;
    let list: Vec<ServiceStatus> = match service {
        Some(s) => vec![
            client
                .get(&format!("/v1/services/{s}"))
                .await
                .map_err(away)?,
        ],
        None => client.get("/v1/services").await.map_err(away)?,
    };
    if output == Output::Json {
        let v = if service.is_some() {
            serde_json::to_value(&list[0])
        } else {
            serde_json::to_value(&list)
        };
        say!("{}", v.unwrap_or_default());
        return Ok(());
    }
    if let Ok(h) = client.get::<ferry_api::Health>("/health").await {
        say!("{}", daemon_line(&h));
    }
    if list.is_empty() {
        say!("no services deployed yet; try `ferry deploy web --version v1`");
    }
    // Alerts pending and firing, shown under the service they are about
    // (its `service` or `job` label); the rest on one line at the end.
    let alerts: Vec<serde_json::Value> = client
        .get::<serde_json::Value>("/v1/alerts")
        .await
        .ok()
        .and_then(|v| v["alerts"].as_array().cloned())
        .unwrap_or_default();
    let about = |a: &serde_json::Value, name: &str| {
        a["labels"]["service"].as_str() == Some(name) || a["labels"]["job"].as_str() == Some(name)
    };
    for s in &list {
        let serving = s
            .instances
            .iter()
            .filter(|i| {
                i.state == ferry_api::InstanceState::Serving && s.traffic.contains(&i.revision)
            })
            .count();
        say!(
            "{}  listen {}  revision {} ({})  serving {serving}  traffic → {}",
            s.name,
            s.listen.as_deref().unwrap_or("-"),
            s.stable.map_or("-".into(), |n| n.to_string()),
            s.version.as_deref().unwrap_or("-"),
            s.traffic
                .iter()
                .map(|t| format!("rev {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(why) = &s.proxy_error {
            say!("  NOT SERVING: {why}");
        }
        for a in alerts.iter().filter(|a| about(a, &s.name)) {
            let mut notes = Vec::new();
            if a["ack"].is_object() {
                notes.push("acknowledged");
            }
            if a["silenced_by"].as_array().is_some_and(|v| !v.is_empty()) {
                notes.push("silenced");
            }
            if a["inhibited_by"].as_array().is_some_and(|v| !v.is_empty()) {
                notes.push("inhibited");
            }
            say!(
                "  ALERT {} {} ({}){}  id {}",
                a["name"].as_str().unwrap_or(""),
                a["state"].as_str().unwrap_or(""),
                a["labels"]["severity"].as_str().unwrap_or("-"),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join(", "))
                },
                a["id"].as_str().unwrap_or("")
            );
        }
        if let Some(r) = &s.rollout {
            say!(
                "  rollout {}: {} to revision {} ({}), {:?}, {}/{} available",
                r.rollout.id,
                r.rollout.strategy.as_str(),
                r.rollout.to,
                r.to_version,
                r.rollout.phase,
                r.available,
                r.rollout.params.instances
            );
            if r.rollout.strategy == ferry_core::spec::Strategy::Canary {
                say!(
                    "  canary: step {}/{}, {} % of traffic; analysis: {} measurements, {} failed",
                    (r.rollout.canary.step + 1).min(r.rollout.params.steps.len()),
                    r.rollout.params.steps.len(),
                    r.rollout.canary.weight,
                    r.rollout.analysis.measurements,
                    r.rollout.analysis.failures
                );
            }
            if let Some(p) = &r.rollout.paused {
                say!("  PAUSED: {p}");
            }
            if let Some(stage) = r.rollout.validating {
                say!(
                    "  VALIDATING: {stage} suites {} are running",
                    r.rollout.params.validate.suites(stage).join(", ")
                );
            }
            for g in &r.rollout.validations {
                say!("  {} validation: {}", g.stage, g.summary());
            }
        }
        say!(
            "  {:<22} {:>4} {:<10} {:>6} {:>8} {:>8}  LAST PROBE",
            "INSTANCE",
            "REV",
            "STATE",
            "PORT",
            "PID",
            "RESTARTS"
        );
        for i in &s.instances {
            say!(
                "  {:<22} {:>4} {:<10} {:>6} {:>8} {:>8}  {}",
                i.id,
                i.revision,
                i.state.as_str(),
                i.port,
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.restarts,
                i.last_exit
                    .as_deref()
                    .filter(|_| i.state != ferry_api::InstanceState::Serving)
                    .or(i.last_probe.as_deref())
                    .unwrap_or("-")
            );
        }
    }
    if service.is_none() {
        let other: Vec<&serde_json::Value> = alerts
            .iter()
            .filter(|a| !list.iter().any(|s| about(a, &s.name)))
            .collect();
        if !other.is_empty() {
            let firing = other.iter().filter(|a| a["state"] == "firing").count();
            say!(
                "alerts: {firing} firing, {} pending, not about a service (`ferry alerts` lists them)",
                other.len() - firing
            );
        }
    }
    Ok(())
}

pub async fn history(client: &Client, service: &str, output: Output) -> CliResult<()> {
    let entries: Vec<HistoryEntry> = client
        .get(&format!("/v1/services/{service}/history"))
        .await?;
    if output == Output::Json {
        say!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return Ok(());
    }
    say!(
        "{:>7} {:<8} {:>4} {:<12} {:<10} {:<10} {:<20} DETAIL",
        "ROLLOUT",
        "KIND",
        "REV",
        "VERSION",
        "RAN AS",
        "OUTCOME",
        "STARTED"
    );
    for e in &entries {
        let outcome = e.outcome.clone().unwrap_or_else(|| "running".into());
        let detail = match (&e.message, &e.reason) {
            (Some(m), Some(r)) if outcome != "succeeded" => format!("{m} — {}", first_line(r)),
            (Some(m), _) => m.clone(),
            (None, Some(r)) if outcome != "succeeded" => first_line(r),
            _ => String::new(),
        };
        say!(
            "{:>7} {:<8} {:>4} {:<12} {:<10} {:<10} {:<20} {detail}",
            e.rollout,
            format!("{:?}", e.kind).to_lowercase(),
            e.revision,
            e.version,
            if e.ran_as.is_empty() {
                e.strategy.as_str()
            } else {
                &e.ran_as
            },
            outcome,
            e.started_at.get(..19).unwrap_or(&e.started_at),
        );
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

pub async fn audit(client: &Client, limit: u32, output: Output) -> CliResult<()> {
    let entries: Vec<AuditEntry> = client.get(&format!("/v1/audit?limit={limit}")).await?;
    if output == Output::Json {
        say!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return Ok(());
    }
    say!(
        "{:<24} {:<34} {:<18} {:<10} OUTCOME",
        "AT",
        "ACTOR",
        "ACTION",
        "TARGET"
    );
    for e in &entries {
        say!(
            "{:<24} {:<34} {:<18} {:<10} {}",
            rfc3339(e.at),
            e.actor,
            e.action,
            e.target,
            e.outcome
        );
    }
    Ok(())
}

/// `ferry rollout ID`: the record, its events and its measurements.
pub async fn rollout(client: &Client, id: u64, output: Output) -> CliResult<()> {
    let view: RolloutView = client.get(&format!("/v1/rollouts/{id}")).await?;
    let events: Vec<StoredEvent> = client.get(&format!("/v1/rollouts/{id}/events")).await?;
    let measurements: Vec<StoredMeasurement> = client
        .get(&format!("/v1/rollouts/{id}/measurements"))
        .await?;
    if output == Output::Json {
        say!(
            "{}",
            serde_json::json!({"rollout": view, "events": events, "measurements": measurements})
        );
        return Ok(());
    }
    let r = &view.rollout;
    say!(
        "rollout {}: {} {} of `{}`, revision {} ({}){}",
        r.id,
        format!("{:?}", r.kind).to_lowercase(),
        r.strategy.as_str(),
        r.service,
        r.to,
        view.to_version,
        r.from
            .map(|f| format!(" replacing revision {f}"))
            .unwrap_or_default()
    );
    say!(
        "  phase {:?}, outcome {}",
        r.phase,
        r.outcome.map_or("(in progress)", |o| o.as_str())
    );
    if let Some(reason) = &r.reason {
        say!("  reason: {}", reason.replace('\n', "\n    "));
    }
    if let Some(p) = &r.paused {
        say!("  PAUSED: {p}");
    }
    if let Some(b) = &r.blast_radius {
        say!(
            "  blast radius: {} requests served by the canary, {} failed",
            b.requests,
            b.failed
        );
    }
    let span = |a: u64, b: u64| {
        humantime::format_duration(Duration::from_millis(b.saturating_sub(a))).to_string()
    };
    if let Some(full) = r.full_at {
        say!("  time to 100 %: {}", span(r.started_at, full));
    }
    if let (Some(failed), Some(end)) = (r.failed_at, r.finished_at) {
        say!(
            "  rollback time: {} from the decision to traffic back on revision {}",
            span(failed, end),
            r.from
                .map_or_else(|| "(none)".to_string(), |f| f.to_string())
        );
    }
    if let Some(i) = &r.impact {
        let pct = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2} %"));
        let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1} ms"));
        match (i.failed_requests, i.requests) {
            (Some(0), Some(n)) => say!("  failed requests: 0 of {n} (zero downtime)"),
            (Some(f), Some(n)) => say!("  failed requests: {f} of {n} answered 5xx while it ran"),
            _ => {}
        }
        say!(
            "  impact (the hour before → while it ran): error rate {} → {}, p95 {} → {}, p99 {} → {}",
            pct(i.error_rate_before),
            pct(i.error_rate_during),
            ms(i.p95_before_ms),
            ms(i.p95_during_ms),
            ms(i.p99_before_ms),
            ms(i.p99_during_ms)
        );
    }
    if let Some(stage) = r.validating {
        say!("  VALIDATING: the {stage} gate's suites are running");
    }
    for g in &r.validations {
        say!(
            "  {} validation ({}){}: {}",
            g.stage,
            g.suites.join(", "),
            g.revision
                .map(|n| format!(" against revision {n}"))
                .unwrap_or_default(),
            g.summary()
        );
        for c in &g.results {
            let value = c
                .value
                .as_deref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default();
            say!(
                "    {} {:<7} {}/{} ({}, {}){value}: {}",
                c.status.symbol(),
                c.status.as_str(),
                c.suite,
                c.name,
                c.kind,
                ferry_core::validation::report::fmt_duration(c.duration_ms),
                c.reason
            );
        }
    }
    say!("  events:");
    for e in &events {
        say!("    {} {}", rfc3339(e.at), e.message);
    }
    if !measurements.is_empty() {
        say!("  measurements ({}):", measurements.len());
        for m in &measurements {
            say!(
                "    {} {:<13} {:<40} {}",
                rfc3339(m.at),
                format!("{:?}", m.measurement.verdict).to_lowercase(),
                m.measurement.check,
                m.measurement.detail
            );
        }
    }
    Ok(())
}

/// `ferry upgrade`: hand the data plane over to the new binary, then wait
/// for the control plane to come back from re-executing it.
pub async fn upgrade(
    client: &dyn Fn() -> CliResult<Client>,
    binary: Option<&Path>,
    timeout: Duration,
    output: Output,
) -> CliResult<()> {
    // Checked before anything is asked of the daemon.
    let binary = match binary {
        Some(b) if !b.is_file() => {
            return Err(CliError::usage(format!(
                "--binary {}: no such file; give the path of the ferry binary to run",
                b.display()
            )));
        }
        Some(b) => Some(
            std::path::absolute(b)
                .map_err(|e| CliError::usage(format!("--binary {}: {e}", b.display())))?,
        ),
        None => None,
    };
    let before: ferry_api::Health = client()?.get("/health").await?;
    let body = ferry_api::UpgradeRequest {
        binary: binary.map(|b| b.display().to_string()),
    };
    let accepted: ferry_api::LifecycleAccepted =
        client()?.post("/v1/system/upgrade", &body).await?;
    if output == Output::Text {
        say!("{}", accepted.message);
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(c) = client()
            && let Ok(h) = c.get::<ferry_api::Health>("/health").await
            && h.control_plane.started_at != before.control_plane.started_at
        {
            match output {
                Output::Json => say!("{}", serde_json::to_string(&h).unwrap_or_default()),
                Output::Text => say!(
                    "upgraded: control plane pid {} runs {} (was {}); data plane pid {} runs {}",
                    h.control_plane.pid,
                    h.control_plane.version,
                    before.control_plane.version,
                    h.data_plane
                        .pid
                        .map_or_else(|| "?".to_string(), |p| p.to_string()),
                    h.data_plane.version.as_deref().unwrap_or("?")
                ),
            }
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "the data plane was handed over, but the control plane did not come back within {}; the data plane keeps serving. See the daemon's log, and start `ferry serve` again if it is not running",
                humantime::format_duration(timeout)
            )));
        }
    }
}

/// `ferry shutdown`: stop everything and wait for the daemon to exit.
pub async fn shutdown(
    client: &Client,
    data_dir: &Path,
    timeout: Duration,
    output: Output,
) -> CliResult<()> {
    let health: ferry_api::Health = client.get("/health").await?;
    let pid = health.control_plane.pid;
    let accepted: ferry_api::LifecycleAccepted = client
        .post("/v1/system/shutdown", &serde_json::json!(null))
        .await?;
    if output == Output::Text {
        say!("{}", accepted.message);
    }
    let deadline = std::time::Instant::now() + timeout;
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !is_zombie(pid)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        return Err(CliError::failed(format!(
            "the daemon (pid {pid}) has not exited within {}; see its log",
            humantime::format_duration(timeout)
        )));
    }
    let _ = data_dir;
    if output == Output::Text {
        say!("stopped: the daemon, its data plane and its instances");
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// One line on the daemon's two processes.
fn daemon_line(h: &ferry_api::Health) -> String {
    let dp = &h.data_plane;
    let data_plane = match (dp.mode.as_str(), dp.pid) {
        ("inline", _) => "proxies inline (they stop with the daemon)".to_string(),
        (_, Some(pid)) => format!(
            "data plane pid {pid} ({}, up {}){}",
            dp.version.as_deref().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(dp.uptime_seconds.unwrap_or(0))),
            if dp.attached {
                String::new()
            } else {
                "  NOT ATTACHED".to_string()
            }
        ),
        (_, None) => format!(
            "data plane NOT RUNNING: {}",
            dp.problem.as_deref().unwrap_or("starting")
        ),
    };
    let mut line = format!(
        "daemon: control plane pid {} ({}, up {}); {data_plane}",
        h.control_plane.pid,
        h.control_plane.version,
        humantime::format_duration(Duration::from_secs(h.uptime_seconds)),
    );
    if dp.restarts > 0 {
        line.push_str(&format!("; {} data-plane restarts", dp.restarts));
    }
    if let Some(p) = dp.problem.as_deref().filter(|_| dp.pid.is_some()) {
        line.push_str(&format!(" (last problem: {p})"));
    }
    line
}

/// When no control plane answers: is the data plane still serving?
fn dataplane_alone(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("dataplane.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = v["pid"].as_u64()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let alive = stat
        .rsplit_once(')')
        .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'));
    alive.then(|| {
        format!(
            "the data plane (pid {pid}, {}) is still serving, with the routes it was last given (they go stale until a control plane is back); start `ferry serve` to re-attach",
            v["version"].as_str().unwrap_or("?")
        )
    })
}

/// `ferry query`: an instant query as a table, or a range query with a
/// sparkline per series.
pub async fn query(
    client: &Client,
    expr: &str,
    time: Option<&str>,
    range: Option<Duration>,
    step: Option<Duration>,
    output: Output,
) -> CliResult<()> {
    let end = match time {
        Some(t) => t.to_string(),
        None => format!(
            "{:.3}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        ),
    };
    let data = match range {
        None => {
            client
                .promql(
                    "/api/v1/query",
                    &[("query", expr.to_string()), ("time", end)],
                )
                .await?
        }
        Some(range) => {
            let end_s: f64 = end.parse().map_err(|_| {
                CliError::usage(format!("--time {end}: give Unix seconds with --range"))
            })?;
            let step = step.unwrap_or_else(|| (range / 60).max(Duration::from_secs(1)));
            let params = [
                ("query", expr.to_string()),
                ("start", format!("{:.3}", end_s - range.as_secs_f64())),
                ("end", end),
                ("step", format!("{:.3}", step.as_secs_f64())),
            ];
            client.promql("/api/v1/query_range", &params).await?
        }
    };
    if output == Output::Json {
        say!("{data}");
        return Ok(());
    }
    let series_name = |m: &serde_json::Value| {
        let obj = m.as_object().cloned().unwrap_or_default();
        let name = obj.get("__name__").and_then(|v| v.as_str()).unwrap_or("");
        let rest: Vec<String> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "__name__")
            .map(|(k, v)| format!("{k}={}", v))
            .collect();
        format!("{name}{{{}}}", rest.join(", "))
    };
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => say!("{}", result[1].as_str().unwrap_or("")),
        Some("vector") => {
            let rows = result.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                say!("no data");
            }
            for r in rows {
                say!(
                    "{}  {}",
                    series_name(&r["metric"]),
                    r["value"][1].as_str().unwrap_or("")
                );
            }
        }
        Some("matrix") => {
            let rows = result.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                say!("no data");
            }
            for r in rows {
                let values: Vec<f64> = r["values"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                say!("{}", series_name(&r["metric"]));
                say!("  {}", sparkline(&values));
                let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
                let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
                let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                say!(
                    "  min {min}  max {max}  last {}  ({} points)",
                    values.last().copied().unwrap_or(f64::NAN),
                    values.len()
                );
            }
        }
        other => say!("unexpected result type {other:?}"),
    }
    Ok(())
}

/// Values as block characters, lowest to highest.
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values
        .iter()
        .map(|v| {
            if !v.is_finite() {
                ' '
            } else if max <= min {
                BARS[3]
            } else {
                BARS[(((v - min) / (max - min)) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// `ferry slo [SERVICE]`.
pub async fn slo(client: &Client, service: Option<&str>, output: Output) -> CliResult<()> {
    let path = match service {
        Some(s) => format!("/v1/slo?service={s}"),
        None => "/v1/slo".to_string(),
    };
    let statuses: Vec<ferry_core::slo::SloStatus> = client.get(&path).await?;
    match output {
        Output::Json => {
            for s in &statuses {
                say!("{}", serde_json::to_string(s).unwrap_or_default());
            }
        }
        Output::Text if statuses.is_empty() => say!(
            "no SLOs: declare them per service with [[services.NAME.slo]] (see README, \"SLOs and delivery metrics\")"
        ),
        Output::Text => {
            for line in ferry_core::slo::render_text(&statuses).trim_end().lines() {
                say!("{line}");
            }
        }
    }
    Ok(())
}

/// `ferry metrics delivery [--service NAME] [--since 30d]`.
pub async fn delivery(
    client: &Client,
    service: Option<&str>,
    since: &str,
    output: Output,
) -> CliResult<()> {
    let since =
        ferry_core::duration::parse(since).map_err(|e| CliError::usage(format!("--since: {e}")))?;
    // In milliseconds: "1h 30m" has a space, which a URL cannot carry.
    let mut path = format!("/v1/delivery?since={}ms", since.as_millis());
    if let Some(s) = service {
        path.push_str(&format!("&service={s}"));
    }
    let report: ferry_core::delivery::DeliveryReport = client.get(&path).await?;
    match output {
        Output::Json => say!("{}", serde_json::to_string(&report).unwrap_or_default()),
        Output::Text => {
            for line in ferry_core::delivery::render_text(&report)
                .trim_end()
                .lines()
            {
                say!("{line}");
            }
        }
    }
    Ok(())
}
