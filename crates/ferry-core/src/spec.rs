//! The service spec: what `ferry.toml` declares for one service, and the
//! checks that reject impossible values before anything runs.

use crate::duration::Dur;
pub use crate::problem::Problem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A command: an argument list (spawned directly) or a string the user wrote
/// for a shell (spawned as `sh -c STRING`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    /// The argument list to spawn, with placeholders filled in by `fill`.
    pub fn argv(&self, fill: impl Fn(&str) -> String) -> Vec<String> {
        match self {
            CommandSpec::Argv(args) => args.iter().map(|a| fill(a)).collect(),
            CommandSpec::Shell(script) => vec!["sh".into(), "-c".into(), fill(script)],
        }
    }
    fn parts(&self) -> Vec<(String, &str)> {
        match self {
            CommandSpec::Argv(args) => args
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("[{i}]"), a.as_str()))
                .collect(),
            CommandSpec::Shell(s) => vec![(String::new(), s.as_str())],
        }
    }
    fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Argv(args) => args.first().is_none_or(|a| a.trim().is_empty()),
            CommandSpec::Shell(s) => s.trim().is_empty(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Rolling,
    BlueGreen,
    Canary,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "rolling" => Some(Strategy::Rolling),
            "blue-green" | "bluegreen" | "blue_green" => Some(Strategy::BlueGreen),
            "canary" => Some(Strategy::Canary),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }
}

/// A readiness or liveness probe. Defaults follow Kubernetes: every 10s,
/// 1s timeout, 3 failures to fail, 1 success to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Path for an HTTP GET; any 2xx within `timeout` passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Pass when the port accepts a TCP connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
    #[serde(default = "defaults::probe_interval")]
    pub interval: Dur,
    #[serde(default = "defaults::probe_timeout")]
    pub timeout: Dur,
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "defaults::success_threshold")]
    pub success_threshold: u32,
    #[serde(default)]
    pub initial_delay: Dur,
}

impl ProbeSpec {
    /// The probe used when a service declares no readiness: the port accepts
    /// TCP connections, checked every second.
    pub fn default_readiness() -> ProbeSpec {
        ProbeSpec {
            http: None,
            tcp: true,
            interval: Dur::secs(1),
            timeout: defaults::probe_timeout(),
            failure_threshold: defaults::failure_threshold(),
            success_threshold: 1,
            initial_delay: Dur::default(),
        }
    }
    pub fn describe(&self) -> String {
        match &self.http {
            Some(path) => format!("HTTP GET {path} every {}", self.interval),
            None => format!("TCP connect every {}", self.interval),
        }
    }
}

/// How a new revision replaces the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "defaults::max_surge")]
    pub max_surge: u32,
    #[serde(default)]
    pub max_unavailable: u32,
    #[serde(default)]
    pub min_ready: Dur,
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Dur,
    #[serde(default = "defaults::deploy_timeout")]
    pub deploy_timeout: Dur,
    #[serde(default = "defaults::stop_timeout")]
    pub stop_timeout: Dur,
    /// Blue-green: switch traffic without waiting for `ferry approve`.
    #[serde(default)]
    pub auto_promote: bool,
    /// Blue-green: how long the old set keeps running after the switch.
    #[serde(default = "defaults::scale_down_delay")]
    pub scale_down_delay: Dur,
    /// Canary: the steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::canary::CanaryStep>,
    /// Canary: `"header:NAME"` or `"cookie:NAME"`; absent = per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    /// What a failed analysis does: roll back, or pause for a human.
    #[serde(default)]
    pub on_failure: crate::canary::OnFailure,
    /// Watch a release this long after it reaches 100 %: analysis keeps
    /// judging, and a failure rolls back by itself. 0 = off.
    #[serde(default)]
    pub monitor: Dur,
    /// Which firing alerts about this service (its `service` or `job`
    /// label is the service's name) fail a running or watched rollout and
    /// roll it back, as Alertmanager matchers, all of which must match.
    /// Absent: `['severity=~"critical|emergency"']`; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_on_alerts: Option<Vec<String>>,
    /// Validation suites run inside every release: `before` any new
    /// instance starts, against the `candidate` before it takes regular
    /// traffic, and `after` it serves all of it.
    #[serde(
        default,
        skip_serializing_if = "crate::validation::GatesSpec::is_empty"
    )]
    pub validate: crate::validation::GatesSpec,
    /// What a deploy does when an SLO's error budget is spent: `block`
    /// (refuse; `--override-budget --reason` goes ahead), `warn` (the
    /// default) or `off`. Rollbacks are never blocked.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub budget_policy: crate::slo::BudgetPolicy,
}

