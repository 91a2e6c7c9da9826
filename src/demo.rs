//! `ferry demo`: the main job on embedded defaults. Starts a daemon on a
//! temporary data dir, runs the bundled demo service (this binary in its
//! hidden `demo-app` mode), sends steady traffic through the proxy, and
//! narrates five releases: first deploy, rolling, blue-green, a release
//! that never becomes ready and is rolled back by itself, and a canary that
//! goes bad at 10 % and is pulled by analysis in about a second; no request
//! fails except the canary's own in that second.

use crate::client::{CliError, CliResult, Client};
use crate::commands::{self, DeployArgs, Output};
use ferry::loadgen::{LoadConfig, LoadGen};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn free_port() -> CliResult<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::failed(format!("no free port on 127.0.0.1: {e}")))
}

fn demo_config(exe: &Path, port: u16) -> String {
    let exe = exe
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"# Written by `ferry demo`.
[services.web]
command = ["{exe}", "demo-app"]
instances = 3
listen = "127.0.0.1:{port}"
env = {{ DEMO_VERSION = "{{version}}" }}

[services.web.readiness]
http = "/health"
interval = "200ms"
timeout = "1s"
failure_threshold = 2

[services.web.liveness]
http = "/health"
interval = "1s"

[services.web.deploy]
strategy = "rolling"
max_surge = 1
max_unavailable = 0
min_ready = "500ms"
drain_timeout = "5s"
deploy_timeout = "6s"
stop_timeout = "5s"
scale_down_delay = "2s"
# Used by `--strategy canary`: 10 %, then hold while analysis judges.
steps = [{{ weight = 10 }}, {{ pause = "30s" }}]

[services.web.analysis]
interval = "1s"
window = "2s"
failure_limit = 0
min_requests = 10
checks = [{{ metric = "error_rate", max = 0.05 }}]
"#
    )
}

fn say(text: &str) {
    println!("\n==> {text}");
}

