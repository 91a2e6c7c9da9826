//! `ferry.toml`: parsing with errors that name the file, line, key and fix.

use crate::spec::{Problem, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Extra scrape targets and remote-write destinations of the embedded
    /// metrics store (read by `ferry serve --config`).
    #[serde(default, skip_serializing_if = "is_default_metrics")]
    pub metrics: crate::metrics_config::MetricsConfig,
    /// Rule files and where alerts go (read by `ferry serve --config`).
    #[serde(default, skip_serializing_if = "is_default_alerting")]
    #[schema(value_type = Object)]
    pub alerting: crate::alerting_config::AlertingConfig,
    /// Validation suites, run by `ferry validate` and by release gates.
    #[serde(default, skip_serializing_if = "is_default_validation")]
    pub validation: crate::validation::ValidationConfig,
}

fn is_default_validation(v: &crate::validation::ValidationConfig) -> bool {
    *v == crate::validation::ValidationConfig::default()
}

fn is_default_alerting(a: &crate::alerting_config::AlertingConfig) -> bool {
    *a == crate::alerting_config::AlertingConfig::default()
}

fn is_default_metrics(m: &crate::metrics_config::MetricsConfig) -> bool {
    *m == crate::metrics_config::MetricsConfig::default()
}

/// One error in a config file, positioned when the position is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: Option<String>,
    pub message: String,
    /// The offending source line, shown under the message.
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let (Some(line), Some(snippet)) = (self.line, &self.snippet) {
            write!(f, "\n{line:>5} | {snippet}")?;
        }
        Ok(())
    }
}

/// Parse and validate a config file's text. Every problem is returned, not
/// only the first.
pub fn parse(file: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let config: Config = match toml_edit::de::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let (line, column) = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            let message = e.message().trim().to_string();
            let message = if message.contains("missing field") {
                format!("{message}; see `ferry init` for a complete example")
            } else {
                message
            };
            return Err(vec![ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                key: None,
                message,
                snippet: line
                    .and_then(|l| text.lines().nth(l - 1))
                    .map(str::to_string),
            }]);
        }
    };
    let problems = validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    Err(problems
        .into_iter()
        .map(|p| positioned(file, text, &p))
        .collect())
}

/// Validate a parsed config: each service, then what spans services.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = config.metrics.validate();
    problems.extend(config.alerting.validate());
    let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
    problems.extend(config.validation.validate(&services));
    for (name, spec) in &config.services {
        problems.extend(crate::validation::validate_gates(
            name,
            &spec.deploy.validate,
            &config.validation,
        ));
    }
    let mut listens: Vec<(std::net::SocketAddr, &str)> = Vec::new();
    for (name, spec) in &config.services {
        problems.extend(spec.validate(name));
        if let Some(addr) = spec.listen_addr() {
            if let Some((theirs, other)) = listens
                .iter()
                .find(|(theirs, _)| crate::spec::listens_overlap(addr, *theirs))
            {
                let how = if *theirs == addr {
                    "is already used by".to_string()
                } else {
                    format!("overlaps {theirs}, used by")
                };
                problems.push(Problem {
                    path: vec!["services".into(), name.clone(), "listen".into()],
                    message: format!(
                        "listen = \"{addr}\" {how} service `{other}`; give each service its own port (an unspecified address such as 0.0.0.0 takes the port on every address)"
                    ),
                });
            } else {
                listens.push((addr, name));
            }
        }
    }
    problems
}

/// Attach file, line and column to a problem found after parsing.
pub fn positioned(file: &Path, text: &str, problem: &Problem) -> ConfigError {
    let offset = locate(text, &problem.path);
    let (line, column) = offset
        .map(|o| line_col(text, o))
        .map_or((None, None), |(l, c)| (Some(l), Some(c)));
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: Some(problem.key()),
        message: problem.message.clone(),
        snippet: line
            .and_then(|l| text.lines().nth(l - 1))
            .map(str::to_string),
    }
}

/// Byte offset of the deepest key of `path` that exists in the document.
/// A numeric key indexes an array of tables (`[[…checks]]`) or an array.
pub fn locate(text: &str, path: &[String]) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    locate_in(doc.as_table(), path, None)
}

fn locate_in(
    table: &dyn toml_edit::TableLike,
    path: &[String],
    best: Option<usize>,
) -> Option<usize> {
    let Some((key, rest)) = path.split_first() else {
        return best;
    };
    let Some((k, item)) = table.get_key_value(key) else {
        return best;
    };
    let best = k.span().or_else(|| item.span()).map(|s| s.start).or(best);
    locate_item(item, rest, best)
}