fn is_default_policy(p: &crate::slo::BudgetPolicy) -> bool {
    *p == crate::slo::BudgetPolicy::default()
}

impl DeploySpec {
    /// The matchers of `rollback_on_alerts`, with its default.
    pub fn alert_matchers(&self) -> Vec<String> {
        match &self.rollback_on_alerts {
            Some(list) => list.clone(),
            None => vec![r#"severity=~"critical|emergency""#.to_string()],
        }
    }
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            strategy: Strategy::Rolling,
            max_surge: defaults::max_surge(),
            max_unavailable: 0,
            min_ready: Dur::default(),
            drain_timeout: defaults::drain_timeout(),
            deploy_timeout: defaults::deploy_timeout(),
            stop_timeout: defaults::stop_timeout(),
            auto_promote: false,
            scale_down_delay: defaults::scale_down_delay(),
            steps: Vec::new(),
            stickiness: None,
            on_failure: crate::canary::OnFailure::Rollback,
            monitor: Dur::default(),
            rollback_on_alerts: None,
            validate: crate::validation::GatesSpec::default(),
            budget_policy: crate::slo::BudgetPolicy::default(),
        }
    }
}

/// One service as declared in `ferry.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub command: CommandSpec,
    #[serde(default = "defaults::instances")]
    pub instances: u32,
    /// Where Ferry's proxy accepts this service's traffic.
    pub listen: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of instances (relative to the config file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default)]
    pub deploy: DeploySpec,
    /// Runs once, to completion, before any new instance starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<CommandSpec>,
    #[serde(default = "defaults::pre_deploy_timeout")]
    pub pre_deploy_timeout: Dur,
    /// Per-instance log file cap in bytes; older output rotates to `.1`.
    #[serde(default = "defaults::log_max_bytes")]
    pub log_max_bytes: u64,
    /// Where rollout events are sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::webhook::WebhookSpec>,
    /// How every release of this service is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<crate::analysis::AnalysisSpec>,
    /// Settings of the proxy in front of this service.
    #[serde(default, skip_serializing_if = "is_default_proxy")]
    pub proxy: crate::proxy_spec::ProxySpec,
    /// The path of each instance's own Prometheus metrics (e.g.
    /// "/metrics"); the daemon scrapes it into its metrics store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Service level objectives, measured from the proxy's own counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slo: Vec<crate::slo::SloSpec>,
}

fn is_default_proxy(p: &crate::proxy_spec::ProxySpec) -> bool {
    *p == crate::proxy_spec::ProxySpec::default()
}

