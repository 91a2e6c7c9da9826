//! `ferry validate`: run validation suites from ferry.toml here, now, and
//! report what they found (text, JSON, JUnit XML or Markdown).

use crate::client::{CliError, CliResult, Client};
use crate::commands::{Output, load_config};
use ferry_core::validation::report::{self, Format, Report};
use ferry_validate::{Context, SuiteRun};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ValidateArgs {
    pub config: PathBuf,
    pub suites: Vec<String>,
    pub service: Option<String>,
    pub revision: Option<u64>,
    pub report: Option<PathBuf>,
    pub format: Option<String>,
}

pub async fn validate(
    args: &ValidateArgs,
    client: Option<Client>,
    output: Output,
) -> CliResult<()> {
    let cfg = load_config(&args.config)?;
    let format = match args.format.as_deref() {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            CliError::usage(format!(
                "--format {f}: write text, json, junit, markdown or html"
            ))
        })?),
    };
    if cfg.validation.suites.is_empty() {
        return Err(CliError::usage(format!(
            "{} declares no validation suites; add [validation.suites.NAME] (see `ferry init`)",
            args.config.display()
        )));
    }
    let names: Vec<String> = if args.suites.is_empty() {
        cfg.validation.suites.keys().cloned().collect()
    } else {
        for s in &args.suites {
            if !cfg.validation.suites.contains_key(s) {
                let known: Vec<&str> = cfg.validation.suites.keys().map(String::as_str).collect();
                return Err(CliError::usage(format!(
                    "--suite {s}: {} declares no such suite; it has: {}",
                    args.config.display(),
                    known.join(", ")
                )));
            }
        }
        let mut seen = Vec::new();
        for s in &args.suites {
            if !seen.contains(s) {
                seen.push(s.clone());
            }
        }
        seen
    };
    if let Some(s) = &args.service
        && !cfg.services.contains_key(s)
    {
        let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
        return Err(CliError::usage(format!(
            "--service {s}: {} declares no such service; it has: {}",
            args.config.display(),
            known.join(", ")
        )));
    }
    if args.revision.is_some() && args.service.is_none() {
        return Err(CliError::usage(
            "--revision needs --service: the revision of which service?",
        ));
    }
    let base_dir = args
        .config
        .canonicalize()
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let services: BTreeMap<String, std::net::SocketAddr> = cfg
        .services
        .iter()
        .filter_map(|(n, s)| Some((n.clone(), s.listen_addr()?)))
        .collect();
    let ctx = Context {
        services,
        service: args.service.clone(),
        revision: args.revision,
        base_dir,
        env: std::env::vars().collect(),
        metrics_api: client.map(|c| (c.base.clone(), c.token().to_string())),
        http: Context::client(),
    };
    let runs: Vec<SuiteRun> = names
        .iter()
        .map(|n| {
            let mut spec = cfg.validation.suites[n].clone();
            if args.service.is_none() && spec.service.is_none() {
                spec.service = default_service(&cfg, n);
            }
            SuiteRun {
                name: n.clone(),
                spec,
            }
        })
        .collect();
    let started_at = now_ms();
    let started = std::time::Instant::now();
    let results =
        ferry_validate::run_suites(&runs, cfg.validation.concurrency, Arc::new(ctx)).await;
    let mut title = format!(
        "suite{} {}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    if let Some(s) = &args.service {
        title.push_str(&format!(" against {s}"));
        if let Some(r) = args.revision {
            title.push_str(&format!(" (revision {r})"));
        }
    }
    let rep = Report::new(
        title,
        started_at,
        started.elapsed().as_millis() as u64,
        results,
    );
    let stdout_format = match (output, &args.report, format) {
        (Output::Json, _, _) => Format::Json,
        (_, None, Some(f)) => f,
        _ => Format::Text,
    };
    if let Some(path) = &args.report {
        let file_format = format.unwrap_or(Format::Text);
        write_report(path, &report::render(&rep, file_format))?;
    }
    let text = report::render(&rep, stdout_format);
    for line in text.trim_end().lines() {
        say!("{line}");
    }
    if let Some(path) = &args.report
        && output == Output::Text
    {
        say!("report written to {}", path.display());
    }
    if rep.ok {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "validation failed: {} FAILED",
            rep.summary.failed
        )))
    }
}

/// The service a suite's paths go through when neither it nor --service
/// says: the file's only service, or the only one whose gates run it.
fn default_service(cfg: &ferry_core::config::Config, suite: &str) -> Option<String> {
    if cfg.services.len() == 1 {
        return cfg.services.keys().next().cloned();
    }
    let gated: Vec<&String> = cfg
        .services
        .iter()
        .filter(|(_, s)| s.deploy.validate.all().iter().any(|n| n == suite))
        .map(|(n, _)| n)
        .collect();
    match gated.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// Write the report whole or not at all (a temporary file renamed into
/// place), so a CI job never reads half a report.
fn write_report(path: &Path, text: &str) -> CliResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| {
        CliError::failed(format!(
            "cannot write the report to {}: {e}",
            path.display()
        ))
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
