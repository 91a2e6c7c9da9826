//! `[validation]` as written in `ferry.toml`: suites of checks, and the
//! gates (`[services.NAME.deploy.validate]`) that run them inside releases.
//! Validation here is of the spec only; running the checks is
//! `ferry-validate`'s job.

use crate::duration::Dur;
use crate::problem::Problem;
use crate::spec::CommandSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[validation]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Checks of one suite run at the same time, at most (default 8).
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub suites: BTreeMap<String, SuiteSpec>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            concurrency: defaults::concurrency(),
            suites: BTreeMap::new(),
        }
    }
}

/// One suite: checks run together and reported together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuiteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The service whose proxy a check's path (`url = "/health"`) goes
    /// through, unless the check names its own; default: the service being
    /// released, or `ferry validate --service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
}

/// What a check does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    SecurityHeaders,
    Auth,
    Tls,
    Tcp,
    Load,
    Resources,
    Query,
    Command,
}

impl CheckKind {
    pub const ALL: [CheckKind; 9] = [
        CheckKind::Http,
        CheckKind::SecurityHeaders,
        CheckKind::Auth,
        CheckKind::Tls,
        CheckKind::Tcp,
        CheckKind::Load,
        CheckKind::Resources,
        CheckKind::Query,
        CheckKind::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::SecurityHeaders => "security_headers",
            CheckKind::Auth => "auth",
            CheckKind::Tls => "tls",
            CheckKind::Tcp => "tcp",
            CheckKind::Load => "load",
            CheckKind::Resources => "resources",
            CheckKind::Query => "query",
            CheckKind::Command => "command",
        }
    }

    /// The keys a check of this kind may set, besides the common ones.
    fn fields(self) -> &'static [&'static str] {
        match self {
            CheckKind::Http => &[
                "url",
                "service",
                "method",
                "headers",
                "body",
                "expect_status",
                "expect_body",
                "expect_body_regex",
                "expect_json",
                "expect_headers",
                "max_latency",
            ],
            CheckKind::SecurityHeaders => &["url", "service", "method", "headers", "require"],
            CheckKind::Auth => &[
                "url",
                "service",
                "method",
                "body",
                "headers",
                "bad_headers",
                "good_headers",
            ],
            CheckKind::Tls => &[
                "address",
                "server_name",
                "ca_file",
                "warn_days",
                "critical_days",
            ],
            CheckKind::Tcp => &["address"],
            CheckKind::Load => &[
                "url",
                "service",
                "method",
                "headers",
                "rate",
                "concurrency",
                "duration",
                "min_throughput",
                "max_error_rate",
                "max_p95",
                "max_p99",
            ],
            CheckKind::Resources => &[
                "path",
                "cpu_warning",
                "cpu_critical",
                "memory_warning",
                "memory_critical",
                "disk_warning",
                "disk_critical",
            ],
            CheckKind::Query => &["query", "prometheus", "min", "max", "empty"],
            CheckKind::Command => &["command", "workdir", "env"],
        }
    }
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failing check means for its suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// A failure is FAILED: it fails the suite (and stops a release).
    Critical,
    /// A failure is only a WARNING: recorded and announced.
    Warning,
}

/// When a check is not run (SKIPPED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkipIf {
    /// Skip when this environment variable is set and not empty, `0` or
    /// `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Skip when this environment variable is unset or empty (a check that
    /// needs a credential only some environments have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unset: Option<String>,
}

/// What a query's result must be: a number, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StatusExpect {
    One(u16),
    Many(Vec<u16>),
    /// `"2xx"`.
    Class(String),
}