impl ServiceSpec {
    pub fn readiness_probe(&self) -> ProbeSpec {
        self.readiness
            .clone()
            .unwrap_or_else(ProbeSpec::default_readiness)
    }
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

pub mod defaults {
    use crate::duration::Dur;
    pub fn instances() -> u32 {
        1
    }
    pub fn probe_interval() -> Dur {
        Dur::secs(10)
    }
    pub fn probe_timeout() -> Dur {
        Dur::secs(1)
    }
    pub fn failure_threshold() -> u32 {
        3
    }
    pub fn success_threshold() -> u32 {
        1
    }
    pub fn max_surge() -> u32 {
        1
    }
    pub fn drain_timeout() -> Dur {
        Dur::secs(30)
    }
    pub fn deploy_timeout() -> Dur {
        Dur::secs(300)
    }
    pub fn stop_timeout() -> Dur {
        Dur::secs(10)
    }
    pub fn scale_down_delay() -> Dur {
        Dur::secs(30)
    }
    pub fn pre_deploy_timeout() -> Dur {
        Dur::secs(600)
    }
    pub fn log_max_bytes() -> u64 {
        10 * 1024 * 1024
    }
}

/// Placeholders Ferry fills in `command` and `env` values.
pub const PLACEHOLDERS: [&str; 2] = ["port", "version"];

/// Fill `{port}` and `{version}`; `{{` and `}}` stand for literal braces.
pub fn fill_placeholders(text: &str, port: u16, version: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(name) = tail.strip_prefix("{port}") {
            out.push_str(&port.to_string());
            rest = name;
        } else if let Some(name) = tail.strip_prefix("{version}") {
            out.push_str(version);
            rest = name;
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Names of `{placeholders}` in `text` that Ferry does not know.
fn unknown_placeholders(text: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            rest = after;
            continue;
        }
        match tail.find('}') {
            Some(end) => {
                let name = &tail[1..end];
                let looks_like_name =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if looks_like_name && !PLACEHOLDERS.contains(&name) {
                    unknown.push(name.to_string());
                }
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    unknown
}

pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A portable environment variable name: ASCII letters, digits and `_`,
/// not starting with a digit (POSIX's portable set; anything else is lost
/// or mangled by shells and process managers).
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Why an environment value or argument cannot be passed to a process, if it
/// cannot: the kernel takes NUL-terminated strings, so a NUL would cut it (or
/// fail every start).
pub fn unpassable(value: &str) -> Option<&'static str> {
    value.contains('\0').then_some(
        "contains a NUL character, which no process argument or environment value can hold",
    )
}

/// The shortest probe interval: more often than this is load, not health.
pub const MIN_PROBE_INTERVAL: Dur = Dur::millis(100);
/// The shortest probe timeout.
pub const MIN_PROBE_TIMEOUT: Dur = Dur::millis(10);

/// Is `path` a request path a probe may send as is: `/` then RFC 3986 path
/// and query characters (no spaces, control characters or CR/LF, which would
/// end the request line and inject headers).
pub fn valid_probe_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 2048
        && path.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'%'
                        | b'?'
                )
        })
}

/// Do two listen addresses compete for the same socket? Same port and same
/// IP, or the same port where one is the unspecified address of its family
/// (`0.0.0.0:P` takes `127.0.0.1:P` too), or `[::]:P` against any IPv4
/// address on a dual-stack host.
pub fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}

