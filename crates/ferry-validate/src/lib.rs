//! Running validation checks: each kind in its own module, a suite's
//! checks concurrently within a limit, each cut at its timeout. The specs
//! and results are `ferry_core::validation`'s; this crate does the I/O.
//!
//! `ferry validate` runs suites from the CLI; the daemon runs the same
//! code for release gates (`[services.NAME.deploy.validate]`).
#![forbid(unsafe_code)]

mod command;
mod http_check;
mod load;
pub mod loadgen;
mod query;
mod resources;
mod tcp;
mod tls;

use ferry_core::validation::{CheckResult, CheckSpec, Severity, Status, SuiteSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how checks run.
#[derive(Debug, Clone)]
pub struct Context {
    /// Each service's proxy address: a path URL goes there.
    pub services: BTreeMap<String, SocketAddr>,
    /// The service the run is for, when a check and its suite name none.
    pub service: Option<String>,
    /// Send path requests to this revision of the service, with
    /// `X-Ferry-Revision` (a candidate before it takes traffic).
    pub revision: Option<u64>,
    /// Relative `ca_file` and `workdir` resolve here (the config file's
    /// directory).
    pub base_dir: PathBuf,
    /// What `${NAME}` in headers and `skip_if` read.
    pub env: BTreeMap<String, String>,
    /// Ferry's own query API (`http://127.0.0.1:PORT`) and a token for it,
    /// for `query` checks without `prometheus`.
    pub metrics_api: Option<(String, String)>,
    pub http: reqwest::Client,
}

impl Context {
    /// The HTTP client checks use: no redirects followed (a check sees
    /// what the server answered), no proxy from the environment.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default()
    }

    /// A context for this crate's tests: no services, the process's
    /// environment, relative paths under `base_dir`.
    #[cfg(test)]
    pub(crate) fn for_tests(base_dir: &std::path::Path) -> Context {
        Context {
            services: BTreeMap::new(),
            service: None,
            revision: None,
            base_dir: base_dir.to_path_buf(),
            env: std::env::vars().collect(),
            metrics_api: None,
            http: Context::client(),
        }
    }

    /// `${NAME}` in `text` replaced by the variable's value (empty when
    /// unset); `$${` stands for a literal `${`.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${")
                && let Some(end) = after.find('}')
            {
                out.push_str(self.env.get(&after[..end]).map_or("", String::as_str));
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }

    /// The URL a check sends to and whether it goes through Ferry's proxy
    /// (then `X-Ferry-Revision` applies).
    pub fn target(&self, check: &CheckSpec, suite: &SuiteSpec) -> Result<(String, bool), String> {
        let url = check.url.as_deref().unwrap_or("/");
        if !url.starts_with('/') {
            return Ok((url.to_string(), false));
        }
        let Some(service) = check.service_for(suite, self.service.as_deref()) else {
            return Err(format!(
                "\"{url}\" is a path, but no service says whose proxy it goes through: set `service` on the check or its suite, or pass --service"
            ));
        };
        let Some(addr) = self.services.get(service) else {
            return Err(format!("service \"{service}\" has no listen address here"));
        };
        Ok((format!("http://{}{url}", connectable(*addr)), true))
    }
}

/// An address a client can connect to: an unspecified listen address
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    }
}

/// What one check found, before its severity applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub status: Status,
    pub value: Option<String>,
    pub reason: String,
    pub output: Option<String>,
}

impl Finding {
    pub fn pass(value: Option<String>, reason: impl Into<String>) -> Finding {
        Finding::with(Status::Passed, value, reason)
    }
    pub fn fail(value: Option<String>, reason: impl Into<String>) -> Finding {
        Finding::with(Status::Failed, value, reason)
    }
    pub fn warn(value: Option<String>, reason: impl Into<String>) -> Finding {
        Finding::with(Status::Warning, value, reason)
    }
    pub fn skip(reason: impl Into<String>) -> Finding {
        Finding::with(Status::Skipped, None, reason)
    }
    fn with(status: Status, value: Option<String>, reason: impl Into<String>) -> Finding {
        Finding {
            status,
            value,
            reason: reason.into(),
            output: None,
        }
    }
}

/// A suite to run, by name.
#[derive(Debug, Clone)]
pub struct SuiteRun {
    pub name: String,
    pub spec: SuiteSpec,
}

/// Run every check of `suites`, at most `concurrency` at a time; results
/// come back in the order the checks are declared.
pub async fn run_suites(
    suites: &[SuiteRun],
    concurrency: u32,
    ctx: Arc<Context>,
) -> Vec<CheckResult> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1) as usize));
    let mut tasks = Vec::new();
    for suite in suites {
        for check in &suite.spec.checks {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            let (suite_name, suite_spec, check) =
                (suite.name.clone(), suite.spec.clone(), check.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                run_check(&suite_name, &suite_spec, &check, &ctx).await
            }));
        }
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!("a validation check panicked: {e}"),
        }
    }
    results
}

/// Run one check: skip it if `skip_if` says so, cut it at its timeout,
/// and apply its severity.
pub async fn run_check(
    suite_name: &str,
    suite: &SuiteSpec,
    check: &CheckSpec,
    ctx: &Context,
) -> CheckResult {
    let started = Instant::now();
    let finding = match skip_reason(check, ctx) {
        Some(why) => Finding::skip(why),
        None => {
            let timeout: Duration = check.timeout().0;
            match tokio::time::timeout(timeout, run_kind(check, suite, ctx)).await {
                Ok(f) => f,
                Err(_) => Finding::fail(
                    None,
                    format!(
                        "did not finish within its timeout ({}); cut",
                        check.timeout()
                    ),
                ),
            }
        }
    };
    let status = match (finding.status, check.severity()) {
        (Status::Failed, Severity::Warning) => Status::Warning,
        (s, _) => s,
    };
    CheckResult {
        suite: suite_name.to_string(),
        name: check.name.clone(),
        kind: check.kind,
        status,
        duration_ms: started.elapsed().as_millis() as u64,
        value: finding.value,
        reason: one_line(&finding.reason),
        output: finding.output,
    }
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 400 {
        let cut: String = line.chars().take(400).collect();
        format!("{cut}…")
    } else {
        line
    }
}

fn skip_reason(check: &CheckSpec, ctx: &Context) -> Option<String> {
    let skip = check.skip_if.as_ref()?;
    let set = |name: &str| {
        ctx.env
            .get(name)
            .is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    if let Some(name) = &skip.env
        && set(name)
    {
        return Some(format!("skipped: ${name} is set"));
    }
    if let Some(name) = &skip.unset
        && ctx.env.get(name).is_none_or(|v| v.is_empty())
    {
        return Some(format!("skipped: ${name} is not set"));
    }
    None
}

async fn run_kind(check: &CheckSpec, suite: &SuiteSpec, ctx: &Context) -> Finding {
    use ferry_core::validation::CheckKind as K;
    match check.kind {
        K::Http => http_check::http(check, suite, ctx).await,
        K::SecurityHeaders => http_check::security_headers(check, suite, ctx).await,
        K::Auth => http_check::auth(check, suite, ctx).await,
        K::Tls => tls::run(check, ctx).await,
        K::Tcp => tcp::run(check).await,
        K::Load => load::run(check, suite, ctx).await,
        K::Resources => resources::run(check, ctx).await,
        K::Query => query::run(check, ctx).await,
        K::Command => command::run(check, ctx).await,
    }
}