pub async fn run() -> CliResult<()> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the ferry binary: {e}")))?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .map_err(|e| CliError::failed(format!("cannot create a temporary dir: {e}")))?;
    let port = free_port()?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, demo_config(&exe, port))
        .map_err(|e| CliError::failed(e.to_string()))?;
    let data_dir = dir.path().join("data");

    say(&format!(
        "starting a ferry daemon (data dir {})",
        data_dir.display()
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let serve_config = ferry_server::ServeConfig {
        alerting: Default::default(),
        data_dir: data_dir.clone(),
        api_addr: "127.0.0.1:0".parse().expect("literal address"),
        api_limits: Default::default(),
        data_plane: ferry_server::DataPlaneMode::Process {
            binary: exe.clone(),
        },
        scrape_interval: std::time::Duration::from_secs(10),
        metrics: Default::default(),
        tsdb: Default::default(),
    };
    let daemon = tokio::spawn(ferry_server::serve(
        serve_config,
        async {
            let _ = stop_rx.await;
            ferry_server::Exit::Shutdown
        },
        Some(ready_tx),
    ));
    let api = ready_rx
        .await
        .map_err(|_| CliError::failed("the demo daemon did not start"))?;
    let client = Client::discover(Some(&format!("http://{api}")), None, &data_dir)?;
    // Ctrl-C still cleans up: the daemon stops its instances below.
    let result = tokio::select! {
        r = story(&client, &config, port) => r,
        _ = tokio::signal::ctrl_c() => Err(CliError {
            code: crate::client::EXIT_INTERRUPTED,
            message: "interrupted".into(),
        }),
    };

    say("cleaning up: stopping the daemon and its instances");
    let _ = stop_tx.send(());
    let _ = daemon.await;
    drop(dir);
    match &result {
        Ok(()) => println!(
            "\ndemo finished: every release behaved; no request failed but the bad canary's own, in the second before analysis pulled it."
        ),
        Err(e) => println!("\ndemo failed: {}", e.message),
    }
    result
}

fn deploy_args(config: &Path, version: &str, strategy: &str, set: &[&str]) -> DeployArgs {
    DeployArgs {
        service: "web".into(),
        version: version.into(),
        strategy: Some(strategy.into()),
        set: set.iter().map(|s| s.to_string()).collect(),
        message: Some(format!("demo release {version}")),
        dry_run: false,
        auto_approve: true,
        detach: false,
        until_serving: false,
        monitor: None,
        override_budget: false,
        reason: None,
        commit_time: None,
        config: config.to_path_buf(),
    }
}

fn versions(load: &LoadGen) -> String {
    let w = load.take_window();
    if w.is_empty() {
        return "(none)".into();
    }
    w.iter()
        .map(|(v, n)| format!("{v}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tally(load: &LoadGen) -> String {
    let r = load.report();
    format!("{} requests so far, {} failed", r.sent, r.failed)
}

async fn story(client: &Client, config: &Path, port: u16) -> CliResult<()> {
    say(
        "1/5 first deploy: web v1, 3 instances behind the proxy on 127.0.0.1:{port}"
            .replace("{port}", &port.to_string())
            .as_str(),
    );
    commands::deploy(
        client,
        &deploy_args(config, "v1", "rolling", &[]),
        Output::Text,
    )
    .await?;

    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let mut load_config = LoadConfig::new(target);
    load_config.connections = 8;
    load_config.rate_per_connection = Some(40.0);
    load_config.max_duration = Duration::from_secs(300);
    let load = LoadGen::start(load_config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    say(&format!(
        "steady traffic: 8 keep-alive clients, ~320 requests/s; answering: {}",
        versions(&load)
    ));

    say("2/5 rolling deploy of v2 under traffic (max_surge 1, max_unavailable 0)");
    commands::deploy(
        client,
        &deploy_args(config, "v2", "rolling", &[]),
        Output::Text,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = load.take_window();
    tokio::time::sleep(Duration::from_millis(700)).await;
    println!("    answering now: {}  ({})", versions(&load), tally(&load));

    say("3/5 blue-green deploy of v3: the whole new set starts, then traffic switches at once");
    commands::deploy(
        client,
        &deploy_args(config, "v3", "blue-green", &[]),
        Output::Text,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = load.take_window();
    tokio::time::sleep(Duration::from_millis(700)).await;
    println!("    answering now: {}  ({})", versions(&load), tally(&load));

    say("4/5 a bad release: v4 never becomes ready (its /health answers 503)");
    let bad = commands::deploy(
        client,
        &deploy_args(config, "v4", "rolling", &["DEMO_NEVER_READY=1"]),
        Output::Text,
    )
    .await;
    match bad {
        Err(e) if e.code == crate::client::EXIT_FAILED => {
            println!(
                "    ferry rolled it back by itself:\n      {}",
                e.message.replace('\n', "\n      ")
            )
        }
        Err(e) => return Err(e),
        Ok(()) => return Err(CliError::failed("the bad release v4 was not rolled back")),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = load.take_window();
    tokio::time::sleep(Duration::from_millis(700)).await;
    println!("    answering now: {}  ({})", versions(&load), tally(&load));

    say(
        "5/5 a canary that goes bad: v5 takes 10 % of traffic, then answers 30 % of its requests with 500",
    );
    let canary = commands::deploy(
        client,
        &deploy_args(
            config,
            "v5",
            "canary",
            &["DEMO_FAILURE_RATE=0.3", "DEMO_FAILURE_AFTER_MS=2500"],
        ),
        Output::Text,
    )
    .await;
    match canary {
        Err(e) if e.code == crate::client::EXIT_FAILED => {
            println!(
                "    analysis pulled the canary by itself:\n      {}",
                e.message.replace('\n', "\n      ")
            )
        }
        Err(e) => return Err(e),
        Ok(()) => return Err(CliError::failed("the failing canary v5 was not pulled")),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = load.take_window();
    tokio::time::sleep(Duration::from_millis(700)).await;
    println!("    answering now: {}  ({})", versions(&load), tally(&load));

    let report = load.stop().await;
    say("traffic summary");
    let canary_failed = report.failed_by_version.get("v5").copied().unwrap_or(0);
    let canary_served = report.by_version.get("v5").copied().unwrap_or(0) + canary_failed;
    let elsewhere = report.failed - canary_failed;
    println!(
        "    requests sent: {}, succeeded: {}, failed: {}",
        report.sent, report.ok, report.failed
    );
    println!(
        "    the canary v5 answered {canary_served} of them and failed {canary_failed} before it was pulled; failed elsewhere: {elsewhere}"
    );
    let by_version: Vec<String> = report
        .by_version
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    println!("    answered by version: {}", by_version.join(", "));
    if elsewhere > 0 {
        return Err(CliError::failed(format!(
            "{elsewhere} requests failed outside the canary's share: {:?}",
            report.errors
        )));
    }
    if report.by_version.contains_key("v4") {
        return Err(CliError::failed("the bad release v4 answered requests"));
    }
    if report.last_version.as_deref() != Some("v3") {
        return Err(CliError::failed(format!(
            "expected v3 to serve at the end, saw {:?}",
            report.last_version
        )));
    }
    Ok(())
}