impl ServiceSpec {
    /// Every problem with this spec (empty = valid). Paths start at
    /// `services.<name>`. Checks that need I/O (is `listen` free?) are the
    /// caller's.
    pub fn validate(&self, name: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        let base = vec!["services".to_string(), name.to_string()];
        let at = |k: &[&str]| -> Vec<String> {
            base.iter()
                .cloned()
                .chain(k.iter().map(|s| s.to_string()))
                .collect()
        };
        if !valid_service_name(name) {
            p.push(Problem::new(
                &base,
                format!(
                    "service name `{name}` is not allowed; use lowercase letters, digits, `-` and `_` (at most 63), starting with a letter or digit"
                ),
            ));
        }
        let mut slo_names: Vec<String> = Vec::new();
        for (i, slo) in self.slo.iter().enumerate() {
            p.extend(slo.validate(&at(&["slo", &i.to_string()])));
            let n = slo.name();
            if slo_names.contains(&n) {
                p.push(Problem::new(
                    &at(&["slo", &i.to_string(), "name"]),
                    format!("two SLOs of this service are named \"{n}\"; give each its own `name`"),
                ));
            }
            slo_names.push(n);
        }
        for (i, text) in self.deploy.rollback_on_alerts.iter().flatten().enumerate() {
            if let Err(e) = ferry_alert::matcher::Matcher::parse(text) {
                p.push(Problem::new(
                    &at(&["deploy", "rollback_on_alerts"]),
                    format!(
                        "rollback_on_alerts[{i}] = {text:?}: {e}; write Alertmanager matchers such as 'severity=~\"critical|emergency\"'"
                    ),
                ));
            }
        }
        if self.command.is_empty() {
            p.push(Problem::new(
                &at(&["command"]),
                "command is empty; give the program and its arguments, e.g. [\"python3\", \"app.py\", \"--port\", \"{port}\"]",
            ));
        }
        for (suffix, part) in self.command.parts() {
            if let Some(why) = unpassable(part) {
                p.push(Problem::new(
                    &at(&["command"]),
                    format!("command{suffix} {why}"),
                ));
            }
            for bad in unknown_placeholders(part) {
                p.push(Problem::new(
                    &at(&["command"]),
                    format!(
                        "command{suffix} uses unknown placeholder {{{bad}}}; Ferry fills in {{port}} and {{version}} (write {{{{ for a literal brace)"
                    ),
                ));
            }
        }
        if let Some(path) = &self.metrics
            && !valid_probe_path(path)
        {
            p.push(Problem::new(
                &at(&["metrics"]),
                format!("metrics = {path:?} must be a path starting with `/`, e.g. \"/metrics\""),
            ));
        }
        if self.instances == 0 {
            p.push(Problem::new(
                &at(&["instances"]),
                "instances = 0 would serve nothing; set at least 1",
            ));
        } else if self.instances > 256 {
            p.push(Problem::new(
                &at(&["instances"]),
                format!(
                    "instances = {} is more than one host should run; use at most 256",
                    self.instances
                ),
            ));
        }
        match self.listen.parse::<SocketAddr>() {
            Err(_) => p.push(Problem::new(
                &at(&["listen"]),
                format!(
                    "listen = \"{}\" is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\"",
                    self.listen
                ),
            )),
            Ok(addr) if addr.port() == 0 => p.push(Problem::new(
                &at(&["listen"]),
                "listen needs a fixed port, not 0; e.g. \"127.0.0.1:8080\"",
            )),
            Ok(_) => {}
        }
        if let Some(w) = &self.workdir
            && (w.contains("{port}") || !unknown_placeholders(w).is_empty())
        {
            p.push(Problem::new(
                &at(&["workdir"]),
                format!("workdir = \"{w}\" may use only {{version}}: every instance of a revision shares its workdir"),
            ));
        }
        for (k, v) in &self.env {
            if !valid_env_name(k) {
                p.push(Problem::new(
                    &at(&["env"]),
                    format!(
                        "env name `{k}` is not a valid variable name; use letters, digits and `_`"
                    ),
                ));
            }
            if let Some(why) = unpassable(v) {
                p.push(Problem::new(&at(&["env", k]), format!("env {k} {why}")));
            }
            for bad in unknown_placeholders(v) {
                p.push(Problem::new(
                    &at(&["env", k]),
                    format!("env {k} uses unknown placeholder {{{bad}}}; Ferry fills in {{port}} and {{version}}"),
                ));
            }
        }
        for (key, probe) in [("readiness", &self.readiness), ("liveness", &self.liveness)] {
            if let Some(probe) = probe {
                validate_probe(probe, &at(&[key]), &mut p);
            }
        }
        let d = &self.deploy;
        if d.max_surge == 0 && d.max_unavailable == 0 {
            p.push(Problem::new(
                &at(&["deploy", "max_surge"]),
                "max_surge = 0 with max_unavailable = 0 can never make progress; allow a surge (max_surge = 1) or some unavailability (max_unavailable = 1)",
            ));
        }
        if self.instances > 0 && d.max_unavailable >= self.instances {
            p.push(Problem::new(
                &at(&["deploy", "max_unavailable"]),
                format!(
                    "max_unavailable = {} would let every one of the {} instances be down at once; set it below instances",
                    d.max_unavailable, self.instances
                ),
            ));
        }
        for (key, value) in [
            ("deploy_timeout", d.deploy_timeout),
            ("drain_timeout", d.drain_timeout),
            ("stop_timeout", d.stop_timeout),
        ] {
            if value.is_zero() {
                p.push(Problem::new(
                    &at(&["deploy", key]),
                    format!("{key} = \"0s\" leaves no time at all; give a positive duration such as \"30s\""),
                ));
            }
        }
        if let Some(w) = &self.workdir
            && let Some(why) = unpassable(w)
        {
            p.push(Problem::new(&at(&["workdir"]), format!("workdir {why}")));
        }
        if let Some(hook) = &self.pre_deploy {
            for (suffix, part) in hook.parts() {
                if let Some(why) = unpassable(part) {
                    p.push(Problem::new(
                        &at(&["pre_deploy"]),
                        format!("pre_deploy{suffix} {why}"),
                    ));
                }
            }
        }
        if let Some(hook) = &self.pre_deploy
            && hook.is_empty()
        {
            p.push(Problem::new(
                &at(&["pre_deploy"]),
                "pre_deploy is empty; give a command such as [\"./migrate\", \"up\"] or remove the key",
            ));
        }
        if self.pre_deploy_timeout.is_zero() {
            p.push(Problem::new(
                &at(&["pre_deploy_timeout"]),
                "pre_deploy_timeout must be positive",
            ));
        }
        p.extend(self.proxy.validate(&at(&["proxy"])));
        if d.strategy == Strategy::Canary || !d.steps.is_empty() {
            p.extend(crate::canary::validate_steps(&d.steps, &at(&["deploy"])));
        }
        if let Some(s) = &d.stickiness
            && let Err(e) = crate::canary::Stickiness::parse(s)
        {
            p.push(Problem::new(&at(&["deploy", "stickiness"]), e));
        }
        if let Some(a) = &self.analysis {
            p.extend(a.validate(&at(&["analysis"])));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            p.extend(w.validate(&at(&["webhooks"]), i));
        }
        if self.log_max_bytes < 4096 {
            p.push(Problem::new(
                &at(&["log_max_bytes"]),
                "log_max_bytes below 4096 keeps almost nothing; use at least 4096",
            ));
        }
        p
    }
}