impl StatusExpect {
    pub fn accepts(&self, status: u16) -> bool {
        match self {
            StatusExpect::One(s) => *s == status,
            StatusExpect::Many(list) => list.contains(&status),
            StatusExpect::Class(c) => c
                .strip_suffix("xx")
                .and_then(|d| d.parse::<u16>().ok())
                .is_some_and(|d| status / 100 == d),
        }
    }
    fn problem(&self) -> Option<String> {
        let ok = |s: u16| (100..=599).contains(&s);
        match self {
            StatusExpect::One(s) if !ok(*s) => Some(format!("{s} is not an HTTP status")),
            StatusExpect::Many(l) if l.is_empty() => Some("the list is empty".into()),
            StatusExpect::Many(l) => l
                .iter()
                .find(|s| !ok(**s))
                .map(|s| format!("{s} is not an HTTP status")),
            StatusExpect::Class(c)
                if !matches!(c.as_str(), "1xx" | "2xx" | "3xx" | "4xx" | "5xx") =>
            {
                Some(format!(
                    "\"{c}\" is not a status class; write e.g. \"2xx\" or 200 or [200, 204]"
                ))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for StatusExpect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusExpect::One(s) => write!(f, "{s}"),
            StatusExpect::Many(l) => {
                let l: Vec<String> = l.iter().map(u16::to_string).collect();
                write!(f, "one of {}", l.join(", "))
            }
            StatusExpect::Class(c) => f.write_str(c),
        }
    }
}

/// One check. One flat table for every kind, so that an error can say
/// which key does not apply to which kind; `validate` enforces that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: String,
    pub kind: CheckKind,
    /// The check is cut at this and FAILED (default 10s; a load check's
    /// is its duration plus 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// `critical` (a failure is FAILED, the default) or `warning` (a
    /// failure is a WARNING; the default of `security_headers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_if: Option<SkipIf>,

    // http, security_headers, auth, load
    /// `http://…`/`https://…`, or a path (`/health`) sent through a
    /// service's proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The service whose proxy a path goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers; `${NAME}` in a value is read from the environment
    /// (values are never printed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<StatusExpect>,
    /// The body must contain this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body_regex: Option<String>,
    /// JSON fields (`status`, `db.ok`, `items.0.id`) and the values they
    /// must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub expect_json: BTreeMap<String, serde_json::Value>,
    /// Response headers and the values they must have (`"*"`: present).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<Dur>,

    // security_headers
    /// Headers the response must carry (default: HSTS on https,
    /// X-Content-Type-Options, X-Frame-Options or a CSP frame-ancestors,
    /// Content-Security-Policy, Referrer-Policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<Vec<String>>,

    // auth
    /// Headers of the request that must be refused (default: none at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_headers: Option<BTreeMap<String, String>>,
    /// Headers of a request that must be let in (not 401/403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good_headers: Option<BTreeMap<String, String>>,

    // tls, tcp
    /// `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name the certificate must be valid for (default: the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of extra trusted roots (default: the system's and
    /// Mozilla's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// WARNING when the certificate expires within this many days (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_days: Option<u32>,
    /// FAILED when it expires within this many days (7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_days: Option<u32>,

    // load
    /// Requests per second in all (paced); absent: as fast as answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Connections (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How long to load (default 10s, at most 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    /// Requests per second that must be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_throughput: Option<f64>,
    /// Percent of requests that may fail (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95: Option<Dur>,
    /// Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Dur>,

    // resources (percent used: WARNING at `_warning`, FAILED at `_critical`)
    /// The filesystem whose disk is checked (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_warning: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_critical: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_warning: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_critical: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_warning: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_critical: Option<f64>,

    // query
    /// A PromQL expression, evaluated at the check's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A Prometheus to ask instead of Ferry's own metrics store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
    /// Every value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Every value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// What an empty result is: `"fail"` (default), `"pass"` or `"skip"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<String>,