fn locate_item(item: &toml_edit::Item, path: &[String], best: Option<usize>) -> Option<usize> {
    let Some((key, rest)) = path.split_first() else {
        return best;
    };
    if let Ok(i) = key.parse::<usize>() {
        if let Some(tables) = item.as_array_of_tables() {
            let Some(t) = tables.get(i) else { return best };
            let best = t.span().map(|s| s.start).or(best);
            return locate_in(t, rest, best);
        }
        if let Some(array) = item.as_array() {
            let Some(v) = array.get(i) else { return best };
            let best = v.span().map(|s| s.start).or(best);
            return match v.as_inline_table() {
                Some(t) => locate_in(t, rest, best),
                None => best,
            };
        }
    }
    match item.as_table_like() {
        Some(t) => locate_in(t, path, best),
        None => best,
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// The example `ferry init` writes; it must always parse.
pub const EXAMPLE: &str = r#"# ferry.toml: the services Ferry runs, and how it releases them.
# Check it with `ferry check`; release with `ferry deploy web --version v1`.
# Durations take a unit: "500ms", "30s", "2m".

[services.web]
# The program and its arguments (spawned directly, no shell). {port} is the
# port Ferry assigns to each instance (also in $PORT); {version} is the
# deploy's --version. A plain string instead of a list runs through `sh -c`.
command = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1",
           "--directory", "releases/{version}"]
instances = 3
listen = "127.0.0.1:8080"       # the proxy accepts this service's traffic here
env = { GREETING = "hello" }    # names with SECRET/TOKEN/PASSWORD/KEY are never printed
# workdir = "."                 # where instances run (default: this file's directory)
# pre_deploy = ["./migrate", "up"]   # runs once before new instances start
# pre_deploy_timeout = "10m"
# log_max_bytes = 10485760      # per-instance log cap; older output rotates to .1

[services.web.readiness]        # gates traffic; default: TCP connect every 1s
http = "/health"                # GET must answer 2xx within timeout
interval = "500ms"
timeout = "1s"
failure_threshold = 3
# success_threshold = 1
# initial_delay = "0s"

[services.web.liveness]         # failing it restarts the instance (checked once it was ready)
http = "/health"
interval = "2s"
failure_threshold = 3

[services.web.deploy]
strategy = "rolling"            # rolling | blue-green
max_surge = 1                   # extra instances allowed during a rolling deploy
max_unavailable = 0             # instances allowed to be missing during a rolling deploy
min_ready = "1s"                # ready this long before it takes traffic
drain_timeout = "30s"           # in-flight requests get this long before an instance stops
deploy_timeout = "2m"           # an instance not ready by then fails the deploy
# stop_timeout = "10s"          # SIGTERM, then SIGKILL after this long
# auto_promote = false          # blue-green: switch without `ferry approve`
# scale_down_delay = "30s"      # blue-green: keep the old set this long (instant rollback)
# monitor = "5m"                # watch after 100 %: a failure (or an alert) rolls back by itself
# rollback_on_alerts = ['severity=~"critical|emergency"']   # which alerts about web roll a release back
# Validation suites inside every release: `before` any new instance starts,
# against the `candidate` (by X-Ferry-Revision) before it takes regular
# traffic, `after` it serves all of it. A FAILED check rolls the release back.
validate = { candidate = ["smoke"] }

# Validation suites: run them now with `ferry validate [--suite smoke]`.
# Kinds: http, security_headers, auth, tls, tcp, load, resources, query,
# command. A path goes through the service's proxy.
[[validation.suites.smoke.checks]]
name = "health"
kind = "http"
url = "/health"
expect_status = 200
expect_body = "ok"
max_latency = "500ms"

[[validation.suites.smoke.checks]]
name = "headers"                # missing security headers are a WARNING
kind = "security_headers"
url = "/"

# [[validation.suites.security.checks]]
# name = "certificate"
# kind = "tls"
# address = "example.com:443"   # valid for the name, expiring in > 30 days (WARNING), > 7 (FAILED)
# [[validation.suites.data.checks]]
# name = "migrations"
# kind = "command"              # exit 0 PASSED, 1 FAILED, 2 WARNING, 77 SKIPPED
# command = ["./check-migrations"]

# [[services.web.slo]]          # `ferry slo`: the SLI, the error budget, burn-rate alerts
# kind = "availability"         # 2xx, 3xx, 404 good; 5xx failed (or "latency" with threshold)
# objective = 99.9              # percent, over window = "30d"
# (and under [services.web.deploy]: budget_policy = "block" refuses deploys once it is spent)

# [alerting]                    # alerts: built-in rules from the guides are on without this table
# rule_files = ["rules/*.yml"]  # Prometheus rule files; `ferry check rules/web.yml`
# alertmanager_config = "alertmanager.yml"   # routing and receivers, Alertmanager's format
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("ferry.toml"), text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_example_is_valid() {
        let c = parse(Path::new("ferry.toml"), EXAMPLE).unwrap();
        let web = &c.services["web"];
        assert_eq!(web.instances, 3);
        assert_eq!(web.deploy.min_ready, crate::duration::Dur::secs(1));
        assert_eq!(
            web.readiness.as_ref().unwrap().interval,
            crate::duration::Dur::millis(500)
        );
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e =
            errors("[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\ninstancez = 3\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("ferry.toml:4:"), "{}", e[0]);
        assert!(e[0].contains("instancez"), "{}", e[0]);
    }

    #[test]
    fn impossible_values_are_positioned() {
        let text = "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\ninstances = 0\n\n[services.web.deploy]\nmax_surge = 0\nmax_unavailable = 0\n";
        let e = errors(text);
        assert!(
            e.iter()
                .any(|l| l.starts_with("ferry.toml:4:1: services.web.instances:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.starts_with("ferry.toml:7:1: services.web.deploy.max_surge:")),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_types_and_bad_durations() {
        let e = errors(
            "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\ninstances = \"three\"\n",
        );
        assert!(e[0].contains(":4:"), "{e:?}");
        let e = errors(
            "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\n[services.web.deploy]\nmin_ready = \"5\"\n",
        );
        assert!(e[0].contains("no unit"), "{e:?}");
    }

    #[test]
    fn duplicate_listen_is_rejected() {
        let text = "[services.a]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9\"\n[services.b]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9\"\n";
        let e = errors(text);
        assert!(e[0].contains("already used by service `a`"), "{e:?}");
        assert!(e[0].contains(":6:"), "{e:?}");
        // A wildcard address takes the port on every address.
        let text = "[services.a]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:9\"\n[services.b]\ncommand = [\"x\"]\nlisten = \"0.0.0.0:9\"\n";
        let e = errors(text);
        assert!(
            e[0].contains("overlaps 127.0.0.1:9, used by service `a`"),
            "{e:?}"
        );
    }

    #[test]
    fn injected_probe_paths_nul_values_and_tiny_intervals_are_rejected() {
        let base = "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\n";
        let e = errors(&format!(
            "{base}[services.web.readiness]\nhttp = \"/h\\r\\nX-Injected: 1\"\n"
        ));
        assert!(e[0].contains("services.web.readiness.http"), "{e:?}");
        let e = errors(&format!("{base}env = {{ A = \"x\\u0000y\" }}\n"));
        assert!(e[0].contains("NUL"), "{e:?}");
        let e = errors(&format!(
            "{base}[services.web.readiness]\ntcp = true\ninterval = \"1ns\"\n"
        ));
        assert!(
            e[0].contains("interval") && e[0].contains("at least"),
            "{e:?}"
        );
        let e = errors(&format!("{base}env = {{ \"A B\" = \"1\" }}\n"));
        assert!(e[0].contains("not a valid variable name"), "{e:?}");
    }

    #[test]
    fn every_event_kind_can_be_subscribed_to_and_others_are_refused() {
        let kinds: Vec<String> = crate::event::EventKind::ALL
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect();
        let base = "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\n";
        let text = format!(
            "{base}[[services.web.webhooks]]\nurl = \"http://127.0.0.1:9/\"\nevents = [{}]\n",
            kinds.join(", ")
        );
        let cfg = parse(Path::new("ferry.toml"), &text).unwrap();
        assert_eq!(
            cfg.services["web"].webhooks[0].events.len(),
            crate::event::EventKind::ALL.len()
        );
        let e = errors(&format!(
            "{base}[[services.web.webhooks]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"nope\"]\n"
        ));
        assert!(
            e[0].contains("nope") && e[0].contains("awaiting-approval") && e[0].contains(":6:"),
            "{e:?}"
        );
    }

    #[test]
    fn inline_table_keys_are_located() {
        let text = "[services.web]\ncommand = [\"x\"]\nlisten = \"127.0.0.1:1\"\nenv = { A = \"{nope}\" }\n";
        let e = errors(text);
        assert!(e[0].contains(":4:"), "{e:?}");
    }
}
