//! `ferry`: the command line. Client commands talk to the daemon's API;
//! `ferry serve` is the daemon; `ferry demo` shows the main job end to end.
#![forbid(unsafe_code)]

#[macro_use]
mod commands;
mod alerts;
mod client;
mod demo;
mod term;
mod validate;

use clap::{Parser, Subcommand};
use client::{CliError, CliResult, Client};
use commands::{DeployArgs, Output};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Zero-downtime releases of web services: deploy, watch, roll back",
    long_about = "Ferry runs your services as local processes behind its own proxy and releases new versions \
                  with rolling, blue-green or canary deploys, without dropping a request. A canary is judged \
                  while it runs (error rate, latency, Prometheus queries, a statistical test against the stable \
                  revision) and a bad one is pulled in about a second; a release that does not come up healthy \
                  is rolled back by itself.\n\nStart here: `ferry demo`.",
    after_help = "Exit codes: 0 ok, 1 the operation failed (e.g. a deploy rolled back), 2 usage or config error, \
                  130 stopped watching with Ctrl-C (the rollout goes on in the daemon)."
)]
struct Cli {
    /// The daemon's data dir: state store, logs, API address and admin token.
    #[arg(long, global = true, env = "FERRY_DATA_DIR", default_value = ".ferry")]
    data_dir: PathBuf,
    /// The daemon's API URL (default: read from the data dir).
    #[arg(long, global = true, env = "FERRY_API")]
    api: Option<String>,
    /// The API token (default: read from the data dir).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output for people (text) or machines (json: one JSON object per line).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Log format of the daemon (`serve`, `demo`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum MetricsCmd {
    /// Delivery metrics: DORA's four keys (deployment frequency, lead
    /// time for changes, change failure rate, failed-deployment recovery
    /// time) with the performance band each falls in, and the operations
    /// guide's deployment metrics (success rate, deployment and rollback
    /// time, zero-downtime share, response-time and error-rate impact).
    ///
    /// Lead time needs a commit time at deploy: `ferry deploy
    /// --commit-time`, FERRY_COMMIT_TIME, or a version that is a git
    /// commit. The same figures are gauges on /metrics
    /// (`ferry_delivery_*`, over 30 days).
    Delivery {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// How far back (default 30d).
        #[arg(long, value_name = "DURATION", default_value = "30d")]
        since: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataPlaneArg {
    Process,
    Inline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented example ferry.toml.
    Init {
        /// The config file.
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate ferry.toml (exit 2 with every problem, each with file:line).
    ///
    /// Also the rule files and the routing of its `[alerting]`. With FILEs,
    /// check those Prometheus rule files instead, as `promtool check
    /// rules` does.
    Check {
        /// The config file.
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
        /// Prometheus rule files to check (instead of the config).
        #[arg(value_name = "RULE_FILE")]
        rules: Vec<PathBuf>,
    },
    /// Run validation suites from ferry.toml now, and report what they found.
    ///
    /// Checks run concurrently (`[validation] concurrency`, default 8),
    /// each cut at its timeout. Each ends PASSED, FAILED, WARNING (a
    /// failure of a `severity = "warning"` check, or a near miss) or
    /// SKIPPED (`skip_if`). A path such as `url = "/health"` goes through
    /// the service's proxy; with --revision, to that revision only
    /// (`X-Ferry-Revision`). `query` checks ask the running daemon's
    /// metrics (or the check's `prometheus`). Exit 0 when nothing FAILED,
    /// 1 when something did, 2 for a config or usage error.
    Validate {
        /// The config file.
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
        /// A suite to run (repeat for more; default: every suite).
        #[arg(long = "suite", value_name = "NAME")]
        suites: Vec<String>,
        /// The service whose proxy paths go through, when a check and its
        /// suite name none (default: the file's only service, or the only
        /// one whose `deploy.validate` runs the suite).
        #[arg(long)]
        service: Option<String>,
        /// Send the service's requests to this revision only (a candidate
        /// that takes no regular traffic yet).
        #[arg(long, value_name = "N")]
        revision: Option<u64>,
        /// Also write the report to FILE (in --format; default text).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// The report's format: text, json, junit (JUnit XML for CI),
        /// markdown or html (one self-contained page). Without --report,
        /// the format printed.
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json", "junit", "markdown", "html"])]
        format: Option<String>,
    },
    /// Run the daemon: API, proxies, supervisor, probes.
    ///
    /// The proxies run in a process of their own (the data plane), which
    /// keeps serving while the daemon (the control plane) restarts,
    /// crashes or upgrades. SIGTERM stops the control plane only: the data
    /// plane and the instances keep serving, and the next `ferry serve`
    /// re-attaches to them. Ctrl-C (SIGINT) and `ferry shutdown` stop
    /// everything. SIGHUP and `ferry upgrade` replace both with the binary
    /// now on disk, without dropping a request.
    Serve {
        /// Address of the HTTP API (port 0 picks a free one; the data dir records it).
        #[arg(long, env = "FERRY_API_ADDR", default_value = "127.0.0.1:7070")]
        api_addr: SocketAddr,
        /// Most open API connections; more wait in the kernel's queue.
        #[arg(long, value_name = "N", default_value_t = 512)]
        api_max_connections: usize,
        /// How long the API waits for a request's headers, and keeps an idle
        /// connection open.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_arg)]
        api_header_timeout: std::time::Duration,
        /// How long one API request (body and answer) may take before 408.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
        api_request_timeout: std::time::Duration,
        /// Where the proxies run: `process` (their own process, which
        /// outlives control-plane restarts and upgrades) or `inline`
        /// (inside the daemon; traffic stops while it is down).
        #[arg(long, value_enum, default_value_t = DataPlaneArg::Process)]
        data_plane: DataPlaneArg,
        /// How often the daemon collects metrics (its own, its instances',
        /// the host's, `[metrics] scrape` targets without an interval) into
        /// its metrics store (`<data-dir>/metrics`), for PromQL (`ferry
        /// query`, `/api/v1/query`).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = scrape_interval_arg)]
        scrape_interval: std::time::Duration,
        /// A ferry.toml whose `[metrics]` table (extra scrape targets,
        /// remote_write) and `[alerting]` table (rule files, routing,
        /// receivers, Alertmanagers) the daemon uses; read at start, so a
        /// `[metrics]` change takes a restart (SIGTERM and `ferry serve`
        /// again: traffic goes on) and an `[alerting]` change `ferry alerts
        /// reload`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// How long the metrics store (`<data-dir>/metrics`) keeps samples.
        #[arg(long, value_name = "DURATION", default_value = "15d", value_parser = duration_arg)]
        metrics_retention: std::time::Duration,
        /// Most disk the metrics store may use, e.g. `512MB` or `10GB`;
        /// the oldest data goes first (default: no limit but the time).
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        metrics_retention_size: Option<u64>,
        /// Most samples one PromQL query may load into memory; a query
        /// over it fails with an error instead of growing the daemon.
        #[arg(long, value_name = "N", default_value_t = 50_000_000)]
        query_max_samples: usize,
        /// Longest one PromQL query may run.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration_arg)]
        query_timeout: std::time::Duration,
    },
    /// Replace the running daemon (data plane, then control plane) with the
    /// binary now on disk, without dropping a request.
    ///
    /// The new binary must run (`--version`); its data plane starts, takes
    /// over the listening sockets and serves before the old one stops
    /// accepting and finishes its open connections. Then the control plane
    /// re-executes itself (same pid). If anything fails before the
    /// hand-over, the old processes keep serving and this exits 1.
    Upgrade {
        /// The binary to run (default: the one `ferry serve` was started
        /// from, as it is on disk now).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// How long to wait for the control plane to come back.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
        timeout: std::time::Duration,
    },
    /// Stop everything: the proxies stop accepting, requests in flight
    /// finish, instances drain and stop, then the daemon exits.
    Shutdown {
        /// How long to wait for the daemon to exit.
        #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = duration_arg)]
        timeout: std::time::Duration,
    },
    /// Write a systemd unit that runs `ferry serve` (Type=notify, reload =
    /// upgrade, restart on failure).
    ///
    /// The unit runs this binary with the given data dir, in the directory
    /// of ferry.toml. Stopping or restarting the unit stops the control
    /// plane only (KillMode=process): the data plane and the instances keep
    /// serving, and the next start re-attaches to them. `systemctl reload`
    /// runs `ferry upgrade`. Run `ferry shutdown` to stop everything.
    /// Then: `systemctl daemon-reload && systemctl enable --now ferry`.
    InstallService {
        /// Run the daemon as this user (default: root).
        #[arg(long)]
        user: Option<String>,
        /// Where to write the unit.
        #[arg(long, value_name = "PATH", default_value = ferry::systemd::DEFAULT_UNIT_PATH)]
        unit_file: PathBuf,
        /// Replace a unit file that differs from the one Ferry would write.
        #[arg(long)]
        force: bool,
        /// `--api-addr` for `ferry serve` (default: its own, 127.0.0.1:7070).
        #[arg(long)]
        api_addr: Option<SocketAddr>,
        /// An environment file for the daemon (e.g. FERRY_SECRET_KEY=...);
        /// ignored while it does not exist.
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
        /// The config file; the unit runs in its directory.
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
    },
    /// The data-plane process (started by `ferry serve`).
    #[command(hide = true)]
    Dataplane {
        /// The Unix socket the control plane connects to.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Release a new version of a service.
    Deploy {
        /// The service, as named in ferry.toml.
        service: String,
        /// The version label; fills {version} in the command and env.
        #[arg(long)]
        version: String,
        /// Override the spec's strategy: rolling, blue-green or canary.
        #[arg(long)]
        strategy: Option<String>,
        /// Set an environment variable for the new revision (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Why: kept in the revision and shown by `ferry history`. Not the
        /// monitoring window: a message that is only a number or a duration
        /// (`-m 600`) is refused; use --monitor for that.
        #[arg(long, short)]
        message: Option<String>,
        /// Print the plan, made by the rollout machine itself: hook, batches or
        /// steps, holds, gates, skipped pauses, monitoring window, checks with
        /// their limits, timeouts, shortest duration. Change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Skip the blue-green approval gate and the canary's manual pauses.
        #[arg(long)]
        auto_approve: bool,
        /// Return at once instead of following the rollout.
        #[arg(long)]
        detach: bool,
        /// Watch the release this long after it reaches 100 % (e.g. 10m); a
        /// failure in that window rolls back by itself. Overrides the spec.
        /// The command follows the window too, and exits 1 if it rolls back.
        #[arg(long, value_name = "DURATION")]
        monitor: Option<String>,
        /// With a monitoring window: return (exit 0) once the release serves
        /// all traffic, instead of following the window to its end.
        #[arg(long, conflicts_with = "detach")]
        until_serving: bool,
        /// Deploy although an SLO's error budget is spent and the service's
        /// `budget_policy` is "block". Needs --reason; audited.
        #[arg(long, requires = "reason")]
        override_budget: bool,
        /// Why the error budget is overridden (kept in the audit log).
        #[arg(long, value_name = "TEXT", requires = "override_budget")]
        reason: Option<String>,
        /// When the change was committed (RFC 3339, or seconds since
        /// 1970), for the lead time of `ferry metrics delivery`. Default:
        /// git's commit time when the version names a commit of the
        /// config file's repository.
        #[arg(long, value_name = "TIME", env = "FERRY_COMMIT_TIME")]
        commit_time: Option<String>,
        /// The config file.
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
    },
    /// Show each SLO: the SLI now and over its window, the error budget
    /// left (share and time), burn rates, and when the budget runs out.
    ///
    /// SLOs are declared per service (`[[services.NAME.slo]]`) and measured
    /// from the proxy's own counters in the daemon's metrics store. The
    /// budget is (1 - objective) x window: 99.95 % over 30 days allows
    /// 21m 36s of failure.
    Slo {
        /// Only this service's SLOs.
        service: Option<String>,
    },
    /// Show services, their instances and any rollout in progress.
    Status {
        /// One service (default: all).
        service: Option<String>,
    },
    /// List a service's rollouts with outcome and reason.
    History {
        /// The service, as named in ferry.toml.
        service: String,
    },
    /// Go back to the previous (or a given) revision, through the same zero-downtime path.
    Rollback {
        /// The service, as named in ferry.toml.
        service: String,
        /// The revision to go back to (default: the one before the serving one).
        #[arg(long)]
        to_revision: Option<u64>,
        /// Return at once instead of following the rollback.
        #[arg(long)]
        detach: bool,
    },
    /// Let a blue-green rollout waiting at its gate switch traffic.
    Approve {
        /// The service.
        service: String,
    },
    /// Stop the rollout in progress; traffic returns to the previous revision.
    Abort {
        /// The service.
        service: String,
    },
    /// Move a canary past its current step (or a blue-green rollout past its gate).
    Promote {
        /// The service.
        service: String,
        /// Skip every remaining step: straight to 100 %.
        #[arg(long)]
        full: bool,
    },
    /// Hold the rollout in progress where it is (traffic and instances stay).
    Pause {
        /// The service.
        service: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// The service.
        service: String,
    },
    /// Show one rollout: its record, events and every analysis measurement.
    Rollout {
        /// The rollout's number (see `ferry history`).
        id: u64,
    },
    /// Show the audit log: who changed what, when, and how it ended.
    Audit {
        /// How many of the newest entries to show (1 to 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Alerts: what fires now (the default), rules, history, silences,
    /// acknowledgements.
    ///
    /// Alerts come from Prometheus rule files (`[alerting] rule_files`),
    /// the built-in rules, and any Prometheus that uses this daemon as its
    /// Alertmanager. IDs are alert fingerprints as `ferry alerts` shows
    /// them; a unique prefix will do.
    Alerts {
        #[command(subcommand)]
        cmd: Option<alerts::AlertsCmd>,
    },
    /// Metrics computed from Ferry's own history.
    Metrics {
        #[command(subcommand)]
        cmd: MetricsCmd,
    },
    /// Query the daemon's own metrics with PromQL (the last 6 hours).
    ///
    /// Without --range: the value of each series now (or at --time), as a
    /// table. With --range: a series per line over that long ending now,
    /// with a sparkline, its minimum, maximum and last value. The series
    /// are what `/metrics` shows (ferry_proxy_requests_total, ...),
    /// recorded every --scrape-interval of `ferry serve`.
    Query {
        /// A PromQL expression, e.g. 'sum by (service) (rate(ferry_proxy_requests_total[1m]))'.
        expr: String,
        /// Evaluate at this Unix time (seconds) or RFC 3339 time instead of now.
        #[arg(long)]
        time: Option<String>,
        /// Query a range ending now (or at --time): e.g. 30m.
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        range: Option<std::time::Duration>,
        /// The step of a --range query (default: the range / 60, at least 1s).
        #[arg(long, value_name = "DURATION", value_parser = duration_arg, requires = "range")]
        step: Option<std::time::Duration>,
    },
    /// Seal every stored secret under a new key (stop the daemon first).
    ///
    /// Secret env values (names with SECRET, TOKEN, PASSWORD or KEY) are
    /// stored encrypted under the key in <data-dir>/secret.key, or in
    /// FERRY_SECRET_KEY when that is set. This makes a new key (or takes
    /// FERRY_NEW_SECRET_KEY, required when the key is in FERRY_SECRET_KEY),
    /// re-encrypts every secret with it in one transaction, and replaces the
    /// key file. An interrupted rotation is finished or undone at the next
    /// start.
    RotateKey,
    /// Run the whole story on embedded defaults: deploy, roll, switch, and a bad release rolled back.
    Demo,
    /// The bundled demo service (used by `ferry demo` and the tests).
    #[command(hide = true)]
    DemoApp,
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Under systemd the journal stamps the time; each line carries its
        // priority instead.
        LogFormat::Text if ferry::systemd::under_journal() => builder
            .with_ansi(false)
            .event_format(ferry::systemd::JournalFormat)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Tell systemd (when it runs `ferry serve` with `Type=notify`); a failure
/// to do so is logged, never fatal.
fn tell_systemd(what: &str, sent: std::io::Result<bool>) {
    if let Err(e) = sent {
        tracing::warn!("could not tell systemd {what}: {e}");
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            // Multi-line messages already say `error:` on each line. They
            // quote the daemon's answers, which quote user input.
            let message = term::printable(&e.message);
            if message.starts_with("error: ") {
                eprintln!("{message}");
            } else {
                eprintln!("error: {message}");
            }
            e.code
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> CliResult<()> {
    let client = || Client::discover(cli.api.as_deref(), cli.token.as_deref(), &cli.data_dir);
    match &cli.command {
        Command::Init { config, force } => commands::init(config, *force),
        Command::Check { rules, .. } if !rules.is_empty() => {
            commands::check_rules(rules, cli.output)
        }
        Command::Check { config, .. } => commands::check(config, client().ok(), cli.output).await,
        Command::Validate {
            config,
            suites,
            service,
            revision,
            report,
            format,
        } => {
            let args = validate::ValidateArgs {
                config: config.clone(),
                suites: suites.clone(),
                service: service.clone(),
                revision: *revision,
                report: report.clone(),
                format: format.clone(),
            };
            validate::validate(&args, client().ok(), cli.output).await
        }
        Command::Serve {
            api_addr,
            api_max_connections,
            api_header_timeout,
            api_request_timeout,
            data_plane,
            scrape_interval,
            config,
            metrics_retention,
            metrics_retention_size,
            query_max_samples,
            query_timeout,
        } => {
            let (metrics, alerting) = match config {
                Some(path) => {
                    let cfg = commands::load_config(path)?;
                    let (alerting, _) = commands::load_alerting(path, &cfg)?;
                    (cfg.metrics, alerting)
                }
                None => {
                    let source = ferry_server::alerting::Source::default();
                    if let Err(errors) = source.load() {
                        return Err(CliError::failed(errors.join("\n")));
                    }
                    (Default::default(), source)
                }
            };
            init_logging(cli.log_format, "info");
            let data_plane = match data_plane {
                DataPlaneArg::Inline => ferry_server::DataPlaneMode::Inline,
                DataPlaneArg::Process => ferry_server::DataPlaneMode::Process {
                    binary: std::env::current_exe().map_err(|e| {
                        CliError::failed(format!("cannot find this program's path: {e}"))
                    })?,
                },
            };
            let config = ferry_server::ServeConfig {
                data_dir: cli.data_dir.clone(),
                api_addr: *api_addr,
                api_limits: ferry_server::http::server::ApiLimits {
                    max_connections: *api_max_connections,
                    header_timeout: *api_header_timeout,
                    request_timeout: *api_request_timeout,
                    ..Default::default()
                },
                data_plane,
                scrape_interval: *scrape_interval,
                metrics,
                alerting,
                tsdb: ferry_server::tsdb::TsdbOptions {
                    retention: *metrics_retention,
                    retention_bytes: metrics_retention_size.unwrap_or(0),
                    query_max_samples: *query_max_samples,
                    query_timeout: *query_timeout,
                },
            };
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Ok(addr) = ready_rx.await {
                    let status = format!("serving; API on http://{addr}");
                    tell_systemd("READY=1", ferry::systemd::notify_ready(&status));
                }
            });
            let exit = ferry_server::serve(config, shutdown_signal(), Some(ready_tx))
                .await
                .map_err(|e| {
                    let code = match e {
                        ferry_server::ServeError::Bind { .. }
                        | ferry_server::ServeError::AlreadyRunning { .. }
                        | ferry_server::ServeError::Key(_)
                        | ferry_server::ServeError::Alerting(
                            ferry_server::alerting::AlertingError::Config(_),
                        ) => client::EXIT_USAGE,
                        _ => client::EXIT_FAILED,
                    };
                    CliError {
                        code,
                        message: e.to_string(),
                    }
                })?;
            match exit {
                ferry_server::Exit::Upgrade(binary) => {
                    tell_systemd("RELOADING=1", ferry::systemd::notify_reloading());
                    reexec(&binary)
                }
                ferry_server::Exit::Detached | ferry_server::Exit::Shutdown => {
                    tell_systemd("STOPPING=1", ferry::systemd::notify_stopping());
                    Ok(())
                }
            }
        }
        Command::Upgrade { binary, timeout } => {
            commands::upgrade(&client, binary.as_deref(), *timeout, cli.output).await
        }
        Command::Shutdown { timeout } => {
            commands::shutdown(&client()?, &cli.data_dir, *timeout, cli.output).await
        }
        Command::InstallService {
            user,
            unit_file,
            force,
            api_addr,
            env_file,
            config,
        } => commands::install_service(
            &cli.data_dir,
            config,
            user.clone(),
            unit_file,
            *force,
            *api_addr,
            env_file.as_deref(),
        ),
        Command::Dataplane { socket } => {
            init_logging(cli.log_format, "info");
            ferry_server::dataplane::process::run(cli.data_dir.clone(), socket.clone())
                .await
                .map_err(|e| CliError::failed(format!("data plane: {e}")))
        }
        Command::Deploy {
            service,
            version,
            strategy,
            set,
            message,
            dry_run,
            auto_approve,
            detach,
            monitor,
            until_serving,
            override_budget,
            reason,
            commit_time,
            config,
        } => {
            let args = DeployArgs {
                commit_time: commit_time.clone(),
                override_budget: *override_budget,
                reason: reason.clone(),
                until_serving: *until_serving,
                monitor: monitor.clone(),
                service: service.clone(),
                version: version.clone(),
                strategy: strategy.clone(),
                set: set.clone(),
                message: message.clone(),
                dry_run: *dry_run,
                auto_approve: *auto_approve,
                detach: *detach,
                config: config.clone(),
            };
            // Everything checkable offline is checked before contacting the daemon.
            commands::build_deploy(&args)?;
            commands::deploy(&client()?, &args, cli.output).await
        }
        Command::Slo { service } => commands::slo(&client()?, service.as_deref(), cli.output).await,
        Command::Status { service } => {
            commands::status(client(), &cli.data_dir, service.as_deref(), cli.output).await
        }
        Command::History { service } => commands::history(&client()?, service, cli.output).await,
        Command::Rollback {
            service,
            to_revision,
            detach,
        } => commands::rollback(&client()?, service, *to_revision, *detach, cli.output).await,
        Command::Approve { service } => {
            commands::gate(&client()?, service, "approve", cli.output).await
        }
        Command::Abort { service } => {
            commands::gate(&client()?, service, "abort", cli.output).await
        }
        Command::Promote { service, full } => {
            let body = serde_json::json!({ "full": full });
            commands::gate_with(&client()?, service, "promote", &body, cli.output).await
        }
        Command::Pause { service } => {
            commands::gate(&client()?, service, "pause", cli.output).await
        }
        Command::Resume { service } => {
            commands::gate(&client()?, service, "resume", cli.output).await
        }
        Command::Rollout { id } => commands::rollout(&client()?, *id, cli.output).await,
        Command::Audit { limit } => commands::audit(&client()?, *limit, cli.output).await,
        Command::Query {
            expr,
            time,
            range,
            step,
        } => commands::query(&client()?, expr, time.as_deref(), *range, *step, cli.output).await,
        Command::Alerts { cmd } => alerts::run(&client()?, cmd.as_ref(), cli.output).await,
        Command::Metrics {
            cmd: MetricsCmd::Delivery { service, since },
        } => commands::delivery(&client()?, service.as_deref(), since, cli.output).await,
        Command::RotateKey => {
            let message = ferry_server::rotate_key(&cli.data_dir).map_err(|e| CliError {
                code: match e {
                    ferry_server::ServeError::AlreadyRunning { .. }
                    | ferry_server::ServeError::Key(_) => client::EXIT_USAGE,
                    _ => client::EXIT_FAILED,
                },
                message: e.to_string(),
            })?;
            println!("{message}");
            Ok(())
        }
        Command::Demo => {
            init_logging(cli.log_format, "warn");
            demo::run().await
        }
        Command::DemoApp => {
            let config = ferry::demo_app::DemoAppConfig::from_env().map_err(CliError::usage)?;
            ferry::demo_app::run(config)
                .await
                .map_err(|e| CliError::failed(format!("demo-app: {e:#}")))
        }
    }
}

/// A positive duration with a unit, for clap.
pub(crate) fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    let d = ferry_core::duration::parse(text)?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d.0)
}

/// A byte size: a number with a unit (B, KB, MB, GB, TB, powers of 1000;
/// KiB, MiB, GiB, TiB, powers of 1024).
fn size_arg(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a size; write e.g. \"512MB\" or \"10GB\""))?;
    let mult: u64 = match unit.trim() {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "" => return Err(format!("`{t}` has no unit; write e.g. \"{t}MB\"")),
        u => {
            return Err(format!(
                "unknown unit `{u}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))?;
    if bytes == 0 {
        return Err("must be more than 0".into());
    }
    Ok(bytes)
}

/// `--scrape-interval`: at least 100ms (each scrape renders and parses
/// every metric family).
fn scrape_interval_arg(text: &str) -> Result<std::time::Duration, String> {
    let d = duration_arg(text)?;
    if d < std::time::Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// SIGINT (Ctrl-C: stop everything) or SIGTERM (stop the control plane;
/// the data plane and the instances keep serving).
async fn shutdown_signal() -> ferry_server::Exit {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ferry_server::Exit::Shutdown,
        _ = term.recv() => ferry_server::Exit::Detached,
    }
}

/// `ferry upgrade`: become `binary`, with the same arguments (and pid).
fn reexec(binary: &std::path::Path) -> CliResult<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let to_c = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes()).map_err(|_| CliError::failed("an argument holds a NUL byte"))
    };
    let path = to_c(binary.as_os_str())?;
    let args = std::env::args_os()
        .map(|a| to_c(&a))
        .collect::<CliResult<Vec<CString>>>()?;
    let err = nix::unistd::execv(&path, &args).unwrap_err();
    Err(CliError::failed(format!(
        "cannot re-execute {}: {err}; the data plane keeps serving, start `ferry serve` again",
        binary.display()
    )))
}