    // command
    /// A program and its arguments (or a string run by `sh -c`): exit 0
    /// PASSED, 1 FAILED, 2 WARNING, 77 SKIPPED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSpec>,
    /// Where it runs (relative to the config file; default its directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl CheckSpec {
    /// A check of `kind` with nothing else set.
    pub fn new(name: &str, kind: CheckKind) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            kind,
            timeout: None,
            severity: None,
            skip_if: None,
            url: None,
            service: None,
            method: None,
            headers: BTreeMap::new(),
            body: None,
            expect_status: None,
            expect_body: None,
            expect_body_regex: None,
            expect_json: BTreeMap::new(),
            expect_headers: BTreeMap::new(),
            max_latency: None,
            require: None,
            bad_headers: None,
            good_headers: None,
            address: None,
            server_name: None,
            ca_file: None,
            warn_days: None,
            critical_days: None,
            rate: None,
            concurrency: None,
            duration: None,
            min_throughput: None,
            max_error_rate: None,
            max_p95: None,
            max_p99: None,
            path: None,
            cpu_warning: None,
            cpu_critical: None,
            memory_warning: None,
            memory_critical: None,
            disk_warning: None,
            disk_critical: None,
            query: None,
            prometheus: None,
            min: None,
            max: None,
            empty: None,
            command: None,
            workdir: None,
            env: BTreeMap::new(),
        }
    }

    /// The kind-specific keys this check sets.
    fn keys_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut note = |on: bool, key: &'static str| {
            if on {
                set.push(key);
            }
        };
        note(self.url.is_some(), "url");
        note(self.service.is_some(), "service");
        note(self.method.is_some(), "method");
        note(!self.headers.is_empty(), "headers");
        note(self.body.is_some(), "body");
        note(self.expect_status.is_some(), "expect_status");
        note(self.expect_body.is_some(), "expect_body");
        note(self.expect_body_regex.is_some(), "expect_body_regex");
        note(!self.expect_json.is_empty(), "expect_json");
        note(!self.expect_headers.is_empty(), "expect_headers");
        note(self.max_latency.is_some(), "max_latency");
        note(self.require.is_some(), "require");
        note(self.bad_headers.is_some(), "bad_headers");
        note(self.good_headers.is_some(), "good_headers");
        note(self.address.is_some(), "address");
        note(self.server_name.is_some(), "server_name");
        note(self.ca_file.is_some(), "ca_file");
        note(self.warn_days.is_some(), "warn_days");
        note(self.critical_days.is_some(), "critical_days");
        note(self.rate.is_some(), "rate");
        note(self.concurrency.is_some(), "concurrency");
        note(self.duration.is_some(), "duration");
        note(self.min_throughput.is_some(), "min_throughput");
        note(self.max_error_rate.is_some(), "max_error_rate");
        note(self.max_p95.is_some(), "max_p95");
        note(self.max_p99.is_some(), "max_p99");
        note(self.path.is_some(), "path");
        note(self.cpu_warning.is_some(), "cpu_warning");
        note(self.cpu_critical.is_some(), "cpu_critical");
        note(self.memory_warning.is_some(), "memory_warning");
        note(self.memory_critical.is_some(), "memory_critical");
        note(self.disk_warning.is_some(), "disk_warning");
        note(self.disk_critical.is_some(), "disk_critical");
        note(self.query.is_some(), "query");
        note(self.prometheus.is_some(), "prometheus");
        note(self.min.is_some(), "min");
        note(self.max.is_some(), "max");
        note(self.empty.is_some(), "empty");
        note(self.command.is_some(), "command");
        note(self.workdir.is_some(), "workdir");
        note(!self.env.is_empty(), "env");
        set
    }

    /// The severity, with the kind's default.
    pub fn severity(&self) -> Severity {
        self.severity.unwrap_or(match self.kind {
            CheckKind::SecurityHeaders => Severity::Warning,
            _ => Severity::Critical,
        })
    }

    /// How long the check may take before it is cut and FAILED.
    pub fn timeout(&self) -> Dur {
        self.timeout.unwrap_or(match self.kind {
            CheckKind::Load => Dur(self.load_duration().0 + std::time::Duration::from_secs(30)),
            _ => defaults::timeout(),
        })
    }

    pub fn load_duration(&self) -> Dur {
        self.duration.unwrap_or(Dur::secs(10))
    }

    /// The service a path URL goes through: the check's, the suite's, or
    /// the one the run is for.
    pub fn service_for<'a>(
        &'a self,
        suite: &'a SuiteSpec,
        run: Option<&'a str>,
    ) -> Option<&'a str> {
        self.service.as_deref().or(suite.service.as_deref()).or(run)
    }

    /// A path (through a service's proxy) rather than an absolute URL.
    pub fn is_path(&self) -> bool {
        self.url.as_deref().is_some_and(|u| u.starts_with('/'))
    }
}

/// `[services.NAME.deploy.validate]`: the suites a release runs, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatesSpec {
    /// Before any new instance starts: a FAILED stops the release with
    /// nothing changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
    /// Against the new revision (by `X-Ferry-Revision`) before it takes
    /// regular traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidate: Vec<String>,
    /// Once the release serves all traffic, inside the monitoring window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

impl GatesSpec {
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.candidate.is_empty() && self.after.is_empty()
    }
    pub fn suites(&self, stage: Stage) -> &[String] {
        match stage {
            Stage::Before => &self.before,
            Stage::Candidate => &self.candidate,
            Stage::After => &self.after,
        }
    }
    /// Every suite named, each once.
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for s in self.before.iter().chain(&self.candidate).chain(&self.after) {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        all
    }
}