fn validate_probe(probe: &ProbeSpec, at: &[String], p: &mut Vec<Problem>) {
    match (&probe.http, probe.tcp) {
        (None, false) => p.push(Problem::new(
            at,
            "a probe needs a check: http = \"/health\" or tcp = true",
        )),
        (Some(_), true) => p.push(Problem::new(at, "choose one check: http or tcp, not both")),
        (Some(path), false) if !valid_probe_path(path) => {
            let mut k = at.to_vec();
            k.push("http".into());
            p.push(Problem::new(
                &k,
                format!(
                    "http = {path:?} must be a path starting with `/`, of URL path and query characters only (no spaces or control characters; percent-encode others), e.g. \"/health\""
                ),
            ));
        }
        _ => {}
    }
    for (key, value, min) in [
        ("interval", probe.interval, MIN_PROBE_INTERVAL),
        ("timeout", probe.timeout, MIN_PROBE_TIMEOUT),
    ] {
        if value < min {
            let mut k = at.to_vec();
            k.push(key.into());
            p.push(Problem::new(
                &k,
                format!("{key} = \"{value}\" is too short; use at least \"{min}\", e.g. \"1s\""),
            ));
        }
    }
    for (key, value) in [
        ("failure_threshold", probe.failure_threshold),
        ("success_threshold", probe.success_threshold),
    ] {
        if value == 0 {
            let mut k = at.to_vec();
            k.push(key.into());
            p.push(Problem::new(&k, format!("{key} must be at least 1")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_found() {
        assert_eq!(
            fill_placeholders("--port={port} v={version}", 81, "v2"),
            "--port=81 v=v2"
        );
        assert_eq!(fill_placeholders("{{port}}", 81, "v2"), "{port}");
        assert_eq!(
            unknown_placeholders("{prot} {port} {{x}}"),
            vec!["prot".to_string()]
        );
        assert!(unknown_placeholders("json {\"a\": 1}").is_empty());
    }

    #[test]
    fn env_names_are_portable_and_values_passable() {
        for good in ["A", "_X", "DB_URL2", "lower_ok"] {
            assert!(valid_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A B", "é", "A=B", "A-B", "A.B", "A\0"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
        assert!(unpassable("a\0b").is_some());
        assert!(unpassable("fine value = with spaces").is_none());
    }

    #[test]
    fn probe_paths_cannot_inject_a_header() {
        assert!(valid_probe_path("/health"));
        assert!(valid_probe_path("/a/b?x=1&y=%20"));
        for bad in ["health", "/h\r\nX-Injected: 1", "/a b", "/\t", "/é", ""] {
            assert!(!valid_probe_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn listen_addresses_overlap_by_port_and_wildcard() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listens_overlap(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(listens_overlap(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(listens_overlap(a("127.0.0.2:80"), a("0.0.0.0:80")));
        assert!(listens_overlap(a("[::]:80"), a("127.0.0.1:80")));
        assert!(listens_overlap(a("[::1]:80"), a("[::]:80")));
        assert!(!listens_overlap(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!listens_overlap(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!listens_overlap(a("0.0.0.0:80"), a("[::1]:80")));
    }

    #[test]
    fn service_names() {
        assert!(valid_service_name("web-1"));
        assert!(!valid_service_name("Web"));
        assert!(!valid_service_name("-x"));
    }
}