/// When in a release a gate runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Before,
    Candidate,
    After,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Before, Stage::Candidate, Stage::After];
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Before => "before",
            Stage::Candidate => "candidate",
            Stage::After => "after",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub mod defaults {
    use crate::duration::Dur;
    pub fn concurrency() -> u32 {
        8
    }
    pub fn timeout() -> Dur {
        Dur::secs(10)
    }
    /// The longest a load check may run.
    pub const MAX_LOAD: Dur = Dur::secs(600);
    pub const MAX_LOAD_CONCURRENCY: u32 = 1024;
    /// Seed 001's thresholds (percent used).
    pub const CPU: (f64, f64) = (70.0, 90.0);
    pub const MEMORY: (f64, f64) = (80.0, 95.0);
    pub const DISK: (f64, f64) = (85.0, 95.0);
    pub const TLS_DAYS: (u32, u32) = (30, 7);
    /// Seed 001: p95 < 1 s, p99 < 2 s, errors < 1 %.
    pub const P95: Dur = Dur::secs(1);
    pub const P99: Dur = Dur::secs(2);
    pub const ERROR_RATE: f64 = 1.0;
    /// The headers `security_headers` asks for by default.
    pub const SECURITY_HEADERS: [&str; 4] = [
        "x-content-type-options",
        "content-security-policy",
        "x-frame-options",
        "referrer-policy",
    ];
}

/// Valid names: letters, digits, `_`, `-`, `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ValidationConfig {
    /// Every problem with the suites. `services` are the services the file
    /// declares (a check or suite may only name one of them).
    pub fn validate(&self, services: &[&str]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let base = ["validation".to_string()];
        if self.concurrency == 0 || self.concurrency > 256 {
            problems.push(Problem::new(
                &[base[0].clone(), "concurrency".into()],
                format!(
                    "concurrency = {} must be between 1 and 256",
                    self.concurrency
                ),
            ));
        }
        for (name, suite) in &self.suites {
            let at: Vec<String> = vec!["validation".into(), "suites".into(), name.clone()];
            if !valid_name(name) {
                problems.push(Problem::new(
                    &at,
                    format!("suite name \"{name}\" may only use letters, digits, `_`, `-` and `.`"),
                ));
            }
            problems.extend(suite.validate(&at, services));
        }
        problems
    }
}

impl SuiteSpec {
    fn validate(&self, at: &[String], services: &[&str]) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(s) = &self.service
            && !services.contains(&s.as_str())
        {
            problems.push(Problem::new(
                &[at, &["service".into()]].concat(),
                no_such_service(s, services),
            ));
        }
        if self.checks.is_empty() {
            problems.push(Problem::new(
                at,
                "the suite has no checks; add [[validation.suites.NAME.checks]] tables (see `ferry init`)",
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, check) in self.checks.iter().enumerate() {
            let at: Vec<String> = [at, &["checks".into(), i.to_string()]].concat();
            if seen.contains(&check.name.as_str()) {
                problems.push(Problem::new(
                    &[at.clone(), vec!["name".into()]].concat(),
                    format!(
                        "two checks of this suite are named \"{}\"; give each its own name",
                        check.name
                    ),
                ));
            }
            seen.push(&check.name);
            problems.extend(check.validate(&at, self, services));
        }
        problems
    }
}

fn no_such_service(name: &str, services: &[&str]) -> String {
    if services.is_empty() {
        format!("service \"{name}\" is not declared in this file (it declares no services)")
    } else {
        format!(
            "service \"{name}\" is not declared in this file; the services are: {}",
            services.join(", ")
        )
    }
}

/// A header that carries a credential.
fn credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["token", "key", "secret", "password", "session", "auth"]
        .iter()
        .any(|w| n.contains(w))
}

/// An absolute http(s) URL with a host: the problem, if it is not one.
pub fn url_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Some(format!(
            "\"{url}\" is not a URL: write an absolute http:// or https:// URL, or a path starting with `/` sent through a service's proxy"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Some(format!("\"{url}\" has no host"));
    }
    if url.contains(char::is_whitespace) {
        return Some(format!("\"{url}\" contains whitespace; percent-encode it"));
    }
    None
}

/// A `host:port` address: the problem, if it is not one.
pub fn address_problem(address: &str) -> Option<String> {
    let (host, port) = match address.rsplit_once(':') {
        Some(hp) => hp,
        None => {
            return Some(format!(
                "\"{address}\" has no port; write host:port, e.g. \"db.internal:5432\""
            ));
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Some(format!("\"{address}\" has no host; write host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some(format!("\"{address}\": `{port}` is not a port (1-65535)")),
    }
}

impl CheckSpec {
    fn validate(&self, at: &[String], suite: &SuiteSpec, services: &[&str]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let key = |k: &str| -> Vec<String> { [at, &[k.to_string()]].concat() };
        for (field, headers) in [
            ("headers", Some(&self.headers)),
            ("good_headers", self.good_headers.as_ref()),
        ] {
            for (name, value) in headers.into_iter().flatten() {
                if credential_header(name) && !value.contains("${") {
                    problems.push(Problem::new(
                        &[at, &[field.to_string(), name.clone()]].concat(),
                        format!(
                            "{field}.{name} holds a literal credential, which would be stored with every release and shown; write it as \"${{NAME}}\" and set NAME in the environment (or the service's env, which is encrypted at rest)"
                        ),
                    ));
                }
            }
        }
        let mut bad = |k: &str, m: String| problems.push(Problem::new(&key(k), m));
        if self.name.trim().is_empty() {
            bad("name", "a check needs a name".into());
        }
        let allowed = self.kind.fields();
        for k in self.keys_set() {
            if !allowed.contains(&k) {
                let owners: Vec<&str> = CheckKind::ALL
                    .iter()
                    .filter(|kind| kind.fields().contains(&k))
                    .map(|kind| kind.as_str())
                    .collect();
                bad(
                    k,
                    format!(
                        "`{k}` does not apply to kind = \"{}\" (it belongs to {}); the keys of this kind are: {}",
                        self.kind,
                        owners.join(", "),
                        allowed.join(", ")
                    ),
                );
            }
        }
        if let Some(t) = self.timeout
            && t.is_zero()
        {
            bad("timeout", "timeout must be more than 0".into());
        }
        if let Some(skip) = &self.skip_if
            && skip.env.is_none()
            && skip.unset.is_none()
        {
            bad(
                "skip_if",
                "skip_if needs `env` or `unset` (an environment variable's name)".into(),
            );
        }
        let needs_url = matches!(
            self.kind,
            CheckKind::Http | CheckKind::SecurityHeaders | CheckKind::Auth | CheckKind::Load
        );
        if needs_url {
            match &self.url {
                None => bad(
                    "url",
                    format!(
                        "a {} check needs `url` (an absolute URL, or a path such as \"/health\" sent through a service's proxy)",
                        self.kind
                    ),
                ),
                Some(u) if u.starts_with('/') => {
                    if let Some(s) = &self.service
                        && !services.contains(&s.as_str())
                    {
                        bad("service", no_such_service(s, services));
                    }
                    let _ = suite;
                }
                Some(u) if self.kind == CheckKind::Load => bad(
                    "url",
                    format!(
                        "a load check only targets a service's own proxy: write a path such as \"/\" (with `service`), not \"{u}\""
                    ),
                ),
                Some(u) => {
                    if let Some(p) = url_problem(u) {
                        bad("url", p);
                    }
                }
            }
            if let Some(m) = &self.method
                && (m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
            {
                bad(
                    "method",
                    format!(
                        "\"{m}\" is not an HTTP method; write it in capitals, e.g. \"GET\" or \"POST\""
                    ),
                );
            }
        }
        match self.kind {
            CheckKind::Http => {
                if let Some(e) = &self.expect_status
                    && let Some(p) = e.problem()
                {
                    bad("expect_status", p);
                }
                if let Some(re) = &self.expect_body_regex
                    && let Err(e) = regex::Regex::new(re)
                {
                    bad(
                        "expect_body_regex",
                        format!("`{re}` is not a regular expression: {e}"),
                    );
                }
            }
            CheckKind::SecurityHeaders => {
                if let Some(r) = &self.require
                    && r.is_empty()
                {
                    bad(
                        "require",
                        "require is empty; list headers, or leave it out for the default set"
                            .into(),
                    );
                }
            }
            CheckKind::Auth => {}
            CheckKind::Tls | CheckKind::Tcp => match &self.address {
                None => bad(
                    "address",
                    format!("a {} check needs `address = \"host:port\"`", self.kind),
                ),
                Some(a) => {
                    if let Some(p) = address_problem(a) {
                        bad("address", p);
                    }
                }
            },
            CheckKind::Load => {
                if let Some(r) = self.rate
                    && !(r > 0.0 && r.is_finite())
                {
                    bad(
                        "rate",
                        format!("rate = {r} must be a positive number of requests per second"),
                    );
                }
                if let Some(c) = self.concurrency
                    && (c == 0 || c > defaults::MAX_LOAD_CONCURRENCY)
                {
                    bad(
                        "concurrency",
                        format!(
                            "concurrency = {c} must be between 1 and {}",
                            defaults::MAX_LOAD_CONCURRENCY
                        ),
                    );
                }
                if let Some(d) = self.duration
                    && (d.is_zero() || d > defaults::MAX_LOAD)
                {
                    bad(
                        "duration",
                        format!(
                            "duration = \"{d}\" must be more than 0 and at most {}",
                            defaults::MAX_LOAD
                        ),
                    );
                }
                if let Some(e) = self.max_error_rate
                    && !(0.0..=100.0).contains(&e)
                {
                    bad(
                        "max_error_rate",
                        format!("max_error_rate = {e} is a percentage (0-100)"),
                    );
                }
                if self.timeout.is_some_and(|t| t <= self.load_duration()) {
                    bad(
                        "timeout",
                        format!(
                            "timeout must be longer than the load's duration ({})",
                            self.load_duration()
                        ),
                    );
                }
            }
            CheckKind::Resources => {
                for (w, c, name) in [
                    (self.cpu_warning, self.cpu_critical, "cpu"),
                    (self.memory_warning, self.memory_critical, "memory"),
                    (self.disk_warning, self.disk_critical, "disk"),
                ] {
                    for (v, k) in [(w, "warning"), (c, "critical")] {
                        if let Some(v) = v
                            && !(0.0..=100.0).contains(&v)
                        {
                            bad(
                                &format!("{name}_{k}"),
                                format!("{name}_{k} = {v} is a percentage used (0-100)"),
                            );
                        }
                    }
                }
            }
            CheckKind::Query => {
                match &self.query {
                    None => bad(
                        "query",
                        "a query check needs `query` (a PromQL expression)".into(),
                    ),
                    Some(q) => {
                        if let Err(e) = ferry_metrics::parse_error::parse(q) {
                            bad("query", format!("`{q}` is not PromQL: {e}"));
                        }
                    }
                }
                if self.min.is_none() && self.max.is_none() {
                    bad("max", "a query check needs `min`, `max` or both: the bounds every value must be within".into());
                }
                if let Some(p) = &self.prometheus
                    && let Some(e) = url_problem(p)
                {
                    bad("prometheus", e);
                }
                if let Some(e) = &self.empty
                    && !matches!(e.as_str(), "fail" | "pass" | "skip")
                {
                    bad(
                        "empty",
                        format!("empty = \"{e}\"; write \"fail\", \"pass\" or \"skip\""),
                    );
                }
            }
            CheckKind::Command => match &self.command {
                None => bad(
                    "command",
                    "a command check needs `command` (a program and its arguments)".into(),
                ),
                Some(c)
                    if c.argv(|s| s.to_string())
                        .first()
                        .is_none_or(|a| a.trim().is_empty()) =>
                {
                    bad("command", "command is empty".into())
                }
                _ => {}
            },
        }
        problems
    }
}

/// Problems with a service's gates: each suite must exist.
pub fn validate_gates(service: &str, gates: &GatesSpec, suites: &ValidationConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    for stage in Stage::ALL {
        for (i, name) in gates.suites(stage).iter().enumerate() {
            if !suites.suites.contains_key(name) {
                let known: Vec<&str> = suites.suites.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "no suites are declared; add [validation.suites.NAME]".to_string()
                } else {
                    format!("the suites are: {}", known.join(", "))
                };
                problems.push(Problem::new(
                    &[
                        "services".into(),
                        service.into(),
                        "deploy".into(),
                        "validate".into(),
                        stage.as_str().into(),
                        i.to_string(),
                    ],
                    format!("suite \"{name}\" is not declared in [validation.suites]; {hint}"),
                ));
            }
        }
    }
    problems
}
